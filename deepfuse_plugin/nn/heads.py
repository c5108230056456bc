"""Prediction heads on the fused embedding (pure torch)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import mlp, reset_all


class TaskHead(nn.Module):
    """MLP from the fused embedding to task outputs.

    Regression: ``(B, D) -> prediction (B, T)``. Classification: ``(B, D) -> logits (B, T, C)`` and
    softmax probabilities ``(B, T, C)`` (DeepChem's output convention).
    """

    def __init__(self, in_dim: int, n_tasks: int, mode: str = "regression", n_classes: int = 2,
                 hidden_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        if mode not in ("regression", "classification"):
            raise ValueError(f"mode must be 'regression' or 'classification', got {mode!r}")
        self.n_tasks, self.mode, self.n_classes = n_tasks, mode, n_classes
        width = n_tasks * (n_classes if mode == "classification" else 1)
        self.net = nn.Sequential(nn.Dropout(dropout), mlp(in_dim, hidden_dim, width, 2, dropout))

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(prediction, loss_input)``: probabilities and logits, or twice the values."""
        out = self.net(fused)
        if self.mode == "regression":
            return out, out
        logits = out.view(-1, self.n_tasks, self.n_classes)
        return torch.softmax(logits, dim=-1), logits
