"""Crystal loaders: a small slice of mp36k (extended XYZ), CIF folders, DeepChem's materials loader
(offline, from a local file), and a short DeepChem fit/evaluate on real crystals."""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("ase")

import deepchem as dc

import deepfuse_plugin
from deepfuse_plugin.data import loaders
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
from tests.unit.test_crystal_structures import copy_extxyz_head, needs_text_model

N_SLICE = 50


@pytest.fixture(scope="session")
def mp36k_slice(shared_data_dir, tmp_path_factory) -> Path:
    """The first 50 frames of mp36k.extxyz.xz, decompressed once per session to a temp file
    (streamed: only the start of the archive is decompressed)."""
    source = shared_data_dir / "materials" / "mp36k.extxyz.xz"
    if not source.exists():
        pytest.skip(f"{source} not found")
    return copy_extxyz_head(source, tmp_path_factory.mktemp("mp36k") / "mp36k_head.extxyz", N_SLICE)


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    return CrystalMultiModalFeaturizer(
        ["graph", "composition"], progress=False, cache_dir=tmp_path_factory.mktemp("cache")
    )


def test_load_extxyz_multitask_with_ids_and_splits(mp36k_slice, featurizer):
    ds = loaders.load_extxyz(
        mp36k_slice, targets=list(loaders.MP36K_TARGETS), featurizer=featurizer
    )
    assert len(ds) == N_SLICE and ds.y.shape == (N_SLICE, 3)
    assert all(str(i).startswith("mp-") for i in ds.ids)
    assert list(ds.get_task_names()) == list(loaders.MP36K_TARGETS)
    assert all(isinstance(x, deepfuse_plugin.MultiModalSample) for x in ds.X)
    structures, info = loaders.read_extxyz(mp36k_slice, limit=5)
    assert len(structures) == 5 and {"material_id", "split", "formation_energy_per_atom"} <= set(
        info.columns
    )
    assert structures[0].composition.reduced_formula  # a pymatgen Structure
    train = loaders.load_extxyz(mp36k_slice, split="train")
    assert 0 < len(train) < N_SLICE and isinstance(train.X[0], type(structures[0]))
    parts = loaders.load_extxyz_splits(mp36k_slice, splits=("train", "val", "test", "none"))
    assert sum(len(p) for p in parts.values()) == N_SLICE
    assert set(parts["train"].ids) == set(train.ids)
    assert list(parts["val"].get_task_names()) == ["formation_energy_per_atom"]


def test_missing_targets_get_weight_zero(tmp_path):
    import ase
    import ase.io

    frames = []
    for i, fermi in enumerate([1.5, float("nan")]):
        atoms = ase.Atoms(
            "NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[5.6, 5.6, 5.6], pbc=True
        )
        atoms.info.update(
            material_id=f"x-{i}", formation_energy_per_atom=-2.0, fermi_energy=fermi, split="train"
        )
        frames.append(atoms)
    path = tmp_path / "two.extxyz"
    ase.io.write(path, frames, format="extxyz")
    ds = loaders.load_extxyz(path, targets=["formation_energy_per_atom", "fermi_energy"])
    assert ds.w.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert np.isfinite(ds.y).all() and list(ds.ids) == ["x-0", "x-1"]


def test_compressed_file_is_read_through_a_temporary_copy(mp36k_slice, tmp_path):
    packed = tmp_path / "head.extxyz.xz"
    with open(mp36k_slice, "rb") as src, lzma.open(packed, "wb") as out:
        out.write(src.read())
    ds = loaders.load_extxyz(packed, limit=3)
    assert len(ds) == 3


def test_cif_folder_in_the_cgcnn_layout(tmp_path, featurizer):
    from tests.unit.test_crystal_structures import cscl, nacl, silicon

    for name, build in {"nacl": nacl, "cscl": cscl, "si": silicon}.items():
        build().to(filename=str(tmp_path / f"{name}.cif"))
    (tmp_path / "broken.cif").write_text("not a cif")
    (tmp_path / "id_prop.csv").write_text("nacl,1.0,0.1\ncscl,2.0,\nsi,3.0,0.3\nbroken,4.0,0.4\n")
    ds = loaders.load_cif_folder(tmp_path, featurizer=featurizer, tasks=["a", "b"])
    assert list(ds.ids) == ["nacl", "cscl", "si"]
    assert ds.y[:, 0].tolist() == [1.0, 2.0, 3.0] and ds.w[:, 1].tolist() == [1.0, 0.0, 1.0]
    assert list(ds.get_task_names()) == ["a", "b"]


def test_cif_ids_with_leading_zeros_stay_text(tmp_path):
    """ids 0001/0002 name 0001.cif/0002.cif: read as numbers they became 1/2 and the rows were
    dropped as unreadable."""
    from tests.unit.test_crystal_structures import cscl, nacl

    nacl().to(filename=str(tmp_path / "0001.cif"))
    cscl().to(filename=str(tmp_path / "0002.cif"))
    (tmp_path / "id_prop.csv").write_text("0001,1.5\n0002,NA\n")
    ds = loaders.load_cif_folder(tmp_path)
    assert list(ds.ids) == ["0001", "0002"]
    assert ds.y[:, 0].tolist() == [1.5, 0.0] and ds.w[:, 0].tolist() == [1.0, 0.0]


def test_extxyz_ids_with_leading_zeros_stay_text(tmp_path):
    import ase
    import ase.io

    frames = []
    for material_id in ["0001", "0002", "mp-7"]:
        atoms = ase.Atoms(
            "NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[5.6, 5.6, 5.6], pbc=True
        )
        atoms.info.update(material_id=material_id, formation_energy_per_atom=-1.0)
        frames.append(atoms)
    path = tmp_path / "ids.extxyz"
    ase.io.write(path, frames, format="extxyz")
    assert list(loaders.load_extxyz(path, split_key=None).ids) == ["0001", "0002", "mp-7"]
    _, info = loaders.read_extxyz(path)
    assert info["material_id"].tolist() == ["0001", "0002", "mp-7"]
    assert info["formation_energy_per_atom"].tolist() == [-1.0] * 3  # other keys still numbers


def test_deepchem_materials_loader_with_a_local_file(tmp_path, featurizer):
    """dc.molnet.load_mp_formation_energy reads data_dir/mp_formation_energy.json when it exists
    (no download): a 6-structure file in DeepChem's format goes through the multimodal
    featurizer."""
    from tests.unit.test_crystal_structures import cscl, nacl, silicon, srtio3

    data_dir, save_dir = tmp_path / "data", tmp_path / "save"
    data_dir.mkdir()
    rows = [
        {"structure": build().as_dict(), "formation_energy": float(-i)}
        for i, build in enumerate([nacl, cscl, silicon, srtio3, nacl, cscl])
    ]
    with open(data_dir / "mp_formation_energy.json", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    tasks, (train,), transformers = loaders.load_molnet_materials(
        "mp_formation_energy",
        featurizer=featurizer,
        data_dir=str(data_dir),
        save_dir=str(save_dir),
        splitter=None,
        transformers=[],
    )
    assert tasks == ["formation_energy"] and len(train) == 6
    assert all(isinstance(x, deepfuse_plugin.MultiModalSample) for x in train.X)
    assert os.path.isdir(save_dir)


def test_materials_project_loader_needs_a_key(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    try:
        import mp_api  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="mp-api"):
            loaders.load_materials_project()
        return
    with pytest.raises(ValueError, match="API key"):
        loaders.load_materials_project()


def test_matmmfuse_on_the_mp36k_slice(mp36k_slice, tmp_path):
    needs_text_model()
    feat = CrystalMultiModalFeaturizer(
        ["graph", "text_sentences"], progress=False, cache_dir=tmp_path / "cache"
    )
    ds = loaders.load_extxyz(mp36k_slice, featurizer=feat, limit=24)
    model = dc.models.MatMMFuseModel(
        1,
        feat.modalities,
        encoder_dim=32,
        fused_dim=32,
        head_hidden=32,
        n_heads=2,
        batch_size=8,
        progress=False,
        model_dir=str(tmp_path / "model"),
        encoder_options={"crystal_graph": {"atom_fea_len": 16, "n_conv": 2}},
    )
    model.fit(ds, nb_epoch=2)
    mae = model.evaluate(ds, [dc.metrics.Metric(dc.metrics.mean_absolute_error)])
    assert np.isfinite(mae["mean_absolute_error"])
    restored = deepfuse_plugin.MatMMFuseModel.load(str(tmp_path / "model"))
    np.testing.assert_allclose(restored.predict(ds), model.predict(ds), atol=1e-5)


def test_family_mask_and_zero_shot_table(tmp_path):
    from pymatgen.core import Lattice, Structure

    from deepfuse_plugin.models.matmmfuse import zero_shot_evaluate
    from tests.unit.test_crystal_structures import cscl, nacl, silicon, srtio3

    zns = Structure.from_spacegroup(
        "F-43m", Lattice.cubic(5.41), ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    structures = [nacl(), cscl(), silicon(), srtio3(), zns]
    assert loaders.family_mask(structures, "sulfides").tolist() == [False] * 4 + [True]
    assert loaders.family_mask(structures, "perovskites_abx3").tolist() == [False] * 3 + [
        True,
        False,
    ]
    assert loaders.family_mask(structures, lambda s: len(s) == 5).tolist() == [
        False,
        False,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="Unknown family"):
        loaders.family_mask(structures, "borides")
    feat = CrystalMultiModalFeaturizer(["graph"], progress=False, cache_dir=tmp_path)
    X = feat.featurize(structures)
    train = dc.data.NumpyDataset(X[:4], np.arange(4.0).reshape(-1, 1))
    family = dc.data.NumpyDataset(X[4:], np.ones((1, 1)))
    model = dc.models.MatMMFuseModel(
        1,
        feat.modalities,
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
        batch_size=4,
        progress=False,
        encoder_options={"crystal_graph": {"atom_fea_len": 8}},
    )
    model.fit(train, nb_epoch=1)
    table = zero_shot_evaluate({"CGCNN": model}, {"sulfides": family})
    assert list(table.columns) == ["n", "CGCNN"] and table.loc["sulfides", "n"] == 1
