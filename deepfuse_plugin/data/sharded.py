"""Out-of-core featurization: a CSV, a SMILES list or a corpus straight into pickle-free shards.

:func:`featurize_to_disk` and :func:`featurize_corpus_to_disk` read their input a shard at a time,
featurize each shard (in ``n_jobs`` worker processes, each writing its own shards) and return a
:class:`~deepfuse_plugin.data.ShardedMultiModalDataset` whose ``X``, ``y``, ``w`` and ``ids`` are
exactly what the in-memory path gives (:meth:`deepfuse_plugin.MultiModalDataset.from_smiles`): the
same samples in the same order, failed inputs dropped and reported with their row numbers. Memory
stays flat whatever the input's length (at most two shards per worker in flight), so a 1.5M
molecule corpus featurizes on a laptop; models train on the result as on any DeepChem dataset
(``model.fit(dataset)`` streams it shard by shard) and ``pretrain_encoders`` streams it too.

The folder is resumable: a featurization that is interrupted (Ctrl-C, a killed job) continues
where it stopped when called again with the same input and settings; shards already written are
kept. A folder holding anything else is refused, never overwritten.

The shards hold plain numeric arrays (``.npz``, read with ``allow_pickle=False``) and JSON
(:mod:`deepfuse_plugin.data._codec`): opening a folder runs nothing it contains, so a folder
received from elsewhere is as safe to open as a CSV. (Until this format, the folder was a DeepChem
``DiskDataset`` that DeepChem opens with pickle; such a folder is refused with an explanation.)

Examples
--------
>>> import tempfile, os
>>> import deepfuse_plugin as dfp
>>> from deepfuse_plugin.data import featurize_to_disk
>>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
>>> out = os.path.join(tempfile.mkdtemp(), "featurized")
>>> ds = featurize_to_disk(["CCO", "not a smiles", "CCN"], feat, out, labels=[1.0, 2.0, 3.0],
...                        shard_size=2, progress=False)
>>> list(ds.ids), ds.y.ravel().tolist(), feat.last_failures
(['CCO', 'CCN'], [1.0, 3.0], {1: 'RDKit cannot parse this SMILES'})
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from deepfuse_plugin.data import _shards
from deepfuse_plugin.data._inputs import CorpusInput, CsvInput, Input, SequenceInput
from deepfuse_plugin.data._shards import ShardTask
from deepfuse_plugin.data.corpora import moses_path
from deepfuse_plugin.data.shard_dataset import (
    DEFAULT_SHARD_SIZE,
    ShardedMultiModalDataset,
    write_dataset_file,
)
from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError, RunFolderError

__all__ = ["featurize_to_disk", "featurize_corpus_to_disk", "read_failures", "MANIFEST"]

logger = logging.getLogger(__name__)

#: The file that marks a folder as a deepfuse featurization (in progress or complete).
MANIFEST = "deepfuse_featurization.json"
#: Every failed input of a complete featurization: ``row,input,reason``.
FAILURES_FILE = "failures.csv"
_FORMAT = "deepfuse-featurization/2"
#: the DeepChem ``DiskDataset`` (pickle) format of earlier versions
_PICKLED_FORMAT = "deepfuse-featurization/1"


def featurize_to_disk(
    source: str | os.PathLike | Sequence[Any],
    featurizer: Any,
    out_dir: str | os.PathLike,
    *,
    smiles_column: str = "smiles",
    tasks: Sequence[str] = (),
    id_column: str | None = None,
    labels: Any = None,
    ids: Sequence[Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    n_jobs: int | None = None,
    progress: bool = True,
) -> ShardedMultiModalDataset:
    """Featurize a CSV file or a list of SMILES into pickle-free shards in ``out_dir``.

    Parameters
    ----------
    source: path or sequence
        A CSV file (any compression pandas reads, e.g. ``.csv.gz``), read ``shard_size`` rows at
        a time; or the inputs themselves (SMILES strings).
    featurizer: MultiModalFeaturizer
        Its ``featurize_row`` makes each sample.
    out_dir: path
        A new or empty folder, or the folder of an unfinished featurization of the same input
        with the same settings (it is continued; shards already written are kept).
    smiles_column, tasks, id_column:
        For a CSV: the SMILES column, the label columns (parsed like ``deepfuse train`` does:
        empty/``NA`` = missing, weight 0; text is an error) and the id column (default: the
        SMILES). Every data row is one input, its row number counts from 0 after the header.
    labels: array-like, optional
        For a sequence: ``(n,)`` or ``(n, tasks)`` labels, NaN where missing.
    ids: sequence, optional
        For a sequence: one id per input (default: the SMILES).
    shard_size: int
        Inputs per shard (also what each worker holds in memory at a time).
    n_jobs: int, optional
        Worker processes, each featurizing and writing its own shards (default: the
        featurizer's ``n_jobs``).
    progress: bool
        Show a tqdm progress bar (molecules).

    Returns
    -------
    ShardedMultiModalDataset
        A DeepChem dataset read one shard at a time. ``X``:
        :class:`~deepfuse_plugin.MultiModalSample` per featurized input, ``ids``, ``y``,
        ``w`` (1 where a label is known), task names ``tasks``. Failed inputs are left out and
        set as ``featurizer.last_failures`` (``{row: reason}``, rows of the whole input), logged
        and written to ``out_dir/failures.csv``; :func:`read_failures` reads them back.

    Raises
    ------
    InvalidInputError
        Missing file or column, text in a label column, labels or ids of another length than the
        inputs, or no input could be featurized.
    RunFolderError
        ``out_dir`` holds other files, or another featurization (other input or settings).
    """
    n_jobs = _check_settings(featurizer, shard_size, n_jobs)
    if isinstance(source, (str, os.PathLike)):
        reader: Input = CsvInput(os.fspath(source), smiles_column, list(tasks), id_column)
        if labels is not None or ids is not None:
            raise InvalidSettingError(
                "labels= and ids= go with a list of SMILES; for a CSV name its columns "
                "(tasks=, id_column=)"
            )
    else:
        reader = SequenceInput(list(source), labels, ids)
    return _featurize(reader, featurizer, out_dir, shard_size, n_jobs, progress)


def featurize_corpus_to_disk(
    corpus: str | os.PathLike,
    featurizer: Any,
    out_dir: str | os.PathLike,
    *,
    n: int | None = None,
    seed: int = 0,
    column: str = "SMILES",
    shard_size: int = DEFAULT_SHARD_SIZE,
    n_jobs: int | None = None,
    progress: bool = True,
) -> ShardedMultiModalDataset:
    """Featurize an unlabelled corpus (``"moses"`` or a SMILES file) into pickle-free shards.

    The molecules are those :func:`~deepfuse_plugin.data.corpora.moses_smiles` /
    :func:`~deepfuse_plugin.data.corpora.read_smiles_file` return for the same ``n``, ``seed``
    and ``column`` (entries stripped, empty ones skipped; row numbers count those molecules),
    read a shard at a time. Everything else as :func:`featurize_to_disk` (ids: the SMILES).

    Examples
    --------
    >>> ds = featurize_corpus_to_disk("moses", feat, "moses_100k", n=100_000,
    ...                               n_jobs=2)  # doctest: +SKIP
    """
    n_jobs = _check_settings(featurizer, shard_size, n_jobs)
    path = moses_path("train") if str(corpus) == "moses" else Path(corpus)
    if not path.is_file():
        raise InvalidInputError(f"Corpus file not found: {path}")
    reader = CorpusInput(str(path), column, n, seed)
    return _featurize(reader, featurizer, out_dir, shard_size, n_jobs, progress)


def read_failures(out_dir: str | os.PathLike) -> dict[int, str]:
    """``{row: reason}`` of the inputs a featurization in ``out_dir`` could not featurize (so
    far, for one still in progress)."""
    failures: dict[int, str] = {}
    for record in _records(str(out_dir)):
        failures.update({int(row): reason for row, _, reason in record["failures"]})
    return dict(sorted(failures.items()))


# -- the run ---------------------------------------------------------------------------------------
def _check_settings(featurizer: Any, shard_size: int, n_jobs: int | None) -> int:
    """``n_jobs`` to use (default: the featurizer's) once the settings are checked."""
    if not hasattr(featurizer, "featurize_row"):
        raise InvalidSettingError(
            f"featurizer must be a deepfuse featurizer (with featurize_row), got "
            f"{type(featurizer).__name__}; e.g. MultiModalFeaturizer([...])"
        )
    n_jobs = int(getattr(featurizer, "n_jobs", 1) if n_jobs is None else n_jobs)
    if int(shard_size) < 1 or n_jobs < 1:
        raise InvalidSettingError(
            f"shard_size and n_jobs must be at least 1, got {shard_size} and {n_jobs}"
        )
    return n_jobs


def _featurize(
    reader: Input,
    featurizer: Any,
    out_dir: str | os.PathLike,
    shard_size: int,
    n_jobs: int,
    progress: bool,
) -> ShardedMultiModalDataset:
    out = os.fspath(out_dir)
    identity = {
        "format": _FORMAT,
        **reader.identity(),
        "featurizer": str(featurizer),
        "modalities": [m.fingerprint for m in getattr(featurizer, "modalities", [])],
        "shard_size": int(shard_size),
    }
    manifest = _claim_folder(out, identity)
    if manifest.get("status") != "complete":
        total = reader.count()  # a CSV's labels are checked here, before any shard is written
        records: dict[int, dict[str, Any]] = {}
        with tqdm(total=total, desc="featurize", unit="mol", disable=not progress) as bar:

            def done(record: dict[str, Any]) -> None:
                records[record["shard"]] = record
                bar.update(record["rows"])

            _shards.run_shards(featurizer, _todo(reader, out, shard_size, done), out, n_jobs, done)
        _finish(out, identity, reader.task_names, [records[i] for i in sorted(records)], featurizer)
    failures = read_failures(out)
    if hasattr(featurizer, "last_failures"):
        featurizer.last_failures = failures
    return ShardedMultiModalDataset(out)


def _todo(reader: Input, out: str, shard_size: int, done: Any) -> Iterator[ShardTask]:
    """The reader's shards not written yet; those written by an earlier run are reported to
    ``done`` and skipped."""
    for task in reader.shards(shard_size):
        record = _shards.read_record(out, task.index)
        if record is not None and record["rows"] == len(task.points):
            done(record)
        else:
            yield task


def _claim_folder(out: str, identity: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest; a new or empty folder gets one. Anything else is refused."""
    path = os.path.join(out, MANIFEST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"{out} is a file, not a folder: give a folder for the dataset")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        recorded = manifest.get("identity", {})
        if recorded.get("format") == _PICKLED_FORMAT:
            raise RunFolderError(
                f"{out} holds a featurization written by an earlier deepfuse as a DeepChem "
                "DiskDataset, which is read with pickle; deepfuse no longer reads it. Give a new "
                "folder, or remove this one, to featurize again in the pickle-free format"
            )
        differ = sorted(k for k in {*recorded, *identity} if recorded.get(k) != identity.get(k))
        if differ:
            raise RunFolderError(
                f"{out} holds a featurization of another input or with other settings "
                f"(differs in: {', '.join(differ)}); give a new folder, or remove this one "
                "to featurize again"
            )
        if manifest.get("status") == "complete":
            logger.info("%s: featurization already complete, reusing it", out)
        else:
            logger.info("%s: continuing an unfinished featurization", out)
        return dict(manifest)
    if os.path.isdir(out) and os.listdir(out):
        raise RunFolderError(
            f"{out} is not empty and is not a deepfuse featurization (no {MANIFEST}): give a new "
            "or empty folder; nothing in it was changed"
        )
    os.makedirs(out, exist_ok=True)
    manifest = {"identity": identity, "status": "in progress"}
    _shards._write_json_atomically(path, manifest)
    return manifest


def _finish(
    out: str,
    identity: dict[str, Any],
    task_names: list[Any],
    records: list[dict[str, Any]],
    featurizer: Any,
) -> None:
    """The dataset's description from the shards' records, the failure report and the
    manifest."""
    rows = sum(r["rows"] for r in records)
    kept = sum(r["kept"] for r in records)
    if kept == 0:
        raise InvalidInputError(
            f"None of the {rows} inputs could be featurized (first failures: "
            f"{[tuple(f) for r in records for f in r['failures']][:5]}); see {out}"
        )
    shards = [
        {"stem": _shards.shard_stem(r["shard"]), "rows": r["kept"]} for r in records if r["files"]
    ]
    write_dataset_file(
        out,
        task_names or [0],  # NumpyDataset's single zero column when unlabelled
        getattr(featurizer, "modalities", None),
        shards,
        int(identity["shard_size"]),
    )
    failures = [f for r in records for f in r["failures"]]
    pd.DataFrame(failures, columns=["row", "input", "reason"]).to_csv(
        os.path.join(out, FAILURES_FILE), index=False
    )
    _log_outcome(out, rows, failures, records)
    _shards._write_json_atomically(
        os.path.join(out, MANIFEST),
        {"identity": identity, "status": "complete", "rows": rows, "kept": kept},
    )


def _log_outcome(
    out: str, rows: int, failures: list[list[Any]], records: list[dict[str, Any]]
) -> None:
    if failures:
        shown = ", ".join(f"{row}:{text[:80]} ({reason})" for row, text, reason in failures[:20])
        logger.warning(
            "featurize_to_disk: %d of %d inputs could not be parsed or were refused and are "
            "left out of %s (row:input (reason); all in %s): %s%s",
            len(failures),
            rows,
            out,
            FAILURES_FILE,
            shown,
            " ..." if len(failures) > 20 else "",
        )
    missing: dict[str, int] = {}
    for record in records:
        for name, count in record["missing"].items():
            missing[name] = missing.get(name, 0) + count
    for name, count in missing.items():
        logger.info("featurize_to_disk: modality %r missing for %d molecule(s)", name, count)


def _records(out: str) -> Iterator[dict[str, Any]]:
    """The records of every shard written in ``out``, in shard order."""
    numbers = sorted(
        int(name[len("shard-") : -len(".done.json")])
        for name in os.listdir(out)
        if name.startswith("shard-") and name.endswith(".done.json")
    )
    for index in numbers:
        record = _shards.read_record(out, index)
        if record is not None:
            yield record
