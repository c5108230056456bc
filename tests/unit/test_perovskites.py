"""``load_castelli_perovskites``: tiny CSVs in the Castelli layout (cubic ABX3 perovskites built
with pymatgen), bad rows that cost only themselves, and the head of the shared file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pymatgen.core")

from pymatgen.core import Lattice, Structure  # noqa: E402

from deepfuse_plugin.data import load_castelli_perovskites  # noqa: E402
from deepfuse_plugin.data.loaders import CrystalDataset  # noqa: E402
from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError  # noqa: E402

#: (A, B, X, cubic lattice constant in A): 12 ideal cubic perovskites.
PEROVSKITES = [
    ("Sr", "Ti", "O", 3.905),
    ("Ba", "Ti", "O", 4.00),
    ("Ca", "Ti", "O", 3.84),
    ("Sr", "Zr", "O", 4.10),
    ("Ba", "Zr", "O", 4.19),
    ("La", "Al", "O", 3.79),
    ("K", "Nb", "O", 4.00),
    ("Na", "Nb", "O", 3.95),
    ("Cs", "Pb", "Br", 5.87),
    ("Cs", "Sn", "I", 6.20),
    ("K", "Mg", "F", 3.99),
    ("Sr", "Hf", "O", 4.07),
]


def perovskite(a: str, b: str, x: str, lattice: float) -> Structure:
    """An ideal cubic ABX3 perovskite (Pm-3m, 5 sites)."""
    return Structure(
        Lattice.cubic(lattice),
        [a, b, x, x, x],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def castelli_frame(n: int = len(PEROVSKITES)) -> pd.DataFrame:
    """The first ``n`` of :data:`PEROVSKITES` in the Castelli file's columns (ids ``p000``...;
    labels: a smooth function of the lattice constant, so a model can learn something)."""
    rows = []
    for i, (a, b, x, lattice) in enumerate(PEROVSKITES[:n]):
        structure = perovskite(a, b, x, lattice)
        rows.append(
            {
                "": i,
                "material_id": f"p{i:03d}",
                "cif": structure.to(fmt="cif"),
                "formula": f"{a}{b}{x}3",
                "heat_all": 0.5 * lattice - 1.5,
                "heat_ref": 0.4 * lattice - 1.2,
                "dir_gap": float(i % 3),
                "ind_gap": float(i % 2),
            }
        )
    return pd.DataFrame(rows).astype(object)  # cells may be set to text in a test


def write_castelli(path: Path, frame: pd.DataFrame) -> Path:
    """``frame`` as a gzipped CSV, like ``perovskites_castelli.csv.gz``."""
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        frame.to_csv(fh, index=False)
    return path


@pytest.fixture
def with_bad_rows(tmp_path) -> Path:
    frame = castelli_frame(6)
    frame.loc[1, "cif"] = "data_broken\n_cell_length_a 4.0\nnot a CIF at all"
    frame.loc[2, "heat_ref"] = "n/a"
    frame.loc[3, "cif"] = perovskite("Sr", "Ti", "O", 0.5).to(fmt="cif")  # atoms 0.25 A apart
    frame.loc[4, "cif"] = ""
    return write_castelli(tmp_path / "castelli.csv.gz", frame)


def test_reads_structures_labels_and_ids_in_file_order(tmp_path):
    path = write_castelli(tmp_path / "castelli.csv.gz", castelli_frame())
    data = load_castelli_perovskites(path)
    assert len(data) == len(PEROVSKITES) == data.n_rows and data.problems == {}
    assert data.ids == [f"p{i:03d}" for i in range(len(PEROVSKITES))]
    assert data.targets == ["heat_ref"] and data.labels.shape == (len(PEROVSKITES), 1)
    expected = [0.4 * lattice - 1.2 for *_, lattice in PEROVSKITES]
    np.testing.assert_allclose(data.labels[:, 0], expected)
    assert data.structures[0].composition.reduced_formula == "SrTiO3"
    assert data.formulas[8] == "CsPbBr3"
    two = load_castelli_perovskites(path, target=["heat_all", "ind_gap"])
    assert two.labels.shape == (len(PEROVSKITES), 2) and two.labels[1, 1] == 1.0


def test_a_bad_row_is_left_out_with_its_reason_and_costs_no_other(with_bad_rows):
    data = load_castelli_perovskites(with_bad_rows)
    assert data.ids == ["p000", "p005"] and data.n_rows == 6
    assert set(data.problems) == {"p001", "p002", "p003", "p004"}
    assert "cannot read the CIF text" in data.problems["p001"]
    assert "heat_ref='n/a'" in data.problems["p002"]
    assert "input limits" in data.problems["p003"]
    assert data.problems["p004"] == "empty CIF cell"
    # the same rows are fine for a label they have
    assert "p002" in load_castelli_perovskites(with_bad_rows, target="heat_all").ids


def test_repeated_ids_keep_their_row_numbers(tmp_path):
    frame = castelli_frame(3)
    frame["material_id"] = ["x", "x", "y"]
    frame.loc[1, "heat_ref"] = ""
    data = load_castelli_perovskites(write_castelli(tmp_path / "c.csv.gz", frame))
    assert data.ids == ["x", "y"] and list(data.problems) == ["x (row 1)"]


def test_bad_settings_and_files_are_named(tmp_path, with_bad_rows):
    with pytest.raises(InvalidSettingError, match="band_gap"):
        load_castelli_perovskites(with_bad_rows, target="band_gap")
    with pytest.raises(InvalidInputError, match="not found"):
        load_castelli_perovskites(tmp_path / "nowhere.csv.gz")
    no_cif = write_castelli(tmp_path / "no_cif.csv.gz", castelli_frame(2).drop(columns="cif"))
    with pytest.raises(InvalidInputError, match="'cif'"):
        load_castelli_perovskites(no_cif)
    frame = castelli_frame(2)
    frame["cif"] = ["junk", ""]
    with pytest.raises(InvalidInputError, match="No usable row.*p001: empty CIF cell"):
        load_castelli_perovskites(write_castelli(tmp_path / "bad.csv.gz", frame))


def test_to_dataset_keeps_structures_labels_and_ids(tmp_path):
    data = load_castelli_perovskites(write_castelli(tmp_path / "c.csv.gz", castelli_frame(4)))
    dataset = data.to_dataset()
    assert isinstance(dataset, CrystalDataset) and len(dataset) == 4
    assert list(dataset.ids) == data.ids and list(dataset.get_task_names()) == ["heat_ref"]
    np.testing.assert_array_equal(dataset.y, data.labels)
    assert dataset.X[3] is data.structures[3]


def test_the_shared_file_reads(shared_data_dir, tmp_path):
    """The first rows of ``perovskites_castelli.csv.gz``, copied byte for byte (gzip)."""
    source = shared_data_dir / "materials" / "perovskites_castelli.csv.gz"
    head = pd.read_csv(source, dtype=str, keep_default_na=False, nrows=5)
    path = write_castelli(tmp_path / "head.csv.gz", head)
    data = load_castelli_perovskites(path)
    assert data.ids == head["material_id"].tolist() and data.problems == {}
    assert all(len(s) == 5 for s in data.structures)
    np.testing.assert_allclose(data.labels[:, 0], head["heat_ref"].astype(float))
