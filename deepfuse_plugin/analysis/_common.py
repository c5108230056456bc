"""Helpers shared by the analyses: metrics, labels, sample-level modality edits, result type.

Nothing here imports matplotlib, captum or scikit-learn: ``import deepfuse_plugin`` stays fast and
the heavy packages load only when an analysis that needs them runs (:mod:`.plots` imports
matplotlib inside its functions).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from deepchem.data import Dataset, NumpyDataset
from deepchem.metrics import Metric
from deepchem.trans import undo_transforms

from deepfuse_plugin.analysis import plots
from deepfuse_plugin.modalities import MultiModalSample

logger = logging.getLogger("deepfuse_plugin.analysis")

PlotArg = bool | str | os.PathLike | None


class AnalysisResult(NamedTuple):
    """What every analysis returns: a tidy table and its figure.

    Unpacks like a tuple (``table, fig = evaluate_missing_modalities(...)``). ``figure`` is a
    ``matplotlib.figure.Figure``, or ``None`` when the analysis ran with ``plot=False``.
    """

    table: pd.DataFrame
    figure: Any = None


class NoModalityWeightsError(ValueError):
    """The model's fusion layer has no modality weights (e.g. early fusion: concatenation)."""


# -- metrics and labels -------------------------------------------------------------------------
def resolve_metrics(metrics: Metric | Callable | Sequence[Metric | Callable]) -> list[Metric]:
    """DeepChem ``Metric`` objects from a Metric, a metric function or a list of either."""
    if isinstance(metrics, Metric) or callable(metrics):
        metrics = [metrics]
    out = [m if isinstance(m, Metric) else Metric(m) for m in metrics]
    if not out:
        raise ValueError("Give at least one metric (e.g. dc.metrics.Metric(dc.metrics.r2_score))")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Metric names must be unique, got {names}")
    return out


def output_transformers(transformers: Sequence[Any]) -> list[Any]:
    """The transformers that act on labels (what DeepChem's ``Evaluator`` undoes)."""
    return [t for t in transformers if getattr(t, "transform_y", False)]


def true_labels(dataset: Dataset, transformers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(y, w)`` with label transforms undone, as ``model.evaluate`` sees them."""
    y = undo_transforms(dataset.y, output_transformers(transformers))
    return np.asarray(y), np.asarray(dataset.w)


def score(
    metric: Metric,
    model: Any,
    y: np.ndarray,
    y_pred: np.ndarray,
    w: np.ndarray,
    keep: np.ndarray | None = None,
) -> tuple[float, str]:
    """``(value, reason)``: the metric on the rows ``keep`` (NaN and the error if it cannot be
    computed, e.g. ROC-AUC on rows of a single class)."""
    if keep is not None:
        y, y_pred, w = y[keep], y_pred[keep], w[keep]
    try:
        value = metric.compute_metric(
            y, y_pred, w, n_tasks=model.n_tasks, n_classes=getattr(model, "n_classes", 2)
        )
    except (ValueError, ZeroDivisionError, IndexError) as err:
        logger.warning(
            "Metric %s could not be computed on %d samples: %s", metric.name, len(y), err
        )
        return float("nan"), f"metric failed: {err}"
    return float(np.mean(value)), ""


# -- samples ------------------------------------------------------------------------------------
def samples_of(dataset: Dataset) -> list[MultiModalSample]:
    """The dataset's ``MultiModalSample`` objects in row order, with a clear error otherwise."""
    if len(dataset) == 0:
        raise ValueError("The dataset has no rows: nothing to analyse")
    X = np.asarray(dataset.X, dtype=object)
    bad = [i for i, x in enumerate(X) if not isinstance(x, MultiModalSample)]
    if bad:
        raise TypeError(
            f"Rows {bad[:5]} of the dataset are not MultiModalSample objects: "
            "featurize the data with a deepfuse featurizer (e.g. MultiModalFeaturizer)"
        )
    return list(X)


def with_samples(dataset: Dataset, samples: Sequence[MultiModalSample]) -> NumpyDataset:
    """A ``NumpyDataset`` with ``samples`` as X and ``dataset``'s labels, weights and ids."""
    X = np.empty(len(samples), dtype=object)
    X[:] = list(samples)
    return NumpyDataset(X, dataset.y, dataset.w, dataset.ids)


def presence(samples: Sequence[MultiModalSample], names: Sequence[str]) -> np.ndarray:
    """``(N, M)`` bool: is modality ``names[j]`` present in sample ``i``?"""
    if not len(samples):
        return np.zeros((0, len(names)), dtype=bool)
    return np.stack([s.mask(names) for s in samples])


def rows_with_any(mask: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: does row ``i`` of the ``(N, M)`` bool ``mask`` hold a True?

    ``mask.any(axis=1)`` typed as an array (NumPy's stubs allow a scalar for ``axis=None``).
    """
    return np.asarray(mask.any(axis=1), dtype=bool)


def random_drop(
    samples: Sequence[MultiModalSample],
    candidates: Sequence[str],
    guard: Sequence[str],
    rate: float,
    rng: np.random.Generator,
) -> tuple[list[MultiModalSample], np.ndarray]:
    """Drop each present modality in ``candidates`` with probability ``rate``, per sample.

    A sample never loses its last present modality among ``guard`` (the model's modalities): when
    every present one would go, one of the chosen, picked uniformly, is kept. Returns the new
    samples and the ``(N, len(guard))`` boolean matrix of what was dropped.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Drop rates must be in [0, 1), got {rate}")
    guard = list(guard)
    dropped = np.zeros((len(samples), len(guard)), dtype=bool)
    out = []
    for i, sample in enumerate(samples):
        draws = rng.random(len(candidates))  # a draw per candidate, present or not: stable stream
        chosen = [n for n, u in zip(candidates, draws) if u < rate and sample.present(n)]
        left = [n for n in guard if sample.present(n) and n not in chosen]
        if chosen and not left and any(n in guard for n in chosen):
            in_guard = [n for n in chosen if n in guard]
            chosen.remove(in_guard[int(rng.integers(len(in_guard)))])
        for n in chosen:
            if n in guard:
                dropped[i, guard.index(n)] = True
        out.append(sample.without(chosen, reason="dropped by analysis") if chosen else sample)
    return out, dropped


def shuffle_modality(
    samples: Sequence[MultiModalSample], name: str, rng: np.random.Generator
) -> list[MultiModalSample]:
    """Permute modality ``name``'s values among the samples where it is present (presence kept)."""
    rows = [i for i, s in enumerate(samples) if s.present(name)]
    order = rng.permutation(len(rows))
    out = list(samples)
    for k, i in enumerate(rows):
        source = samples[rows[order[k]]]
        sample = samples[i]
        out[i] = MultiModalSample(
            {**sample.values, name: source.values[name]},
            dict(sample.missing_reasons),
            sample.fingerprints,
        )
    return out


# -- argument handling --------------------------------------------------------------------------
def as_seeds(seeds: int | Iterable[int]) -> list[int]:
    out = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not out:
        raise ValueError("Give at least one seed")
    return out


def modality_universe(
    model: Any, samples: Sequence[MultiModalSample], modalities: Sequence[str] | None
) -> list[str]:
    """The modalities an analysis varies: the model's (default) or the names given, which must be
    the model's or the data's modalities."""
    if modalities is None:
        return list(model.modality_names)
    names = [modalities] if isinstance(modalities, str) else list(dict.fromkeys(modalities))
    known = set(model.modality_names) | set(samples[0].modality_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"Unknown modalities {unknown}: the model has {model.modality_names}, the "
            f"data {list(samples[0].modality_names)}"
        )
    return names


def plot_path(plot: PlotArg) -> str | os.PathLike | None:
    """The save path carried by a ``plot=`` argument (``True``/``False`` carry none)."""
    return None if isinstance(plot, bool) or plot is None else plot


def iterate_network(model: Any, dataset: Dataset, drop: Iterable[str] = ()) -> Iterable[tuple]:
    """``(NetworkOutput, FusionOutput)`` per batch, evaluation mode, no gradients
    (:meth:`~deepfuse_plugin.models.base.MultiModalTorchModel.iterate_outputs`)."""
    for outputs in model.iterate_outputs(dataset, tuple(drop)):
        yield outputs.network, outputs.fusion


def finish_result(table: pd.DataFrame, model: Any, plot: PlotArg, plotter: str) -> AnalysisResult:
    """Tag ``table`` with the model's class name and draw it with ``plots.<plotter>`` when asked."""
    table.attrs.setdefault("model", type(model).__name__)
    if plot is False or plot is None:
        return AnalysisResult(table, None)
    return AnalysisResult(table, getattr(plots, plotter)(table, plot_path(plot)))
