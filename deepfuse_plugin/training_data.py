"""The data preparation ``deepfuse train`` and ``deepfuse hpopt`` share: labelled molecules (a
SMILES CSV, :mod:`deepfuse_plugin.inputs`) or crystal structures (a CIF folder, an extended XYZ
file or a CSV of CIF text, :mod:`deepfuse_plugin.structure_inputs`) read and checked, featurized,
split 80/10/10 with DeepChem's splitters and normalized on the training split
(:mod:`deepfuse_plugin.train.data`).

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
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepfuse_plugin.inputs import (
    WorkflowError,
    labels_and_weights,
    read_csv_checked,
    valid_smiles_mask,
)
from deepfuse_plugin.structure_inputs import (
    DEFAULT_CRYSTAL_MODALITIES,
    crystal_model_modalities,
    read_structures,
    structure_format,
)
from deepfuse_plugin.train.data import fit_normalizer, make_dataset, split_indices
from deepfuse_plugin.train.utils import check_training_settings, set_seed, to_jsonable

__all__ = [
    "MODES",
    "DEFAULT_MOLECULE_MODALITIES",
    "TrainingData",
    "prepare_training_data",
    "input_kind",
    "resolve_split",
    "default_modalities",
    "is_crystal_model",
    "check_model_input",
    "run_inputs",
    "RunInputs",
    "build_featurizer",
    "file_sha256",
]

logger = logging.getLogger(__name__)

MODES = ("regression", "classification")
#: Modalities of a molecule run when none are given.
DEFAULT_MOLECULE_MODALITIES = ("ecfp", "graph", "smiles")


@dataclass
class TrainingData:
    """Labelled data featurized, split 80/10/10 and normalized, ready for training or a search.

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
        Absolute path of the input file (or CIF folder).
    rows: int
        Rows in the input.
    invalid: list of str
        One line per row left out because its input could not be used (row and reason).
    input: dict
        The run record's ``input`` entry: ``{"kind": "smiles", "smiles_column": ...}`` or
        ``{"kind": "structures", "format": ..., "cif_column": ...}``.
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
    input: dict[str, Any] = field(default_factory=dict)

    @property
    def is_structures(self) -> bool:
        """Whether the rows are crystal structures (not molecules)."""
        return self.input.get("kind") == "structures"

    def summary(self) -> dict[str, Any]:
        """The run record's ``data`` entry (input file, rows, left-out rows, split sizes)."""
        return {
            "csv": self.source,
            "rows": self.rows,
            ("invalid_structures" if self.is_structures else "invalid_smiles"): self.invalid,
            "split": self.split,
            "n_train": len(self.train),
            "n_valid": len(self.valid),
            "n_test": len(self.test),
        }


def prepare_training_data(
    csv: str,
    smiles_column: str | None,
    tasks: Sequence[str],
    mode: str = "regression",
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    featurizer_kwargs: dict[str, Any] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
    cif_column: str | None = None,
) -> TrainingData:
    """Read, check, featurize, split and normalize labelled data exactly as ``deepfuse train``
    does (``deepfuse hpopt`` uses the same function, so a search sees the data training will).

    Rows whose SMILES or structure cannot be used are left out and listed in ``invalid`` (the
    others are kept); a missing label gets weight 0. The split is DeepChem's (80/10/10);
    regression labels are normalized with statistics of the training split only.

    Parameters
    ----------
    csv: str
        A CSV file; or, for crystals, a CIF folder (``id_prop.csv`` + ``<id>.cif``) or an
        extended XYZ file (:func:`~deepfuse_plugin.structure_inputs.structure_format`).
    smiles_column: str, optional
        The SMILES column of a molecule CSV (None for structures).
    tasks: sequence of str
        Label columns (XYZ: ``info`` keys; CIF folder: names of ``id_prop.csv``'s targets).
    mode: str
        ``"regression"`` or ``"classification"`` (labels 0/1).
    split: str, optional
        ``"scaffold"`` (molecules only) or ``"random"``; default scaffold for molecules, random
        for structures.
    modalities: sequence of str, optional
        Built-in modality names of :class:`~deepfuse_plugin.MultiModalFeaturizer` (default
        ``ecfp, graph, smiles``) or, for structures, of
        :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` (default
        :data:`~deepfuse_plugin.structure_inputs.DEFAULT_CRYSTAL_MODALITIES`).
    seed: int
        Seeds the split (and torch/NumPy, as training does).
    featurizer_kwargs: dict, optional
        Extra arguments of the featurizer.
    cif_column: str, optional
        A CSV column of CIF text (the rows are crystal structures).

    Returns
    -------
    TrainingData

    Raises
    ------
    WorkflowError
        Bad input data (missing column, no readable row, non-numeric or non-0/1 labels, a task
        without labels in the training split, ...), an unknown mode, modality or split.

    Examples
    --------
    >>> data = prepare_training_data("esol.csv", "smiles", ["logS"],  # doctest: +SKIP
    ...                              modalities=["ecfp", "graph"], split="random")
    >>> len(data.train), len(data.valid), len(data.test)  # doctest: +SKIP
    (902, 113, 113)
    """
    tasks = list(tasks)
    if not tasks:
        raise WorkflowError("Give at least one task column (--tasks)")
    if mode not in MODES:
        raise WorkflowError(f"Unknown mode {mode!r}; choose one of {list(MODES)}")
    check_training_settings(n_jobs=n_jobs)
    kind = input_kind(csv, smiles_column, cif_column)
    split = resolve_split(split, kind)
    featurizer = build_featurizer(kind, modalities, n_jobs, progress, featurizer_kwargs)
    set_seed(seed)
    if kind == "smiles":
        X, ids, y, w, invalid, rows = _smiles_rows(csv, str(smiles_column), tasks, mode, featurizer)
        entry: dict[str, Any] = {"kind": "smiles", "smiles_column": smiles_column}
    else:
        X, ids, y, w, invalid, rows = _structure_rows(csv, cif_column, tasks, mode, featurizer)
        entry = {"kind": "structures", "format": kind, "cif_column": cif_column}
    dataset = make_dataset(X, y, w, ids)
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
        rows=rows,
        invalid=invalid,
        input=entry,
    )


def input_kind(path: str, smiles_column: str | None, cif_column: str | None) -> str:
    """``"smiles"`` or a :data:`~deepfuse_plugin.structure_inputs.STRUCTURE_FORMATS` entry, with
    the column options checked against it."""
    kind = structure_format(path, cif_column)
    if kind is None:
        if not smiles_column:
            raise WorkflowError(
                f"Give --smiles-column for a CSV of molecules ({path}), or --cif-column for a "
                "CSV of CIF text"
            )
        return "smiles"
    if smiles_column and cif_column:
        raise WorkflowError("Give --smiles-column or --cif-column, not both")
    if smiles_column:
        raise WorkflowError(
            f"--smiles-column does not apply to {path} (a {kind.replace('_', ' ')} of crystal "
            "structures); leave it out"
        )
    return kind


def resolve_split(split: str | None, kind: str) -> str:
    """The split of an input kind: scaffold for molecules, random for structures by default; a
    scaffold split of structures is refused (scaffolds are a molecule's)."""
    if split is None:
        return "scaffold" if kind == "smiles" else "random"
    if split == "scaffold" and kind != "smiles":
        raise WorkflowError(
            "--split scaffold groups molecules by their Bemis-Murcko scaffold and does not "
            "apply to crystal structures; use --split random"
        )
    return split


def default_modalities(
    kind: str, model: str | None = None, backbone: str | None = None
) -> list[str]:
    """The modalities of a run when none are given: by input kind, and for a crystal model
    (``--model matmmfuse``) the structure graph its ``backbone`` reads and the text
    description's sentences
    (:func:`~deepfuse_plugin.structure_inputs.crystal_model_modalities`).

    Examples
    --------
    >>> default_modalities("smiles"), default_modalities("extxyz")
    (['ecfp', 'graph', 'smiles'], ['graph', 'composition'])
    >>> default_modalities("cif_folder", "matmmfuse")
    ['graph', 'text_sentences']
    """
    if kind == "smiles":
        return list(DEFAULT_MOLECULE_MODALITIES)
    if model is not None and is_crystal_model(model):
        return crystal_model_modalities(backbone)
    return list(DEFAULT_CRYSTAL_MODALITIES)


def is_crystal_model(model: str) -> bool:
    """Whether ``model`` is registered as a crystal model (structures only, e.g. MatMMFuse)."""
    import deepfuse_plugin  # noqa: F401  (importing it registers every model)
    from deepfuse_plugin.models.registry import available_models

    return model in available_models("crystal")


def check_model_input(model: str, kind: str) -> None:
    """Refuse a crystal model on molecules (its encoders read structure graphs and text
    descriptions), naming the models that take molecules."""
    if kind == "smiles" and is_crystal_model(model):
        from deepfuse_plugin.models.registry import available_models

        raise WorkflowError(
            f"--model {model} is a crystal-structure model (structure graph + text description); "
            "give crystal structures (a CIF folder, an extended XYZ file, or a CSV with "
            f"--cif-column), or a model for molecules: {', '.join(available_models('fusion'))}"
        )


@dataclass(frozen=True)
class RunInputs:
    """The labelled data of a run (``deepfuse train``) or a search (``deepfuse hpopt``), resolved
    and checked before any work: the input's ``kind``, the ``split`` and the ``modalities``
    (:func:`run_inputs`). :meth:`prepare` reads, featurizes, splits and normalizes them."""

    csv: str
    smiles_column: str | None
    tasks: list[str]
    mode: str
    kind: str
    split: str
    modalities: list[str]
    seed: int = 0
    featurizer_kwargs: dict[str, Any] = field(default_factory=dict)
    n_jobs: int = 1
    cif_column: str | None = None

    def prepare(self, progress: bool = True) -> TrainingData:
        """:func:`prepare_training_data` of these inputs."""
        return prepare_training_data(
            self.csv,
            self.smiles_column,
            self.tasks,
            mode=self.mode,
            split=self.split,
            modalities=self.modalities,
            seed=self.seed,
            featurizer_kwargs=self.featurizer_kwargs,
            n_jobs=self.n_jobs,
            progress=progress,
            cif_column=self.cif_column,
        )

    def describe(self) -> dict[str, Any]:
        """The inputs as JSON values, the input's content as its SHA-256 (:func:`file_sha256`):
        a search continues only on the same data."""
        return {
            "csv": os.path.abspath(self.csv),
            "csv_sha256": file_sha256(self.csv),
            "smiles_column": self.smiles_column,
            "cif_column": self.cif_column,
            "tasks": list(self.tasks),
            "mode": self.mode,
            "split": self.split,
            "modalities": list(self.modalities),
            "seed": self.seed,
            "featurizer": to_jsonable(self.featurizer_kwargs),
        }


def run_inputs(
    csv: str,
    smiles_column: str | None,
    tasks: Sequence[str],
    *,
    mode: str = "regression",
    model: str = "dynamic",
    backbone: str | None = None,
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    featurizer_kwargs: dict[str, Any] | None = None,
    n_jobs: int = 1,
    cif_column: str | None = None,
) -> RunInputs:
    """The :class:`RunInputs` of a run of ``model`` (``deepfuse train`` and ``deepfuse hpopt``
    alike), checked before any work: the input kind (:func:`input_kind`), the split
    (:func:`resolve_split`) and the modalities (the given ones, else :func:`default_modalities`
    of the kind, ``model`` and ``backbone``); a crystal model on molecules is refused.

    Examples
    --------
    >>> inputs = run_inputs("crystals.extxyz", None, ["e_form"], model="matmmfuse")
    >>> inputs.kind, inputs.split, inputs.modalities
    ('extxyz', 'random', ['graph', 'text_sentences'])
    """
    kind = input_kind(csv, smiles_column, cif_column)
    check_model_input(model, kind)
    return RunInputs(
        csv,
        smiles_column,
        list(tasks),
        mode,
        kind,
        resolve_split(split, kind),
        list(modalities) if modalities else default_modalities(kind, model, backbone),
        seed,
        dict(featurizer_kwargs or {}),
        n_jobs,
        cif_column,
    )


def build_featurizer(
    kind: str,
    modalities: Sequence[str] | None,
    n_jobs: int = 1,
    progress: bool = True,
    featurizer_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The molecule or crystal featurizer of an input kind (an unknown modality is refused with
    the names there are)."""
    names = list(modalities) if modalities else default_modalities(kind)
    featurizer_class: type
    if kind == "smiles":
        from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

        featurizer_class = MultiModalFeaturizer
    else:
        from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

        featurizer_class = CrystalMultiModalFeaturizer
    try:
        return featurizer_class(
            names, n_jobs=n_jobs, progress=progress, **(featurizer_kwargs or {})
        )
    except (ValueError, TypeError) as err:
        raise WorkflowError(f"Cannot build the featurizer: {err}") from err


def _split(dataset: Any, tasks: Sequence[str], split: str, seed: int) -> tuple[Any, Any, Any]:
    """Train/valid/test datasets of ``split`` (80/10/10), the training split checked."""
    train, valid, test = (dataset.select(i) for i in split_indices(dataset, split, seed))
    _check_training_split(train, tasks, split, len(dataset))
    return train, valid, test


def _smiles_rows(
    csv: str, smiles_column: str, tasks: list[str], mode: str, featurizer: Any
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, list[str], int]:
    """``(X, ids, y, w, invalid, rows)`` of the rows with a valid SMILES (within the
    featurizer's limits), labels parsed."""
    frame = read_csv_checked(csv, smiles_column, tasks)
    smiles = frame[smiles_column].tolist()
    ok, invalid = valid_smiles_mask(smiles, limits=featurizer.limits)
    if not ok.any():
        raise WorkflowError(
            f"None of the {len(smiles)} SMILES in column {smiles_column!r} of {csv} could be parsed"
        )
    frame_ok = frame[ok].reset_index(drop=True)
    ids = [str(s) for s in frame_ok[smiles_column]]
    y, w = labels_and_weights(frame_ok, tasks, ids)
    _check_classification_labels(y, w, tasks, mode)  # before the featurization's minutes
    return featurizer.featurize(ids), ids, y, w, invalid, len(frame)


def _structure_rows(
    path: str, cif_column: str | None, tasks: list[str], mode: str, featurizer: Any
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, list[str], int]:
    """``(X, ids, y, w, invalid, rows)`` of the structures that could be read and featurized
    (within the featurizer's limits), labels parsed; the others are listed in ``invalid``."""
    read = read_structures(path, cif_column, tasks)
    problems = dict(read.problems)
    rows = read.readable()
    if not len(rows):
        _log_unusable(problems, read.ids)
        raise WorkflowError(f"None of the {len(read.ids)} structures in {path} could be read")
    ids = [read.ids[i] for i in rows]
    # labels checked before the featurization's minutes
    y, w = labels_and_weights(read.frame.iloc[rows].reset_index(drop=True), tasks, ids)
    _check_classification_labels(y, w, tasks, mode)
    X = featurizer.featurize([read.structures[i] for i in rows])
    for position, reason in featurizer.last_failures.items():
        problems[int(rows[position])] = reason
    keep = np.array([i not in problems for i in rows], dtype=bool)
    _log_unusable(problems, read.ids)
    if not keep.any():
        raise WorkflowError(f"None of the {len(read.ids)} structures in {path} could be used")
    kept_ids = [i for i, k in zip(ids, keep) if k]
    invalid = [f"{i}: {read.ids[i]}: {problems[i]}" for i in sorted(problems)]
    return X[keep], kept_ids, y[keep], w[keep], invalid, len(read.ids)


def _log_unusable(problems: dict[int, str], ids: list[str]) -> None:
    if problems:
        shown = [f"{i}: {ids[i]}: {problems[i]}" for i in sorted(problems)[:5]]
        logger.warning(
            "%d of %d structures cannot be used; those rows are left out (row: id: reason): %s%s",
            len(problems),
            len(ids),
            "; ".join(shown),
            " ..." if len(problems) > 5 else "",
        )


def _check_classification_labels(y: np.ndarray, w: np.ndarray, tasks: list[str], mode: str) -> None:
    if mode != "classification":
        return
    labelled = y[w > 0]
    if not np.isin(labelled, (0.0, 1.0)).all():
        bad = sorted(set(labelled[~np.isin(labelled, (0.0, 1.0))].tolist()))[:5]
        raise WorkflowError(f"Classification labels must be 0 or 1; found {bad} in {tasks}")


def _check_training_split(train: Any, tasks: Sequence[str], split: str, n_rows: int) -> None:
    """The training split must have rows, and a label for every task (else that task's head
    would stay untrained while its predictions look like any other)."""
    hint = "; try --split random" if split == "scaffold" else ""
    if len(train) == 0:
        raise WorkflowError(f"The {split} split left no training rows ({n_rows} rows{hint})")
    counts = np.asarray(train.w, dtype=np.float64).reshape(len(train), -1).sum(axis=0)
    empty = [t for t, n in zip(tasks, counts) if n == 0]
    if empty:
        raise WorkflowError(
            f"No labelled rows for task(s) {empty} in the {split} training split "
            f"(their few labels went to validation/test){hint}, or add labels"
        )


def file_sha256(path: str) -> str:
    """SHA-256 of an input's bytes (a search continues only on the same data); for a CIF folder,
    of its files' names and bytes."""
    digest = hashlib.sha256()
    if not os.path.exists(path):
        raise WorkflowError(f"Input file {path} does not exist")
    files = (
        [os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    )
    for name in files:
        if not os.path.isfile(name):
            continue
        digest.update(os.path.basename(name).encode("utf-8", "replace") + b"\0")
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
