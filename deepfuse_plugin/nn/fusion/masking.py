"""Masking helpers shared by the fusion layers: masked softmax and mean, zero-filling of missing
modalities, presence weights, and the random modality drop with its curriculum.

``mask (B, M)`` is the presence mask (True = the modality exists for that sample). Missing entries
are written as exact zeros with ``torch.where``, so no NaN or inf there can leak into a result and
no gradient reaches them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepfuse_plugin.nn.encoders import EncodedModality


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where masked-out entries get exactly 0; an all-masked row is all 0."""
    # A finite fill (not -inf) keeps an all-masked row finite in forward *and* backward; the
    # multiplication by the mask then makes masked entries exactly 0.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.to(scores.dtype)


def sample_modality_drop(
    mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Random ``(B, M)`` drop mask: each present modality dropped with probability ``rate``.

    Never drops every present modality of a sample: where that happens, one present modality chosen
    uniformly at random is kept.
    """
    if rate <= 0.0:
        return torch.zeros_like(mask)
    u = torch.rand(mask.shape, device=mask.device, generator=generator)
    dropped = (u < rate) & mask
    emptied = mask.any(dim=1) & ~(mask & ~dropped).any(dim=1)
    if emptied.any():
        # keep the present modality with the largest uniform draw (a uniform choice among present)
        keep = torch.where(mask, u, torch.full_like(u, -1.0)).argmax(dim=1)
        restore = torch.zeros_like(mask)
        restore[torch.arange(mask.shape[0], device=mask.device), keep] = True
        dropped &= ~(restore & emptied.unsqueeze(1))
    return dropped


def curriculum_rate(progress: float, start: float, end: float) -> float:
    """Linear masking curriculum: ``start`` at progress 0, ``end`` at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


def zero_missing(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` where ``keep`` (broadcast over trailing dims), exact zeros elsewhere.

    ``torch.where`` rather than a multiplication: no gradient reaches the dropped entries and a NaN
    or inf there cannot leak into the result.
    """
    while keep.dim() < x.dim():
        keep = keep.unsqueeze(-1)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def present_pooled(
    embeddings: dict[str, EncodedModality], names: tuple[str, ...], mask: Tensor
) -> Tensor:
    """Pooled encoder outputs ``(B, M, d)``, missing modalities zero-filled."""
    return zero_missing(torch.stack([embeddings[n].pooled for n in names], dim=1), mask)


def masked_concat(
    embeddings: dict[str, EncodedModality], names: tuple[str, ...], mask: Tensor
) -> Tensor:
    """``(B, M * d + M)``: zero-filled pooled outputs, concatenated, then the presence bits."""
    x = present_pooled(embeddings, names, mask)
    return torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)


def masked_mean(x: Tensor, keep: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` where ``keep`` (same leading shape); 0 where nothing is kept."""
    weight = keep.to(x.dtype)
    while weight.dim() < x.dim():
        weight = weight.unsqueeze(-1)
    return zero_missing(x, keep).sum(dim) / weight.sum(dim).clamp(min=1.0)


def presence_weights(mask: Tensor) -> Tensor:
    """Uniform weights over the present modalities ``(B, M)`` (rows sum to 1, or 0 if none)."""
    m = mask.to(torch.get_default_dtype())
    return m / m.sum(dim=1, keepdim=True).clamp(min=1.0)
