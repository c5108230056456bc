"""Calibration of predicted uncertainties (regression): how often errors fall inside k sigma,
and post-hoc rescaling of the std on validation data, globally (:func:`fit_std_scale`) or per
set of present modalities (:func:`fit_std_scales`).

Glue on top of :meth:`~deepfuse_plugin.models.base.MultiModalTorchModel.predict_uncertainty`; no
tensor math and no training here.

Why per set of present modalities: a fusion model's std is fitted on complete training inputs.
With a modality missing, the remaining predictors can be confidently wrong (tutorial 2: with only
ECFP left, evidential late fusion on ESOL predicted a smaller std while its RMSE rose by a fifth to
a quarter), so one factor for all inputs cannot be right for each of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from deepchem.data import Dataset
from deepchem.trans import undo_transforms

from deepfuse_plugin.data.datasets import presence_frame

#: Fraction of a Gaussian within 1 and 2 standard deviations of its mean.
GAUSSIAN_WITHIN = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}

#: The modalities present in a row, in the model's order.
Pattern = tuple[str, ...]


@dataclass
class StdScales:
    """Std factors per set of present modalities, fitted on labelled data by :func:`fit_std_scales`.

    Attributes
    ----------
    kind: str
        The std they rescale (``"total"``, ``"aleatoric"`` or ``"epistemic"``).
    modality_names: tuple of str
        The model's modalities, in its order.
    scales: dict
        ``present modalities (tuple, model order) -> s``: multiply the std of a row with exactly
        these modalities present by ``s`` (``s > 1``: the model was over-confident on them).
    n_entries: dict
        The labelled entries each factor was fitted on (each row once per factor).
    """

    kind: str
    modality_names: tuple[str, ...]
    scales: dict[Pattern, float] = field(default_factory=dict)
    n_entries: dict[Pattern, int] = field(default_factory=dict)

    def for_rows(self, present: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` factors for rows with presence ``(N, M)`` (columns in ``modality_names``).

        Raises a ValueError naming the patterns and rows that no factor was fitted for.
        """
        keys = [pattern_of(row, self.modality_names) for row in present]
        missing = sorted({k for k in keys if k not in self.scales})
        if missing:
            rows = [i for i, k in enumerate(keys) if k not in self.scales]
            shown = [ids[i] for i in rows[:5]] if ids is not None else rows[:5]
            raise ValueError(
                f"No std scale was fitted for rows with present modalities "
                f"{[list(k) for k in missing]} ({len(rows)} rows, e.g. {shown}); fitted: "
                f"{[list(k) for k in self.scales]}. A row with none of the model's modalities "
                "has no factor (its prediction comes from biases alone); for the others, refit "
                "with patterns that leave exactly these modalities"
            )
        return np.array([self.scales[k] for k in keys], dtype=np.float64)

    def factors(
        self, model: Any, dataset: Dataset, drop_modalities: Iterable[str] = ()
    ) -> np.ndarray:
        """``(N,)`` factors for ``dataset``'s rows as ``model`` sees them after
        ``drop_modalities``; the model must have the modalities the factors were fitted for."""
        names = _model_modalities(model, "StdScales")
        if names != self.modality_names:
            raise ValueError(
                f"These std scales were fitted for a model with modalities "
                f"{list(self.modality_names)}, not {list(names)}"
            )
        return self.for_rows(_present(model, dataset, drop_modalities), dataset.ids)

    def predict_uncertainty(
        self,
        model: Any,
        dataset: Dataset,
        transformers: list = [],  # noqa: B006 (DeepChem signature)
        drop_modalities: Iterable[str] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """``model.predict_uncertainty(dataset, ...)`` (regression) with each row's std times
        the factor of the modalities present in it (after ``drop_modalities``)."""
        _check_regression(model)
        factors = self.factors(model, dataset, drop_modalities)
        prediction, std = model.predict_uncertainty(
            dataset, transformers=transformers, kind=self.kind, drop_modalities=drop_modalities
        )
        return prediction, std * factors.reshape(-1, *([1] * (std.ndim - 1)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (keep it beside the model folder); :meth:`from_dict` reads it back."""
        return {
            "kind": self.kind,
            "modality_names": list(self.modality_names),
            "scales": [
                {"present": list(k), "scale": v, "n_entries": self.n_entries.get(k)}
                for k, v in self.scales.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StdScales:
        entries = [(tuple(e["present"]), e) for e in data["scales"]]
        return cls(
            data["kind"],
            tuple(data["modality_names"]),
            {k: float(e["scale"]) for k, e in entries},
            {k: int(e["n_entries"]) for k, e in entries if e.get("n_entries") is not None},
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per fitted pattern: ``present``, ``scale``, ``n_entries``."""
        return pd.DataFrame(
            {
                "present": ["+".join(k) for k in self.scales],
                "scale": list(self.scales.values()),
                "n_entries": [self.n_entries.get(k) for k in self.scales],
            }
        )


def pattern_of(present_row: np.ndarray, names: Iterable[str]) -> Pattern:
    """The names whose presence flag is set, in ``names``' order."""
    return tuple(n for n, flag in zip(names, present_row) if flag)


def calibration_report(
    model: Any,
    dataset: Dataset,
    transformers: list = [],  # noqa: B006
    kind: str = "total",
    std_scale: float | StdScales = 1.0,
    drop_modalities: Iterable[str] = (),
) -> dict[str, float]:
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
    std_scale: float or StdScales
        Post-hoc recalibration applied first: one factor for every std (see
        :func:`fit_std_scale`), or a factor per set of present modalities (see
        :func:`fit_std_scales`; its ``kind`` must equal ``kind``).
    drop_modalities: iterable of str
        Modalities treated as missing in every row (judge the calibration of a degraded input).

    Returns
    -------
    dict with ``n`` (entries scored), ``within_1sigma`` / ``within_2sigma`` (fraction of
    ``|y - prediction| <= k std``), ``expected_1sigma`` / ``expected_2sigma`` (the Gaussian
    fractions 0.683 and 0.954: a calibrated Gaussian predictive would match them; the evidential
    predictive is a Student-t, whose k-sigma coverage is a little higher for k=1 and lower for k=2
    at small ``alpha``), ``mean_std``, ``rms_std`` (equal to ``rmse`` for a calibrated model),
    ``rmse`` and ``mean_abs_error``.

    Examples
    --------
    >>> report = calibration_report(model, test, transformers)  # doctest: +SKIP
    >>> report["within_1sigma"], report["expected_1sigma"]  # doctest: +SKIP
    (0.71, 0.683)
    >>> scales = fit_std_scales(model, valid, transformers)  # doctest: +SKIP
    >>> calibration_report(model, test, transformers, std_scale=scales,  # doctest: +SKIP
    ...                    drop_modalities=["graph", "smiles"])["within_1sigma"]
    0.66
    """
    factors: np.ndarray | float
    if isinstance(std_scale, StdScales):
        if std_scale.kind != kind:
            raise ValueError(f"std_scale was fitted for kind={std_scale.kind!r}, not {kind!r}")
        factors = std_scale.factors(model, dataset, drop_modalities)[:, None]
    else:
        factors = std_scale
    error, sigma, keep = _errors_and_stds(model, dataset, transformers, kind, drop_modalities)
    sigma = sigma * factors
    error, sigma = error[keep], sigma[keep]
    return {
        "n": int(error.size),
        "within_1sigma": float(np.mean(error <= sigma)),
        "within_2sigma": float(np.mean(error <= 2 * sigma)),
        "expected_1sigma": round(GAUSSIAN_WITHIN[1], 3),
        "expected_2sigma": round(GAUSSIAN_WITHIN[2], 3),
        "mean_std": float(sigma.mean()),
        "rms_std": float(np.sqrt(np.mean(sigma**2))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mean_abs_error": float(error.mean()),
    }


def fit_std_scale(
    model: Any,
    dataset: Dataset,
    transformers: list = [],  # noqa: B006
    kind: str = "total",
) -> float:
    """The factor ``s`` that makes ``s * std`` the maximum-likelihood Gaussian scale of the errors
    on ``dataset`` (``s^2 = mean((error / std)^2)``): fit it on a validation set, then pass it as
    ``calibration_report(..., std_scale=s)`` on the test set. ``s > 1``: the model is
    over-confident."""
    error, sigma, keep = _errors_and_stds(model, dataset, transformers, kind)
    return float(np.sqrt(np.mean((error[keep] / sigma[keep]) ** 2)))


def fit_std_scales(
    model: Any,
    dataset: Dataset,
    transformers: list = [],  # noqa: B006
    kind: str = "total",
    patterns: str | Iterable[Iterable[str]] = "all",
    min_entries: int = 10,
) -> StdScales:
    """:func:`fit_std_scale` for each set of present modalities, on labelled data (validation).

    The model predicts ``dataset`` once as it is and once per pattern of removed modalities
    (``patterns="all"``: every proper non-empty subset of the model's modalities, i.e. every
    input the model can still read). Each row is then grouped by the modalities left in it
    (a row already missing one counts under what it has), and each group gets its
    ``s^2 = mean((error / std)^2)``. Rows with no modality left are skipped.

    Parameters
    ----------
    model: MultiModalTorchModel
        Built with ``uncertainty="evidential"``, regression.
    dataset: dc.data.Dataset
        Labelled data not used for training (the validation split).
    transformers: list of dc.trans.Transformer
    kind: str
        The std to rescale.
    patterns: "all" or iterable of iterables of str
        The sets of modalities to remove, besides the dataset as it is.
    min_entries: int
        A group with fewer labelled entries raises a ValueError rather than give a factor
        from a handful of errors.

    Returns
    -------
    StdScales
        Use ``scales.predict_uncertainty(model, test, transformers)`` or
        ``calibration_report(model, test, transformers, kind, std_scale=scales)``.

    Examples
    --------
    >>> scales = fit_std_scales(model, valid, transformers)  # doctest: +SKIP
    >>> scales.to_frame().round(2)  # doctest: +SKIP
                 present  scale  n_entries
    0  ecfp+graph+smiles   0.87        113
    1         ecfp+graph   1.10        113
    ...
    4               ecfp   2.39        113
    >>> prediction, std = scales.predict_uncertainty(model, test, transformers)  # doctest: +SKIP
    """
    names = _model_modalities(model, "fit_std_scales")
    squares: dict[Pattern, list[np.ndarray]] = {}
    counted: set[tuple[int, Pattern]] = set()
    for removed in [()] + _removal_patterns(patterns, names):
        error, sigma, keep = _errors_and_stds(model, dataset, transformers, kind, removed)
        ratio = (error / sigma) ** 2
        for i, row in enumerate(_present(model, dataset, removed)):
            key = pattern_of(row, names)
            # a row already missing what this pattern removes gives the same prediction again
            if key and (i, key) not in counted:
                counted.add((i, key))
                squares.setdefault(key, []).append(ratio[i][keep[i]])
    pooled = {k: np.concatenate(v) for k, v in squares.items()}
    small = {"+".join(k): v.size for k, v in pooled.items() if v.size < min_entries}
    if small:
        raise ValueError(
            f"Too few labelled entries to fit a std scale for {small} (min_entries="
            f"{min_entries}): fit on a larger validation set"
        )
    order = sorted(pooled, key=lambda k: (-len(k), [names.index(n) for n in k]))
    return StdScales(
        kind,
        names,
        {k: float(np.sqrt(pooled[k].mean())) for k in order},
        {k: int(pooled[k].size) for k in order},
    )


def _removal_patterns(
    patterns: str | Iterable[Iterable[str]], names: tuple[str, ...]
) -> list[Pattern]:
    if isinstance(patterns, str):
        if patterns != "all":
            raise ValueError(
                f"patterns must be 'all' or a list of lists of modality names, got {patterns!r}"
            )
        return [c for k in range(1, len(names)) for c in itertools.combinations(names, k)]
    out = []
    for pattern in patterns:
        removed = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        unknown = [n for n in removed if n not in names]
        if unknown or not removed or set(removed) >= set(names):
            raise ValueError(
                f"Pattern {list(removed)}: give a non-empty list of the model's "
                f"modalities {list(names)} to remove, leaving at least one "
                f"(unknown: {unknown})"
            )
        out.append(removed)
    return out


def _model_modalities(model: Any, what: str) -> tuple[str, ...]:
    names = tuple(getattr(model, "modality_names", ()))
    if not names:
        raise ValueError(
            f"{what} needs a deepfuse model (one with modality_names); "
            f"{type(model).__name__} has no modalities to group rows by"
        )
    return names


def _check_regression(model: Any) -> None:
    if getattr(model, "mode", "regression") != "regression":
        raise ValueError(
            "calibration_report scores regression models; for classification use "
            "predict_uncertainty(kind='vacuity') or a reliability diagram"
        )


def _present(model: Any, dataset: Dataset, drop_modalities: Iterable[str] = ()) -> np.ndarray:
    """``(N, M)`` presence of the model's modalities in each row, after ``drop_modalities``."""
    names, dropped = list(model.modality_names), set(drop_modalities)
    kept = np.array([n not in dropped for n in names])
    return presence_frame(dataset, names).to_numpy() & kept


def _errors_and_stds(
    model: Any, dataset: Dataset, transformers: list, kind: str, drop_modalities: Iterable[str] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``|y - prediction|`` and the std, ``(N, T)`` in label units, and the mask of labelled
    entries ``(N, T)``."""
    _check_regression(model)
    drop_modalities = tuple(drop_modalities)
    if drop_modalities:
        _model_modalities(model, "drop_modalities")
    # only deepfuse models take drop_modalities; a DeepChem model is called the DeepChem way
    extra = {"drop_modalities": drop_modalities} if drop_modalities else {}
    prediction, std = model.predict_uncertainty(
        dataset, transformers=transformers, kind=kind, **extra
    )
    y = undo_transforms(np.asarray(dataset.y, dtype=np.float64), transformers)
    n = len(y)
    y, prediction = y.reshape(n, -1), np.asarray(prediction, dtype=np.float64).reshape(n, -1)
    w = np.asarray(dataset.w, dtype=np.float64)
    w = np.broadcast_to(w.reshape(n, -1), y.shape) if w.size else np.ones_like(y)
    keep = (w > 0) & np.isfinite(y)
    if not keep.any():
        raise ValueError("The dataset has no labelled entries (all weights 0 or labels NaN)")
    error = np.abs(np.nan_to_num(y) - prediction)
    return error, np.asarray(std, dtype=np.float64).reshape(n, -1), keep
