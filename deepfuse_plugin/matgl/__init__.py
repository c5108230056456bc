"""The MatGL route: multimodal crystal fusion trained with MatGL's own stack.

- :class:`MultiModalMGLDataset`: MatGL's ``MGLDataset`` whose graphs also carry deepfuse
  modalities (per-sentence text embeddings, token ids, composition, CHGNet's pretrained crystal
  vector and atom states) and a presence mask;
- :class:`MatMMFuse`: a ``matgl.models.MatGLModel`` (MEGNet / M3GNet / CGCNN backbone + deepfuse
  encoders + a deepfuse fusion layer), saved with ``model.save`` and restored with
  ``matgl.load_model``; ``predict_structure`` for a pymatgen ``Structure`` (one value per
  target; ``predict_targets`` by name);
- :func:`collate_fn_targets`: MatGL's ``collate_fn_graph`` for every label (MatGL's keeps the
  first one only), so one model learns several targets;
- :class:`MultiModalLightningModule`: MatGL's ``ModelLightningModule`` plus the fusion layer's
  auxiliary losses and masking curriculum, and, for several targets, a loss averaged over the
  standardized targets and a MAE per target; trained by a Lightning ``Trainer`` unchanged.

Needs the ``materials`` extra (matgl). The DeepChem route is
:class:`~deepfuse_plugin.models.matmmfuse.MatMMFuseModel` (``dc.models.MatMMFuseModel``).

Examples
--------
>>> import lightning as L  # doctest: +SKIP
>>> from matgl.ext.pymatgen import Structure2Graph  # doctest: +SKIP
>>> from matgl.graph.data import MGLDataLoader  # doctest: +SKIP
>>> from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # doctest: +SKIP
>>> from deepfuse_plugin.matgl import (  # doctest: +SKIP
...     MatMMFuse, MultiModalLightningModule, MultiModalMGLDataset, collate_fn_targets)
>>> converter = Structure2Graph(element_types, cutoff=4.0)  # doctest: +SKIP
>>> featurizer = CrystalMultiModalFeaturizer(["text_sentences", "composition"])  # doctest: +SKIP
>>> labels = {"eform": energies, "band_gap": gaps}  # one target per label  # doctest: +SKIP
>>> data = MultiModalMGLDataset(structures, labels, converter, featurizer)  # doctest: +SKIP
>>> train_loader, val_loader = MGLDataLoader(  # doctest: +SKIP
...     train_set, val_set, collate_fn=collate_fn_targets, batch_size=32)
>>> model = MatMMFuse.from_dataset(  # doctest: +SKIP
...     data, backbone="megnet", data_mean=[-1.2, 1.5], data_std=[0.9, 1.3])
>>> module = MultiModalLightningModule(model)  # logs val_MAE, val_MAE_eform, ...  # doctest: +SKIP
>>> L.Trainer(max_epochs=20).fit(module, train_loader, val_loader)  # doctest: +SKIP
>>> model.predict_targets(structure)  # {"eform": ..., "band_gap": ...}  # doctest: +SKIP
"""

from __future__ import annotations

from deepfuse_plugin.matgl._data import (
    MultiModalMGLDataset,
    attach_modalities,
    collate_fn_targets,
    modality_inputs,
)
from deepfuse_plugin.matgl._lightning import MultiModalLightningModule
from deepfuse_plugin.matgl._model import FUSIONS, MatMMFuse
from deepfuse_plugin.nn.matgl_backbone import MATGL_BACKBONES, MatGLGraphEncoder, attach_positions

# saved models name their class by its public module, so refactoring the private ones keeps them
# loadable with matgl.load_model
for _cls in (MultiModalMGLDataset, MatMMFuse, MultiModalLightningModule):
    _cls.__module__ = __name__

__all__ = [
    "FUSIONS",
    "MATGL_BACKBONES",
    "MatGLGraphEncoder",
    "MatMMFuse",
    "MultiModalLightningModule",
    "MultiModalMGLDataset",
    "attach_modalities",
    "attach_positions",
    "collate_fn_targets",
    "modality_inputs",
]
