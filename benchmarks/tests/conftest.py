"""Fixtures of the harness tests: the library's tiny data and settings, shared with its tests.

The harness is tested with the library (``make test``): the same one torch thread, the same seeds
per test, the same policy for the shared benchmark data (skipped locally, failing under CI when
missing) and the same tiny CSV files, plus ``tiny_molnet_dir`` (tiny MoleculeNet files) for the
harness's own tests.
"""

from pathlib import Path

import pandas as pd
import pytest
from deepchem.molnet.load_function.delaney_datasets import DELANEY_TASKS

from tests.cli.conftest import BAD_SMILES, CLI_SMILES, tiny_hiv_data_dir  # noqa: F401 (fixture)
from tests.conftest import _seed, pytest_configure  # noqa: F401 (fixture, hook)

DELANEY_TASK = DELANEY_TASKS[0]  # the ESOL label column of delaney-processed.csv


@pytest.fixture(scope="module")
def tiny_molnet_dir(tmp_path_factory) -> Path:
    """``<tmp>/moleculenet/{BBBP.csv, delaney-processed.csv}`` in DeepChem's formats: the 40 CLI
    molecules, one unparseable SMILES and one duplicated SMILES (with a different label)."""
    from rdkit import Chem

    root = tmp_path_factory.mktemp("data")
    folder = root / "moleculenet"
    folder.mkdir()
    smiles = CLI_SMILES[:20] + [BAD_SMILES] + CLI_SMILES[20:] + ["CCO"]
    bbbp = pd.DataFrame(
        {
            "num": range(1, len(smiles) + 1),
            "name": [f"m{i}" for i in range(len(smiles))],
            "p_np": [i % 2 for i in range(len(smiles))],
            "smiles": smiles,
        }
    )
    bbbp.to_csv(folder / "BBBP.csv", index=False)
    heavy = [
        Chem.MolFromSmiles(s).GetNumHeavyAtoms() if Chem.MolFromSmiles(s) else 0 for s in smiles
    ]
    delaney = pd.DataFrame(
        {
            "Compound ID": [f"c{i}" for i in range(len(smiles))],
            DELANEY_TASK: [-0.3 * h + 1.0 for h in heavy],
            "smiles": smiles,
        }
    )
    delaney.to_csv(folder / "delaney-processed.csv", index=False)
    return root
