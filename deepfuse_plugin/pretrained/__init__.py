"""Pretrained encoders: multimodal self-supervised pretraining, shipped checkpoints, load by name.

- :func:`pretrain_encoders` trains deepfuse's own encoders on unlabelled molecules (cross-view
  contrast, MMFRL relational similarity, auxiliary targets, masked cross-modal reconstruction)
  and writes a checkpoint folder; in one process, or with ``devices=N`` (``num_nodes``,
  ``strategy``) on several processes, GPUs or machines under Lightning DDP.
- :func:`list_pretrained` names the checkpoints shipped in ``deepfuse_plugin/pretrained_models``;
  :func:`load_encoders` loads one by name or path; every fusion model takes ``pretrained=<name>``.

Examples
--------
>>> from deepfuse_plugin.pretrained import list_pretrained
>>> isinstance(list_pretrained(), list)
True
"""

from deepfuse_plugin.pretrained._apply import load_pretrained_encoders, spec_differences
from deepfuse_plugin.pretrained._checkpoints import (
    PretrainedEncoders,
    list_pretrained,
    load_encoders,
    resolve_pretrained,
    save_encoders,
)
from deepfuse_plugin.pretrained._loop import PretrainingConfig, plot_loss_curve
from deepfuse_plugin.pretrained._pretrain import pretrain_encoders
from deepfuse_plugin.pretrained._workflow import pretrain_from_corpus

__all__ = [
    "PretrainedEncoders",
    "PretrainingConfig",
    "list_pretrained",
    "load_encoders",
    "load_pretrained_encoders",
    "plot_loss_curve",
    "pretrain_encoders",
    "pretrain_from_corpus",
    "resolve_pretrained",
    "save_encoders",
    "spec_differences",
]
