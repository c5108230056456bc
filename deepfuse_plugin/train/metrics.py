"""Metrics in original label units and the validation score that selects a checkpoint.

Regression: RMSE, MAE, R2 and Pearson r^2; classification: ROC-AUC, accuracy and log loss; both
averaged over tasks, counting only entries with weight > 0 (DeepChem's missing labels).

Examples
--------
>>> import numpy as np
>>> from deepfuse_plugin.train.metrics import regression_metrics, selection_score
>>> scores = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
>>> round(scores["mae"], 3), scores["n"]
(0.333, 3)
>>> selection_score({"roc_auc": 0.8}, "classification")
('neg_roc_auc', -0.8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.data.datasets import untransform_labels

__all__ = [
    "regression_metrics",
    "classification_metrics",
    "task_columns",
    "predict_original_units",
    "evaluate",
    "selection_score",
]


def _task_arrays(
    y: np.ndarray, w: np.ndarray | None, n_tasks: int
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(len(y), n_tasks)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64).reshape(len(y), n_tasks)
    return y, w


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None
) -> dict[str, float]:
    """RMSE, MAE, R2 (coefficient of determination) and Pearson r^2, averaged over tasks.

    Only entries with weight > 0 count. Uses ``dc.metrics`` score functions and sklearn's
    ``r2_score``.
    """
    import deepchem as dc
    from sklearn.metrics import r2_score

    pred = np.asarray(pred, dtype=np.float64)
    n_tasks = pred.reshape(len(pred), -1).shape[1]
    y, w = _task_arrays(y, w, n_tasks)
    pred = pred.reshape(len(pred), n_tasks)
    scores: dict[str, list[float]] = {"rmse": [], "mae": [], "r2": [], "pearson_r2": []}
    for t in range(n_tasks):
        keep = w[:, t] > 0
        yt, pt = y[keep, t], pred[keep, t]
        if len(yt) == 0:
            continue
        scores["rmse"].append(float(dc.metrics.rms_score(yt, pt)))
        scores["mae"].append(float(dc.metrics.mae_score(yt, pt)))
        enough = len(yt) > 1 and np.std(yt) > 0
        scores["r2"].append(float(r2_score(yt, pt)) if enough else math.nan)
        scores["pearson_r2"].append(
            float(dc.metrics.pearson_r2_score(yt, pt)) if enough and np.std(pt) > 0 else math.nan
        )
    out = {
        k: (float(np.nanmean(v)) if v and not np.isnan(v).all() else math.nan)
        for k, v in scores.items()
    }
    out["n"] = int((w > 0).any(axis=1).sum())
    return out


def classification_metrics(
    y: np.ndarray, prob: np.ndarray, w: np.ndarray | None = None
) -> dict[str, float]:
    """ROC-AUC, accuracy (threshold 0.5) and log loss, averaged over tasks (weight > 0 only).

    ``prob`` is ``(N, n_tasks)`` probabilities of class 1, or DeepChem's ``(N, n_tasks, 2)``.
    ROC-AUC is NaN for a task whose entries are all one class.
    """
    import deepchem as dc
    from sklearn.metrics import log_loss

    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim == 3:
        prob = prob[..., 1]
    n_tasks = prob.reshape(len(prob), -1).shape[1]
    prob = prob.reshape(len(prob), n_tasks)
    y, w = _task_arrays(y, w, n_tasks)
    scores: dict[str, list[float]] = {"roc_auc": [], "accuracy": [], "log_loss": []}
    for t in range(n_tasks):
        keep = w[:, t] > 0
        yt, pt = y[keep, t].astype(int), np.clip(prob[keep, t], 1e-7, 1 - 1e-7)
        if len(yt) == 0:
            continue
        two_classes = len(np.unique(yt)) == 2
        scores["roc_auc"].append(
            float(dc.metrics.roc_auc_score(yt, pt)) if two_classes else math.nan
        )
        scores["accuracy"].append(float(np.mean((pt >= 0.5) == yt)))
        scores["log_loss"].append(float(log_loss(yt, pt, labels=[0, 1])))
    out = {
        k: (float(np.nanmean(v)) if v and not np.isnan(v).all() else math.nan)
        for k, v in scores.items()
    }
    out["n"] = int((w > 0).any(axis=1).sum())
    return out


def predict_original_units(
    model: Any, dataset: Any, transformers: Sequence[Any], mode: str
) -> np.ndarray:
    """Regression: predictions with ``transformers`` undone; classification: P(class 1)
    ``(N, n_tasks)``. The model undoes the transformers itself (deepfuse models keep a one-row
    split's shape: :func:`~deepfuse_plugin.data.datasets.untransform_labels`)."""
    return task_columns(model.predict(dataset, list(transformers)), mode)


def task_columns(pred: Any, mode: str) -> np.ndarray:
    """A model's ``predict`` output as one column per task: regression ``(N, n_tasks)``;
    classification P(class 1) (DeepChem's ``(N, n_tasks, 2)`` reduced to its second class)."""
    pred = np.asarray(pred)
    if mode == "classification":
        return pred[..., 1] if pred.ndim == 3 else pred
    return pred.reshape(len(pred), -1)


def evaluate(
    model: Any, dataset: Any, transformers: Sequence[Any], mode: str
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``dataset`` in original label units, and the predictions."""
    if len(dataset) == 0:
        return {"n": 0}, np.zeros((0,))
    pred = predict_original_units(model, dataset, transformers, mode)
    y = untransform_labels(dataset.y, transformers) if mode == "regression" else dataset.y
    metrics = (
        regression_metrics(y, pred, dataset.w)
        if mode == "regression"
        else classification_metrics(y, pred, dataset.w)
    )
    return metrics, pred


def selection_score(metrics: dict[str, float], mode: str) -> tuple[str, float]:
    """The validation number to minimise: RMSE (regression); -ROC-AUC, or log loss when ROC-AUC is
    undefined (classification)."""
    if mode == "regression":
        return "rmse", metrics.get("rmse", math.nan)
    auc = metrics.get("roc_auc", math.nan)
    if auc is not None and math.isfinite(auc):
        return "neg_roc_auc", -auc
    return "log_loss", metrics.get("log_loss", math.nan)
