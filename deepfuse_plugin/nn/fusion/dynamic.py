"""Dynamic gated fusion: intra-modal gates, inter-modal attention, reconstruction decoders."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn import losses
from deepfuse_plugin.nn.encoders import EncodedModality, mlp, reset_all
from deepfuse_plugin.nn.fusion.masking import masked_softmax, sample_modality_drop
from deepfuse_plugin.nn.fusion.output import FusionOutput


class DynamicFusion(nn.Module):
    """Dynamic gated fusion (Priyadarsini et al., "Learning Resilient Molecular Representations with
    Dynamic Multi-Modal Fusion").

    For every modality m with encoder output ``x_m (B, d)``:

    1. intra-modal gate ``g_m = sigmoid(MLP_m(x_m))`` in ``(0, 1)^d``, gated ``x~_m = g_m * x_m``;
    2. projection into the shared space ``z_m = W_m x~_m`` ``(B, D)``;
    3. inter-modal attention ``alpha = softmax_m(v^T tanh(U z_m))`` over the *visible* modalities
       (missing and masked ones get exactly 0);
    4. fused embedding ``f = sum_m alpha_m z_m``;
    5. decoders ``D_m(f)`` reconstruct every modality's ``x_m``.

    During training each present modality is dropped with probability :attr:`mask_rate` (progressive
    modality masking; the model wrapper raises it over epochs), never all of a sample's modalities.

    Reconstruction target. The paper fuses frozen foundation-model embeddings, so ``x_m`` is fixed.
    Here encoders may be trained end to end; the target is the encoder output with the gradient
    stopped (``x_m = stopgrad(encoder_m(input_m))``). The decoder is then a predictor against a
    stop-gradient target, the arrangement SimSiam showed avoids representation collapse, and the
    encoder is not pulled towards embeddings that are merely easy to reconstruct.

    Parameters
    ----------
    names: tuple of str
        Modality names, in mask-column order.
    in_dim: int
        Encoder output width ``d`` (shared by all modalities so gates can be compared in L_div).
    fused_dim: int
        Width ``D`` of the shared latent space.
    gate_hidden, attention_hidden, decoder_hidden: int
        Hidden widths of the gate MLPs, the attention scorer and the decoders.
    mask_rate: float
        Current training-time drop probability.
    loss_weights: dict
        Weights of ``rec`` (1.0 in the paper's objective), ``align``, ``div``, ``ent``, ``sparse``.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``.
    """

    DEFAULT_LOSS_WEIGHTS = {"rec": 1.0, "align": 0.1, "div": 0.01, "ent": 0.01, "sparse": 0.001}

    def __init__(
        self,
        names: tuple[str, ...],
        in_dim: int,
        fused_dim: int = 128,
        gate_hidden: int = 64,
        attention_hidden: int = 64,
        decoder_hidden: int = 128,
        mask_rate: float = 0.0,
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        self.names = tuple(names)
        self.gates = nn.ModuleDict({n: mlp(in_dim, gate_hidden, in_dim, 2) for n in self.names})
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})
        self.scorer = nn.Sequential(
            nn.Linear(fused_dim, attention_hidden),
            nn.Tanh(),
            nn.Linear(attention_hidden, 1, bias=False),
        )
        self.decoders = nn.ModuleDict(
            {n: mlp(fused_dim, decoder_hidden, in_dim, 2) for n in self.names}
        )
        self.mask_rate = mask_rate
        self.loss_weights = {**self.DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        # zero-fill missing rows (torch.where): alpha = 0 alone would let NaN/inf leak (0 * nan)
        x = {
            n: torch.where(
                mask[:, j : j + 1], embeddings[n].pooled, torch.zeros_like(embeddings[n].pooled)
            )
            for j, n in enumerate(self.names)
        }
        dropped = (
            sample_modality_drop(mask, self.mask_rate) if self.training else torch.zeros_like(mask)
        )
        visible = mask & ~dropped
        gates = torch.stack([torch.sigmoid(self.gates[n](x[n])) for n in self.names], dim=1)
        z = torch.stack(
            [self.projections[n](gates[:, j] * x[n]) for j, n in enumerate(self.names)], dim=1
        )
        alpha = masked_softmax(self.scorer(z).squeeze(-1), visible)
        fused = (alpha.unsqueeze(-1) * z).sum(dim=1)
        reconstructed = {n: self.decoders[n](fused) for n in self.names}
        aux = {}
        if torch.is_grad_enabled():
            targets = {n: x[n].detach() for n in self.names}
            aux = {
                "rec": losses.reconstruction_loss(reconstructed, targets, dropped, self.names),
                "align": losses.alignment_loss(fused, z, visible),
                "div": losses.diversity_loss(gates, visible),
                "ent": losses.negative_entropy(alpha, visible),
                "sparse": losses.sparsity_loss(gates, visible),
            }
        extras = {
            "gates": gates,
            "dropped": dropped,
            "projections": z,
            "encoded": torch.stack([x[n] for n in self.names], dim=1),
            **{f"reconstructed:{n}": r for n, r in reconstructed.items()},
        }
        return FusionOutput(fused, alpha, aux, extras)
