"""Fixtures for the ``deepfuse`` command tests: tiny CSV files written into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# 40 valid, varied molecules; labels are a smooth function of size so that a short training run
# learns something, offset far from 0 so that a missing de-normalization would be obvious.
CLI_SMILES = [
    "CCO",
    "CCN",
    "CCCC",
    "CC(=O)O",
    "c1ccccc1",
    "c1ccncc1",
    "c1ccccc1O",
    "CC(=O)Nc1ccc(O)cc1",
    "C[C@H](N)C(=O)O",
    "O=C(O)c1ccccc1O",
    "CN1CCC[C@H]1c1cccnc1",
    "C1CCCCC1",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "ClC(Cl)Cl",
    "OC1CCCCC1",
    "c1ccc2ccccc2c1",
    "CC#N",
    "C=CC=C",
    "CCOC(=O)C",
    "NC(=O)N",
    "c1ccsc1",
    "CC(C)(C)O",
    "C[N+](C)(C)C",
    "FC(F)(F)c1ccccc1",
    "CCCCCCCC",
    "CCCCCCO",
    "c1ccc(cc1)Cl",
    "c1ccc(cc1)Br",
    "Cc1ccccc1",
    "CCc1ccccc1",
    "c1ccc2[nH]ccc2c1",
    "c1cnc2ccccc2c1",
    "OCC(O)CO",
    "CC(C)O",
    "CCCCN",
    "C1CCNCC1",
    "C1CCOC1",
    "O=C1CCCCC1",
    "CC(=O)c1ccccc1",
    "COc1ccccc1",
]
BAD_SMILES = "C1CC(not a smiles"


def _labels(smiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from rdkit import Chem

    heavy = np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], dtype=float)
    return 10.0 + 0.5 * heavy, 5.0 - 0.2 * heavy


def write_regression_csv(path: Path) -> Path:
    """40 molecules + one unparseable SMILES, two tasks (T1, T2), one missing label."""
    t1, t2 = _labels(CLI_SMILES)
    frame = pd.DataFrame(
        {"name": [f"mol{i}" for i in range(len(CLI_SMILES))], "smi": CLI_SMILES, "T1": t1, "T2": t2}
    )
    frame.loc[3, "T2"] = np.nan
    bad = pd.DataFrame({"name": ["broken"], "smi": [BAD_SMILES], "T1": [11.0], "T2": [4.0]})
    frame = pd.concat([frame.iloc[:10], bad, frame.iloc[10:]], ignore_index=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def regression_csv(tmp_path: Path) -> Path:
    """40 molecules + one unparseable SMILES, two tasks, one missing label."""
    return write_regression_csv(tmp_path / "train.csv")


@pytest.fixture
def classification_csv(tmp_path: Path) -> Path:
    t1, _ = _labels(CLI_SMILES)
    frame = pd.DataFrame({"smiles": CLI_SMILES, "active": (t1 > np.median(t1)).astype(int)})
    path = tmp_path / "clf.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def query_csv(tmp_path: Path) -> Path:
    """Rows to predict: valid, unparseable, empty SMILES."""
    frame = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "smi": ["CCOCC", BAD_SMILES, "c1ccccc1CC", None]}
    )
    path = tmp_path / "query.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_hiv_data_dir(tmp_path: Path) -> Path:
    """``<tmp>/data/moleculenet/HIV.csv`` with 80 rows (the layout of ``../shared/data``)."""
    folder = tmp_path / "data" / "moleculenet"
    folder.mkdir(parents=True)
    rows = ["smiles,activity,HIV_active"] + [f"{s},CI,0" for s in CLI_SMILES * 2]
    (folder / "HIV.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data"
