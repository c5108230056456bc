"""Crystals on the command line: ``deepfuse train``/``predict``/``hpopt`` on a CIF folder (CGCNN's
layout), an extended XYZ file and a CSV of CIF text (20 tiny pymatgen-built structures, 1-2
epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("ase")

from pymatgen.core import Lattice, Structure  # noqa: E402

from deepfuse_plugin.cli import main  # noqa: E402
from deepfuse_plugin.workflows import RUN_FILE  # noqa: E402

#: (formula's species, cubic lattice constant in A, fractional sites): rock salt and CsCl-type
#: binaries and cubic perovskites.
ROCK_SALT = [
    ("Na", "Cl", 5.64),
    ("K", "Cl", 6.29),
    ("Mg", "O", 4.21),
    ("Li", "F", 4.03),
    ("Na", "F", 4.63),
    ("K", "Br", 6.60),
    ("Ca", "O", 4.81),
    ("Ba", "O", 5.52),
]
CSCL = [("Cs", "Cl", 4.12), ("Cs", "Br", 4.29), ("Tl", "Cl", 3.84), ("Cs", "I", 4.57)]
PEROVSKITE = [
    ("Sr", "Ti", 3.905),
    ("Ba", "Ti", 4.00),
    ("Ca", "Ti", 3.84),
    ("Sr", "Zr", 4.10),
    ("Ba", "Zr", 4.19),
    ("Pb", "Ti", 3.97),
    ("K", "Nb", 4.00),
    ("Na", "Nb", 3.91),
]
TRAIN = ["--epochs", "2", "--eval-every", "1", "--batch-size", "4"]
BROKEN_CIF = "data_broken\n_cell_length_a 4.0\nnot a cif at all\n"


def _structures() -> list[Structure]:
    rock_salt = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]])
        for x, y, a in ROCK_SALT
    ]
    cscl = [Structure(Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]]) for x, y, a in CSCL]
    sites = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    perovskite = [
        Structure(Lattice.cubic(a), [x, y, "O", "O", "O"], sites) for x, y, a in PEROVSKITE
    ]
    return rock_salt + cscl + perovskite


def _labels(structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """Volume per atom and mean atomic number: smooth, and far from 0."""
    volume = np.array([s.volume / len(s) for s in structures])
    z = np.array([np.mean([site.specie.Z for site in s]) for s in structures])
    return volume, z


@pytest.fixture(scope="module")
def crystal_inputs(tmp_path_factory) -> dict[str, Path]:
    """The same 20 structures as a CIF folder (plus a broken CIF and a missing one), an
    extended XYZ file and a CSV of CIF text."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    root = tmp_path_factory.mktemp("crystals")
    structures = _structures()
    volume, z = _labels(structures)
    ids = [f"{i:04d}" for i in range(len(structures))]  # "0001" must stay "0001"
    folder = root / "cifs"
    folder.mkdir()
    for id_, structure in zip(ids, structures):
        structure.to(filename=str(folder / f"{id_}.cif"))
    (folder / "bad.cif").write_text(BROKEN_CIF)
    rows = [f"{i},{v:.4f},{n:.3f}" for i, v, n in zip(ids, volume, z)]
    (folder / "id_prop.csv").write_text("\n".join([*rows, "bad,12.0,20.0", "gone,11.0,15.0"]))
    frames = []
    for id_, structure, v, n in zip(ids, structures, volume, z):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info.update(material_id=id_, volume_per_atom=float(v), mean_z=float(n))
        frames.append(atoms)
    xyz = root / "crystals.extxyz"
    write(str(xyz), frames, format="extxyz")
    table = pd.DataFrame(
        {
            "name": ids + ["broken"],
            "cif": [s.to(fmt="cif") for s in structures] + [BROKEN_CIF],
            "volume_per_atom": list(volume) + [10.0],
        }
    )
    csv = root / "crystals.csv"
    table.to_csv(csv, index=False)
    return {"folder": folder, "xyz": xyz, "csv": csv}


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["--no-progress", "train", "--data", str(data), *TRAIN, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def folder_run(crystal_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cif_run"
    code = _train(crystal_inputs["folder"], out, "--tasks", "volume_per_atom,mean_z")
    assert code == 0
    return out


def test_train_on_a_cif_folder_writes_a_structure_run(folder_run):
    record = json.loads((folder_run / RUN_FILE).read_text())
    assert record["input"] == {"kind": "structures", "format": "cif_folder", "cif_column": None}
    assert record["modalities"] == ["graph", "composition"]  # the crystal default
    assert record["tasks"] == ["volume_per_atom", "mean_z"]
    data = record["data"]
    assert data["split"] == "random" and data["rows"] == 22
    assert data["n_train"] + data["n_valid"] + data["n_test"] == 20
    # the two unusable rows are reported with their reason, the others kept
    invalid = "\n".join(data["invalid_structures"])
    assert "bad.cif" in invalid and "gone.cif not found" in invalid
    assert record["featurizer"]["describer"] == "fast"
    assert np.all(np.isfinite(record["normalization"]["y_means"]))


def test_predict_a_cif_folder_keeps_every_row(folder_run, crystal_inputs, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model-dir", str(folder_run), "--data", str(crystal_inputs["folder"]),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "invalid structure or no modality" in capsys.readouterr().out
    frame = pd.read_csv(out, dtype={"id": str})
    assert len(frame) == 22 and frame["id"].iloc[1] == "0001"
    ok = frame["deepfuse_status"] == "ok"
    assert ok.sum() == 20 and frame.loc[ok, "volume_per_atom_pred"].notna().all()
    broken = frame.set_index("id").loc[["bad", "gone"]]
    assert broken["volume_per_atom_pred"].isna().all()
    assert broken["deepfuse_status"].str.startswith("invalid structure").all()
    assert "not found" in broken.loc["gone", "deepfuse_status"]
    assert frame.loc[0, "formula"] == "NaCl"
    assert "volume_per_atom" in frame.columns  # id_prop.csv's label column, named as the task
    # predictions are in label units (volumes per atom of 10-30 A^3), not normalized ones
    assert frame.loc[ok, "volume_per_atom_pred"].between(0, 100).all()


def test_the_same_run_predicts_other_layouts(folder_run, crystal_inputs, tmp_path):
    xyz_out = tmp_path / "xyz.csv"
    assert main(["predict", "--model-dir", str(folder_run), "--data", str(crystal_inputs["xyz"]),
                 "--out", str(xyz_out)]) == 0  # fmt: skip
    from_xyz = pd.read_csv(xyz_out, dtype={"material_id": str})
    assert (from_xyz["deepfuse_status"] == "ok").all() and len(from_xyz) == 20
    csv_out = tmp_path / "csv.csv"
    assert main(["predict", "--model-dir", str(folder_run), "--data", str(crystal_inputs["csv"]),
                 "--cif-column", "cif", "--out", str(csv_out)]) == 0  # fmt: skip
    from_csv = pd.read_csv(csv_out)
    assert list(from_csv.columns[:3]) == ["name", "cif", "volume_per_atom"]  # input kept
    assert from_csv["deepfuse_status"].iloc[-1].startswith("invalid structure")
    # a folder of .cif files alone (no id_prop.csv) is enough to predict
    only_cifs = tmp_path / "only_cifs"
    only_cifs.mkdir()
    for id_ in ("0000", "0003"):
        (only_cifs / f"{id_}.cif").write_bytes(
            (crystal_inputs["folder"] / f"{id_}.cif").read_bytes()
        )
    cif_out = tmp_path / "cifs.csv"
    assert main(["predict", "--model-dir", str(folder_run), "--data", str(only_cifs),
                 "--out", str(cif_out)]) == 0  # fmt: skip
    from_cifs = pd.read_csv(cif_out, dtype={"id": str})
    assert list(from_cifs["id"]) == ["0000", "0003"] and list(from_cifs["formula"]) == [
        "NaCl",
        "LiF",
    ]
    # the same structure gets the same prediction whatever file it came in
    np.testing.assert_allclose(
        from_csv["volume_per_atom_pred"].iloc[:20], from_xyz["volume_per_atom_pred"], rtol=1e-5
    )


def test_train_on_extxyz_and_on_a_cif_column(crystal_inputs, tmp_path):
    out = tmp_path / "xyz_run"
    assert _train(crystal_inputs["xyz"], out, "--tasks", "mean_z", "--model", "late") == 0
    record = json.loads((out / RUN_FILE).read_text())
    assert record["input"]["format"] == "extxyz" and record["data"]["n_train"] == 16
    csv_run = tmp_path / "csv_run"
    extra = ["--cif-column", "cif", "--tasks", "volume_per_atom", "--modalities", "composition"]
    assert _train(crystal_inputs["csv"], csv_run, *extra) == 0
    record = json.loads((csv_run / RUN_FILE).read_text())
    assert record["input"]["cif_column"] == "cif" and len(record["data"]["invalid_structures"]) == 1
    # predict reads the recorded CIF column without being told
    out_csv = tmp_path / "p.csv"
    argv = ["predict", "--model-dir", str(csv_run), "--data", str(crystal_inputs["csv"])]
    assert main([*argv, "--out", str(out_csv)]) == 0
    assert (pd.read_csv(out_csv)["deepfuse_status"] == "ok").sum() == 20
    # the overwrite rules are those of a SMILES run
    assert _train(crystal_inputs["csv"], csv_run, *extra) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "volume_per_atom,mean_z", "--split", "scaffold"], "--split random"),
        (["--tasks", "volume_per_atom,mean_z", "--smiles-column", "smi"], "does not apply"),
        (["--tasks", "volume_per_atom"], "2 target column(s)"),
        (["--tasks", "a,b", "--modalities", "graph,ecfp"], "Unknown crystal modality 'ecfp'"),
    ],
)
def test_bad_structure_input_is_one_sentence(crystal_inputs, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert _train(crystal_inputs["folder"], out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepfuse train: error:") and message in err
    assert not out.exists()


def test_missing_xyz_label_and_csv_without_column(crystal_inputs, tmp_path, capsys):
    assert _train(crystal_inputs["xyz"], tmp_path / "r", "--tasks", "band_gap") == 2
    err = capsys.readouterr().err
    assert "band_gap" in err and "mean_z" in err  # the missing key and the keys there are
    assert _train(crystal_inputs["csv"], tmp_path / "r", "--tasks", "volume_per_atom") == 2
    assert "--cif-column" in capsys.readouterr().err


def test_runs_refuse_the_other_kind_of_input(folder_run, crystal_inputs, tmp_path, capsys):
    smiles = tmp_path / "mols.csv"
    smiles.write_text("smi,y\nCCO,1.0\nCCN,2.0\n")
    argv = ["predict", "--model-dir", str(folder_run), "--data", str(smiles)]
    assert main([*argv, "--out", str(tmp_path / "p.csv")]) == 2
    assert "trained on crystal structures" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_hpopt_searches_a_structure_input(crystal_inputs, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["--no-progress", "hpopt", str(crystal_inputs["xyz"]), "--target-columns", "mean_z"]
    argv += ["--trials", "1", "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "graph+composition" in printed and "--split random" in printed
    assert "--smiles-column" not in printed
    assert json.loads((out / "best_params.json").read_text())["trials_complete"] == 1


def test_a_molecule_run_refuses_structures(crystal_inputs):
    from deepfuse_plugin.prediction import _molecule_inputs
    from deepfuse_plugin.workflows import WorkflowError

    record = {"smiles_column": "smi", "input": {"kind": "smiles", "smiles_column": "smi"}}
    for data in (crystal_inputs["folder"], crystal_inputs["xyz"]):
        with pytest.raises(WorkflowError, match="trained on molecules"):
            _molecule_inputs(None, record, str(data), None, None, False)
    with pytest.raises(WorkflowError, match="trained on molecules"):
        _molecule_inputs(None, record, str(crystal_inputs["csv"]), None, "cif", False)
