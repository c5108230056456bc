"""Row checks of predictions: no output is silently non-finite or made from nothing.

A row fails when the network's output for it is not finite (NaN/inf: damaged weights, inputs
far outside the training data) or when none of its modalities is present (the prediction would
be a constant from biases alone). :meth:`MultiModalTorchModel.predict` returns such rows as NaN
and logs a warning naming their ids; :meth:`MultiModalTorchModel.predict_checked` also returns
which rows failed and why (:class:`CheckedPredictions`).

Examples
--------
>>> import numpy as np, torch
>>> reasons = row_problems(torch.tensor([[1.0], [float("nan")], [2.0]]),
...                        torch.tensor([[True], [True], [False]]))
>>> reasons.tolist()
['', 'non-finite model output', 'no modality present']
>>> mark_failed_rows(np.array([[1.0], [5.0], [2.0]]), reasons).ravel().tolist()
[1.0, nan, nan]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepfuse_plugin.errors import InvalidSettingError

NON_FINITE = "non-finite model output"
NO_MODALITY = "no modality present"


@dataclass(frozen=True)
class CheckedPredictions:
    """Predictions with the rows that failed.

    Attributes
    ----------
    values: numpy.ndarray
        What ``predict`` returns (``(N, n_tasks)``; classification ``(N, n_tasks, n_classes)``),
        every entry of a failed row NaN, every other entry finite.
    reasons: numpy.ndarray of str, shape ``(N,)``
        ``""`` for a good row, else why it failed: :data:`NON_FINITE` or :data:`NO_MODALITY`.
    ids: numpy.ndarray, shape ``(N,)``
        The dataset's ids.
    """

    values: np.ndarray
    reasons: np.ndarray
    ids: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """``(N,)`` bool: the row has a real prediction."""
        return self.reasons == ""

    @property
    def failed_ids(self) -> list[str]:
        """Ids of the failed rows, in dataset order."""
        return [str(i) for i in self.ids[~self.ok]]


def drop_names(drop: str | Iterable[str] | None, names: Sequence[str]) -> tuple[str, ...]:
    """``drop_modalities`` as a tuple of modality names, checked against the model's ``names``.

    A plain string is one name (not its letters). Unknown names, or names covering every
    modality (the prediction would be a constant), are an
    :class:`~deepfuse_plugin.errors.InvalidSettingError`.
    """
    if drop is None:
        return ()
    drop = (drop,) if isinstance(drop, str) else tuple(drop)
    not_names = [d for d in drop if not isinstance(d, str)]
    if not_names:
        raise InvalidSettingError(
            f"drop_modalities must hold modality names (strings), got "
            f"{not_names[:5]}; the model's modalities are {list(names)}"
        )
    unknown = sorted(set(drop) - set(names))
    if unknown:
        raise InvalidSettingError(
            f"Cannot drop {unknown}: the model's modalities are {list(names)}"
        )
    if drop and set(names) <= set(drop):
        raise InvalidSettingError(
            f"drop_modalities={list(drop)} removes every modality of the "
            f"model ({list(names)}): every prediction would be the same "
            "constant. Keep at least one modality."
        )
    return drop


def row_problems(prediction: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per row of a batch: ``""`` (fine), :data:`NO_MODALITY` or :data:`NON_FINITE`."""
    n = prediction.shape[0]
    finite = torch.isfinite(prediction.reshape(n, -1)).all(dim=1).cpu().numpy()
    present = mask.any(dim=1).cpu().numpy() if mask.shape[1] else np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    reasons[~finite] = NON_FINITE
    reasons[~present] = NO_MODALITY  # its output means nothing, finite or not
    return reasons


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: rows of ``values`` with a NaN/inf entry."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc" or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def mark_failed_rows(values: np.ndarray, reasons: np.ndarray) -> np.ndarray:
    """``values`` with every entry of a failed row (``reasons != ""``) set to NaN."""
    failed = np.asarray(reasons) != ""
    if not failed.any() or np.asarray(values).dtype.kind not in "fc":
        return values
    values = np.array(values, copy=True)
    values[failed] = np.nan
    return values


def warn_failed_rows(reasons: np.ndarray, ids: Sequence[Any], log: logging.Logger) -> None:
    """One warning per reason naming the first ids of the rows that failed for it."""
    for reason in sorted({r for r in reasons if r}):
        rows = np.flatnonzero(reasons == reason)
        named = [str(ids[r]) if ids is not None and len(ids) > r else str(r) for r in rows[:10]]
        log.warning(
            "%d row(s) got no prediction (%s; returned as NaN): ids %s%s",
            len(rows),
            reason,
            named,
            " ..." if len(rows) > 10 else "",
        )
