"""Multimodal self-supervised pretraining of deepfuse's encoders (pure torch).

One encoder per input view (graph, SMILES, ECFP, ...) learns from unlabelled molecules with four
objectives, each from a paper this project implements:

- **cross-view contrast** (:func:`cross_view_info_nce`): the views of one molecule attract, those of
  other molecules in the batch repel (symmetric InfoNCE over every pair of present views);
- **relational similarity** (:func:`relational_loss`, MMFRL): each view's softened similarity
  distribution over the batch is pulled towards that of a teacher view (e.g. RDKit descriptors or
  MiniMol embeddings), so relative similarities transfer, not absolute coordinates;
- **auxiliary targets** (:func:`masked_mse`): each view predicts pretraining-only views
  (standardized descriptors, MiniMol vectors) that need not exist at fine-tuning time;
- **masked cross-modal reconstruction** (Dynamic Fusion): views are hidden with a probability that
  grows over training (the masking curriculum) and the visible views predict the hidden views'
  projections.

Shapes: ``B`` molecules, ``d`` encoder width, ``p`` projection width, ``V`` input views.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.nn.encoders import build_encoder, mlp

__all__ = [
    "PretrainingNetwork",
    "PretrainingOutput",
    "cross_view_info_nce",
    "relational_loss",
    "masked_mse",
    "masked_view_prediction",
    "DEFAULT_LOSS_WEIGHTS",
]

#: Weights of the four terms (chosen so each starts near 1 on MOSES; see the pretraining docs).
DEFAULT_LOSS_WEIGHTS = {"contrastive": 1.0, "relational": 1.0, "targets": 1.0, "masked": 0.5}


def cross_view_info_nce(projections: Tensor, present: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE over every pair of views, on molecules where both are present.

    Parameters
    ----------
    projections: Tensor ``(B, V, p)``
    present: Tensor ``(B, V)`` bool
    temperature: float

    Returns
    -------
    Tensor ``()``: the mean over view pairs with at least two shared molecules (0 if none).
    """
    z = F.normalize(projections.float(), dim=-1)
    losses = []
    for a, b in combinations(range(z.shape[1]), 2):
        rows = present[:, a] & present[:, b]
        if rows.sum() < 2:
            continue
        logits = z[rows, a] @ z[rows, b].T / temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    return torch.stack(losses).mean() if losses else projections.new_zeros(())


def relational_loss(
    projections: Tensor,
    present: Tensor,
    teacher: Tensor,
    teacher_present: Tensor,
    temperature: float = 0.1,
    teacher_temperature: float = 0.1,
) -> Tensor:
    """MMFRL's relational objective: KL(teacher similarity distribution || view's), per row.

    Parameters
    ----------
    projections: Tensor ``(B, V, p)``
    present: Tensor ``(B, V)`` bool
    teacher: Tensor ``(B, t)``: the teacher view's vectors (cosine similarity is used).
    teacher_present: Tensor ``(B,)`` bool
    """
    target_z = F.normalize(teacher.float(), dim=-1)
    z = F.normalize(projections.float(), dim=-1)
    losses = []
    for v in range(z.shape[1]):
        rows = present[:, v] & teacher_present
        if rows.sum() < 3:
            continue
        n = int(rows.sum())
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
        student = (z[rows, v] @ z[rows, v].T / temperature)[off_diagonal].view(n, n - 1)
        target = (target_z[rows] @ target_z[rows].T / teacher_temperature)[off_diagonal].view(
            n, n - 1
        )
        losses.append(
            F.kl_div(
                F.log_softmax(student, -1),
                F.log_softmax(target, -1),
                log_target=True,
                reduction="batchmean",
            )
        )
    return torch.stack(losses).mean() if losses else projections.new_zeros(())


def masked_mse(prediction: Tensor, target: Tensor, rows: Tensor) -> Tensor:
    """Mean squared error over the rows where ``rows`` (``(B,)`` bool) holds; 0 if none."""
    if not rows.any():
        return prediction.new_zeros(())
    return F.mse_loss(prediction[rows].float(), target[rows].float())


def masked_view_prediction(predicted: Tensor, projections: Tensor, hidden: Tensor) -> Tensor:
    """Dynamic Fusion's cross-modal reconstruction: ``1 - cos`` between the prediction of each
    hidden view (made from the visible views) and that view's own projection (no gradient into
    the target).

    Parameters
    ----------
    predicted: Tensor ``(B, V, p)``: every view as predicted from the visible views' mean.
    projections: Tensor ``(B, V, p)``
    hidden: Tensor ``(B, V)`` bool: present views hidden from the context.
    """
    if not hidden.any():
        return predicted.new_zeros(())
    cosine = F.cosine_similarity(
        predicted[hidden].float(), projections[hidden].detach().float(), dim=-1
    )
    return (1.0 - cosine).mean()


class PretrainingOutput(NamedTuple):
    """The total loss and its named, unweighted terms (for logging and loss curves)."""

    loss: Tensor
    terms: dict[str, Tensor]


class PretrainingNetwork(nn.Module):
    """Encoders of the input views with the heads the pretraining objectives need.

    Parameters
    ----------
    inputs: list of Modality
        The views encoded (and later fine-tuned): their encoders are what a checkpoint ships.
    targets: list of Modality
        ``vector``/``embedding`` views used only as targets (predicted from every input view) and,
        the first of them, as the relational teacher. May be empty.
    encoder_dim: int
        Width of every encoder output (must equal the fusion model's ``encoder_dim`` to reuse it).
    encoder_options: dict kind -> dict
        Extra encoder arguments per modality kind (as in :class:`MultiModalNetwork`).
    projection_dim: int
    temperature: float
        InfoNCE and relational temperature.
    loss_weights: dict, optional
        Overrides of :data:`DEFAULT_LOSS_WEIGHTS`; a weight of 0 switches a term off.

    Examples
    --------
    >>> from deepfuse_plugin.modalities import Modality
    >>> net = PretrainingNetwork([Modality("ecfp", "vector", dim=64),
    ...                           Modality("fp2", "vector", dim=32)], [], encoder_dim=16)
    >>> sorted(net.encoders)
    ['ecfp', 'fp2']
    """

    def __init__(
        self,
        inputs: list[Modality],
        targets: list[Modality],
        encoder_dim: int = 128,
        encoder_options: dict[str, dict[str, Any]] | None = None,
        projection_dim: int = 128,
        temperature: float = 0.1,
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if len(inputs) < 1:
            raise ValueError("Pretraining needs at least one input view")
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(
                f"Unknown loss terms {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}"
            )
        self.inputs, self.targets = list(inputs), list(targets)
        self.input_names = [m.name for m in self.inputs]
        self.target_names = [m.name for m in self.targets]
        options = encoder_options or {}
        self.encoders = nn.ModuleDict(
            {m.name: build_encoder(m, encoder_dim, options.get(m.kind, {})) for m in self.inputs}
        )
        self.projectors = nn.ModuleDict(
            {n: mlp(encoder_dim, encoder_dim, projection_dim, 2) for n in self.input_names}
        )
        self.target_heads = nn.ModuleDict(
            {
                f"{n}->{t.name}": mlp(encoder_dim, 2 * encoder_dim, t.require("dim"), 2)
                for n in self.input_names
                for t in self.targets
            }
        )
        self.view_predictor = mlp(projection_dim, projection_dim, projection_dim * len(inputs), 2)
        self.temperature = temperature
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        self.mask_rate = 0.0  # set by the training loop (masking curriculum)
        # targets are standardized with corpus statistics (set_target_scaling) so that a
        # 217-wide descriptor vector and a 512-wide embedding weigh alike
        for t in self.targets:
            self.register_buffer(f"_mean_{t.name}", torch.zeros(t.require("dim")))
            self.register_buffer(f"_std_{t.name}", torch.ones(t.require("dim")))

    def set_target_scaling(self, name: str, mean: Tensor, std: Tensor) -> None:
        """Standardize target ``name`` as ``(x - mean) / std`` (``std`` of 0 counts as 1)."""
        getattr(self, f"_mean_{name}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        std = torch.as_tensor(std, dtype=torch.float32)
        getattr(self, f"_std_{name}").copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def _target(self, batch: Any, name: str) -> Tensor:
        return (batch.inputs[name].float() - getattr(self, f"_mean_{name}")) / getattr(
            self, f"_std_{name}"
        )

    def forward(self, batch: Any) -> PretrainingOutput:
        """``batch``: a :class:`~deepfuse_plugin.data.collate.MultiModalBatch` holding the input
        and target views (in ``batch.names`` order) and their presence ``mask``."""
        column = {n: i for i, n in enumerate(batch.names)}
        present = batch.mask[:, [column[n] for n in self.input_names]]
        pooled = {n: self.encoders[n](batch.inputs[n]).pooled for n in self.input_names}
        projections = torch.stack([self.projectors[n](pooled[n]) for n in self.input_names], 1)
        terms: dict[str, Tensor] = {}
        weights = self.loss_weights
        if weights["contrastive"] and len(self.input_names) > 1:
            terms["contrastive"] = cross_view_info_nce(projections, present, self.temperature)
        if self.targets and weights["targets"]:
            terms["targets"] = self._target_loss(batch, column, pooled, present)
        if self.targets and weights["relational"]:
            teacher = self.target_names[0]
            terms["relational"] = relational_loss(
                projections,
                present,
                self._target(batch, teacher),
                batch.mask[:, column[teacher]],
                self.temperature,
                self.temperature,
            )
        if weights["masked"] and len(self.input_names) > 1 and self.mask_rate > 0:
            terms["masked"] = self._masked_loss(projections, present)
        loss = sum((weights[k] * v for k, v in terms.items()), projections.new_zeros(()))
        return PretrainingOutput(loss, terms)

    def _target_loss(
        self, batch: Any, column: dict[str, int], pooled: dict[str, Tensor], present: Tensor
    ) -> Tensor:
        losses = []
        for t in self.target_names:
            target_present = batch.mask[:, column[t]]
            for v, n in enumerate(self.input_names):
                prediction = self.target_heads[f"{n}->{t}"](pooled[n])
                losses.append(
                    masked_mse(prediction, self._target(batch, t), present[:, v] & target_present)
                )
        return torch.stack(losses).mean()

    def _masked_loss(self, projections: Tensor, present: Tensor) -> Tensor:
        hidden = present & (torch.rand(present.shape, device=present.device) < self.mask_rate)
        visible = present & ~hidden
        keep = visible.any(1)  # a molecule needs one visible view to predict the others
        hidden = hidden & keep[:, None]
        weights = visible.float() / visible.float().sum(1, keepdim=True).clamp_min(1.0)
        context = (projections * weights[..., None]).sum(1)
        predicted = self.view_predictor(context).view_as(projections)
        return masked_view_prediction(predicted, projections, hidden)

    def encoder_state(self) -> dict[str, Tensor]:
        """The encoders' weights, keyed ``<modality>.<parameter>`` (what a checkpoint ships)."""
        return {
            f"{n}.{k}": v.detach().cpu().contiguous()
            for n, enc in self.encoders.items()
            for k, v in enc.state_dict().items()
        }
