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
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from deepfuse_plugin.errors import InvalidInputError

__all__ = ["moses_smiles", "moses_path", "read_smiles_file"]

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
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    if column not in frame.columns:
        if frame.shape[1] != 1:
            raise InvalidInputError(
                f"{source}: no {column!r} column (columns: {list(frame.columns)}); pass column="
            )
        column = frame.columns[0]
    smiles = frame[column].str.strip()
    smiles = smiles[smiles != ""].tolist()
    if n is not None and n < len(smiles):
        keep = np.sort(np.random.default_rng(seed).choice(len(smiles), size=n, replace=False))
        smiles = [smiles[i] for i in keep]
    return smiles


def moses_smiles(
    split: str = "train", n: int | None = None, seed: int = 0, path: str | os.PathLike | None = None
) -> list[str]:
    """MOSES SMILES (``split`` of the installed ``molsets`` package, or the CSV at ``path``),
    optionally a seeded random subset of ``n``."""
    return read_smiles_file(path if path is not None else moses_path(split), "SMILES", n, seed)
