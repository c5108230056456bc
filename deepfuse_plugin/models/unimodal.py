"""UnimodalModel: one modality, its encoder output projected (the unimodal baselines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.registry import register_model
from deepfuse_plugin.nn.fusion import ProjectionFusion


@register_model("unimodal", kind="unimodal")
class UnimodalModel(MultiModalTorchModel):
    """A single-modality baseline: encoder -> linear projection -> task head.

    ``UnimodalModel(1, feat.modalities[1])`` is "graph only" when ``feat`` is
    ``MultiModalFeaturizer(["ecfp", "graph", "smiles"])``; it trains and predicts on the same
    multimodal dataset as the fusion models (the other modalities are ignored), so baselines and
    fusion models compare on identical data and splits. A sample missing the modality has no input
    at all: ``predict`` returns NaN for it with a warning naming its id (``predict_checked`` lists
    it as ``"no modality present"``) rather than the head's bias as if it were a prediction.

    Parameters
    ----------
    n_tasks: int
    modality: Modality, dict or str
        The one modality (a spec from ``featurizer.modalities`` or a built-in name such as
        ``"graph"``).
    mode: str
        ``"regression"`` or ``"classification"``.
    modalities: list with one Modality, optional
        Alternative to ``modality`` (used when the model is rebuilt from its saved configuration).
    **kwargs:
        See :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`.

    Shapes
    ------
    Predictions ``(N, n_tasks)`` or ``(N, n_tasks, n_classes)``; embeddings ``(N, fused_dim)``;
    modality weights ``(N, 1)`` (1 = present).

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin
    >>> feat = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> graph_only = dc.models.UnimodalModel(1, feat.modalities[1], encoder_dim=32, fused_dim=32,
    ...                                      progress=False)
    >>> _ = graph_only.fit(ds, nb_epoch=2)
    >>> graph_only.modality_names, graph_only.predict(ds).shape
    (['graph'], (6, 1))
    """

    def __init__(
        self,
        n_tasks: int,
        modality: Modality | dict | str | None = None,
        mode: str = "regression",
        modalities: Sequence[Modality | dict | str] | None = None,
        **kwargs: Any,
    ):
        if (modality is None) == (modalities is None):
            raise ValueError("UnimodalModel takes exactly one of `modality` or `modalities`")
        specs = [modality] if modality is not None else list(modalities or ())
        if len(specs) != 1:
            raise ValueError(
                f"UnimodalModel takes one modality, got {len(specs)}; use a fusion "
                "model (e.g. EarlyFusionModel) for several"
            )
        super().__init__(n_tasks, specs, mode, **kwargs)

    @property
    def modality(self) -> Modality:
        return self.modalities[0]

    def _build_fusion(self) -> nn.Module:
        return ProjectionFusion(tuple(self.modality_names), self.encoder_dim, self.fused_dim)
