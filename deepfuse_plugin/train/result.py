"""What one validated training run did (:class:`TrainingResult`), shared by the training loop
(:mod:`deepfuse_plugin.train.loop`) and its resume points (:mod:`deepfuse_plugin.train.resume`).

Examples
--------
>>> from deepfuse_plugin.train.result import TrainingResult
>>> TrainingResult(best_epoch=3, best_score=0.61, score_name="rmse").resumed_at
[]
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrainingResult"]


@dataclass
class TrainingResult:
    """What :func:`~deepfuse_plugin.train.loop.train_with_validation` did.

    Attributes
    ----------
    best_epoch: int
        Epoch whose checkpoint was kept (selected by the validation score, never by test).
    best_score: float
        Its validation score (lower is better; see
        :func:`~deepfuse_plugin.train.metrics.selection_score`).
    score_name: str
        What the score is (``"rmse"``, ``"neg_roc_auc"`` or ``"log_loss"``).
    history: list of dict
        ``{"epoch", "score", ...validation metrics}`` at every evaluation.
    train_time_s: float
        Wall time of ``fit`` including the periodic validation passes and checkpoint writes
        (summed over the segments of a resumed run).
    resumed_at: list of int
        Epochs after which an interrupted run was continued from its resume point (empty for a
        run trained in one go).
    stopped_at: int, optional
        Epoch after which early stopping ended the run (the model's ``early_stopping``
        patience ran out); None when every planned epoch trained.
    """

    best_epoch: int
    best_score: float
    score_name: str
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_at: list[int] = field(default_factory=list)
    stopped_at: int | None = None
