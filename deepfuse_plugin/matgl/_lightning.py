"""MatGL's ``ModelLightningModule`` with the fusion layer's auxiliary losses and curriculum."""

from __future__ import annotations

from typing import Any

from matgl.utils.training import ModelLightningModule
from torch import Tensor


class MultiModalLightningModule(ModelLightningModule):
    """MatGL's property-model Lightning module for :class:`~deepfuse_plugin.matgl.MatMMFuse`.

    Two additions to ``matgl.utils.training.ModelLightningModule``, both needed only by fusion
    layers that have them:

    - the fusion layer's auxiliary loss (dynamic fusion: reconstruction, sparsity, entropy, gate
      diversity; MoE: load balancing) is added to ``Total_Loss`` in training (logged as
      ``Aux_Loss``);
    - the dynamic fusion masking curriculum advances with the epoch (``current_epoch /
      (max_epochs - 1)``).

    ``data_mean`` / ``data_std`` default to the model's, so the model's
    :meth:`~deepfuse_plugin.matgl.MatMMFuse.predict_structure` and this module agree on the target
    scaling. Everything else (optimizer, cosine schedule, loss name, metrics, logging) is MatGL's.

    Parameters
    ----------
    model: MatMMFuse
    **kwargs:
        ``ModelLightningModule`` arguments (``lr``, ``loss``, ``decay_steps``, ...).
    """

    def __init__(self, model: Any, **kwargs: Any):
        kwargs.setdefault("data_mean", getattr(model, "data_mean", 0.0))
        kwargs.setdefault("data_std", getattr(model, "data_std", 1.0))
        super().__init__(model=model, **kwargs)

    def on_train_epoch_start(self) -> None:
        set_curriculum = getattr(self.model, "set_curriculum", None)
        if set_curriculum is not None and self.trainer is not None:
            max_epochs = self.trainer.max_epochs or 1
            set_curriculum(self.current_epoch / max(max_epochs - 1, 1))

    def loss_fn(self, loss: Any, labels: Tensor, preds: Tensor) -> dict[str, Any]:
        results = super().loss_fn(loss=loss, labels=labels, preds=preds)
        aux = getattr(self.model, "aux_loss", None)
        if aux is not None and self.training:
            results["Aux_Loss"] = aux.detach()
            results["Total_Loss"] = results["Total_Loss"] + aux
        return results
