"""Loss terms of the Dynamic Fusion objective and the supervised task losses (pure torch).

Each term is a function so it can be tested on its own. Shapes: ``B`` samples, ``M`` modalities,
``D`` fused width, ``d`` encoder width.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(
    reconstructed: dict[str, Tensor],
    targets: dict[str, Tensor],
    dropped: Tensor,
    names: tuple[str, ...],
) -> Tensor:
    """``L_rec``: squared error of ``D_m(f)`` against ``x_m``, for the masked (dropped) modalities
    only.

    The squared L2 norm is averaged over feature dimensions (so modalities of different widths weigh
    the same), summed over the modalities dropped for a sample and averaged over the batch.

    Parameters
    ----------
    reconstructed, targets: dict name -> ``(B, d)``
    dropped: ``(B, M)`` bool, True where modality m was masked for sample b.
    """
    total = dropped.new_zeros((), dtype=torch.float32)
    for j, name in enumerate(names):
        err = (reconstructed[name] - targets[name]).pow(2).mean(dim=-1)
        total = total + (err * dropped[:, j].to(err.dtype)).sum()
    return total / max(1, dropped.shape[0])


def alignment_loss(fused: Tensor, projections: Tensor, visible: Tensor) -> Tensor:
    """``L_align = mean_m softplus(-cos(f, z_m))`` over the visible modalities.

    ``fused (B, D)``, ``projections (B, M, D)``, ``visible (B, M)``.
    """
    cos = F.cosine_similarity(fused.unsqueeze(1), projections, dim=-1)
    weights = visible.to(cos.dtype)
    return (F.softplus(-cos) * weights).sum() / weights.sum().clamp(min=1.0)


def diversity_loss(gates: Tensor, visible: Tensor) -> Tensor:
    """``L_div = mean_{i<j} cos(g_i, g_j)^2`` over modality pairs visible in the same sample.

    ``gates (B, M, d)``: all gates live in the shared encoder width ``d`` so they can be compared.
    """
    n_modalities = gates.shape[1]
    if n_modalities < 2:
        return gates.new_zeros(())
    total, count = gates.new_zeros(()), gates.new_zeros(())
    for i, j in itertools.combinations(range(n_modalities), 2):
        both = (visible[:, i] & visible[:, j]).to(gates.dtype)
        cos = F.cosine_similarity(gates[:, i], gates[:, j], dim=-1)
        total = total + (cos.pow(2) * both).sum()
        count = count + both.sum()
    return total / count.clamp(min=1.0)


def negative_entropy(alpha: Tensor, visible: Tensor) -> Tensor:
    """``L_ent`` as used in the objective: ``E[sum_m alpha_m log alpha_m]`` (the negative entropy).

    The paper writes ``L_ent = -E[sum alpha log alpha]``, i.e. the entropy itself; adding that to a
    loss that is minimised would *reward* collapse onto one modality. Its stated purpose is to
    prevent collapse, so the term minimised here is the negative entropy: minimising it maximises
    entropy. Samples with a single visible modality contribute 0 (their entropy is fixed).
    """
    safe = alpha.clamp(min=1e-12)
    plogp = torch.where(visible, alpha * safe.log(), torch.zeros_like(alpha))
    return plogp.sum(dim=-1).mean()


def sparsity_loss(gates: Tensor, visible: Tensor) -> Tensor:
    """``L_sparse = mean_m ||g_m||_1`` with the L1 norm averaged over features (scale-free)."""
    per_modality = gates.abs().mean(dim=-1)
    weights = visible.to(per_modality.dtype)
    return (per_modality * weights).sum() / weights.sum().clamp(min=1.0)


def masked_regression_loss(predictions: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Weighted squared error, DeepChem convention (mean over all entries). NaN labels weigh 0."""
    labels, weights = _mask_missing(labels.reshape(predictions.shape), weights, predictions.shape)
    return ((predictions - labels).pow(2) * weights).mean()


def masked_classification_loss(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Weighted softmax cross-entropy; ``logits (B, T, C)``, integer ``labels (B, T)``."""
    shape = logits.shape[:2]
    labels, weights = _mask_missing(labels.reshape(shape), weights, shape)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.long().reshape(-1), reduction="none"
    ).reshape(shape)
    return (ce * weights).mean()


def _mask_missing(labels: Tensor, weights: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    weights = weights.reshape(shape[0], -1).expand(shape) if weights.numel() else torch.ones(shape)
    finite = torch.isfinite(labels)
    return torch.where(finite, labels, torch.zeros_like(labels)), weights * finite.to(weights.dtype)


# -- evidential losses ----------------------------------------------------------------------------
def nig_nll(y: Tensor, gamma: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Elementwise negative log-likelihood of ``y`` under the NIG's Student-t marginal
    (Amini et al., 2020, eq. 8), with ``Omega = 2 beta (1 + nu)``::

        0.5 log(pi / nu) - alpha log(Omega) + (alpha + 0.5) log(nu (y - gamma)^2 + Omega)
        + lgamma(alpha) - lgamma(alpha + 0.5)
    """
    omega = 2.0 * beta * (1.0 + nu)
    return (
        0.5 * torch.log(torch.pi / nu)
        - alpha * torch.log(omega)
        + (alpha + 0.5) * torch.log(nu * (y - gamma).pow(2) + omega)
        + torch.lgamma(alpha)
        - torch.lgamma(alpha + 0.5)
    )


def nig_regularizer(y: Tensor, gamma: Tensor, nu: Tensor, alpha: Tensor) -> Tensor:
    """Elementwise evidence regulariser ``|y - gamma| (2 nu + alpha)`` (Amini et al., 2020, eq. 9):
    non-negative, it penalises evidence in proportion to the error, so wrong predictions lose their
    confidence."""
    return (y - gamma).abs() * (2.0 * nu + alpha)


def masked_evidential_regression_loss(
    params: Tensor, labels: Tensor, weights: Tensor, coefficient: float = 0.1
) -> Tensor:
    """``NLL + coefficient * regulariser`` of NIG ``params (B, T, 4)``, weighted, mean over all
    entries (DeepChem convention, as :func:`masked_regression_loss`). NaN labels weigh 0."""
    shape = params.shape[:-1]
    labels, weights = _mask_missing(labels.reshape(shape), weights, shape)
    gamma, nu, alpha, beta = params.unbind(-1)
    loss = nig_nll(labels, gamma, nu, alpha, beta) + coefficient * nig_regularizer(
        labels, gamma, nu, alpha
    )
    return (loss * weights).mean()


def dirichlet_expected_cross_entropy(alpha: Tensor, one_hot: Tensor) -> Tensor:
    """``E_{p ~ Dir(alpha)}[-sum_k y_k log p_k] = sum_k y_k (digamma(S) - digamma(alpha_k))``
    (Sensoy et al., 2018, eq. 4); ``alpha, one_hot (..., C)`` -> ``(...)``."""
    strength = alpha.sum(dim=-1, keepdim=True)
    return (one_hot * (torch.digamma(strength) - torch.digamma(alpha))).sum(dim=-1)


def dirichlet_kl_uniform(alpha: Tensor) -> Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))``; ``alpha (..., C)`` -> ``(...)``; >= 0, and 0 iff
    alpha = 1."""
    n_classes = alpha.shape[-1]
    strength = alpha.sum(dim=-1)
    return (
        torch.lgamma(strength)
        - math.lgamma(n_classes)
        - torch.lgamma(alpha).sum(dim=-1)
        + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(strength).unsqueeze(-1))).sum(-1)
    )


def masked_dirichlet_loss(
    alpha: Tensor, labels: Tensor, weights: Tensor, kl_coefficient: float = 1.0
) -> Tensor:
    """Evidential classification loss of ``alpha (B, T, C)`` and integer ``labels (B, T)``:
    expected cross-entropy ``+ kl_coefficient * KL(Dir(alpha~) || Dir(1))`` where
    ``alpha~ = y + (1 - y) alpha`` keeps only the misleading evidence (Sensoy et al., 2018). The
    caller anneals ``kl_coefficient`` from 0. Weighted mean over all entries; NaN labels weigh 0."""
    shape = alpha.shape[:2]
    labels, weights = _mask_missing(labels.reshape(shape), weights, shape)
    one_hot = F.one_hot(labels.long(), alpha.shape[-1]).to(alpha.dtype)
    loss = dirichlet_expected_cross_entropy(alpha, one_hot)
    if kl_coefficient:
        loss = loss + kl_coefficient * dirichlet_kl_uniform(one_hot + (1.0 - one_hot) * alpha)
    return (loss * weights).mean()
