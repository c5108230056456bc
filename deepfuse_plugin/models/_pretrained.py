"""Fine-tuning from pretrained encoders: load them, freeze them, or give them a lower learning rate.

Kept apart from :mod:`deepfuse_plugin.models.base` so the base class only calls two functions.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.nn.network import MultiModalNetwork
from deepfuse_plugin.pretrained import load_encoders, load_pretrained_encoders
from deepfuse_plugin.pretrained._checkpoints import pretrained_input_names


def check_fine_tuning_settings(
    pretrained: Any, freeze_encoders: bool, encoder_lr_scale: float
) -> None:
    """Refuse settings that cannot work, naming the value."""
    if not (
        isinstance(encoder_lr_scale, (int, float))
        and math.isfinite(encoder_lr_scale)
        and 0 < encoder_lr_scale <= 1
    ):
        raise InvalidSettingError(f"encoder_lr_scale must be in (0, 1], got {encoder_lr_scale!r}")
    if pretrained is None and (freeze_encoders or encoder_lr_scale != 1):
        raise InvalidSettingError(
            "freeze_encoders and encoder_lr_scale apply to pretrained "
            "encoders: pass pretrained=<checkpoint name or folder>"
        )


def start_from_pretrained(
    encoders: nn.ModuleDict,
    modalities: list[Modality],
    pretrained: Any,
    encoder_dim: int,
    freeze: bool,
) -> list[str]:
    """Load the checkpoint's encoders into ``encoders``; freeze them if asked. Returns the
    modalities that start from the checkpoint."""
    loaded = load_pretrained_encoders(encoders, modalities, load_encoders(pretrained), encoder_dim)
    if freeze:
        for name in loaded:
            encoders[name].requires_grad_(False)
    return loaded


def pretrained_covers(pretrained: Any, modalities: list[Modality]) -> list[str]:
    """The model's modalities a checkpoint covers, read from its ``model.json`` only (no weights);
    empty when the checkpoint is not on this machine (a restored model has its weights anyway)."""
    try:
        names = set(pretrained_input_names(pretrained))
    except InvalidSettingError:
        return []
    return [m.name for m in modalities if m.name in names]


def parameter_groups(
    network: MultiModalNetwork,
    pretrained_names: list[str],
    learning_rate: float,
    encoder_lr_scale: float,
) -> list[dict[str, Any]] | Any:
    """Optimizer parameter groups: the pretrained encoders at ``learning_rate * encoder_lr_scale``,
    everything else at ``learning_rate``; plain ``parameters()`` when there is nothing to scale.
    Frozen parameters are left out (no optimizer state for them)."""
    if not pretrained_names or encoder_lr_scale == 1:
        return [p for p in network.parameters() if p.requires_grad]
    pretrained_ids = {id(p) for n in pretrained_names for p in network.encoders[n].parameters()}
    slow = [p for p in network.parameters() if id(p) in pretrained_ids and p.requires_grad]
    rest = [p for p in network.parameters() if id(p) not in pretrained_ids and p.requires_grad]
    return [{"params": rest}, {"params": slow, "lr": learning_rate * encoder_lr_scale}]
