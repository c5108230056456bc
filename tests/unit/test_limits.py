"""Input limits: every check returns a reason naming the field to raise, never raises."""

import numpy as np
import pytest
from rdkit import Chem

from deepfuse_plugin.limits import InputLimits, molecule_problem, smiles_problem, structure_problem


@pytest.mark.parametrize(
    "text, fragment",
    [
        (None, "not a string"),
        ("", "empty"),
        ("  ", "empty"),
        ("C\ud800C", "UTF-8"),
        ("C\x00C", "NUL"),
        ("C" * 2001, "max_smiles_length"),
        (".".join(["C"] * 51), "max_fragments"),
    ],
)
def test_smiles_problem_names_the_reason(text, fragment):
    assert fragment in smiles_problem(text)


def test_smiles_within_limits_pass_and_limits_can_be_raised():
    assert smiles_problem("CC(=O)Oc1ccccc1C(=O)O") is None
    assert smiles_problem("C" * 2001, InputLimits(max_smiles_length=3000)) is None


def test_molecule_problem_counts_atoms_and_fragments():
    assert molecule_problem(Chem.MolFromSmiles("CCO")) is None
    assert "max_atoms" in molecule_problem(Chem.MolFromSmiles("C" * 30), InputLimits(max_atoms=20))
    salts = Chem.MolFromSmiles(".".join(["[Na+]"] * 4))
    assert "max_fragments" in molecule_problem(salts, InputLimits(max_fragments=3))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_limits_reject_non_positive_values(bad):
    with pytest.raises(ValueError, match="max_atoms"):
        InputLimits(max_atoms=bad)


def _structure(lattice, coords, species=("Na", "Cl")):
    pymatgen = pytest.importorskip("pymatgen.core")
    return pymatgen.Structure(lattice, list(species), coords, validate_proximity=False)


def test_structure_problem_accepts_rock_salt():
    assert structure_problem(_structure(np.eye(3) * 5.6, [[0, 0, 0], [0.5, 0.5, 0.5]])) is None


@pytest.mark.parametrize(
    "lattice, coords, fragment",
    [
        (np.diag([5.6, 5.6, 1e-6]), [[0, 0, 0], [0.5, 0.5, 0.5]], "lattice vector lengths"),
        (np.eye(3) * 5.6, [[0, 0, 0], [0.5, 0.5, 1e9]], "max_abs_frac_coord"),
        (np.eye(3) * 5.6, [[0, 0, 0], [0.01, 0, 0]], "min_distance"),
        (np.eye(3) * 5.6, [[0, 0, 0], [0.99, 0, 0]], "min_distance"),  # through the periodic image
        ([[5, 0, 0], [5, 1e-9, 0], [0, 0, 5]], [[0, 0, 0], [0.5, 0.5, 0.5]], "volume"),
    ],
)
def test_structure_problem_names_the_broken_part(lattice, coords, fragment):
    assert fragment in structure_problem(_structure(lattice, coords))


def test_structure_problem_reports_nan_coordinates():
    structure = _structure(np.eye(3) * 5.6, [[0, 0, 0], [0.5, 0.5, 0.5]])
    structure[1].frac_coords = np.array([np.nan, 0.5, 0.5])
    assert "non-finite" in structure_problem(structure)
