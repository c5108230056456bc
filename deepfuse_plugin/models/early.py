"""EarlyFusionModel: concatenation of the modalities' encoder outputs (the naive baseline)."""

from __future__ import annotations

from typing import Any

from torch import nn

from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.registry import register_model
from deepfuse_plugin.nn.fusion import EarlyFusion


@register_model("early", kind="fusion")
class EarlyFusionModel(MultiModalTorchModel):
    """Early fusion as a DeepChem ``TorchModel``: encoders -> concatenation -> MLP -> task head.

    The pooled encoder outputs of all modalities are concatenated together with one presence bit per
    modality and mapped by an MLP to the fused embedding
    (:class:`~deepfuse_plugin.nn.fusion.EarlyFusion`). This is the naive concatenation baseline of
    the Dynamic Fusion paper.

    Missing modalities: a missing modality's features are **zero-filled** and its presence bit is 0,
    so the network sees "absent" explicitly rather than an all-zero feature vector it cannot tell
    apart from a real one. Nothing else compensates: train with ``modality_dropout > 0`` if the
    model will meet missing modalities at prediction time. Early fusion has no modality weights;
    ``modality_weights`` reports the presence mask (1 = present).

    Parameters
    ----------
    n_tasks, modalities, mode, ...:
        See :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`.
    fusion_hidden: int
        Hidden width of the fusion MLP.
    fusion_layers: int
        Linear layers in the fusion MLP.

    Shapes
    ------
    Predictions ``(N, n_tasks)`` (regression) or ``(N, n_tasks, n_classes)`` probabilities;
    embeddings ``(N, fused_dim)``; modality weights ``(N, M)``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin
    >>> feat = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dc.models.EarlyFusionModel(1, feat.modalities, encoder_dim=32, fused_dim=32,
    ...                                    progress=False)
    >>> _ = model.fit(ds, nb_epoch=2)
    >>> model.predict(ds).shape, model.predict(ds, output_types=["embedding"]).shape
    ((6, 1), (6, 32))
    """

    _config_extra = ("fusion_hidden", "fusion_layers")

    def __init__(
        self,
        n_tasks: int,
        modalities: Any,
        mode: str = "regression",
        fusion_hidden: int = 256,
        fusion_layers: int = 2,
        **kwargs: Any,
    ):
        check.positive_int("fusion_hidden", fusion_hidden)
        check.positive_int("fusion_layers", fusion_layers)
        self.fusion_hidden, self.fusion_layers = fusion_hidden, fusion_layers
        super().__init__(n_tasks, modalities, mode, **kwargs)

    def _build_fusion(self) -> nn.Module:
        return EarlyFusion(
            tuple(self.modality_names),
            self.encoder_dim,
            self.fused_dim,
            self.fusion_hidden,
            self.fusion_layers,
            self.dropout,
        )
