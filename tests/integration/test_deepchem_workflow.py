"""A user's DeepChem workflow: CSVLoader -> splitter -> fit -> evaluate, DiskDataset."""

from __future__ import annotations

import logging

import deepchem as dc
import numpy as np
import pandas as pd
import pytest

import deepfuse_plugin

# 30 valid molecules from several scaffolds, one unparsable row, one empty SMILES.
CSV_SMILES = [
    "c1ccccc1O",
    "c1ccccc1N",
    "c1ccccc1C",
    "c1ccccc1Cl",
    "c1ccccc1CC",
    "c1ccccc1C(=O)O",
    "c1ccncc1",
    "Cc1ccncc1",
    "Nc1ccncc1",
    "Oc1ccncc1",
    "C1CCCCC1",
    "CC1CCCCC1",
    "OC1CCCCC1",
    "NC1CCCCC1",
    "c1ccc2ccccc2c1",
    "Cc1ccc2ccccc2c1",
    "Oc1ccc2ccccc2c1",
    "CCO",
    "CCCO",
    "CCCCO",
    "CCN",
    "CCCN",
    "CC(=O)O",
    "CCC(=O)O",
    "CCCC",
    "CCCCC",
    "c1ccsc1",
    "Cc1ccsc1",
    "c1ccoc1",
    "Cc1ccoc1",
    "this is not a molecule",
    "",
]


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(0)
    n = len(CSV_SMILES)
    frame = pd.DataFrame(
        {
            "smiles": CSV_SMILES,
            "logS": rng.normal(size=n),
            "active": (np.arange(n) % 2).astype(float),
            "name": [f"mol{i}" for i in range(n)],
        }
    )
    frame.loc[3, "logS"] = np.nan  # a missing label in the CSV
    path = tmp_path / "my_data.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def featurizer():
    return dc.feat.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=256, max_length=64, progress=False
    )


def test_csv_loader_scaffold_split_fit_evaluate(
    csv_file, featurizer, tiny_model_kwargs, tmp_path, caplog
):
    loader = dc.data.CSVLoader(tasks=["logS"], feature_field="smiles", featurizer=featurizer)
    with caplog.at_level(logging.WARNING):
        dataset = loader.create_dataset(str(csv_file), data_dir=str(tmp_path / "featurized"))
    assert isinstance(dataset, dc.data.DiskDataset)
    # the two bad rows are dropped and named; every valid row is kept, ids are the SMILES
    assert len(dataset) == 30
    assert list(dataset.ids) == CSV_SMILES[:30]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'this is not a molecule'" in warning and "2 of 32" in warning
    # DeepChem turns the missing label into weight 0
    assert dataset.w[3, 0] == 0
    splitter = dc.splits.ScaffoldSplitter()
    train, valid, test = splitter.train_valid_test_split(
        dataset, frac_train=0.6, frac_valid=0.2, frac_test=0.2
    )
    assert len(train) + len(valid) + len(test) == 30
    assert not set(train.ids) & set(test.ids)
    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=train)
    train, valid, test = (transformer.transform(d) for d in (train, valid, test))
    model = dc.models.DynamicFusionModel(
        n_tasks=1,
        modalities=featurizer.modalities,
        model_dir=str(tmp_path / "model"),
        **tiny_model_kwargs,
    )
    loss = model.fit(train, nb_epoch=3)
    assert np.isfinite(loss)
    metrics = [
        dc.metrics.Metric(dc.metrics.rms_score),
        dc.metrics.Metric(dc.metrics.mae_score),
        dc.metrics.Metric(dc.metrics.pearson_r2_score),
    ]
    scores = model.evaluate(test, metrics, [transformer])
    assert set(scores) == {"rms_score", "mae_score", "pearson_r2_score"}
    assert all(np.isfinite(v) for v in scores.values())
    prediction = model.predict(test, [transformer])
    assert prediction.shape == (len(test), 1)
    y_true = transformer.untransform(test.y)
    np.testing.assert_allclose(
        scores["rms_score"], np.sqrt(np.mean((prediction - y_true) ** 2)), rtol=1e-4
    )


def test_classification_from_csv_with_roc_auc(csv_file, featurizer, tiny_model_kwargs):
    loader = dc.data.CSVLoader(
        tasks=["active"], feature_field="smiles", id_field="name", featurizer=featurizer
    )
    dataset = loader.create_dataset(str(csv_file))
    assert list(dataset.ids[:3]) == ["mol0", "mol1", "mol2"]  # a custom id column is honoured
    train, test = dc.splits.RandomSplitter().train_test_split(dataset, frac_train=0.7, seed=0)
    model = dc.models.DynamicFusionModel(
        1, featurizer.modalities, mode="classification", **tiny_model_kwargs
    )
    model.fit(train, nb_epoch=2)
    scores = model.evaluate(test, [dc.metrics.Metric(dc.metrics.roc_auc_score)])
    assert 0.0 <= scores["roc_auc_score"] <= 1.0


def test_csv_missing_the_named_column_raises_key_error(csv_file, featurizer):
    """DeepChem's CSVLoader raises a bare ``KeyError('<column>')``; deepfuse does not wrap it."""
    with pytest.raises(KeyError, match="smiles_column"):
        dc.data.CSVLoader(
            tasks=["logS"], feature_field="smiles_column", featurizer=featurizer
        ).create_dataset(str(csv_file))
    with pytest.raises(KeyError, match="solubility"):
        dc.data.CSVLoader(
            tasks=["solubility"], feature_field="smiles", featurizer=featurizer
        ).create_dataset(str(csv_file))


def test_csv_with_no_valid_rows_gives_a_clear_error_at_fit(tmp_path, featurizer, tiny_model_kwargs):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"smiles": ["xx", "yy", ""], "y": [1.0, 2.0, 3.0]}).to_csv(path, index=False)
    dataset = dc.data.CSVLoader(
        ["y"], feature_field="smiles", featurizer=featurizer
    ).create_dataset(str(path))
    assert len(dataset) == 0
    model = dc.models.DynamicFusionModel(1, featurizer.modalities, **tiny_model_kwargs)
    with pytest.raises(ValueError, match="no rows"):
        model.fit(dataset, nb_epoch=1)


def test_disk_dataset_round_trip(featurized, smiles, small_featurizer, tiny_model_kwargs, tmp_path):
    y = np.arange(len(featurized), dtype=float).reshape(-1, 1)
    dc.data.DiskDataset.from_numpy(  # writes the shards that DiskDataset reads back
        featurized, y, ids=np.array(smiles), data_dir=str(tmp_path / "disk")
    )
    reloaded = dc.data.DiskDataset(str(tmp_path / "disk"))
    assert len(reloaded) == len(featurized)
    assert list(reloaded.ids) == smiles
    np.testing.assert_array_equal(reloaded.y, y)
    for a, b in zip(reloaded.X, featurized):
        assert a.modality_names == b.modality_names
        np.testing.assert_array_equal(a.values["ecfp"], b.values["ecfp"])
        np.testing.assert_array_equal(a.values["smiles"], b.values["smiles"])
        np.testing.assert_array_equal(a.values["graph"].edge_index, b.values["graph"].edge_index)
    model = dc.models.DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    model.fit(reloaded, nb_epoch=1)
    numpy_ds = dc.data.NumpyDataset(featurized, y, ids=np.array(smiles))
    np.testing.assert_allclose(model.predict(reloaded), model.predict(numpy_ds), rtol=1e-6)
    frame = model.modality_weights(reloaded)
    assert list(frame.index) == smiles


def test_multishard_disk_dataset_trains_and_predicts_in_order(
    featurized, smiles, small_featurizer, tiny_model_kwargs, tmp_path
):
    shards = [
        (
            featurized[i : i + 10],
            np.zeros((len(featurized[i : i + 10]), 1)),
            np.ones((len(featurized[i : i + 10]), 1)),
            np.array(smiles[i : i + 10]),
        )
        for i in range(0, len(featurized), 10)
    ]
    disk = dc.data.DiskDataset.create_dataset(shards, data_dir=str(tmp_path / "sharded"))
    assert disk.get_number_shards() == 3
    model = dc.models.DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    model.fit(disk, nb_epoch=1)
    whole = dc.data.NumpyDataset(featurized, ids=np.array(smiles))
    np.testing.assert_allclose(model.predict(disk), model.predict(whole), rtol=1e-6)
    assert list(model.modality_weights(disk).index) == smiles


def test_inference_with_a_modality_missing_after_training(
    featurized, smiles, small_featurizer, tiny_model_kwargs
):
    y = np.random.default_rng(0).normal(size=(len(featurized), 1))
    ds = dc.data.NumpyDataset(featurized, y, ids=np.array(smiles))
    model = dc.models.DynamicFusionModel(
        1, small_featurizer.modalities, mask_start=0.2, mask_end=0.5, **tiny_model_kwargs
    )
    model.fit(ds, nb_epoch=3)
    for missing in (["ecfp"], ["graph"], ["smiles"], ["ecfp", "graph"]):
        pred = model.predict(ds, drop_modalities=missing)
        assert pred.shape == (len(ds), 1) and np.isfinite(pred).all()
        weights = model.modality_weights(ds, drop_modalities=missing)
        assert (weights[missing].values == 0).all()
    half = deepfuse_plugin.drop_modalities(ds, ["graph"], fraction=0.5, seed=1)
    present = deepfuse_plugin.presence_frame(half)["graph"].values
    assert 0 < present.sum() < len(ds)
    weights = model.modality_weights(half)
    assert (weights["graph"].values[~present] == 0).all()
    assert (weights["graph"].values[present] > 0).all()
    # a present sample's prediction does not depend on its neighbours' missing modalities
    full = model.predict(ds)
    np.testing.assert_allclose(model.predict(half)[present], full[present], rtol=1e-5, atol=1e-6)


def test_train_with_validation_restores_a_deepchem_baseline_without_its_unpickling_restore(
    tmp_path, monkeypatch
):
    """DeepChem's ``TorchModel.restore`` calls ``torch.load`` without ``weights_only``; the best
    checkpoint of a DeepChem baseline is restored with ``restore_safely`` instead."""
    from deepfuse_plugin.train import make_dataset, set_seed, train_with_validation

    def unsafe_restore(self, *args, **kwargs):
        raise AssertionError("DeepChem's restore was called")

    monkeypatch.setattr(dc.models.TorchModel, "restore", unsafe_restore)
    set_seed(0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 1))
    train, valid = (
        make_dataset(X[:32], y[:32], None, range(32)),
        make_dataset(X[32:], y[32:], None, range(32, 40)),
    )
    model = dc.models.MultitaskRegressor(1, 8, batch_size=8, model_dir=str(tmp_path))
    result = train_with_validation(
        model,
        train,
        valid,
        epochs=3,
        eval_every=1,
        transformers=[],
        mode="regression",
        save_dir=str(tmp_path),
        progress=False,
    )
    assert 1 <= result.best_epoch <= 3
    best = min(result.history, key=lambda h: h["score"])
    restored = np.sqrt(np.mean((model.predict(valid).reshape(-1) - y[32:, 0]) ** 2))
    assert restored == pytest.approx(best["rmse"], rel=1e-5)
