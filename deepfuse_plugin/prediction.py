"""``deepfuse predict``: load a run folder safely and predict every row of a CSV with it.

:func:`load_run` checks a run folder before any weight is loaded (the record's and the model's
checksums, see :func:`~deepfuse_plugin.run_folder.verify_record`) and the record against the
model; :func:`predict_from_csv` keeps every input row, with a ``deepfuse_status`` column saying
why a row has no prediction. Everything here is re-exported by :mod:`deepfuse_plugin.workflows`.

Examples
--------
>>> from deepfuse_plugin.prediction import predict_from_csv
>>> frame = predict_from_csv("results/esol", "molecules.csv")  # doctest: +SKIP
>>> frame[["smiles", "y_pred", "deepfuse_status"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin import run_folder
from deepfuse_plugin.errors import CorruptCheckpointError, RunFolderError
from deepfuse_plugin.inputs import WorkflowError, read_csv_checked
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits
from deepfuse_plugin.models.predictions import NON_FINITE, non_finite_rows
from deepfuse_plugin.run_folder import RUN_FILE
from deepfuse_plugin.train.data import denormalize, make_dataset
from deepfuse_plugin.train.metrics import task_columns
from deepfuse_plugin.train.utils import check_training_settings

__all__ = ["load_run", "predict_with_std", "predict_from_csv", "CORRUPT_OUTPUT_FRACTION"]

logger = logging.getLogger(__name__)

#: Above this fraction of non-finite outputs the model, not the rows, is the problem.
CORRUPT_OUTPUT_FRACTION = 0.5


# -- loading a run -------------------------------------------------------------------------------
def load_run(model_dir: str) -> tuple[Any, dict[str, Any]]:
    """The model and run record of a run folder (or of a bare model folder, without record).

    A run folder's record and model files are checked against the checksums written at training
    before any weight is loaded (:func:`~deepfuse_plugin.run_folder.verify_record`), and the
    record's mode, tasks and modalities against the loaded model.

    Raises
    ------
    RunFolderError
        ``model_dir`` is missing, or neither a run folder nor a deepfuse model folder, or its
        model folder is missing.
    CorruptCheckpointError
        The record or a model file is unreadable, edited, truncated or replaced.
    """
    from deepfuse_plugin.models.base import CONFIG_FILE

    if not os.path.isdir(model_dir):
        raise RunFolderError(
            f"Model folder {model_dir} does not exist"
            if not os.path.exists(model_dir)
            else f"{model_dir} is a file, not a run "
            "folder; give the folder written by 'deepfuse train --out'"
        )
    run_path = os.path.join(model_dir, RUN_FILE)
    if os.path.exists(run_path):
        record = _read_record(run_path)
        inside = str(record.get("model_dir", "model"))
        if os.path.isabs(inside) or ".." in inside.replace("\\", "/").split("/"):
            raise CorruptCheckpointError(
                f"{run_path} points its model_dir outside the run folder "
                f"({inside!r}); restore the original record"
            )
        folder = os.path.join(model_dir, inside)
        if not os.path.isdir(folder) or not os.listdir(folder):
            raise RunFolderError(
                f"{model_dir} has a {RUN_FILE} but its model folder {folder} is "
                f"{'empty' if os.path.isdir(folder) else 'missing'}: the run "
                "folder is incomplete; copy it again or train again"
            )
        run_folder.verify_record(record, model_dir)
    elif os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        logger.warning(
            "%s has no %s: using the bare model (no y de-normalization, give --smiles-column)",
            model_dir,
            RUN_FILE,
        )
        record, folder = {}, model_dir
    else:
        raise RunFolderError(
            f"{model_dir} is not a deepfuse run folder (no {RUN_FILE}) nor a "
            f"model folder (no {CONFIG_FILE})"
        )
    model = _load_model(folder)
    _check_record_matches_model(record, model, run_path)
    record.setdefault("tasks", [f"task{i}" for i in range(model.n_tasks)])
    record.setdefault("mode", model.mode)
    return model, record


def _read_record(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise CorruptCheckpointError(
            f"{path} is not a readable run record ({err}); restore it or train again"
        ) from None
    if not isinstance(record, dict):
        raise CorruptCheckpointError(f"{path} is not a run record (a JSON object was expected)")
    return record


def _load_model(folder: str) -> Any:
    """``MultiModalTorchModel.load(folder)`` with every way a damaged folder fails turned into
    one :class:`~deepfuse_plugin.errors.CorruptCheckpointError` naming the folder."""
    import zipfile
    from pickle import UnpicklingError  # the error class only: nothing here unpickles

    from deepfuse_plugin.models.base import MultiModalTorchModel

    try:
        return MultiModalTorchModel.load(folder, progress=False)
    except CorruptCheckpointError:
        raise
    except FileNotFoundError as err:
        raise RunFolderError(f"{err}") from None
    except (
        ValueError,
        TypeError,
        KeyError,
        RuntimeError,
        EOFError,
        OSError,
        UnpicklingError,
        zipfile.BadZipFile,
    ) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CorruptCheckpointError(
            f"Cannot load the model in {folder}: {type(err).__name__}: "
            f"{first}. The checkpoint or its configuration is damaged "
            "or was edited; copy the run folder again or train again"
        ) from err


def _check_record_matches_model(record: dict[str, Any], model: Any, run_path: str) -> None:
    """What the record says about the outputs (mode, number of tasks, modalities, model class,
    normalization) must be what the model computes; a mismatch would misread every prediction."""
    if not record:
        return
    problems = []
    if record.get("mode", model.mode) != model.mode:
        problems.append(f"mode {record['mode']!r}, the model's is {model.mode!r}")
    tasks = record.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or len(tasks) != model.n_tasks):
        problems.append(f"tasks {tasks!r}, the model has {model.n_tasks} output(s)")
    saved_names = record.get("modalities")
    if saved_names and saved_names != model.modality_names:
        problems.append(f"modalities {saved_names}, the model has {model.modality_names}")
    if record.get("model_class", type(model).__name__) != type(model).__name__:
        problems.append(
            f"model_class {record['model_class']!r}, the model is a {type(model).__name__}"
        )
    normalization = record.get("normalization")
    if normalization:
        for key in ("y_means", "y_stds"):
            try:
                values = np.asarray(normalization.get(key, []), dtype=np.float64).ravel()
            except (TypeError, ValueError, AttributeError):
                values = np.array([np.nan])
            if len(values) != model.n_tasks or not np.isfinite(values).all():
                problems.append(
                    f"normalization {key} {normalization.get(key)!r} does not fit "
                    f"{model.n_tasks} task(s)"
                )
    if problems:
        raise CorruptCheckpointError(
            f"{run_path} does not match its model: it records "
            f"{'; '.join(problems)}; restore the original record or "
            "train again"
        )


def predict_with_std(
    model: Any, dataset: Any, record: dict[str, Any], model_dir: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, n_tasks)`` predictions in original units (classification: P(class 1)) and, for an
    evidential model, their std from the same forward pass (regression: rescaled with the run's
    ``std_scales.json`` when it has one; classification: the Dirichlet std of P(class 1)); the
    std is None for other models. Rows the model could not predict (a non-finite output, no
    modality present) are NaN."""
    pred, std, _ = _checked_predictions(model, dataset, record, model_dir)
    return pred, std


def _checked_predictions(
    model: Any, dataset: Any, record: dict[str, Any], model_dir: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`predict_with_std`'s arrays and, per row, ``""`` or why the model gave no
    prediction (its own row checks: :meth:`~deepfuse_plugin.MultiModalTorchModel.predict_checked`,
    or :attr:`~deepfuse_plugin.MultiModalTorchModel.last_row_problems` after
    ``predict_uncertainty``)."""
    from deepfuse_plugin.models.calibration import StdScales

    mode, n = record.get("mode", model.mode), len(dataset)
    normalization = record.get("normalization")
    if not getattr(model, "uncertainty", None):
        checked = model.predict_checked(dataset)
        pred = task_columns(checked.values, mode)
        return (
            (denormalize(pred, normalization) if mode == "regression" else pred),
            None,
            checked.reasons,
        )
    if mode == "classification":
        pred, std = model.predict_uncertainty(dataset)
        return (
            pred[..., 1].reshape(n, -1),
            std[..., 1].reshape(n, -1),
            _last_row_reasons(model, n),
        )
    path = os.path.join(model_dir, (record.get("uncertainty") or {}).get("std_scales") or "")
    if os.path.isfile(path):
        with open(path) as fh:
            pred, std = StdScales.from_dict(json.load(fh)).predict_uncertainty(model, dataset)
    else:
        pred, std = model.predict_uncertainty(dataset)
    y_stds = np.asarray((normalization or {}).get("y_stds", 1.0))
    return (
        denormalize(pred.reshape(n, -1), normalization),
        std.reshape(n, -1) * y_stds,
        _last_row_reasons(model, n),
    )


def _last_row_reasons(model: Any, n: int) -> np.ndarray:
    reasons = np.full(n, "", dtype=object)
    for row, reason in model.last_row_problems.items():
        reasons[row] = reason
    return reasons


def _featurizer_limits(record: dict[str, Any]) -> InputLimits:
    """The input limits the run was trained with; the defaults for a record without them (an
    older deepfuse, a bare model folder)."""
    saved = (record.get("featurizer") or {}).get("limits")
    if saved is None:
        return DEFAULT_LIMITS
    try:
        return InputLimits(**saved)
    except (TypeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"The run record's featurizer limits {saved!r} are not valid "
            f"({err}); restore the original record or train again"
        ) from None


# -- deepfuse predict ----------------------------------------------------------------------------
def predict_from_csv(
    model_dir: str,
    csv: str,
    smiles_column: str | None = None,
    out: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
    cif_column: str | None = None,
) -> pd.DataFrame:
    """Predict every row of ``csv`` with a saved run; rows with unparseable SMILES (or
    unreadable structures) get empty predictions (and are reported), never dropped.

    Returns the input rows, their cells exactly as written (read as text), plus one
    ``<task>_pred`` column per task (regression: original units; classification: probability of
    class 1) and a ``deepfuse_status`` column (``"ok"`` or why the row has no prediction: an
    invalid SMILES or one over the run's input limits, no modality computable, or a non-finite
    model output). An evidential model adds ``<task>_std``: the std of the prediction
    (regression: original units, times the run's factor for the row's present modalities when
    ``std_scales.json`` exists; classification: the Dirichlet std of P(class 1)). Written to
    ``out`` when given. Molecules are featurized with the input limits recorded at training.
    ``frame.attrs["input_kind"]`` is ``"smiles"`` or ``"structures"``.

    A run trained on crystal structures predicts structures: ``csv`` is then a CIF folder
    (``id_prop.csv`` + ``<id>.cif``, or just ``.cif`` files), an extended XYZ file, or a CSV
    with ``cif_column`` (default: the run's); a folder's or XYZ file's rows are an ``id`` column
    (and the frames' ``info``), with ``formula`` added.

    Parameters
    ----------
    overwrite: bool
        Replace an existing ``out`` (never the input ``csv``, nor a file of the run folder).
    cif_column: str, optional
        The column of CIF text of a CSV of structures.

    Raises
    ------
    RunFolderError
        ``out`` exists (without ``overwrite``), is the input, or lies inside the run folder.
    CorruptCheckpointError
        The run folder fails its checks (:func:`load_run`), or the model gives non-finite
        outputs for most rows (damaged weights).
    WorkflowError
        An input column clashes with an output column, the input does not fit the run
        (structures for a molecule run or the reverse), or it cannot be used.

    Examples
    --------
    >>> frame = predict_from_csv("results/esol", "molecules.csv", out="pred.csv")  # doctest: +SKIP
    >>> (frame["deepfuse_status"] == "ok").mean()  # doctest: +SKIP
    1.0
    """
    if batch_size is not None:
        check_training_settings(batch_size=batch_size)
    if out:  # before any work: nothing is computed for an output that cannot be written
        run_folder.check_output_file(out, overwrite, inputs=[csv], protected_dirs=[model_dir])
    model, record = load_run(model_dir)
    if (record.get("input") or {}).get("kind") == "structures":
        frame, X, status, ids = _structure_inputs(model, record, csv, cif_column, progress)
    else:
        frame, X, status, ids = _molecule_inputs(
            model, record, csv, smiles_column, cif_column, progress
        )
    tasks = record["tasks"]
    uncertain = bool(getattr(model, "uncertainty", None))
    _check_output_columns(frame, tasks, uncertain, csv)
    if batch_size:
        model.batch_size = batch_size
    values = np.full((len(frame), len(tasks)), np.nan)
    stds = np.full_like(values, np.nan) if uncertain else None
    rows = np.flatnonzero(status == "ok")
    if len(rows):
        pred, std, reasons = _checked_predictions(
            model, make_dataset(X[rows], None, None, [ids[i] for i in rows]), record, model_dir
        )
        # de-normalizing can overflow an output the model gave finite (a hand-made record)
        failed = (
            (reasons != "")
            | non_finite_rows(pred)
            | (non_finite_rows(std) if std is not None else False)
        )
        reasons = np.where(failed & (reasons == ""), NON_FINITE, reasons)
        _refuse_mostly_non_finite(reasons, model_dir)
        values[rows[~failed]] = pred.reshape(len(rows), len(tasks))[~failed]
        if stds is not None and std is not None:  # both exist exactly when the model is uncertain
            stds[rows[~failed]] = std[~failed]
        status[rows[failed]] = reasons[failed]
    result = frame.copy()
    for t, task in enumerate(tasks):
        result[f"{task}_pred"] = values[:, t]
        if stds is not None:
            result[f"{task}_std"] = stds[:, t]
    result["deepfuse_status"] = status
    result.attrs["input_kind"] = (record.get("input") or {}).get("kind", "smiles")
    _log_row_failures(status)
    if out:
        run_folder.check_output_file(out, overwrite, inputs=[csv], protected_dirs=[model_dir])
        run_folder.write_csv_atomically(result, out)
    return result


def _molecule_inputs(
    model: Any,
    record: dict[str, Any],
    csv: str,
    smiles_column: str | None,
    cif_column: str | None,
    progress: bool,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
    """``(frame, samples, status, ids)`` of a CSV of molecules for a molecule run."""
    from deepfuse_plugin.structure_inputs import structure_format

    if cif_column or structure_format(csv) is not None:
        raise WorkflowError(
            f"This run was trained on molecules (SMILES); {csv} holds crystal structures. "
            "Give a CSV with a SMILES column, or a run trained on structures"
        )
    column = smiles_column or record.get("smiles_column")
    if not column:
        raise WorkflowError("Give --smiles-column: the model folder does not record one")
    frame = read_csv_checked(csv, column)
    X, status = _featurize_rows(model, record, frame[column].tolist(), progress)
    return frame, X, status, [str(s) for s in frame[column]]


def _structure_inputs(
    model: Any, record: dict[str, Any], path: str, cif_column: str | None, progress: bool
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
    """``(frame, samples, status, ids)`` of structures for a crystal run: every row kept, its
    status the reason a structure could not be read, was refused, or has no modality."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.structure_inputs import read_structures, structure_format

    column = cif_column or (record.get("input") or {}).get("cif_column")
    if structure_format(path, column) is None:
        raise WorkflowError(
            f"This run was trained on crystal structures; give a CIF folder, an extended XYZ "
            f"file, or a CSV of CIF text with --cif-column (got {path})"
        )
    # an id_prop.csv has no header: its label columns take the run's task names, beside the
    # <task>_pred columns
    read = read_structures(path, column, label_names=record.get("tasks") or [])
    frame = read.frame.copy()
    status = np.full(len(read.ids), "ok", dtype=object)
    for row, reason in read.problems.items():
        status[row] = f"invalid structure: {reason}"
    if read.format != "cif_csv" and "formula" not in frame.columns:
        frame["formula"] = [
            "" if s is None else s.composition.reduced_formula for s in read.structures
        ]
    settings = record.get("featurizer") or {}
    try:
        featurizer = CrystalMultiModalFeaturizer(
            model.modalities,
            describer=settings.get("describer", "fast"),
            progress=progress,
            limits=_featurizer_limits(record),
        )
    except (ValueError, TypeError) as err:
        raise CorruptCheckpointError(
            f"Cannot rebuild the run's crystal featurizer ({err}); restore the run folder"
        ) from None
    X = np.empty(len(read.ids), dtype=object)
    rows = read.readable()
    if len(rows):
        featurized = featurizer.featurize([read.structures[i] for i in rows])
        for row, sample in zip(rows, featurized):  # one by one: numpy must not broadcast them
            X[row] = sample
        for position, reason in featurizer.last_failures.items():
            status[rows[position]] = f"invalid structure: {reason}"
    _mark_rows_without_modality(model, X, status)
    return frame, X, status, read.ids


def _featurize_rows(
    model: Any, record: dict[str, Any], smiles: list[str], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, status)``: one featurized sample per row (an empty array for a failed row)
    and ``"ok"`` or why the row cannot be predicted: the featurizer's reason for a refused or
    unparseable SMILES, or the reasons none of the model's modalities could be computed."""
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    featurizer = MultiModalFeaturizer(
        modalities=model.modalities, progress=progress, limits=_featurizer_limits(record)
    )
    X = featurizer.featurize(smiles)
    status = np.full(len(smiles), "ok", dtype=object)
    for row, reason in featurizer.last_failures.items():
        status[row] = f"invalid SMILES: {reason}"
    _mark_rows_without_modality(model, X, status)
    return X, status


def _mark_rows_without_modality(model: Any, X: np.ndarray, status: np.ndarray) -> None:
    """A row none of whose modalities could be computed has nothing to predict from: its status
    says why each is missing."""
    for row in np.flatnonzero(status == "ok").tolist():
        if not X[row].mask(model.modality_names).any():
            status[row] = "no modality could be computed: " + "; ".join(
                f"{name}: {reason}" for name, reason in X[row].missing_reasons.items()
            )


def _refuse_mostly_non_finite(reasons: np.ndarray, model_dir: str) -> None:
    """Non-finite outputs for most rows mean damaged weights, not bad rows: nothing is written."""
    bad = int((reasons == NON_FINITE).sum())
    if bad > CORRUPT_OUTPUT_FRACTION * len(reasons):
        raise CorruptCheckpointError(
            f"The model in {model_dir} gave non-finite (NaN/inf) outputs for {bad} of "
            f"{len(reasons)} rows: its weights are damaged or training diverged; copy the run "
            "folder again or train again (nothing was written)"
        )


def _check_output_columns(
    frame: pd.DataFrame, tasks: Sequence[str], uncertain: bool, csv: str
) -> None:
    """Output columns must not replace a column of the input."""
    outputs = [f"{t}_pred" for t in tasks] + ([f"{t}_std" for t in tasks] if uncertain else [])
    clashing = [c for c in [*outputs, "deepfuse_status"] if c in frame.columns]
    if clashing:
        raise WorkflowError(
            f"{csv} already has column(s) {clashing}, which predict would write; "
            "rename or drop them in the input so nothing is overwritten"
        )


def _log_row_failures(status: np.ndarray) -> None:
    counts = {
        "their SMILES cannot be parsed or are over an input limit": [
            i for i, s in enumerate(status) if s.startswith("invalid SMILES")
        ],
        "their structure cannot be read or is over an input limit": [
            i for i, s in enumerate(status) if s.startswith("invalid structure")
        ],
        "none of the model's modalities could be computed": [
            i for i, s in enumerate(status) if s.startswith("no modality")
        ],
        "the model's output was not finite": [
            i for i, s in enumerate(status) if s.startswith("non-finite")
        ],
    }
    for why, rows in counts.items():
        if rows:
            logger.warning(
                "%d row(s) got no prediction because %s (rows %s%s; see deepfuse_status)",
                len(rows),
                why,
                rows[:10],
                " ..." if len(rows) > 10 else "",
            )
