"""Unlabelled molecule corpora for self-supervised pretraining.

:func:`moses_smiles` reads MOSES (Polykovskiy et al. 2020; 1.58M drug-like molecules from ZINC
Clean Leads, MIT licence). The file ships inside the ``molsets`` wheel; ``molsets`` pins very old
dependencies, so install it with ``pip install --no-deps molsets``. The file is read straight from
the installed package: ``moses`` is located, never imported (importing it would need those
dependencies). A user without the package passes the CSV's path (MOSES publishes it as
``dataset_v1.csv`` and per-split files).

Examples
--------
>>> from deepfuse_plugin.data.corpora import read_smiles_file
>>> import io
>>> read_smiles_file(io.StringIO("SMILES\\nCCO\\nc1ccccc1\\n"))
['CCO', 'c1ccccc1']
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from deepfuse_plugin.errors import InvalidInputError

__all__ = ["iter_smiles_chunks", "moses_smiles", "moses_path", "read_smiles_file"]

MOSES_SPLITS = ("train", "test", "test_scaffolds")


def moses_path(split: str = "train") -> Path:
    """Path of the MOSES ``split`` CSV inside the installed ``molsets`` package."""
    if split not in MOSES_SPLITS:
        raise InvalidInputError(f"Unknown MOSES split {split!r}; choose one of {MOSES_SPLITS}")
    spec = importlib.util.find_spec("moses")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            "MOSES is not installed: run `pip install --no-deps molsets` (its "
            "wheel carries the 1.58M-molecule corpus), or pass the CSV's path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data" / f"{split}.csv.gz"
    if not path.is_file():
        raise InvalidInputError(f"The installed molsets package has no {path.name} ({path})")
    return path


def read_smiles_file(
    source: str | os.PathLike | IO[str], column: str = "SMILES", n: int | None = None, seed: int = 0
) -> list[str]:
    """SMILES from a CSV (any compression pandas reads) or a one-SMILES-per-line file.

    Parameters
    ----------
    source: path or text stream
    column: str
        The SMILES column of a CSV; a file whose header lacks it is read as one SMILES per line.
    n: int, optional
        Keep a random subset of ``n`` molecules (in file order), drawn with ``seed``.
    seed: int
    """
    return [s for chunk in iter_smiles_chunks(source, column, n=n, seed=seed) for s in chunk]


def iter_smiles_chunks(
    source: str | os.PathLike | IO[str],
    column: str = "SMILES",
    chunk_rows: int = 65536,
    n: int | None = None,
    seed: int = 0,
) -> Iterator[list[str]]:
    """The SMILES :func:`read_smiles_file` returns, in lists of at most ``chunk_rows``, reading
    the file ``chunk_rows`` rows at a time (memory does not grow with the file).

    Whitespace around a SMILES is stripped and empty entries are skipped. With ``n``, the subset
    is the one :func:`read_smiles_file` draws (same ``seed``, same molecules): a first pass counts
    the entries, so ``source`` must then be a path or a seekable stream.

    Examples
    --------
    >>> import io
    >>> list(iter_smiles_chunks(io.StringIO("SMILES\\nCCO\\nCCN\\nC\\n"), chunk_rows=2))
    [['CCO', 'CCN'], ['C']]
    """
    if chunk_rows < 1:
        raise InvalidInputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    keep = None
    if n is not None:
        total = sum(len(chunk) for chunk in _stripped_chunks(source, column, chunk_rows))
        if n < total:
            keep = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        _rewind(source)
    seen = 0  # entries read so far: the position of the next one in read_smiles_file's list
    for chunk in _stripped_chunks(source, column, chunk_rows):
        if keep is not None:
            lo, hi = np.searchsorted(keep, [seen, seen + len(chunk)])
            picked = [chunk[i - seen] for i in keep[lo:hi]]
            seen += len(chunk)
            chunk = picked
        if chunk:
            yield chunk


def _stripped_chunks(
    source: str | os.PathLike | IO[str], column: str, chunk_rows: int
) -> Iterator[list[str]]:
    """Non-empty stripped entries of ``column`` (or of the only column), ``chunk_rows`` rows of
    the file at a time."""
    reader = pd.read_csv(source, dtype=str, keep_default_na=False, chunksize=chunk_rows)
    with reader:
        for frame in reader:
            if column not in frame.columns:
                if frame.shape[1] != 1:
                    raise InvalidInputError(
                        f"{source}: no {column!r} column (columns: {list(frame.columns)}); "
                        "pass column="
                    )
                column = frame.columns[0]
            smiles = frame[column].str.strip()
            yield smiles[smiles != ""].tolist()


def _rewind(source: str | os.PathLike | IO[str]) -> None:
    """Back to the start of a stream for a second pass (paths are simply reopened)."""
    if isinstance(source, (str, os.PathLike)):
        return
    if not (hasattr(source, "seekable") and source.seekable()):
        raise InvalidInputError(
            "A random subset (n=...) reads the input twice: pass a path or a seekable stream"
        )
    source.seek(0)


def moses_smiles(
    split: str = "train", n: int | None = None, seed: int = 0, path: str | os.PathLike | None = None
) -> list[str]:
    """MOSES SMILES (``split`` of the installed ``molsets`` package, or the CSV at ``path``),
    optionally a seeded random subset of ``n``."""
    return read_smiles_file(path if path is not None else moses_path(split), "SMILES", n, seed)
