"""Hostile inputs in featurization (issue 21): every one is a per-row failure with a reason.

Inputs that crash or stall RDKit/spglib/pymatgen (a 20,000-character SMILES, huge molecules, NaN
coordinates, collapsed lattices), inputs that are not text at all, and a worker process that dies:
none may raise out of ``featurize`` or cost the other rows.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal

import numpy as np
import pytest
from rdkit import Chem

import deepfuse_plugin as dfp
from deepfuse_plugin.feat import _base, descriptors, molecule
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits
from deepfuse_plugin.modalities import Modality
from tests.unit.test_featurizer import assert_samples_equal

LOGGER = "deepfuse_plugin.feat.molecule"


def chain_mol(n_atoms: int) -> Chem.Mol:
    """An n-carbon chain built atom by atom (no SMILES round trip)."""
    mol = Chem.RWMol()
    for i in range(n_atoms):
        mol.AddAtom(Chem.Atom(6))
        if i:
            mol.AddBond(i - 1, i, Chem.BondType.SINGLE)
    out = mol.GetMol()
    Chem.SanitizeMol(out)
    return out


HOSTILE_SMILES = {  # input -> a piece of its failure reason
    "C" * 20_000: "20000 characters",  # segfaults RDKit's MolToSmiles
    "C" * 1_500: "1500 heavy atoms",
    ".".join(["C"] * 300): "300 fragments",
    "C\ud800": "lone surrogate",
    "CC\x00O": "NUL character",
    None: "not a string (got NoneType)",
    float("nan"): "not a string (got float)",
    b"CCO": "not a string (got bytes)",
    7: "not a string (got int)",
    "": "empty SMILES",
    "C1CC": "RDKit cannot parse",
}


@pytest.fixture(scope="module")
def featurizer():
    return dfp.MultiModalFeaturizer(["ecfp", "graph", "smiles"], ecfp_size=64, progress=False)


def test_each_hostile_smiles_is_a_row_failure_with_its_reason(featurizer, caplog):
    inputs = ["CCO", *HOSTILE_SMILES, "c1ccccc1"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = featurizer.featurize(inputs)
    assert len(out) == len(inputs)
    assert isinstance(out[0], dfp.MultiModalSample) and isinstance(out[-1], dfp.MultiModalSample)
    assert set(featurizer.last_failures) == set(range(1, len(inputs) - 1))
    for index, expected in enumerate(HOSTILE_SMILES.values(), start=1):
        assert out[index].size == 0
        assert expected in featurizer.last_failures[index], (index, featurizer.last_failures)
    # one warning naming index and reason; the 20,000 characters are cut, the surrogate escaped
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1:'CCCC" in warning and "InputLimits.max_smiles_length" in warning
    assert len(warning) < 5_000 and "\\ud800" in warning
    featurizer.featurize(["CCO"])
    assert featurizer.last_failures == {}  # per call, not accumulated


def test_featurize_one_and_featurize_row(featurizer):
    assert featurizer.featurize_one("C" * 20_000) is None
    failure = featurizer.featurize_row("C" * 20_000)
    assert isinstance(failure, _base.RowFailure) and "max_smiles_length" in failure.reason
    assert isinstance(featurizer.featurize_row("CCO"), dfp.MultiModalSample)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_huge_mol_inputs_are_refused_before_the_smiles_writer(n_jobs, monkeypatch):
    """A Mol over the atom limit never reaches MolToSmiles (serial, and the parallel path that
    converts Mols to SMILES in the parent)."""
    feat = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=32, progress=False, n_jobs=n_jobs)
    big = chain_mol(1_200)
    written = []
    real = Chem.MolToSmiles

    def spy(mol, *args, **kwargs):
        written.append(mol.GetNumAtoms())
        return real(mol, *args, **kwargs)

    monkeypatch.setattr(molecule.Chem, "MolToSmiles", spy)
    out = feat.featurize([Chem.MolFromSmiles("CCO"), big] * 32 + [Chem.Mol()])
    assert set(feat.last_failures) == {*range(1, 64, 2), 64}
    assert "1200 heavy atoms" in feat.last_failures[1]
    assert feat.last_failures[64] == "molecule has no atoms"
    assert all(isinstance(x, dfp.MultiModalSample) for x in out[0:64:2])
    assert 1_200 not in written


def test_limits_can_be_raised_and_change_the_cache_key_only_when_not_default():
    default = dfp.MultiModalFeaturizer(["ecfp"], progress=False)
    assert default.limits is DEFAULT_LIMITS
    roomy = dfp.MultiModalFeaturizer(["ecfp"], progress=False, limits=InputLimits(max_atoms=2_000))
    assert not default.featurize_one("C" * 1_500)
    assert roomy.featurize_one("C" * 1_500).present("ecfp")
    assert str(default) == str(dfp.MultiModalFeaturizer(["ecfp"], progress=False))
    assert str(roomy) != str(default)
    rebuilt = dfp.MultiModalFeaturizer(
        modalities=roomy.modalities, limits=roomy.limits, progress=False
    )
    assert rebuilt.limits == roomy.limits and str(rebuilt) == str(roomy)
    with pytest.raises(TypeError, match="InputLimits"):
        dfp.MultiModalFeaturizer(["ecfp"], progress=False, limits={"max_atoms": 5})


def test_an_exception_while_parsing_fails_only_its_row(featurizer, monkeypatch):
    real = Chem.MolToSmiles

    def breaks_on_propanol(mol, *args, **kwargs):
        if mol.GetNumAtoms() == 4:
            raise RuntimeError("writer exploded")
        return real(mol, *args, **kwargs)

    monkeypatch.setattr(molecule.Chem, "MolToSmiles", breaks_on_propanol)
    out = featurizer.featurize(["CCO", "CCCO", "CC"])
    assert featurizer.last_failures == {
        1: "RDKit failed on this input: RuntimeError: writer exploded"
    }
    assert isinstance(out[0], dfp.MultiModalSample) and isinstance(out[2], dfp.MultiModalSample)


class RefusesEverything(molecule.ModalityFeaturizer):
    """A modality whose limit check itself raises: the modality is missing, the molecule kept."""

    name = "refuser"
    spec = Modality("refuser", "vector", dim=1)

    def input_problem(self, mol, limits):
        raise OverflowError("check broke")

    def compute(self, mol, smiles):  # pragma: no cover - never reached
        return np.ones(1, np.float32)


def test_a_modality_whose_check_raises_is_missing_with_the_message():
    feat = dfp.MultiModalFeaturizer(["ecfp", RefusesEverything()], ecfp_size=32, progress=False)
    (sample,) = feat.featurize(["CCO"])
    assert sample.present("ecfp") and not sample.present("refuser")
    assert sample.missing_reasons["refuser"] == "OverflowError: check broke"


# -- descriptors ----------------------------------------------------------------------------------
def reference_descriptors(smiles: str) -> np.ndarray:
    """The descriptors modality as computed before the cost bound: every RDKit descriptor."""
    from rdkit.Chem import Descriptors

    mol = Chem.MolFromSmiles(smiles)
    values = np.empty(len(Descriptors._descList))
    for i, (_, fn) in enumerate(Descriptors._descList):
        try:
            values[i] = fn(mol)
        except Exception:
            values[i] = np.nan
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32)


def test_descriptors_are_bit_identical_for_moleculenet_molecules(moleculenet_dir):
    import pandas as pd

    esol = pd.read_csv(moleculenet_dir / "delaney-processed.csv")["smiles"].tolist()
    bace = pd.read_csv(moleculenet_dir / "bace.csv")["mol"].tolist()
    smiles = esol[:6] + bace[:3] + ["[Na+].[Cl-]", "C", "C[C@H](N)C(=O)O"]
    feat = dfp.MultiModalFeaturizer(["descriptors"], progress=False)
    for s, sample in zip(smiles, feat.featurize(smiles)):
        value = sample.values["descriptors"]
        assert value.shape == (217,) and value.dtype == np.float32
        np.testing.assert_array_equal(value, reference_descriptors(s), err_msg=s)


def test_ipc_and_avg_ipc_share_one_characteristic_polynomial(monkeypatch):
    from rdkit.Chem import Graphs

    calls = []
    real = Graphs.CharacteristicPolynomial

    def counting(mol, mat=None):
        calls.append(mol.GetNumAtoms())
        return real(mol, mat)

    monkeypatch.setattr(Graphs, "CharacteristicPolynomial", counting)
    descriptors.DescriptorsModality().compute(Chem.MolFromSmiles("c1ccccc1CCN"), "")
    assert calls == [9]  # RDKit's own Ipc and AvgIpc would compute it twice


def test_descriptors_of_a_molecule_over_the_limit_are_missing_with_the_reason():
    feat = dfp.MultiModalFeaturizer(
        ["ecfp", "descriptors"],
        ecfp_size=32,
        progress=False,
        limits=InputLimits(max_descriptor_atoms=10),
    )
    small, large = feat.featurize(["CCO", "C" * 11])
    assert small.present("descriptors")
    assert large.present("ecfp") and not large.present("descriptors")
    assert large.missing_reasons["descriptors"] == (
        "11 heavy atoms, over the limit of 10 for RDKit descriptors "
        "(InputLimits.max_descriptor_atoms)"
    )
    assert DEFAULT_LIMITS.max_descriptor_atoms <= 200  # the measured bound (module notes)


# -- a worker that dies ----------------------------------------------------------------------------
PARENT = os.getpid()


class KillsItsProcess(molecule.ModalityFeaturizer):
    """Dies like a segfaulting library on two inputs, only ever inside a worker process."""

    name = "fragile"
    spec = Modality("fragile", "vector", dim=1)

    def compute(self, mol, smiles):
        if os.getpid() != PARENT:
            faulthandler.disable()  # pytest's handler would print the dying worker's traceback
            if smiles == "CCCCCCCCCC":
                os.kill(os.getpid(), signal.SIGSEGV)
            if smiles == "CCCCCCCCCCCC":
                os._exit(3)
        return np.full(1, mol.GetNumAtoms(), np.float32)


def test_parallel_featurization_survives_workers_that_die(caplog):
    smiles = [("C" * (i % 14 + 1)) for i in range(70)]  # C10 at 9, 23, ...; C12 at 11, 25, ...
    crashers = [i for i, s in enumerate(smiles) if s in ("C" * 10, "C" * 12)]
    serial = dfp.MultiModalFeaturizer(["ecfp", KillsItsProcess()], ecfp_size=32, progress=False)
    parallel = dfp.MultiModalFeaturizer(
        ["ecfp", KillsItsProcess()], ecfp_size=32, progress=False, n_jobs=2
    )
    expected = serial.featurize(smiles)
    with caplog.at_level(logging.WARNING):
        out = parallel.featurize(smiles)
    assert len(out) == len(smiles)
    assert parallel.last_failures == {i: _base.CRASH_REASON for i in crashers}
    for i, (a, b) in enumerate(zip(expected, out)):
        if i not in crashers:
            assert_samples_equal(a, b)  # featurized, in order
    assert any("worker process died" in r.getMessage() for r in caplog.records)


def test_run_isolated_keeps_task_order_and_isolates_the_crashing_item():
    class Featurizer:
        def featurize_row(self, point):
            if point == "die" and os.getpid() != PARENT:
                os._exit(1)
            return point.upper()

    tasks = [["a", "b", "die", "c", "d"], [], ["e"]]
    assert _base.run_isolated(Featurizer(), tasks, n_jobs=2) == [
        ["A", "B", _base.RowFailure(_base.CRASH_REASON), "C", "D"],
        [],
        ["E"],
    ]


# -- crystals -------------------------------------------------------------------------------------
def crystal_cases():
    pytest.importorskip("pymatgen.core")
    from pymatgen.core import Composition, Lattice, Structure

    def nacl(coords=((0, 0, 0), (0.5, 0.5, 0.5)), lattice=None):
        return Structure(lattice or Lattice.cubic(5.69), ["Na", "Cl"], [list(c) for c in coords])

    over_one = nacl()
    over_one.sites[0]._species = Composition({"Na": 0.8, "K": 0.5})  # as a careless reader might
    over_one_dict = nacl().as_dict()
    over_one_dict["sites"][0]["species"] = [
        {"element": "Na", "occu": 0.8},
        {"element": "K", "occu": 0.5},
    ]
    return nacl(), {
        "nan": (nacl(((0, 0, 0), (np.nan, 0.5, 0.5))), "non-finite fractional coordinates"),
        "flat": (nacl(lattice=Lattice.orthorhombic(5, 5, 1e-6)), "lattice vector lengths"),
        "far": (nacl(((0, 0, 0), (1e9, 0.5, 0.5))), "InputLimits.max_abs_frac_coord"),
        "overlap": (nacl(((0, 0, 0), (0, 0, 0.001))), "InputLimits.min_distance"),
        "occupancy": (over_one, "summing to 1.3"),
        "occupancy_dict": (over_one_dict, "Species occupancies sum to more than 1"),
        "empty": (Structure(Lattice.cubic(5.0), [], []), "structure has no sites"),
        "text": ("not a structure", "cannot read a crystal structure"),
    }


def test_each_hostile_crystal_is_a_row_failure_checked_before_any_modality(monkeypatch):
    from deepfuse_plugin.feat import crystal

    good, cases = crystal_cases()

    class DescriptionLength(crystal.CrystalModalityFeaturizer):
        """Reads the description: the text describer (spglib) runs for each structure."""

        name = "description_length"
        spec = Modality(name, "vector", dim=1)

        def compute(self, structure, context):
            return np.full(1, len(context.description), np.float32)

    feat = crystal.CrystalMultiModalFeaturizer(
        ["graph", "composition", DescriptionLength()], progress=False, cache_dir=False
    )
    touched = []
    for modality in feat.modality_featurizers:
        real = modality.compute
        monkeypatch.setattr(
            modality, "compute", lambda s, c, real=real: touched.append(len(s)) or real(s, c)
        )
    inputs = [good, *(structure for structure, _ in cases.values())]
    out = feat.featurize(inputs)
    assert isinstance(out[0], dfp.MultiModalSample) and out[0].present("description_length")
    assert set(feat.last_failures) == set(range(1, len(inputs)))
    for index, (name, (_, reason)) in enumerate(cases.items(), start=1):
        assert reason in feat.last_failures[index], (name, feat.last_failures[index])
    assert touched == [2, 2, 2]  # only the good structure reached the modalities
    with pytest.raises(dfp.errors.InvalidInputError, match="non-finite"):
        feat.describe(cases["nan"][0])


def test_a_description_that_cannot_be_encoded_costs_only_its_own_text_modalities():
    from deepfuse_plugin.feat import crystal, text

    good, _ = crystal_cases()

    class SurrogateDescriber(text.FastDescriber):
        name = "surrogates"

        def describe(self, structure):
            return (
                "Bad \ud800 text."
                if structure.composition.reduced_formula == "NaCl"
                else super().describe(structure)
            )

    class EncodesTexts(crystal.CrystalModalityFeaturizer):
        """A batched text modality: its batch would fail as a whole on a surrogate."""

        name, batched = "text_length", True
        spec = Modality("text_length", "vector", dim=1)

        def compute(self, structure, context):  # pragma: no cover - batched
            raise AssertionError

        def compute_batch(self, descriptions, progress=False):
            return [np.full(1, len(d.encode("utf-8")), np.float32) for d in descriptions]

    from tests.unit.test_crystal_structures import cscl

    feat = crystal.CrystalMultiModalFeaturizer(
        ["composition", EncodesTexts()],
        progress=False,
        describer=SurrogateDescriber(),
        cache_dir=False,
    )
    bad, fine = feat.featurize([good, cscl()])
    assert bad.present("composition") and not bad.present("text_length")
    assert "cannot be encoded as UTF-8" in bad.missing_reasons["text_length"]
    assert fine.present("text_length")
