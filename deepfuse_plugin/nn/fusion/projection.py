"""Projection fusion: per-modality projections averaged over the present modalities (the unimodal
baseline with one modality)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import EncodedModality, reset_all
from deepfuse_plugin.nn.fusion.masking import masked_mean, presence_weights
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names


class ProjectionFusion(nn.Module):
    """The simplest fusion: each modality's pooled encoder output projected to ``fused_dim``,
    averaged over the present modalities.

    With one modality this is "the encoder output, projected": the unimodal baseline
    (:class:`~deepfuse_plugin.models.unimodal.UnimodalModel`). A sample with no modality at all gets
    a zero embedding.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``
    (uniform over present modalities).
    """

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128):
        super().__init__()
        self.names = check_names(names)
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        z = torch.stack([self.projections[n](embeddings[n].pooled) for n in self.names], dim=1)
        return FusionOutput(masked_mean(z, mask, dim=1), presence_weights(mask).to(z.dtype))
