"""MatGL's ``ModelLightningModule`` with the fusion layer's auxiliary losses and curriculum."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from matgl.utils.training import ModelLightningModule
from torch import Tensor

from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.matgl._model import target_scaling


class MultiModalLightningModule(ModelLightningModule):
    """MatGL's property-model Lightning module for :class:`~deepfuse_plugin.matgl.MatMMFuse`.

    Additions to ``matgl.utils.training.ModelLightningModule``: more than one target, and two
    needed only by fusion layers that have them:

    - the fusion layer's auxiliary loss (dynamic fusion: reconstruction, sparsity, entropy, gate
      diversity; MoE: load balancing) is added to ``Total_Loss`` in training (logged as
      ``Aux_Loss``);
    - the dynamic fusion masking curriculum advances with the epoch (``current_epoch /
      (max_epochs - 1)``);
    - a model with several targets (``model.target_names``, batched by
      :func:`~deepfuse_plugin.matgl.collate_fn_targets`) is trained on the mean of the loss
      over its *standardized* targets (``(label - data_mean) / data_std`` per target, so a
      target in large units does not outweigh the others) and logs ``MAE`` / ``RMSE`` over all
      targets plus ``MAE_<target>`` per target, in original units. MatGL's own module cannot:
      it scales with one scalar and logs one MAE. One target is trained exactly as MatGL does.

    ``data_mean`` / ``data_std`` default to the model's, so the model's
    :meth:`~deepfuse_plugin.matgl.MatMMFuse.predict_structure` and this module agree on the target
    scaling. Everything else (optimizer, cosine schedule, loss name, metrics, logging) is MatGL's.

    Several processes or GPUs: ``lightning.Trainer(strategy="ddp_find_unused_parameters_true",
    devices=N)`` (or ``ddp_fork_…``/``ddp_spawn_…``) with MatGL's ``MGLDataLoader``; Lightning
    shards the loaders with a ``DistributedSampler`` (the batch size is then per process). Plain
    ``"ddp"`` refuses a MatMMFuse: MatGL's own output layer (deepfuse reads the readout before
    it) and, with a cross-attention fusion, the crystal readout take no part in the loss. With
    ``ddp_fork``/``ddp_spawn`` Lightning hands rank 0's weights back to the calling process, so
    ``model.save`` there saves the trained model.

    Parameters
    ----------
    model: MatMMFuse
    **kwargs:
        ``ModelLightningModule`` arguments (``lr``, ``loss``, ``decay_steps``, ...).
    """

    def __init__(self, model: Any, **kwargs: Any):
        n_targets = len(getattr(model, "target_names", None) or [None])
        for name, default in (("data_mean", 0.0), ("data_std", 1.0)):
            value = kwargs.get(name, getattr(model, name, default))
            kwargs[name] = target_scaling(value, n_targets, name)
        super().__init__(model=model, **kwargs)

    def on_train_epoch_start(self) -> None:
        set_curriculum = getattr(self.model, "set_curriculum", None)
        if set_curriculum is not None and self.trainer is not None:
            max_epochs = self.trainer.max_epochs or 1
            set_curriculum(self.current_epoch / max(max_epochs - 1, 1))

    def loss_fn(self, loss: Any, labels: Tensor, preds: Tensor) -> dict[str, Any]:
        names = list(getattr(self.model, "target_names", None) or [])
        if names:  # a MatMMFuse (another MatGL model is left to MatGL)
            _check_labels_fit(labels, preds, names)
        if len(names) <= 1:
            results = super().loss_fn(loss=loss, labels=labels, preds=preds)
        else:
            results = self._multi_target_loss(loss, labels, preds.reshape(labels.shape), names)
        aux = getattr(self.model, "aux_loss", None)
        if aux is not None and self.training:
            results["Aux_Loss"] = aux.detach()
            results["Total_Loss"] = results["Total_Loss"] + aux
        return results

    def _multi_target_loss(
        self, loss: Any, labels: Tensor, preds: Tensor, names: list[str]
    ) -> dict[str, Any]:
        mean = torch.as_tensor(self.data_mean, dtype=preds.dtype, device=preds.device)
        std = torch.as_tensor(self.data_std, dtype=preds.dtype, device=preds.device)
        scaled = preds * std + mean
        results = {
            "Total_Loss": loss(preds, (labels - mean) / std, **self.loss_params),
            "MAE": self.mae(scaled, labels),
            "RMSE": self.rmse(scaled, labels),
        }
        for i, name in enumerate(names):
            results[f"MAE_{name}"] = F.l1_loss(scaled[:, i], labels[:, i]).detach()
        return results


def _check_labels_fit(labels: Tensor, preds: Tensor, names: list[str]) -> None:
    """A batch whose labels do not match the model's targets, said plainly (else a reshape
    error deep in MatGL, or a silent broadcast)."""
    per_row = 1 if labels.dim() == 1 else int(labels.shape[-1])
    if labels.dim() <= 2 and per_row == len(names) and labels.shape[0] == preds.shape[0]:
        return
    hint = (
        " (MatGL's collate_fn_graph keeps the first label only: batch with "
        "deepfuse_plugin.matgl.collate_fn_targets)"
        if per_row == 1
        else ""
    )
    raise InvalidInputError(
        f"The batch has {per_row} label(s) per structure, the model predicts {len(names)} "
        f"targets {names}{hint}; the dataset's labels and the model's target_names must match"
    )
