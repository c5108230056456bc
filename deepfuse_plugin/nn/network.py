"""The multimodal network: per-modality encoders -> fusion layer -> task head (pure torch)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.nn.encoders import build_encoder
from deepfuse_plugin.nn.fusion import FusionOutput, sample_modality_drop


class NetworkOutput(NamedTuple):
    """Outputs in DeepChem ``output_types`` order: prediction, loss input, aux loss, embedding,
    modality weights, per-modality loss inputs and the mask they apply to. The loss input
    (``task_output``) is the head's: values, logits, or an evidential head's distribution
    parameters (NIG ``(B, T, 4)``, Dirichlet ``alpha (B, T, C)``). ``unimodal_output`` stacks
    the unimodal heads' loss inputs on dim 1 (``(B, M, T)`` values or ``(B, M, T, C)`` logits,
    zero where the modality is missing) and ``unimodal_mask (B, M)`` says where they apply; both
    have ``M = 0`` without unimodal heads, and under ``torch.no_grad()``."""

    prediction: Tensor
    task_output: Tensor
    aux_loss: Tensor
    embedding: Tensor
    modality_weights: Tensor
    unimodal_output: Tensor
    unimodal_mask: Tensor


class MultiModalNetwork(nn.Module):
    """Encoders chosen by modality kind, any fusion layer, one task head.

    Parameters
    ----------
    modalities: list of Modality
    fusion: nn.Module
        A layer with the common signature ``(embeddings, mask) -> FusionOutput``; it may carry
        ``loss_weights`` for its auxiliary terms.
    head: TaskHead or None
        None when the fusion layer predicts itself (``FusionOutput.task_outputs``, late fusion).
    encoder_dim: int
        Width of every encoder output.
    encoder_options: dict kind -> dict
        Extra keyword arguments per encoder kind (e.g. ``{"graph": {"n_layers": 4}}``).
    modality_dropout: float
        Training only: each present modality is hidden from the fusion layer with this probability
        (never all of a sample's modalities), so any fusion layer learns to cope with missing ones.
    unimodal_heads: nn.ModuleDict, optional
        A task head per modality on its encoder's pooled output (auxiliary supervision of each
        encoder on its own); None (default) for none.
    autocast_dtype: torch.dtype, optional
        Mixed precision: run encoders and fusion under ``torch.autocast`` with this dtype (e.g.
        ``torch.bfloat16`` on a GPU) on the device of the inputs; outputs are cast back to float32
        so losses and metrics stay in full precision. None (default) runs in float32.
    """

    def __init__(
        self,
        modalities: list[Modality],
        fusion: nn.Module,
        head: nn.Module | None,
        encoder_dim: int = 128,
        encoder_options: dict[str, dict[str, Any]] | None = None,
        modality_dropout: float = 0.0,
        autocast_dtype: torch.dtype | None = None,
        unimodal_heads: nn.ModuleDict | None = None,
    ):
        super().__init__()
        self.modalities = list(modalities)
        self.names = tuple(m.name for m in self.modalities)
        options = encoder_options or {}
        self.encoders = nn.ModuleDict(
            {
                m.name: build_encoder(m, encoder_dim, options.get(m.kind, {}))
                for m in self.modalities
            }
        )
        self.fusion = fusion
        self.head = head
        self.unimodal_heads = unimodal_heads
        self.modality_dropout = modality_dropout
        self.autocast_dtype = autocast_dtype
        self.last_fusion: FusionOutput | None = None
        # training epochs begun over every fit call (the evidential KL anneal and DynamicFusion's
        # masking curriculum count them): a buffer, so each checkpoint carries its own count
        self.epochs_started: torch.Tensor
        self.register_buffer("epochs_started", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # checkpoints written before the counter existed load as "no epoch started" (the way
        # BatchNorm fills in num_batches_tracked)
        state_dict.setdefault(prefix + "epochs_started", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, batch: Any) -> dict[str, Any]:
        return {n: self.encoders[n](batch.inputs[n]) for n in self.names}

    def forward(self, batch: Any) -> NetworkOutput:
        if self.autocast_dtype is None:
            return self._forward(batch)
        device_type = batch.mask.device.type
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype):
            out = self._forward(batch)
        return NetworkOutput(*(t if t.dtype == torch.bool else t.float() for t in out))

    def _forward(self, batch: Any) -> NetworkOutput:
        mask = batch.mask
        if self.training and self.modality_dropout > 0:
            mask = mask & ~sample_modality_drop(mask, self.modality_dropout)
        encoded = self.encode(batch)
        out: FusionOutput = self.fusion(encoded, mask)
        self.last_fusion = out
        if out.task_outputs is not None:
            prediction, task_output = out.task_outputs
        elif self.head is not None:
            prediction, task_output = self.head(out.fused)
        else:
            raise InvalidSettingError(
                f"{type(self.fusion).__name__} gives no task outputs and the network has no head: "
                "pass a head (only a fusion layer with its own predictors, such as LateFusion, "
                "works without one)"
            )
        weights = out.weights if out.weights is not None else mask.to(out.fused.dtype)
        unimodal, unimodal_mask = self.unimodal_outputs(encoded, out, mask)
        return NetworkOutput(
            prediction, task_output, self.aux_loss(out), out.fused, weights, unimodal, unimodal_mask
        )

    def unimodal_outputs(
        self, encoded: dict[str, Any], out: FusionOutput, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-modality loss inputs stacked on dim 1 (zero where a modality is missing) and the
        mask they apply to: from the unimodal heads, or from a fusion layer that has per-modality
        predictors (late fusion's ``extras["unimodal_task_output"]``). Empty (``M = 0``) without
        either, and without gradients (nothing to train)."""
        if not torch.is_grad_enabled() or (
            self.unimodal_heads is None and "unimodal_task_output" not in out.extras
        ):
            return mask.new_zeros((mask.shape[0], 0), dtype=torch.float32), mask[:, :0]
        if self.unimodal_heads is None:
            return out.extras["unimodal_task_output"], out.extras["mask"]
        outputs = []
        for j, name in enumerate(self.names):
            loss_input = self.unimodal_heads[name](encoded[name].pooled)[1]
            present = mask[:, j].view(-1, *([1] * (loss_input.dim() - 1)))
            outputs.append(torch.where(present, loss_input, torch.zeros_like(loss_input)))
        return torch.stack(outputs, dim=1), mask

    def aux_loss(self, out: FusionOutput) -> Tensor:
        """Weighted sum of the fusion layer's auxiliary terms (0 when it has none)."""
        weights = getattr(self.fusion, "loss_weights", {})
        total = out.fused.new_zeros(())
        for name, value in out.aux_losses.items():
            total = total + weights.get(name, 1.0) * value
        return total
