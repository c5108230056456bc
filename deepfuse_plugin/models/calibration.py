"""Calibration of predicted uncertainties (regression): how often errors fall inside k sigma.

Glue on top of :meth:`~deepfuse_plugin.models.base.MultiModalTorchModel.predict_uncertainty`; no
tensor math and no training here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from deepchem.data import Dataset
from deepchem.trans import undo_transforms

#: Fraction of a Gaussian within 1 and 2 standard deviations of its mean.
GAUSSIAN_WITHIN = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}


def calibration_report(model: Any, dataset: Dataset, transformers: list = [],  # noqa: B006
                       kind: str = "total", std_scale: float = 1.0) -> dict[str, float]:
    """Coverage of ``model``'s predicted standard deviations on a labelled regression ``dataset``.

    Errors and standard deviations are compared in the original label units: ``transformers``
    (those the dataset was transformed with, e.g. MoleculeNet's ``NormalizationTransformer``) are
    undone on the labels, the predictions and the std. Entries with weight 0 or a NaN label are
    skipped; all tasks are pooled.

    Parameters
    ----------
    model: MultiModalTorchModel
        Built with ``uncertainty="evidential"`` (anything with a DeepChem-style
        ``predict_uncertainty(dataset, transformers=..., kind=...)`` works).
    dataset: dc.data.Dataset
        With labels.
    transformers: list of dc.trans.Transformer
    kind: str
        Which std to judge (``"total"`` is the one a prediction interval should use).
    std_scale: float
        Multiplies every std first (post-hoc recalibration; see :func:`fit_std_scale`).

    Returns
    -------
    dict with ``n`` (entries scored), ``within_1sigma`` / ``within_2sigma`` (fraction of
    ``|y - prediction| <= k std``), ``expected_1sigma`` / ``expected_2sigma`` (the Gaussian
    fractions 0.683 and 0.954: a calibrated Gaussian predictive would match them; the evidential
    predictive is a Student-t, whose k-sigma coverage is a little higher for k=1 and lower for k=2
    at small ``alpha``), ``mean_std``, ``rmse`` and ``mean_abs_error``.

    Examples
    --------
    >>> report = calibration_report(model, test, transformers)  # doctest: +SKIP
    >>> report["within_1sigma"], report["expected_1sigma"]  # doctest: +SKIP
    (0.71, 0.683)
    """
    error, sigma = _errors_and_stds(model, dataset, transformers, kind)
    sigma = sigma * std_scale
    return {"n": int(error.size),
            "within_1sigma": float(np.mean(error <= sigma)),
            "within_2sigma": float(np.mean(error <= 2 * sigma)),
            "expected_1sigma": round(GAUSSIAN_WITHIN[1], 3),
            "expected_2sigma": round(GAUSSIAN_WITHIN[2], 3),
            "mean_std": float(sigma.mean()),
            "rmse": float(np.sqrt(np.mean(error ** 2))),
            "mean_abs_error": float(error.mean())}


def fit_std_scale(model: Any, dataset: Dataset, transformers: list = [],  # noqa: B006
                  kind: str = "total") -> float:
    """The factor ``s`` that makes ``s * std`` the maximum-likelihood Gaussian scale of the errors
    on ``dataset`` (``s^2 = mean((error / std)^2)``): fit it on a validation set, then pass it as
    ``calibration_report(..., std_scale=s)`` on the test set. ``s > 1``: the model is
    over-confident."""
    error, sigma = _errors_and_stds(model, dataset, transformers, kind)
    return float(np.sqrt(np.mean((error / sigma) ** 2)))


def _errors_and_stds(model: Any, dataset: Dataset, transformers: list,
                     kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``|y - prediction|`` and the std of the labelled entries, flattened, in label units."""
    if getattr(model, "mode", "regression") != "regression":
        raise ValueError("calibration_report scores regression models; for classification use "
                         "predict_uncertainty(kind='vacuity') or a reliability diagram")
    prediction, std = model.predict_uncertainty(dataset, transformers=transformers, kind=kind)
    y = undo_transforms(np.asarray(dataset.y, dtype=np.float64), transformers)
    y = y.reshape(prediction.shape)
    w = np.asarray(dataset.w, dtype=np.float64)
    w = np.broadcast_to(w.reshape(len(y), -1), y.shape) if w.size else np.ones_like(y)
    keep = (w > 0) & np.isfinite(y)
    if not keep.any():
        raise ValueError("The dataset has no labelled entries (all weights 0 or labels NaN)")
    return np.abs(y - prediction)[keep], np.asarray(std, dtype=np.float64)[keep]
