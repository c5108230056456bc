"""The MatGL route: multimodal crystal fusion trained with MatGL's own stack.

- :class:`MultiModalMGLDataset`: MatGL's ``MGLDataset`` whose graphs also carry deepfuse
  modalities (per-sentence text embeddings, token ids, composition, CHGNet's pretrained crystal
  vector and atom states) and a presence mask;
- :class:`MatMMFuse`: a ``matgl.models.MatGLModel`` (MEGNet / M3GNet / CGCNN backbone + deepfuse
  encoders + a deepfuse fusion layer), saved with ``model.save`` and restored with
  ``matgl.load_model``; ``predict_structure`` for a pymatgen ``Structure``;
- :class:`MultiModalLightningModule`: MatGL's ``ModelLightningModule`` plus the fusion layer's
  auxiliary losses and masking curriculum, trained by a Lightning ``Trainer`` unchanged.

Needs the ``materials`` extra (matgl). The DeepChem route is
:class:`~deepfuse_plugin.models.matmmfuse.MatMMFuseModel` (``dc.models.MatMMFuseModel``).

Examples
--------
>>> import lightning as L  # doctest: +SKIP
>>> from matgl.ext.pymatgen import Structure2Graph  # doctest: +SKIP
>>> from matgl.graph.data import MGLDataLoader  # doctest: +SKIP
>>> from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # doctest: +SKIP
>>> from deepfuse_plugin.matgl import (  # doctest: +SKIP
...     MatMMFuse, MultiModalLightningModule, MultiModalMGLDataset)
>>> converter = Structure2Graph(element_types, cutoff=4.0)  # doctest: +SKIP
>>> featurizer = CrystalMultiModalFeaturizer(["text_sentences", "composition"])  # doctest: +SKIP
>>> labels = {"eform": energies}  # doctest: +SKIP
>>> data = MultiModalMGLDataset(structures, labels, converter, featurizer)  # doctest: +SKIP
>>> model = MatMMFuse.from_dataset(data, backbone="megnet")  # doctest: +SKIP
>>> module = MultiModalLightningModule(model)  # doctest: +SKIP
>>> L.Trainer(max_epochs=20).fit(module, train_loader, val_loader)  # doctest: +SKIP
"""

from __future__ import annotations

from deepfuse_plugin.matgl._data import MultiModalMGLDataset, attach_modalities, modality_inputs
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
    "modality_inputs",
]
