"""Datasets, splits and label normalization for training: DeepChem's own tools, with the
details a fair comparison needs (the same split for every model, statistics over labelled entries
only).

Examples
--------
>>> import numpy as np
>>> from deepfuse_plugin.train.data import denormalize
>>> denormalize(np.array([[0.0], [1.0]]), {"y_means": [2.0], "y_stds": [0.5]}).ravel().tolist()
[2.0, 2.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.inputs import WorkflowError

__all__ = [
    "SPLITS",
    "make_dataset",
    "split_indices",
    "fit_normalizer",
    "normalizer_to_dict",
    "denormalize",
]

#: Splitters ``split_indices`` knows (DeepChem's ``ScaffoldSplitter`` and ``RandomSplitter``).
SPLITS = ("scaffold", "random")


def make_dataset(
    X: np.ndarray, y: np.ndarray | None, w: np.ndarray | None, ids: Sequence[str]
) -> Any:
    """A ``dc.data.NumpyDataset`` (object ``X`` kept as is)."""
    from deepchem.data import NumpyDataset

    return NumpyDataset(X, y, w, np.asarray(ids, dtype=object))


def split_indices(
    dataset: Any, split: str, seed: int, frac: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/valid/test indices from DeepChem's ``ScaffoldSplitter`` or ``RandomSplitter``.

    The indices can be applied to any dataset with the same rows (e.g. a baseline featurization),
    so every model sees exactly the same split.
    """
    import deepchem as dc

    if split not in SPLITS:
        raise WorkflowError(f"Unknown split {split!r}; choose one of {list(SPLITS)}")
    splitter = dc.splits.ScaffoldSplitter() if split == "scaffold" else dc.splits.RandomSplitter()
    train, valid, test = splitter.split(
        dataset, frac_train=frac[0], frac_valid=frac[1], frac_test=frac[2], seed=seed
    )
    return np.asarray(train, int), np.asarray(valid, int), np.asarray(test, int)


def fit_normalizer(train: Any) -> Any:
    """``dc.trans.NormalizationTransformer(transform_y=True)`` fitted on ``train``.

    DeepChem computes the mean/std over every entry, including weight-0 (missing) labels stored as
    0; when there are such entries the statistics are recomputed over the labelled entries only.
    """
    import deepchem as dc

    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=train)
    w = np.asarray(train.w, dtype=np.float64).reshape(len(train), -1)
    if (w == 0).any():
        y = np.asarray(train.y, dtype=np.float64).reshape(len(train), -1)
        labelled = np.where(w > 0, y, np.nan)
        means = np.nan_to_num(np.nanmean(labelled, axis=0))
        stds = np.nan_to_num(np.nanstd(labelled, axis=0), nan=1.0)
        stds[stds == 0] = 1.0
        transformer.y_means, transformer.y_stds = means, stds
    return transformer


def normalizer_to_dict(transformer: Any | None) -> dict[str, list[float]] | None:
    """JSON form of a y normalization (``None`` when labels were not normalized)."""
    if transformer is None:
        return None
    return {
        "y_means": np.atleast_1d(transformer.y_means).tolist(),
        "y_stds": np.atleast_1d(transformer.y_stds).tolist(),
    }


def denormalize(
    predictions: np.ndarray, normalization: dict[str, list[float]] | None
) -> np.ndarray:
    """Undo a y normalization stored by :func:`normalizer_to_dict` (``pred * std + mean``)."""
    if not normalization:
        return predictions
    return predictions * np.asarray(normalization["y_stds"]) + np.asarray(normalization["y_means"])
