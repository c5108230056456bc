"""Reading a user's CSV for ``deepfuse train``/``predict``: every check that turns a bad file,
column, SMILES or label into one clear sentence instead of a traceback or a silent wrong result.

Cells are read as text exactly as written (``dtype=str``, no missing-value conversion), so columns
that ``predict`` passes through keep their bytes; only the SMILES and label columns are parsed.
SMILES are checked against :mod:`deepfuse_plugin.limits` before RDKit sees them. Everything here
is re-exported by :mod:`deepfuse_plugin.workflows`.

Examples
--------
>>> import pandas as pd
>>> from deepfuse_plugin.inputs import labels_and_weights
>>> y, w = labels_and_weights(pd.DataFrame({"y": ["1.5", "NA"]}), ["y"], ["CCO", "CCN"])
>>> y.ravel().tolist(), w.ravel().tolist()
([1.5, 0.0], [1.0, 0.0])
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits, molecule_problem, smiles_problem

logger = logging.getLogger(__name__)

#: Largest absolute label accepted: beyond any physical property in any unit, and small enough
#: that the normalization statistics (squares summed over the rows) stay finite.
MAX_ABS_LABEL = 1e30
#: Cell values read as a missing label (pandas' defaults), not as a non-numeric one.
MISSING_LABELS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
#: The first bytes of compressed or binary files a user might name ``.csv`` by mistake.
BINARY_SIGNATURES = {
    b"\x1f\x8b": "gzip-compressed",
    b"PK\x03\x04": "a ZIP archive",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"BZh": "bzip2-compressed",
    b"(\xb5/\xfd": "zstd-compressed",
    b"%PDF": "a PDF document",
    b"\x89HDF": "an HDF5 file",
    b"PAR1": "a Parquet file",
    b"SQLite format 3": "an SQLite database",
}


class WorkflowError(InvalidInputError):
    """Bad user input (missing column, empty file, ...): the message says what to fix (a
    :class:`~deepfuse_plugin.errors.DeepfuseError`, hence a ``ValueError``)."""


@contextlib.contextmanager
def rdkit_log_disabled() -> Iterator[None]:
    """Silence RDKit's C++ log inside the block (DeepChem's ``CircularFingerprint`` prints one
    deprecation warning per molecule with current RDKit); the previous state is restored after."""
    from rdkit import rdBase

    with rdBase.BlockLogs():
        yield


# -- input ---------------------------------------------------------------------------------------
def read_csv_checked(path: str, smiles_column: str, tasks: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV and check it has ``smiles_column`` and every task column and at least one row.

    Every column is read as text, exactly as written (no type guessing, no missing-value
    conversion), so columns passed through to an output keep their bytes: ids ``007`` stay
    ``007``, ``NA``/``TRUE`` stay as written. Labels are parsed later
    (:func:`labels_and_weights`).

    Raises
    ------
    WorkflowError
        File missing, a folder, binary or compressed under a ``.csv`` name, not UTF-8 text, not
        valid CSV, empty, with a repeated column name, or a named column absent (the message lists
        the available columns).
    """
    if not os.path.exists(path):
        raise WorkflowError(f"CSV file not found: {path}")
    if os.path.isdir(path):
        raise WorkflowError(f"{path} is a folder, not a CSV file")
    _check_text_file(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise WorkflowError(f"CSV file {path} is empty (no header, no rows)") from None
    except UnicodeDecodeError as err:
        raise WorkflowError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
            f"position {err.start}); save it as UTF-8 CSV"
        ) from None
    except pd.errors.ParserError as err:
        raise WorkflowError(
            f"Cannot read {path} as CSV: {str(err).strip().splitlines()[-1]}"
        ) from None
    _check_header(frame, path)
    missing = [c for c in [smiles_column, *tasks] if c not in frame.columns]
    if missing:
        label = "Column" if len(missing) == 1 else "Columns"
        raise WorkflowError(
            f"{label} {', '.join(repr(c) for c in missing)} not found in {path}. "
            f"Available columns: {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise WorkflowError(f"CSV file {path} has a header but no rows")
    return frame


def _check_text_file(path: str) -> None:
    """Refuse a binary or compressed file before pandas decodes it as text (compressed files are
    read when their name says so: ``.csv.gz``, ``.csv.xz``, ...)."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    compressed_name = path.lower().endswith((".gz", ".bz2", ".xz", ".zip", ".zst", ".tar"))
    for signature, kind in BINARY_SIGNATURES.items():
        packed = "compressed" in kind or "ZIP" in kind
        if head.startswith(signature) and not (packed and compressed_name):
            hint = (
                "name it with its compression suffix (e.g. .csv.gz) or decompress it"
                if packed
                else "export it as a CSV file"
            )
            raise WorkflowError(f"{path} is {kind}, not a text CSV file; {hint}")
    position = None if compressed_name else _first_nul(path)
    if position is not None:
        raise WorkflowError(
            f"{path} is a binary file (NUL byte at position {position}), not "
            "a text CSV file; export it as a CSV file"
        )


def _first_nul(path: str, block: int = 1 << 20) -> int | None:
    """Offset of the first NUL byte in the whole file (pandas reads a NUL cell as empty, so one
    anywhere would silently change a pass-through cell), or None."""
    offset = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            if b"\x00" in chunk:
                return offset + chunk.index(0)
            offset += len(chunk)
    return None


def _check_header(frame: pd.DataFrame, path: str) -> None:
    """pandas renames a repeated column ``a`` to ``a.1``: an output would then change the
    user's header, so a repeated name is refused."""
    if not any("." in str(c) for c in frame.columns):
        return
    header = (
        pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise WorkflowError(
            f"Column name(s) {repeated} appear more than once in the header of "
            f"{path}; give every column its own name"
        )


def _shown(value: Any, width: int = 60) -> str:
    """``repr`` of a cell for a message, shortened (a 20,000-character SMILES stays readable)."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 20]}...({len(str(value))} chars)"


def smiles_problems(
    smiles: Sequence[Any], limits: InputLimits = DEFAULT_LIMITS
) -> list[str | None]:
    """Per entry: ``None`` when RDKit parses it into a molecule within ``limits``, otherwise why
    not (``"invalid SMILES"`` for an empty or unparseable entry, ``"invalid SMILES: <reason>"``
    for one refused before parsing or over a size limit).

    The length, encoding and fragment checks (:func:`~deepfuse_plugin.limits.smiles_problem`)
    run before RDKit sees the string: some inputs crash RDKit instead of failing.

    Examples
    --------
    >>> smiles_problems(["CCO", "C1CC", "C" * 5000])[:2]
    [None, 'invalid SMILES']
    """
    from rdkit import Chem

    problems: list[str | None] = []
    with rdkit_log_disabled():  # the failures are reported by the callers
        for s in smiles:
            if not isinstance(s, str) or not s.strip():
                problems.append("invalid SMILES")
                continue
            reason = smiles_problem(s, limits)
            if reason is not None:
                problems.append(f"invalid SMILES: {reason}")
                continue
            mol = Chem.MolFromSmiles(s)
            if mol is None or mol.GetNumAtoms() == 0:
                problems.append("invalid SMILES")
                continue
            reason = molecule_problem(mol, limits)
            problems.append(None if reason is None else f"invalid SMILES: {reason}")
    return problems


def valid_smiles_mask(
    smiles: Sequence[Any], what: str = "row", limits: InputLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray, list[str]]:
    """Which entries RDKit can parse (non-empty strings giving a molecule with atoms, within
    ``limits``; see :func:`smiles_problems`).

    Logs one warning naming the invalid entries (position and value).

    Returns
    -------
    mask: np.ndarray of bool
    invalid: list of str
        ``"<position>: <value>"`` for each invalid entry (plus the reason for one over a limit).
    """
    problems = smiles_problems(smiles, limits)
    mask = np.array([p is None for p in problems], dtype=bool)
    invalid = [
        f"{i}: {_shown(smiles[i])}" + (f" ({problem[16:]})" if problem != "invalid SMILES" else "")
        for i, problem in enumerate(problems)
        if problem is not None
    ]
    if invalid:
        logger.warning(
            "%d of %d SMILES cannot be parsed by RDKit; those %ss are skipped "
            "(0-based %s index: value): %s%s",
            len(invalid),
            len(smiles),
            what,
            what,
            "; ".join(invalid[:20]),
            " ..." if len(invalid) > 20 else "",
        )
    return mask, invalid


def parse_labels(frame: pd.DataFrame, tasks: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """Task columns as floats, NaN where a label is missing (an empty cell, ``NA``, ``nan``, ...).

    Raises
    ------
    WorkflowError
        A cell that is neither a number nor a missing value (e.g. ``"yes"``), or a label that is
        infinite or beyond :data:`MAX_ABS_LABEL`; the message names the task, rows and values.
    """
    columns = []
    for task in tasks:
        column = frame[task]
        if column.dtype == object:
            text = column.astype(str).str.strip()
            values = pd.to_numeric(text.where(~text.isin(MISSING_LABELS)), errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() & ~text.isin(MISSING_LABELS).to_numpy())
            if len(bad):
                shown = ", ".join(f"{ids[i]!s}: {_shown(column.iloc[i])}" for i in bad[:8])
                raise WorkflowError(
                    f"Task column {task!r} is not numeric: {len(bad)} row(s) hold text ({shown}"
                    f"{' ...' if len(bad) > 8 else ''}). Labels must be numbers; map categories "
                    "to numbers (e.g. yes/no to 1/0 for --mode classification) and leave a cell "
                    "empty for a missing label"
                )
        else:
            values = pd.to_numeric(column, errors="coerce")
        columns.append(values.to_numpy(dtype=np.float64))
    y = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0))
    absurd = ~np.isnan(y) & ~(np.abs(y) <= MAX_ABS_LABEL)
    if absurd.any():
        rows, cols = np.nonzero(absurd)
        shown = ", ".join(
            f"{ids[r]!s} ({tasks[c]}): {y[r, c]:.6g}" for r, c in zip(rows[:8], cols[:8])
        )
        raise WorkflowError(
            f"{len(rows)} label(s) are infinite or beyond +-{MAX_ABS_LABEL:g}: "
            f"{shown}{' ...' if len(rows) > 8 else ''}. Fix these cells, or leave "
            "them empty for a missing label"
        )
    return y


def labels_and_weights(
    frame: pd.DataFrame, tasks: Sequence[str], ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(y, w)`` from task columns: a missing label gets weight 0 and a warning.

    Raises
    ------
    WorkflowError
        A non-numeric or absurd label (:func:`parse_labels`), or a task without any label (its
        head would stay untrained and its predictions meaningless).
    """
    y = parse_labels(frame, tasks, ids)
    w = np.isfinite(y).astype(np.float64)
    unlabelled = [t for t, n in zip(tasks, w.sum(axis=0)) if n == 0] if len(y) else list(tasks)
    if unlabelled:
        raise WorkflowError(
            f"No labelled rows for task(s) {unlabelled}: every value in "
            f"{'that column' if len(unlabelled) == 1 else 'those columns'} is "
            "missing; fill in labels or leave the task out of --tasks"
        )
    bad = np.flatnonzero(w.min(axis=1) == 0) if len(y) else np.array([], int)
    if len(bad):
        shown = [str(ids[i]) for i in bad[:10]]
        logger.warning(
            "%d row(s) have missing labels; those entries get weight 0 (ids: %s%s)",
            len(bad),
            shown,
            " ..." if len(bad) > 10 else "",
        )
    return np.nan_to_num(y, nan=0.0), w
