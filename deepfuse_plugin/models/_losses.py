"""The training losses of :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`.

The task loss (masked regression/classification, or an evidential loss), the supervised loss that
adds the fusion layer's auxiliary terms and the per-modality heads' losses, the fusion-only loss
of ``pretrain``, and a wrapper that frees each batch's autograd graph once backward has run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from deepfuse_plugin.nn import losses

#: Default ``evidential_lambda`` per mode (Amini et al. use 0.01-0.2; Sensoy et al. anneal to 1).
DEFAULT_EVIDENTIAL_LAMBDA = {"regression": 0.1, "classification": 1.0}

TaskLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def task_loss(
    task_output: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    mode: str,
    uncertainty: str | None,
    evidential_lambda: float | None,
    kl_anneal: float,
) -> torch.Tensor:
    """The loss of one head's output: masked MSE / cross-entropy, or the evidential loss
    (its regulariser weighted by ``evidential_lambda``, times ``kl_anneal`` for classification)."""
    if uncertainty == "evidential":
        coefficient = (
            DEFAULT_EVIDENTIAL_LAMBDA[mode] if evidential_lambda is None else evidential_lambda
        )
        if mode == "classification":
            return losses.masked_dirichlet_loss(
                task_output, labels, weights, coefficient * kl_anneal
            )
        return losses.masked_evidential_regression_loss(task_output, labels, weights, coefficient)
    if mode == "classification":
        return losses.masked_classification_loss(task_output, labels, weights)
    return losses.masked_regression_loss(task_output, labels, weights)


def supervised_loss(
    outputs: list,
    labels: list,
    weights: list,
    head_loss: TaskLoss,
    fusion_loss_weight: float,
    unimodal_loss_weight: float,
) -> torch.Tensor:
    """Task loss + ``fusion_loss_weight`` * the fusion layer's auxiliary loss, plus
    ``unimodal_loss_weight`` * the mean of the unimodal heads' losses (each counting only the
    samples where its modality is present)."""
    task_output, aux, unimodal, unimodal_mask = outputs
    if not labels:
        raise ValueError("fit() needs labels; use pretrain() for self-supervised training")
    weight = weights[0] if weights and weights[0].numel() else torch.ones_like(labels[0])
    loss = head_loss(task_output, labels[0], weight) + fusion_loss_weight * aux
    if unimodal_loss_weight == 0 or unimodal.shape[1] == 0:
        return loss
    weight = weight.reshape(unimodal_mask.shape[0], -1)
    per_modality = [
        head_loss(unimodal[:, j], labels[0], weight * unimodal_mask[:, j : j + 1].to(weight.dtype))
        for j in range(unimodal_mask.shape[1])
    ]
    return loss + unimodal_loss_weight * torch.stack(per_modality).mean()


def fusion_only_loss(outputs: list, labels: list, weights: list) -> torch.Tensor:
    """The fusion layer's self-supervised loss alone (``pretrain``); labels are not used."""
    if not outputs[1].requires_grad:
        raise ValueError(
            "This model's fusion layer has no self-supervised objective to "
            "pretrain on (e.g. DynamicFusionModel has one); use fit()"
        )
    return outputs[1]


def released_after_backward(loss_fn: Any) -> Any:
    """``loss_fn`` whose loss tensor drops its autograd graph once backward has passed it.

    DeepChem's fit loop adds every batch loss to a running sum (``avg_loss += batch_loss``) and
    turns the sum into a float only every ``log_frequency`` (100) batches. Until then the sum keeps
    every batch's graph alive, and PyTorch's Transformer layers keep tensors in their graph nodes
    after backward: about 35 MB per batch of 64 HIV molecules, which made one epoch on HIV peak at
    4.7 GB. Detaching the loss once its gradient is taken frees each graph at once; the loss
    value and the gradients are unchanged.
    """

    def loss(outputs: list, labels: list, weights: list) -> Any:
        value = loss_fn(outputs, labels, weights)
        if isinstance(value, torch.Tensor) and value.requires_grad and not value._is_view():

            def detach(grad: torch.Tensor) -> torch.Tensor:
                value.detach_()
                return grad

            value.register_hook(detach)
        return value

    return loss
