"""Late (decision-level) fusion: one predictor per modality, predictions combined by weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import EncodedModality, mlp, reset_all
from deepfuse_plugin.nn.fusion.masking import masked_softmax, presence_weights, zero_missing
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names
from deepfuse_plugin.nn.heads import combine_dirichlet, combine_nig, make_head


class LateFusion(nn.Module):
    """Late (decision-level) fusion: one complete predictor per modality, predictions combined.

    For each modality m: ``z_m = W_m x_m`` ``(B, D)`` and its own
    :class:`~deepfuse_plugin.nn.heads.TaskHead` ``h_m(z_m)`` (so predictor m is exactly the unimodal
    baseline's architecture). Per-sample weights ``w (B, M)`` over the *present* modalities (missing
    ones get exactly 0, the rest renormalised to sum to 1) combine the predictions:

    - ``combine="mean"``: uniform over the present modalities;
    - ``combine="learned"``: one learned logit per modality, masked softmax;
    - ``combine="stacking"``: a stacking meta-learner (small MLP) reads the present predictors'
      outputs (regression values / class probabilities, gradient stopped, as fixed features like
      classic stacking) and the presence bits and outputs per-sample logits; masked softmax. The
      meta-learner chooses *weights*, not a free prediction, so a missing modality is excluded
      exactly and the output stays within the range of the unimodal predictions.

    Regression: ``y = sum_m w_m y_m``. Classification: the **probabilities** are combined (linear
    opinion pool, ``p = sum_m w_m p_m``), as deep ensembles do: the result is a proper mixture whose
    weights are the modality weights, one over-confident unimodal predictor cannot dominate through
    large logits, and the pool of calibrated members stays calibrated far better than a logit
    average (a product of experts, which sharpens). The loss input is ``log p`` (computed with
    logsumexp), which ``cross_entropy`` treats as logits, so the task loss is the mixture's NLL.

    The layer predicts itself: ``FusionOutput.task_outputs`` holds ``(prediction, loss_input)`` and
    the network's head is not used. ``fused = sum_m w_m z_m`` is the embedding reported by
    ``predict(output_types=["embedding"])``. ``extras`` hold each predictor's outputs
    (``"unimodal_prediction"``, ``"unimodal_task_output"``, ``(B, M, T)`` or ``(B, M, T, C)``) and
    the mask the layer saw (``"mask"``), from which the model wrapper adds one supervised loss per
    predictor so that every unimodal predictor is good on its own.

    Parameters
    ----------
    names: tuple of str
    in_dim: int
        Encoder output width ``d``.
    n_tasks, mode, n_classes, head_hidden, dropout:
        Of each per-modality :class:`~deepfuse_plugin.nn.heads.TaskHead`.
    fused_dim: int
        Width ``D`` of each predictor's projection (and of ``fused``).
    combine: str
        ``"mean"``, ``"learned"`` or ``"stacking"``.
    stacking_hidden: int
        Hidden width of the stacking meta-learner.
    uncertainty: str or None
        ``"evidential"``: every predictor has an evidential head
        (:func:`~deepfuse_plugin.nn.heads.make_head`) and the members' distributions are combined
        with the same weights: NIGs by moment matching
        (:func:`~deepfuse_plugin.nn.heads.combine_nig`, the members' disagreement becomes
        epistemic variance), Dirichlets by weighted evidence
        (:func:`~deepfuse_plugin.nn.heads.combine_dirichlet`). The loss input is then the combined
        distribution's parameters, ``(B, T, 4)`` or ``alpha (B, T, C)``.

    Shapes
    ------
    ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``, ``task_outputs``: regression
    ``(B, T)`` twice; classification probabilities ``(B, T, C)`` and log-probabilities
    ``(B, T, C)``.
    """

    COMBINE = ("mean", "learned", "stacking")

    def __init__(
        self,
        names: tuple[str, ...],
        in_dim: int,
        n_tasks: int,
        mode: str = "regression",
        n_classes: int = 2,
        fused_dim: int = 128,
        head_hidden: int = 128,
        dropout: float = 0.1,
        combine: str = "mean",
        stacking_hidden: int = 32,
        uncertainty: str | None = None,
    ):
        super().__init__()
        if combine not in self.COMBINE:
            raise ValueError(f"combine must be one of {self.COMBINE}, got {combine!r}")
        self.names, self.combine, self.mode = check_names(names), combine, mode
        self.n_tasks, self.n_classes, self.uncertainty = n_tasks, n_classes, uncertainty
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})
        self.heads = nn.ModuleDict(
            {
                n: make_head(fused_dim, n_tasks, mode, n_classes, head_hidden, dropout, uncertainty)
                for n in self.names
            }
        )
        n_modalities = len(self.names)
        self.modality_logits = (
            nn.Parameter(torch.zeros(n_modalities)) if combine == "learned" else None
        )
        per_prediction = n_tasks * (n_classes if mode == "classification" else 1)
        self.stacker = (
            mlp(n_modalities * (per_prediction + 1), stacking_hidden, n_modalities, 2)
            if combine == "stacking"
            else None
        )

    def reset_parameters(self) -> None:
        reset_all(self)
        if self.modality_logits is not None:
            nn.init.zeros_(self.modality_logits)

    def combination_weights(self, predictions: Tensor, mask: Tensor) -> Tensor:
        """``(B, M)`` weights, 0 for missing modalities, rows summing to 1 (0 if none present)."""
        if self.modality_logits is not None:  # combine="learned"
            return masked_softmax(self.modality_logits.expand(mask.shape[0], -1), mask)
        if self.stacker is not None:  # combine="stacking"
            features = zero_missing(predictions.detach().flatten(2), mask).flatten(1)
            stacked = torch.cat([features, mask.to(features.dtype)], 1)
            return masked_softmax(self.stacker(stacked), mask)
        return presence_weights(mask).to(predictions.dtype)  # combine="mean"

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        z = zero_missing(
            torch.stack([self.projections[n](embeddings[n].pooled) for n in self.names], dim=1),
            mask,
        )
        outs = [self.heads[n](z[:, j]) for j, n in enumerate(self.names)]
        predictions = torch.stack([o[0] for o in outs], dim=1)  # (B, M, T) or (B, M, T, C)
        task_outputs = torch.stack([o[1] for o in outs], dim=1)
        w = self.combination_weights(predictions, mask)
        if self.uncertainty is not None:
            if self.mode == "regression":
                params = combine_nig(task_outputs, w)
                result = (params[..., 0], params)
            else:
                alpha = combine_dirichlet(task_outputs, w)
                result = (alpha / alpha.sum(dim=-1, keepdim=True), alpha)
        elif self.mode == "regression":
            combined = (zero_missing(predictions, mask) * w.view(*w.shape, 1)).sum(dim=1)
            result = (combined, combined)
        else:
            # log p = logsumexp_m(log w_m + log p_m); missing modalities get a finite -huge
            # log-weight, hence exactly zero weight (and gradient) in the logsumexp.
            neg = torch.finfo(w.dtype).min
            log_w = torch.where(
                mask, w.clamp(min=torch.finfo(w.dtype).tiny).log(), torch.full_like(w, neg)
            )
            log_p = torch.logsumexp(
                log_w.view(*w.shape, 1, 1) + torch.log_softmax(task_outputs, dim=-1), dim=1
            )
            result = (log_p.exp(), log_p)
        fused = (z * w.unsqueeze(-1)).sum(dim=1)
        extras = {
            "unimodal_prediction": predictions,
            "unimodal_task_output": task_outputs,
            "mask": mask,
        }
        return FusionOutput(fused, w, {}, extras, task_outputs=result)
