"""Run folders and output files that never lose what a user owns, and that can be verified.

``deepfuse train --out D`` trains into a staging folder next to ``D`` (``D.deepfuse-partial``) and
moves its files into ``D`` only once training has succeeded, so a failed or interrupted re-train
leaves the previous model in ``D`` intact (an interrupted run's resume point stays in the staging
folder for ``--resume``). A ``D`` that already holds deepfuse's files is only replaced with
``overwrite=True``, and then only deepfuse's own files are: a user's file in ``D`` or ``D/model``
survives.

Training (and ``deepfuse demo``) records the model's checkpoint digest (SHA-256 of the checkpoint
the model loads and of its configuration,
:func:`~deepfuse_plugin.models.checkpoints.checkpoint_digest`) and a SHA-256 of the run record
itself (:func:`seal_record`); ``deepfuse predict`` checks both (:func:`verify_record`) before it
loads a weight, so a truncated, bit-flipped or replaced checkpoint, or a hand-edited record, is
refused with the file named instead of producing wrong numbers.

Examples
--------
>>> from deepfuse_plugin.run_folder import staging_path
>>> staging_path("/tmp/runs/esol")
'/tmp/runs/esol.deepfuse-partial'
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from deepfuse_plugin.errors import CorruptCheckpointError, RunFolderError
from deepfuse_plugin.train import resume
from deepfuse_plugin.train.utils import to_jsonable, write_json

logger = logging.getLogger(__name__)

RUN_FILE = "deepfuse_run.json"
METRICS_FILE = "metrics.json"
STD_SCALES_FILE = "std_scales.json"
MODEL_DIR = "model"
#: deepfuse's files at the top of a run folder (``model/`` aside).
RUN_FOLDER_FILES = (RUN_FILE, METRICS_FILE, STD_SCALES_FILE)
STAGING_SUFFIX = ".deepfuse-partial"
STAGING_MARKER = ".deepfuse-staging"
INTEGRITY_KEY = "integrity"


# -- what belongs to deepfuse ----------------------------------------------------------------
def own_model_entries(model_dir: str) -> list[str]:
    """Names in ``model_dir`` that deepfuse (or DeepChem's checkpointing) writes: the model
    configuration, ``checkpoint*.pt``, resume points and their staging folders. Anything else is
    the user's and is never removed."""
    from deepfuse_plugin.models.checkpoints import CONFIG_FILE

    if not os.path.isdir(model_dir):
        return []
    fixed = {CONFIG_FILE, resume.STATE_FILE, *resume.SLOTS}
    return sorted(
        e
        for e in os.listdir(model_dir)
        if e in fixed
        or (e.startswith("checkpoint") and e.endswith(".pt"))
        or e.startswith((".staging_", ".tmp_"))
    )


def is_model_folder(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a deepfuse/DeepChem model (or an unfinished one)."""
    return bool(own_model_entries(model_dir))


def existing_run_files(out: str) -> list[str]:
    """deepfuse's files already in ``out`` (``model/`` listed when it holds a model)."""
    found = [name for name in RUN_FOLDER_FILES if os.path.lexists(os.path.join(out, name))]
    if is_model_folder(os.path.join(out, MODEL_DIR)):
        found.append(MODEL_DIR + "/")
    return found


def check_run_target(out: str, overwrite: bool) -> None:
    """Refuse a ``--out`` whose contents training would lose (nothing is changed here).

    Raises
    ------
    RunFolderError
        ``out`` is a file; ``out/model`` exists and is not a deepfuse model folder; or ``out``
        already holds a deepfuse run and ``overwrite`` is false.
    """
    if os.path.lexists(out) and not os.path.isdir(out):
        raise RunFolderError(
            f"--out {out} exists and is a file, not a folder; choose another --out"
        )
    model_dir = os.path.join(out, MODEL_DIR)
    if os.path.lexists(model_dir) and not os.path.isdir(model_dir):
        raise RunFolderError(f"{model_dir} exists and is not a folder; choose another --out")
    if os.path.isdir(model_dir) and os.listdir(model_dir) and not is_model_folder(model_dir):
        raise RunFolderError(
            f"{model_dir} exists and is not a deepfuse model folder; choose "
            "another --out (nothing was changed)"
        )
    existing = existing_run_files(out)
    if existing and not overwrite:
        raise RunFolderError(
            f"{out} already holds a deepfuse run ({', '.join(existing)}); pass "
            "--overwrite (overwrite=True) to replace deepfuse's files there "
            "(your other files in it are kept), or choose another --out"
        )


# -- staging and publishing ----------------------------------------------------------------------
def staging_path(out: str) -> str:
    """The staging folder of run folder ``out``: next to it, so the final move is a rename."""
    return os.path.abspath(out) + STAGING_SUFFIX


def check_staging(staging: str) -> None:
    """A staging folder that exists must be one deepfuse made (it will be replaced)."""
    if os.path.lexists(staging) and not os.path.isfile(os.path.join(staging, STAGING_MARKER)):
        raise RunFolderError(
            f"{staging} exists and was not made by deepfuse (deepfuse trains "
            "there before moving the run into --out); move it away or choose "
            "another --out"
        )


def open_staging(staging: str, keep: bool) -> str:
    """Create an empty staging folder (replacing an earlier one), or ``keep`` the one there (a
    resumed run). Returns its path."""
    check_staging(staging)
    if not keep and os.path.lexists(staging):
        shutil.rmtree(staging)
    os.makedirs(os.path.join(staging, MODEL_DIR), exist_ok=True)
    with open(os.path.join(staging, STAGING_MARKER), "w") as fh:
        fh.write("deepfuse staging folder: the run is moved into its --out on success\n")
    return staging


def publish(staging: str, out: str, overwrite: bool) -> None:
    """Move a finished run from ``staging`` into ``out``.

    A new ``out`` is one rename. Into an existing folder, deepfuse's earlier files there are first
    moved aside, then the new ones moved in; if a move fails, everything is put back as it was and
    the new run stays in ``staging``. Only deepfuse's files are replaced.
    """
    check_run_target(out, overwrite)
    os.remove(os.path.join(staging, STAGING_MARKER))
    if not os.path.lexists(out):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        os.rename(staging, out)
        return
    backup = tempfile.mkdtemp(prefix=".deepfuse-previous-", dir=out)
    set_aside: list[tuple[str, str]] = []  # (place in out, place in backup)
    placed: list[tuple[str, str]] = []  # (place in staging, place in out)
    try:
        _move_all(_old_run_entries(out, backup), set_aside)
        _move_all(_new_run_entries(staging, out), placed)
    except BaseException:
        for source, target in reversed(placed + set_aside):
            os.rename(target, source)
        with open(os.path.join(staging, STAGING_MARKER), "w") as fh:
            fh.write("deepfuse staging folder\n")
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _old_run_entries(out: str, backup: str) -> list[tuple[str, str]]:
    moves = [
        (os.path.join(out, n), os.path.join(backup, n))
        for n in RUN_FOLDER_FILES
        if os.path.lexists(os.path.join(out, n))
    ]
    model_dir = os.path.join(out, MODEL_DIR)
    entries = own_model_entries(model_dir)
    if entries:
        os.makedirs(os.path.join(backup, MODEL_DIR))
        moves += [(os.path.join(model_dir, e), os.path.join(backup, MODEL_DIR, e)) for e in entries]
    return moves


def _new_run_entries(staging: str, out: str) -> list[tuple[str, str]]:
    moves = []
    for name in sorted(os.listdir(staging)):
        target = os.path.join(out, name)
        if name == MODEL_DIR and os.path.isdir(target):  # keep the user's files in out/model
            moves += [
                (os.path.join(staging, name, e), os.path.join(target, e))
                for e in sorted(os.listdir(os.path.join(staging, name)))
            ]
        else:
            moves.append((os.path.join(staging, name), target))
    return moves


def _move_all(moves: Iterable[tuple[str, str]], done: list[tuple[str, str]]) -> None:
    for source, target in moves:
        if os.path.lexists(target):
            raise RunFolderError(
                f"{target} appeared while the run was being moved in; nothing was replaced"
            )
        os.rename(source, target)
        done.append((source, target))


# -- integrity ---------------------------------------------------------------------------------
def record_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a run record's canonical JSON, its own ``integrity`` entry left out."""
    content = {k: v for k, v in record.items() if k != INTEGRITY_KEY}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_record(record: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """``record`` (JSON values only) with an ``integrity`` entry: the model's checkpoint digest
    (:func:`~deepfuse_plugin.models.checkpoints.checkpoint_digest`: the checkpoint the model
    loads and its configuration) and the SHA-256 of the record itself."""
    from deepfuse_plugin.models.checkpoints import checkpoint_digest

    model_dir = os.path.join(run_dir, record.get("model_dir", MODEL_DIR))
    return {
        **record,
        INTEGRITY_KEY: {
            "algorithm": "sha256",
            "model": checkpoint_digest(model_dir),
            "record": record_digest(record),
        },
    }


def write_sealed_record(run_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` (NumPy values and NaN made JSON-ready) with its checksums
    (:func:`seal_record`) to ``run_dir/deepfuse_run.json``; returns what was written. The model
    must be saved in the run folder first."""
    sealed = seal_record(json.loads(json.dumps(to_jsonable(record))), run_dir)
    write_json(os.path.join(run_dir, RUN_FILE), sealed)
    return sealed


def verify_record(record: dict[str, Any], run_dir: str) -> None:
    """Check a run record and its model against the checksums written at training.

    A record without checksums (older deepfuse, or written by hand) is accepted with a warning.

    Raises
    ------
    CorruptCheckpointError
        The record was edited, or the checkpoint the model would load or its configuration is
        missing or changed (truncated, bit-flipped, replaced, or another checkpoint put in
        front of it); the message names the files.
    """
    from deepfuse_plugin.models.checkpoints import (
        CONFIG_FILE,
        MissingCheckpointError,
        checkpoint_digest,
        latest_checkpoint,
    )

    run_path = os.path.join(run_dir, RUN_FILE)
    integrity = record.get(INTEGRITY_KEY)
    if integrity is None:
        logger.warning(
            "%s has no checksums (written by an older deepfuse or by hand): its model "
            "files are not verified",
            run_path,
        )
        return
    expected = integrity.get("model") if isinstance(integrity, dict) else None
    if not isinstance(expected, str) or integrity.get("algorithm") != "sha256":
        raise CorruptCheckpointError(
            f"{run_path}: its 'integrity' entry is damaged; restore the "
            "original file or train again"
        )
    if record_digest(record) != integrity.get("record"):
        raise CorruptCheckpointError(
            f"{run_path} was changed after training (its checksum does "
            "not match): predictions could be misread (e.g. an edited "
            "mode or normalization); restore the original file or train "
            "again"
        )
    folder = os.path.join(run_dir, record.get("model_dir", MODEL_DIR))
    try:
        checkpoint, actual = latest_checkpoint(folder), checkpoint_digest(folder)
    except MissingCheckpointError as err:
        raise CorruptCheckpointError(
            f"{err}: the run folder is incomplete; copy the whole folder again or train again"
        ) from None
    if actual != expected:
        raise CorruptCheckpointError(
            f"{checkpoint} or {os.path.join(folder, CONFIG_FILE)} has "
            "changed since training (SHA-256 mismatch): a file is "
            "corrupt, truncated, edited or replaced; copy the run folder "
            "again or train again"
        )


# -- output files --------------------------------------------------------------------------------
def check_output_file(
    out: str, overwrite: bool, inputs: Sequence[str] = (), protected_dirs: Sequence[str] = ()
) -> None:
    """Refuse an output path that would destroy something: an input file (always, also with
    ``overwrite``), a file inside a run folder, or any existing file unless ``overwrite``."""
    if os.path.isdir(out):
        raise RunFolderError(
            f"--out {out} is a folder; give a file name, e.g. {out}/predictions.csv"
        )
    real = os.path.realpath(out)
    for source in inputs:
        same = os.path.realpath(source) == real or (
            os.path.exists(out) and os.path.exists(source) and os.path.samefile(source, out)
        )
        if same:
            raise RunFolderError(
                f"--out {out} is the input file {source}; predictions are never "
                "written over their input; choose another --out"
            )
    for folder in protected_dirs:
        if real.startswith(os.path.realpath(folder) + os.sep) and (
            os.path.basename(real) in RUN_FOLDER_FILES
            or os.path.dirname(real) != os.path.realpath(folder)
        ):
            raise RunFolderError(
                f"--out {out} is inside the run folder {folder}; choose another --out"
            )
    if os.path.lexists(out) and not overwrite:
        raise RunFolderError(
            f"{out} already exists; pass --overwrite (overwrite=True) to replace "
            "it, or choose another --out"
        )


def write_csv_atomically(frame: Any, out: str) -> None:
    """``frame.to_csv(out, index=False)`` through a temporary file in the same folder, so an
    interruption leaves the old file or the new one, never half of it."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".deepfuse-", suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            # a bare carriage return in a cell is not quoted under "\n" line ends, and every CSV
            # reader would split that row: quote every cell then (values are unchanged on reading)
            frame.to_csv(
                fh,
                index=False,
                quoting=csv.QUOTE_ALL if _has_carriage_return(frame) else csv.QUOTE_MINIMAL,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _has_carriage_return(frame: Any) -> bool:
    text = frame.select_dtypes(include="object")
    return bool(
        text.apply(lambda col: col.astype(str).str.contains("\r", regex=False)).any().any()
    ) or any("\r" in str(c) for c in frame.columns)
