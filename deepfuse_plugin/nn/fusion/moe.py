"""Gated mixture of experts: per-modality and shared experts, noisy top-k gating, balance losses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import EncodedModality, mlp, reset_all
from deepfuse_plugin.nn.fusion.masking import (
    masked_softmax,
    presence_weights,
    present_pooled,
    zero_missing,
)
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``Var(x) / mean(x)^2`` (population variance), 0 for one
    value.

    The importance and load-balancing losses of Shazeer et al. (2017) are ``CV(importance)^2`` and
    ``CV(load)^2`` over experts: 0 when every expert gets the same share.
    """
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var(correction=0) / (x.mean().pow(2) + eps)


class GatedMoEFusion(nn.Module):
    """Sparse mixture of experts with noisy top-k gating (Shazeer et al., 2017).

    Experts (each an MLP to ``fused_dim``):

    - ``n_experts_per_modality`` per-modality experts per modality, each reading only that
      modality's pooled embedding ``x_m``; an expert is *unavailable* for a sample whose modality
      is missing;
    - ``n_experts_shared`` shared experts reading the zero-filled concatenation of all modalities
      plus the presence bits (the early-fusion input ``u``); always available.

    Gating on ``u``: ``H = u W_g + eps * softplus(u W_noise)``, ``eps ~ N(0, 1)`` during training
    only (``noisy_gating``); unavailable experts are masked out; the ``top_k`` largest (among
    available experts; all of them if fewer) are kept and a softmax over the kept ones gives the
    gates ``g``, exactly ``min(top_k, n_available)`` non-zero per sample. ``fused = sum_e g_e E_e``.
    ``W_g`` and ``W_noise`` start at zero (as in the paper), so gating starts uniform and noisy. All
    experts are evaluated densely (cheap at these sizes; sparsity is in the gates, not the compute).

    Auxiliary losses (``aux_losses``): ``"importance"`` = ``CV(importance)^2`` and ``"load"`` =
    ``CV(load)^2``, where importance is the gate mass per expert and load the smooth estimate of the
    number of samples routing to it (``P(expert in top-k)`` under re-sampled noise, via the normal
    CDF, as in the paper; the hard count in evaluation). Because per-modality experts cannot be
    chosen for samples missing their modality, both are averaged over the samples where the expert
    is available (a per-availability usage rate), and the CV is taken over experts available
    somewhere in the batch: an expert is not pushed to compensate for samples it can never serve.
    Both terms are weighted ``balance_weight`` (``loss_weights``).

    Modality weights: a per-modality expert's gate counts for its modality; the shared experts'
    total gate is split evenly among the sample's present modalities. Rows sum to 1. The shared
    share is also reported separately in ``extras["shared_gate"]`` ``(B,)``, the per-expert gates in
    ``extras["gates"]`` ``(B, E)`` (expert order: :attr:`expert_names`), availability in
    ``extras["expert_available"]`` and the selection in ``extras["selected"]``.

    Parameters
    ----------
    names: tuple of str
    in_dim: int
    fused_dim: int
    n_experts_shared: int
    n_experts_per_modality: int
    top_k: int
        Experts kept per sample (``1 <= top_k <= number of experts``).
    expert_hidden: int
        Hidden width of every expert MLP.
    dropout: float
    noisy_gating: bool
        Add the learned gating noise during training.
    balance_weight: float
        Weight of each of the importance and load losses.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``.
    """

    #: ``(E,)`` buffer: the modality index each expert reads, -1 for a shared expert
    expert_modality: Tensor

    def __init__(
        self,
        names: tuple[str, ...],
        in_dim: int,
        fused_dim: int = 128,
        n_experts_shared: int = 2,
        n_experts_per_modality: int = 1,
        top_k: int = 2,
        expert_hidden: int = 128,
        dropout: float = 0.1,
        noisy_gating: bool = True,
        balance_weight: float = 0.01,
        noise_epsilon: float = 1e-2,
    ):
        super().__init__()
        self.names = check_names(names)
        if n_experts_shared < 0 or n_experts_per_modality < 0:
            raise ValueError("Expert counts must be >= 0")
        self.expert_names = tuple(
            f"{n}:{i}" for n in self.names for i in range(n_experts_per_modality)
        ) + tuple(f"shared:{i}" for i in range(n_experts_shared))
        n_experts = len(self.expert_names)
        if n_experts == 0:
            raise ValueError("GatedMoEFusion needs at least one expert")
        if not 1 <= top_k <= n_experts:
            raise ValueError(
                f"top_k must be in [1, {n_experts}] (the number of experts), got {top_k}"
            )
        self.top_k, self.noisy_gating, self.noise_epsilon = top_k, noisy_gating, noise_epsilon
        owner = [j for j in range(len(self.names)) for _ in range(n_experts_per_modality)]
        self.register_buffer(
            "expert_modality",
            torch.tensor(owner + [-1] * n_experts_shared, dtype=torch.long),
            persistent=False,
        )
        joint_dim = len(self.names) * (in_dim + 1)
        self.experts = nn.ModuleList(
            [mlp(in_dim, expert_hidden, fused_dim, 2, dropout) for _ in owner]
            + [
                mlp(joint_dim, expert_hidden, fused_dim, 2, dropout)
                for _ in range(n_experts_shared)
            ]
        )
        self.w_gate = nn.Linear(joint_dim, n_experts)
        self.w_noise = nn.Linear(joint_dim, n_experts)
        self.loss_weights = {"importance": balance_weight, "load": balance_weight}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self)
        for layer in (self.w_gate, self.w_noise):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def available(self, mask: Tensor) -> Tensor:
        """``(B, E)``: per-modality experts need their modality; shared experts are always there."""
        owner = self.expert_modality
        return torch.where(owner >= 0, mask[:, owner.clamp(min=0)], torch.ones_like(mask[:, :1]))

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        x = present_pooled(embeddings, self.names, mask)
        joint = torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)
        available = self.available(mask)
        clean = self.w_gate(joint)
        noisy_std = None
        if self.training and self.noisy_gating:
            noisy_std = nn.functional.softplus(self.w_noise(joint)) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * noisy_std
        else:
            logits = clean
        neg = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~available, neg)
        n_experts, k = logits.shape[1], self.top_k
        top_values, top_index = logits.topk(min(k + 1, n_experts), dim=1)
        selected = torch.zeros_like(available).scatter(1, top_index[:, :k], True) & available
        gates = masked_softmax(logits, selected)

        outputs = torch.stack(
            [
                expert(x[:, int(owner)] if owner >= 0 else joint)
                for expert, owner in zip(self.experts, self.expert_modality.tolist())
            ],
            dim=1,
        )
        fused = (gates.unsqueeze(-1) * zero_missing(outputs, selected)).sum(dim=1)

        aux = {}
        if torch.is_grad_enabled():
            load = self._load(clean, logits, noisy_std, top_values, available, selected)
            aux = self._balance_losses(gates, load, available)

        shared_gate = (gates * (self.expert_modality < 0).to(gates.dtype)).sum(dim=1)
        owner_one_hot = nn.functional.one_hot(
            self.expert_modality.clamp(min=0), len(self.names)
        ).to(gates.dtype) * (self.expert_modality >= 0).to(gates.dtype).unsqueeze(1)
        weights = gates @ owner_one_hot + shared_gate.unsqueeze(1) * presence_weights(mask).to(
            gates.dtype
        )
        extras = {
            "gates": gates,
            "selected": selected,
            "expert_available": available,
            "shared_gate": shared_gate,
        }
        return FusionOutput(fused, weights, aux, extras)

    @staticmethod
    def _balance_losses(gates: Tensor, load: Tensor, available: Tensor) -> dict[str, Tensor]:
        """``CV^2`` of per-expert importance and load, each normalised by how many samples could
        use the expert; experts available nowhere in the batch are left out."""
        n_available = available.to(gates.dtype).sum(dim=0)
        somewhere = n_available > 0
        importance = gates.sum(dim=0) / n_available.clamp(min=1.0)
        load = load / n_available.clamp(min=1.0)
        return {
            "importance": cv_squared(importance[somewhere]),
            "load": cv_squared(load[somewhere]),
        }

    def _load(
        self,
        clean: Tensor,
        logits: Tensor,
        noisy_std: Tensor | None,
        top_values: Tensor,
        available: Tensor,
        selected: Tensor,
    ) -> Tensor:
        """Per-expert load ``(E,)``: ``sum_b P(e in top-k)`` under noise, else the hard count."""
        k, n_experts = self.top_k, logits.shape[1]
        if noisy_std is None or k >= n_experts:
            return selected.to(clean.dtype).sum(dim=0)
        neg_half = torch.finfo(logits.dtype).min / 2
        threshold_in = top_values[:, k : k + 1]  # (k+1)-th largest: to beat when already in
        threshold_out = top_values[:, k - 1 : k]  # k-th largest: to beat when out
        valid_in, valid_out = threshold_in > neg_half, threshold_out > neg_half
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        prob_in = normal.cdf((clean - torch.where(valid_in, threshold_in, 0.0)) / noisy_std)
        prob_out = normal.cdf((clean - torch.where(valid_out, threshold_out, 0.0)) / noisy_std)
        # fewer than k+1 available experts: every available one is in the top k with certainty
        prob_in = torch.where(valid_in, prob_in, torch.ones_like(prob_in))
        prob = torch.where(logits > threshold_in, prob_in, prob_out)
        return zero_missing(prob, available).sum(dim=0)
