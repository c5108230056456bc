"""The data preparation ``deepfuse train`` and ``deepfuse hpopt`` share: a labelled CSV read and
checked (:mod:`deepfuse_plugin.inputs`), featurized, split 80/10/10 with DeepChem's splitters and
normalized on its training split (:mod:`deepfuse_plugin.train.data`).

One function, :func:`prepare_training_data`, so that a hyper-parameter search sees exactly the
data its settings are later trained on. Re-exported by :mod:`deepfuse_plugin.workflows`.

Examples
--------
>>> from deepfuse_plugin.training_data import prepare_training_data
>>> data = prepare_training_data("esol.csv", "smiles", ["logS"])  # doctest: +SKIP
>>> data.summary()["n_train"]  # doctest: +SKIP
902
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin.inputs import (
    WorkflowError,
    labels_and_weights,
    read_csv_checked,
    valid_smiles_mask,
)
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits
from deepfuse_plugin.train.data import fit_normalizer, make_dataset, split_indices
from deepfuse_plugin.train.utils import check_training_settings, set_seed

__all__ = ["MODES", "TrainingData", "prepare_training_data", "file_sha256"]

MODES = ("regression", "classification")


@dataclass
class TrainingData:
    """A labelled CSV featurized, split 80/10/10 and normalized, ready for training or a search.

    Attributes
    ----------
    featurizer:
        The featurizer the rows were featurized with (its ``modalities`` are the model's).
    train, valid, test:
        DeepChem datasets; for regression their labels are normalized with ``normalizer``.
    transformers: list
        ``[normalizer]`` for regression, empty for classification (metrics in original units).
    normalizer:
        DeepChem ``NormalizationTransformer`` fitted on ``train`` (None for classification).
    tasks: list of str
    mode: str
    split: str
    source: str
        Absolute path of the input file.
    rows: int
        Rows in the input file.
    invalid: list of str
        One line per row left out because its input could not be used (row and reason).
    """

    featurizer: Any
    train: Any
    valid: Any
    test: Any
    transformers: list[Any]
    normalizer: Any | None
    tasks: list[str]
    mode: str
    split: str
    source: str
    rows: int
    invalid: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The run record's ``data`` entry (input file, rows, left-out rows, split sizes)."""
        return {
            "csv": self.source,
            "rows": self.rows,
            "invalid_smiles": self.invalid,
            "split": self.split,
            "n_train": len(self.train),
            "n_valid": len(self.valid),
            "n_test": len(self.test),
        }


def prepare_training_data(
    csv: str,
    smiles_column: str,
    tasks: Sequence[str],
    mode: str = "regression",
    split: str = "scaffold",
    modalities: Sequence[str] = ("ecfp", "graph", "smiles"),
    seed: int = 0,
    featurizer_kwargs: dict[str, Any] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> TrainingData:
    """Read, check, featurize, split and normalize a labelled CSV exactly as ``deepfuse train``
    does (``deepfuse hpopt`` uses the same function, so a search sees the data training will).

    Rows whose SMILES cannot be used are left out and listed in ``invalid`` (the others are
    kept); a missing label gets weight 0. The split is DeepChem's (80/10/10); regression labels
    are normalized with statistics of the training split only.

    Parameters
    ----------
    csv, smiles_column, tasks:
        Input file, its SMILES column and its label columns.
    mode: str
        ``"regression"`` or ``"classification"`` (labels 0/1).
    split: str
        ``"scaffold"`` or ``"random"``.
    modalities: sequence of str
        Built-in modality names for :class:`~deepfuse_plugin.MultiModalFeaturizer`.
    seed: int
        Seeds the split (and torch/NumPy, as training does).
    featurizer_kwargs: dict, optional
        Extra arguments of the featurizer.

    Returns
    -------
    TrainingData

    Raises
    ------
    WorkflowError
        Bad input data (missing column, no valid SMILES, non-numeric or non-0/1 labels, a task
        without labels in the training split, ...), an unknown mode or modality.

    Examples
    --------
    >>> data = prepare_training_data("esol.csv", "smiles", ["logS"],  # doctest: +SKIP
    ...                              modalities=["ecfp", "graph"], split="random")
    >>> len(data.train), len(data.valid), len(data.test)  # doctest: +SKIP
    (902, 113, 113)
    """
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    tasks = list(tasks)
    if not tasks:
        raise WorkflowError("Give at least one task column (--tasks)")
    if mode not in MODES:
        raise WorkflowError(f"Unknown mode {mode!r}; choose one of {list(MODES)}")
    check_training_settings(n_jobs=n_jobs)
    try:
        featurizer = MultiModalFeaturizer(
            list(modalities), n_jobs=n_jobs, progress=progress, **(featurizer_kwargs or {})
        )
    except (ValueError, TypeError) as err:
        raise WorkflowError(f"Cannot build the featurizer: {err}") from err
    frame, ids, y, w, invalid = _labelled_rows(csv, smiles_column, tasks, mode, featurizer.limits)
    set_seed(seed)
    dataset = make_dataset(featurizer.featurize(ids), y, w, ids)
    train, valid, test = _split(dataset, tasks, split, seed)
    normalizer = fit_normalizer(train) if mode == "regression" else None
    if normalizer is not None:
        train, valid, test = (normalizer.transform(d) for d in (train, valid, test))
    return TrainingData(
        featurizer,
        train,
        valid,
        test,
        transformers=[normalizer] if normalizer is not None else [],
        normalizer=normalizer,
        tasks=tasks,
        mode=mode,
        split=split,
        source=os.path.abspath(csv),
        rows=len(frame),
        invalid=invalid,
    )


def _split(dataset: Any, tasks: Sequence[str], split: str, seed: int) -> tuple[Any, Any, Any]:
    """Train/valid/test datasets of ``split`` (80/10/10), the training split checked."""
    train, valid, test = (dataset.select(i) for i in split_indices(dataset, split, seed))
    _check_training_split(train, tasks, split, len(dataset))
    return train, valid, test


def _labelled_rows(
    csv: str, smiles_column: str, tasks: list[str], mode: str, limits: InputLimits = DEFAULT_LIMITS
) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray, list[str]]:
    """``(frame, ids, y, w, invalid)`` of the rows with a valid SMILES (within the featurizer's
    ``limits``), labels checked."""
    frame = read_csv_checked(csv, smiles_column, tasks)
    smiles = frame[smiles_column].tolist()
    ok, invalid = valid_smiles_mask(smiles, limits=limits)
    if not ok.any():
        raise WorkflowError(
            f"None of the {len(smiles)} SMILES in column {smiles_column!r} of {csv} could be parsed"
        )
    frame_ok = frame[ok].reset_index(drop=True)
    ids = [str(s) for s in frame_ok[smiles_column]]
    y, w = labels_and_weights(frame_ok, tasks, ids)
    if mode == "classification":
        labelled = y[w > 0]
        if not np.isin(labelled, (0.0, 1.0)).all():
            bad = sorted(set(labelled[~np.isin(labelled, (0.0, 1.0))].tolist()))[:5]
            raise WorkflowError(f"Classification labels must be 0 or 1; found {bad} in {tasks}")
    return frame, ids, y, w, invalid


def _check_training_split(train: Any, tasks: Sequence[str], split: str, n_rows: int) -> None:
    """The training split must have rows, and a label for every task (else that task's head
    would stay untrained while its predictions look like any other)."""
    hint = "; try --split random" if split == "scaffold" else ""
    if len(train) == 0:
        raise WorkflowError(f"The {split} split left no training rows ({n_rows} molecules{hint})")
    counts = np.asarray(train.w, dtype=np.float64).reshape(len(train), -1).sum(axis=0)
    empty = [t for t, n in zip(tasks, counts) if n == 0]
    if empty:
        raise WorkflowError(
            f"No labelled rows for task(s) {empty} in the {split} training split "
            f"(their few labels went to validation/test){hint}, or add labels"
        )


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (a search continues only on the same data)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise WorkflowError(f"Input file {path} does not exist") from None
    except IsADirectoryError:
        raise WorkflowError(f"{path} is a folder, not a CSV file") from None
    return digest.hexdigest()
