"""Early (feature-level) fusion: zero-filled concatenation plus presence bits, then an MLP."""

from __future__ import annotations

from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import EncodedModality, mlp, reset_all
from deepfuse_plugin.nn.fusion.masking import masked_concat
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names


class EarlyFusion(nn.Module):
    """Early (feature-level) fusion: the naive concatenation baseline.

    The pooled encoder outputs of all modalities are concatenated, followed by the ``M`` presence
    bits, and an MLP maps the ``M * d + M`` features to the fused embedding. A missing modality is
    **zero-filled** and its presence bit is 0, so the MLP can tell "absent" from "all-zero features"
    (e.g. an empty fingerprint) and learn a separate offset for it. The zeros are written with
    ``torch.where``, so no gradient reaches a missing modality's encoder.

    Early fusion has no modality weights (``weights`` is None; the network then reports the presence
    mask).

    Parameters
    ----------
    names: tuple of str
        Modality names, in mask-column order.
    in_dim: int
        Encoder output width ``d``.
    fused_dim: int
        Output width ``D``.
    hidden_dim: int
        Hidden width of the MLP.
    n_layers: int
        Linear layers in the MLP.
    dropout: float
        Dropout between the MLP's layers.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        in_dim: int,
        fused_dim: int = 128,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.names = check_names(names)
        self.net = mlp(len(self.names) * (in_dim + 1), hidden_dim, fused_dim, n_layers, dropout)

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        return FusionOutput(self.net(masked_concat(embeddings, self.names, mask)))
