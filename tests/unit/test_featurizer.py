"""MultiModalFeaturizer: bad input, modality failures, parallelism, cache key, rebuilding."""

from __future__ import annotations

import logging

import deepchem as dc
import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import Chem

import deepfuse_plugin as dfp
from deepfuse_plugin.feat import molecule
from deepfuse_plugin.modalities import GraphFeatures, Modality

LOGGER = "deepfuse_plugin.feat.molecule"


def assert_samples_equal(a, b):
    assert isinstance(a, dfp.MultiModalSample) and isinstance(b, dfp.MultiModalSample)
    assert a.modality_names == b.modality_names
    assert a.missing_reasons == b.missing_reasons
    for name in a.modality_names:
        va, vb = a.values[name], b.values[name]
        assert (va is None) == (vb is None), name
        if isinstance(va, GraphFeatures):
            np.testing.assert_array_equal(va.node_features, vb.node_features)
            np.testing.assert_array_equal(va.edge_index, vb.edge_index)
            np.testing.assert_array_equal(va.edge_features, vb.edge_features)
        elif va is not None:
            np.testing.assert_array_equal(va, vb)


def test_is_a_deepchem_molecular_featurizer_and_publishes_specs(small_featurizer):
    assert isinstance(small_featurizer, dc.feat.MolecularFeaturizer)
    assert small_featurizer.modality_names == ["ecfp", "graph", "smiles"]
    assert all(isinstance(m, Modality) for m in small_featurizer.modalities)
    assert [m.kind for m in small_featurizer.modalities] == ["vector", "graph", "sequence"]


def test_fingerprint_bits_are_stored_as_bytes_and_collate_to_float32():
    from rdkit.Chem import rdFingerprintGenerator

    from deepfuse_plugin.data.collate import collate_samples

    feat = dfp.MultiModalFeaturizer(["ecfp"], progress=False)
    counts = dfp.MultiModalFeaturizer(["ecfp"], ecfp_counts=True, progress=False)
    (bits,), (counted,) = feat.featurize(["CCO"]), counts.featurize(["CCO"])
    assert bits.values["ecfp"].dtype == np.uint8 and counted.values["ecfp"].dtype == np.float32
    expected = rdFingerprintGenerator.GetMorganGenerator(
        radius=2, fpSize=2048
    ).GetFingerprintAsNumPy(Chem.MolFromSmiles("CCO"))
    batch = collate_samples([bits], feat.modalities)
    assert batch.inputs["ecfp"].dtype == torch.float32
    np.testing.assert_array_equal(batch.inputs["ecfp"][0].numpy(), expected.astype(np.float32))


def test_featurize_accepts_smiles_mols_and_a_single_string(small_featurizer):
    from_smiles = small_featurizer.featurize(["CCO", "c1ccccc1"])
    from_mols = small_featurizer.featurize(
        [Chem.MolFromSmiles("CCO"), Chem.MolFromSmiles("c1ccccc1")]
    )
    single = small_featurizer.featurize("CCO")
    assert from_smiles.dtype == object and from_smiles.shape == (2,)
    assert single.shape == (1,)
    for a, b in zip(from_smiles, from_mols):
        assert_samples_equal(a, b)
    assert_samples_equal(single[0], from_smiles[0])


def test_invalid_empty_and_none_give_empty_arrays_and_a_warning_naming_the_index(
    small_featurizer, caplog
):
    inputs = ["CCO", "not_a_smiles", "", None, float("nan"), "C1CC", "c1ccccc1"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = small_featurizer.featurize(inputs)
    assert len(out) == len(inputs)  # aligned with the input: DeepChem drops the empty rows
    valid = [isinstance(x, dfp.MultiModalSample) for x in out]
    assert valid == [True, False, False, False, False, False, True]
    for x in out[1:6]:
        assert isinstance(x, np.ndarray) and x.size == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0]
    assert "5 of 7" in message
    for index, text in [(1, "'not_a_smiles'"), (2, "''"), (3, "None"), (5, "'C1CC'")]:
        assert f"{index}:{text}" in message
    assert "0:" not in message and "6:" not in message
    assert small_featurizer.last_failures == {
        1: "RDKit cannot parse this SMILES",
        2: "empty SMILES",
        3: "not a string (got NoneType)",
        4: "not a string (got float)",
        5: "RDKit cannot parse this SMILES",
    }
    assert "5:'C1CC' (RDKit cannot parse this SMILES)" in message


def test_no_warning_when_everything_parses(small_featurizer, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        small_featurizer.featurize(["CCO", "CCN"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class FailsForNitrogen(molecule.ModalityFeaturizer):
    """A modality that raises for molecules containing nitrogen."""

    def __init__(self):
        self.name = "picky"
        self.spec = Modality("picky", "vector", dim=1)

    def compute(self, mol, smiles):
        if any(a.GetSymbol() == "N" for a in mol.GetAtoms()):
            raise RuntimeError("no nitrogen please")
        return np.ones(1, np.float32)


def test_failing_modality_marks_missing_and_keeps_the_molecule(caplog):
    feat = dfp.MultiModalFeaturizer(["ecfp", FailsForNitrogen()], ecfp_size=32, progress=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = feat.featurize(["CCO", "CCN", "CCC"])
    assert all(isinstance(x, dfp.MultiModalSample) for x in out)
    assert [x.present("picky") for x in out] == [True, False, True]
    assert all(x.present("ecfp") for x in out)
    assert "no nitrogen please" in out[1].missing_reasons["picky"]
    assert "RuntimeError" in out[1].missing_reasons["picky"]
    assert any("'picky' missing for 1 molecule" in r.getMessage() for r in caplog.records)


def test_failing_modality_rows_survive_csv_loader(tmp_path):
    import pandas as pd

    path = tmp_path / "data.csv"
    pd.DataFrame({"smiles": ["CCO", "CCN", "CCC"], "y": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    feat = dfp.MultiModalFeaturizer(["ecfp", FailsForNitrogen()], ecfp_size=32, progress=False)
    ds = dc.data.CSVLoader(["y"], feature_field="smiles", featurizer=feat).create_dataset(str(path))
    assert list(ds.ids) == ["CCO", "CCN", "CCC"]
    assert [x.present("picky") for x in ds.X] == [True, False, True]


def test_parallel_featurization_gives_the_same_samples(monkeypatch):
    smiles = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "bad", "C[C@H](N)C(=O)O", "CCN"] * 12  # 72
    serial = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=64, n_jobs=1, progress=False
    )
    parallel = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=64, n_jobs=2, progress=False
    )
    calls = []
    original = molecule.MultiModalFeaturizer._featurize_parallel

    def spy(self, points):
        calls.append(len(points))
        return original(self, points)

    monkeypatch.setattr(molecule.MultiModalFeaturizer, "_featurize_parallel", spy)
    a, b = serial.featurize(smiles), parallel.featurize(smiles)
    assert calls == [len(smiles)]  # the parallel path really ran
    assert len(a) == len(b) == len(smiles)
    for x, y in zip(a, b):
        if isinstance(x, dfp.MultiModalSample):
            assert_samples_equal(x, y)
        else:
            assert isinstance(y, np.ndarray) and y.size == 0


def test_str_is_a_cache_key_that_depends_on_the_modalities():
    def key(*modalities, **kwargs):
        return str(dfp.MultiModalFeaturizer(list(modalities), progress=False, **kwargs))

    base = key("ecfp", "smiles")
    assert base == key("ecfp", "smiles")  # stable: same config, same cache folder
    assert base == key("ecfp", "smiles", n_jobs=2)  # n_jobs does not change the features
    variants = [
        key("ecfp"),
        key("ecfp", "graph"),
        key("smiles", "ecfp"),
        key("ecfp", "smiles", ecfp_size=1024),
        key("ecfp", "smiles", ecfp_radius=3),
        key("ecfp", "smiles", ecfp_counts=True),
        key("ecfp", "smiles", max_length=64),
        key("ecfp", "emb", embeddings={"emb": {"CCO": [1.0, 2.0]}}),
        key("ecfp", "emb", embeddings={"emb": {"CCO": [1.0, 3.0]}}),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert all(k.startswith("MultiModalFeaturizer_") for k in variants)


def test_str_differs_for_different_vocabularies_of_the_same_size():
    vocab_a = list(dfp.feat.tokenizers.DEFAULT_SMILES_VOCAB)
    vocab_b = vocab_a[:-1] + ["[Xe]"]  # same size, one different token
    a = dfp.MultiModalFeaturizer(["smiles"], smiles_vocabulary=vocab_a, progress=False)
    b = dfp.MultiModalFeaturizer(["smiles"], smiles_vocabulary=vocab_b, progress=False)
    assert len(a.modalities[0].vocab) == len(b.modalities[0].vocab)
    assert str(a) != str(b)


def test_rebuild_from_specs_gives_identical_features():
    smiles = ["CCO", "c1ccccc1O", "C[C@H](N)C(=O)O", "CC(=O)Nc1ccc(O)cc1", "C[Xe]C"]
    table = {"CCO": [1.0, 2.0], "Oc1ccccc1": [3.0, 4.0]}
    original = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles", "selfies", "descriptors", "emb"],
        ecfp_radius=3,
        ecfp_size=256,
        ecfp_counts=True,
        max_length=20,
        smiles_vocabulary=dfp.feat.tokenizers.fit_smiles_vocabulary(["C[Xe]C"]),
        embeddings={"emb": table},
        progress=False,
    )
    rebuilt = dfp.MultiModalFeaturizer(
        modalities=original.modalities, embeddings={"emb": table}, progress=False
    )
    assert rebuilt.modalities == original.modalities
    assert str(rebuilt) == str(original)
    for a, b in zip(original.featurize(smiles), rebuilt.featurize(smiles)):
        assert_samples_equal(a, b)
    # also from the JSON form a saved model keeps
    from_dicts = dfp.MultiModalFeaturizer(
        modalities=[Modality.from_dict(m.to_dict()) for m in original.modalities],
        embeddings={"emb": table},
        progress=False,
    )
    assert from_dicts.modalities == original.modalities


def test_rebuild_from_specs_of_custom_named_modalities():
    """Specs, not names, say how to rebuild: a SELFIES modality called 'sf' stays SELFIES."""
    smiles = ["CCO", "c1ccccc1O", "C[C@H](N)C(=O)O"]
    original = dfp.MultiModalFeaturizer(
        [
            molecule.SelfiesModality(max_length=32, name="sf"),
            molecule.SmilesModality(max_length=16, name="smi16"),
            molecule.ECFPModality(radius=1, size=64, name="fp"),
            molecule.DescriptorsModality(name="rdkit2d"),
            molecule.GraphModality(name="mol_graph"),
        ],
        progress=False,
    )
    rebuilt = dfp.MultiModalFeaturizer(modalities=original.modalities, progress=False)
    assert [type(m) for m in rebuilt.modality_featurizers] == [
        type(m) for m in original.modality_featurizers
    ]
    for a, b in zip(original.featurize(smiles), rebuilt.featurize(smiles)):
        assert_samples_equal(a, b)


def test_rebuild_embedding_spec_without_its_table_is_a_clear_error():
    original = dfp.MultiModalFeaturizer(["emb"], embeddings={"emb": {"CCO": [1.0]}}, progress=False)
    with pytest.raises(ValueError, match="embeddings="):
        dfp.MultiModalFeaturizer(modalities=original.modalities, progress=False)


def test_bad_modality_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown modality 'fingerprint'"):
        dfp.MultiModalFeaturizer(["fingerprint"], progress=False)
    with pytest.raises(ValueError, match="unique"):
        dfp.MultiModalFeaturizer(["ecfp", "ecfp"], progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        dfp.MultiModalFeaturizer([], progress=False)
    with pytest.raises(TypeError, match="Cannot use"):
        dfp.MultiModalFeaturizer([3], progress=False)


def test_from_smiles_dataset_keeps_valid_rows_aligned_with_labels(caplog):
    feat = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=32, progress=False)
    y = np.array([[1.0, np.nan], [2.0, 2.5], [3.0, 3.5], [np.nan, 4.5]])
    with caplog.at_level(logging.WARNING):
        ds = dfp.MultiModalDataset.from_smiles(["CCO", "bad", "CCN", "CCC"], feat, y=y)
    assert list(ds.ids) == ["CCO", "CCN", "CCC"]
    np.testing.assert_array_equal(ds.y, [[1.0, 0.0], [3.0, 3.5], [0.0, 4.5]])
    np.testing.assert_array_equal(ds.w, [[1, 0], [1, 1], [0, 1]])  # NaN labels weigh 0
    assert any("bad" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with pytest.raises(ValueError, match="None of the 2 inputs"):
        dfp.MultiModalDataset.from_smiles(["bad", ""], feat, y=[1.0, 2.0])


def test_presence_frame_and_drop_modalities(featurized, smiles, tmp_path, monkeypatch):
    ds = dc.data.NumpyDataset(featurized, np.zeros(len(smiles)), ids=np.array(smiles))
    frame = dfp.presence_frame(ds)
    assert list(frame.columns) == ["ecfp", "graph", "smiles"] and frame.values.all()
    assert list(frame.index) == smiles
    dropped = dfp.drop_modalities(ds, ["graph"], fraction=1.0)
    # a sharded copy is read shard by shard, never loaded whole
    from deepfuse_plugin.data import ShardedMultiModalDataset

    sharded = ShardedMultiModalDataset.from_dataset(dropped, tmp_path / "shards", shard_size=5)
    monkeypatch.setattr(ShardedMultiModalDataset, "X", property(lambda _: pytest.fail("X read")))
    pd.testing.assert_frame_equal(dfp.presence_frame(sharded), dfp.presence_frame(dropped))
    assert not dfp.presence_frame(dropped)["graph"].any()
    assert dfp.presence_frame(dropped)[["ecfp", "smiles"]].values.all()
    assert featurized[0].present("graph")  # original untouched
    # a sample never loses its last present modality
    only = dfp.drop_modalities(ds, ["ecfp", "graph", "smiles"], fraction=1.0)
    assert (dfp.presence_frame(only).sum(axis=1) == 1).all()
    np.testing.assert_array_equal(dropped.ids, ds.ids)
    # for a model reading only ecfp and graph, the last of those two is kept (smiles does not count)
    for_model = dfp.presence_frame(
        dfp.drop_modalities(ds, ["ecfp", "graph"], fraction=1.0, keep_one_of=["ecfp", "graph"])
    )
    assert (for_model[["ecfp", "graph"]].sum(axis=1) == 1).all() and for_model["smiles"].all()
    assert not dfp.presence_frame(dfp.drop_modalities(ds, ["ecfp", "graph"], fraction=1.0))[
        ["ecfp", "graph"]
    ].values.any()  # smiles was enough
    with pytest.raises(ValueError, match=r"Cannot drop \['grpah'\]"):
        dfp.drop_modalities(ds, ["grpah"])
    with pytest.raises(ValueError, match="fraction"):
        dfp.drop_modalities(ds, ["graph"], fraction=1.5)
