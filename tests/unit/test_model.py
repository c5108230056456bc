"""DynamicFusionModel / MultiModalTorchModel: DeepChem conventions, checkpoints, bad input."""

from __future__ import annotations

import json
import logging
import os

import deepchem as dc
import numpy as np
import pandas as pd
import pytest
import torch

import deepfuse_plugin as dfp
from deepfuse_plugin import DynamicFusionModel, MultiModalTorchModel

N_TASKS = 2


@pytest.fixture(scope="module")
def trained(small_featurizer, featurized, smiles, make_tiny_kwargs, tmp_path_factory):
    """A 2-task regression model fitted for 3 epochs, its dataset and model_dir."""
    torch.manual_seed(0)
    np.random.seed(0)
    model_dir = str(tmp_path_factory.mktemp("trained"))
    ids = np.array(smiles)
    y = np.random.default_rng(1).normal(size=(len(featurized), N_TASKS))
    ds = dc.data.NumpyDataset(featurized, y, ids=ids)
    model = DynamicFusionModel(
        N_TASKS, small_featurizer.modalities, model_dir=model_dir, **make_tiny_kwargs()
    )
    loss = model.fit(ds, nb_epoch=3)
    return model, ds, model_dir, loss


# -- DeepChem output conventions ----------------------------------------------------------------
def test_regression_predictions_shape_and_finite(trained):
    model, ds, _, loss = trained
    assert np.isfinite(loss)
    pred = model.predict(ds)
    assert pred.shape == (len(ds), N_TASKS)
    assert np.isfinite(pred).all()
    np.testing.assert_array_equal(pred, model.predict(ds))  # eval mode: deterministic


def test_predict_undoes_transformers(trained):
    model, ds, _, _ = trained
    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=ds)
    raw = model.predict(ds)
    undone = model.predict(ds, [transformer])
    np.testing.assert_allclose(undone, raw * transformer.y_stds + transformer.y_means, rtol=1e-5)


@pytest.mark.parametrize("n_tasks", [1, 3])
def test_classification_probabilities(small_featurizer, featurized, tiny_model_kwargs, n_tasks):
    y = (np.arange(len(featurized) * n_tasks).reshape(-1, n_tasks) % 2).astype(float)
    ds = dc.data.NumpyDataset(featurized, y)
    model = DynamicFusionModel(
        n_tasks, small_featurizer.modalities, mode="classification", **tiny_model_kwargs
    )
    assert np.isfinite(model.fit(ds, nb_epoch=2))
    prob = model.predict(ds)
    assert prob.shape == (len(ds), n_tasks, 2)
    assert (prob >= 0).all()
    np.testing.assert_allclose(prob.sum(-1), 1.0, rtol=1e-5)
    scores = model.evaluate(ds, [dc.metrics.Metric(dc.metrics.roc_auc_score, np.mean)])
    assert 0.0 <= scores["mean-roc_auc_score"] <= 1.0


def test_classification_rejects_non_class_labels(small_featurizer, featurized, tiny_model_kwargs):
    y = np.zeros((len(featurized), 1))
    y[3] = 2.0
    ds = dc.data.NumpyDataset(featurized, y, ids=np.array([f"mol{i}" for i in range(len(y))]))
    model = DynamicFusionModel(
        1, small_featurizer.modalities, mode="classification", **tiny_model_kwargs
    )
    with pytest.raises(ValueError, match=r"integers in \[0, 2\).*mol3"):
        model.fit(ds, nb_epoch=1)


def test_multitask_with_missing_labels_trains_with_finite_loss(
    small_featurizer, featurized, tiny_model_kwargs, caplog
):
    n = len(featurized)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(n, 3))
    w = np.ones((n, 3))
    y[::3, 0] = np.nan  # NaN labels (weight 1: the loss itself must ignore them)
    y[1::4, 2] = np.nan
    w[1::4, 2] = 0.0  # NaN labels with weight 0
    w[2::5, 1] = 0.0  # finite label, weight 0
    ids = np.array([f"mol{i}" for i in range(n)])
    ds = dc.data.NumpyDataset(featurized, y, w, ids=ids)
    model = DynamicFusionModel(3, small_featurizer.modalities, **tiny_model_kwargs)
    losses = []
    with caplog.at_level(logging.WARNING, logger="deepfuse_plugin.models.base"):
        model.fit(ds, nb_epoch=2, all_losses=losses)
    assert losses and np.isfinite(losses).all()
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.model.parameters())
    assert np.isfinite(model.predict(ds)).all()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "NaN/inf labels" in warning and "mol0" in warning and "mol1" in warning


def test_training_reduces_the_error(small_featurizer, featurized, smiles, tiny_model_kwargs):
    """The task head is wired to the labels: fitting a simple target drives the error down."""
    from rdkit import Chem

    y = np.array([[Chem.MolFromSmiles(s).GetNumAtoms() / 10.0] for s in smiles])
    y = y - y.mean()
    ds = dc.data.NumpyDataset(featurized, y)
    model = DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    before = np.mean((model.predict(ds) - y) ** 2)
    model.fit(ds, nb_epoch=25)
    after = np.mean((model.predict(ds) - y) ** 2)
    assert after < 0.5 * np.var(y) and after < before


def test_weights_are_honoured(small_featurizer, featurized, tiny_model_kwargs):
    """Samples with weight 0 do not influence training at all."""
    n = len(featurized)
    y = np.random.default_rng(0).normal(size=(n, 1))
    w = np.ones((n, 1))
    w[n // 2 :] = 0
    y_changed = y.copy()
    y_changed[n // 2 :] += 100.0  # only weight-0 labels differ
    results = []
    for labels in (y, y_changed):
        torch.manual_seed(0)
        model = DynamicFusionModel(
            1,
            small_featurizer.modalities,
            mask_start=0.0,
            mask_end=0.0,
            **{**tiny_model_kwargs, "dropout": 0.0},
        )
        torch.manual_seed(1)
        model.fit(dc.data.NumpyDataset(featurized, labels, w), nb_epoch=2, deterministic=True)
        results.append(model.predict(dc.data.NumpyDataset(featurized)))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


# -- checkpoints and configuration ----------------------------------------------------------------
def test_save_restore_gives_identical_predictions(trained, small_featurizer, make_tiny_kwargs):
    model, ds, model_dir, _ = trained
    fresh = DynamicFusionModel(
        N_TASKS, small_featurizer.modalities, model_dir=model_dir, **make_tiny_kwargs()
    )
    assert not np.array_equal(fresh.predict(ds), model.predict(ds))
    fresh.restore()
    np.testing.assert_array_equal(fresh.predict(ds), model.predict(ds))


def test_load_rebuilds_model_from_its_directory(trained):
    model, ds, model_dir, _ = trained
    with open(os.path.join(model_dir, "deepfuse_config.json")) as fh:
        saved = json.load(fh)
    assert saved["model_class"] == "DynamicFusionModel"
    assert saved["config"] == model.get_config()
    loaded = MultiModalTorchModel.load(model_dir, progress=False)
    assert type(loaded) is DynamicFusionModel
    assert loaded.get_config() == model.get_config()
    assert loaded.modalities == model.modalities
    np.testing.assert_array_equal(loaded.predict(ds), model.predict(ds))
    via_subclass = DynamicFusionModel.load(model_dir, progress=False)
    np.testing.assert_array_equal(via_subclass.predict(ds), model.predict(ds))
    np.testing.assert_array_equal(
        loaded.modality_weights(ds).values, model.modality_weights(ds).values
    )


def test_load_reads_configurations_of_older_formats(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    """A format-1 configuration (before unimodal heads outside late fusion) loads as it was
    saved, although DynamicFusionModel's default now builds unimodal heads."""
    model_dir = str(tmp_path / "old")
    ds = dc.data.NumpyDataset(featurized[:6], np.zeros((6, 1)))
    old = DynamicFusionModel(
        1,
        small_featurizer.modalities,
        model_dir=model_dir,
        unimodal_loss_weight=0.0,
        **tiny_model_kwargs,
    )
    old.fit(ds, nb_epoch=1)
    path = os.path.join(model_dir, "deepfuse_config.json")
    with open(path) as fh:
        payload = json.load(fh)
    del payload["config"]["unimodal_loss_weight"]
    with open(path, "w") as fh:
        json.dump({**payload, "format": 1}, fh)
    loaded = MultiModalTorchModel.load(model_dir, progress=False)
    assert loaded.model.unimodal_heads is None and loaded.unimodal_loss_weight == 0.0
    np.testing.assert_array_equal(loaded.predict(ds), old.predict(ds))
    with open(path, "w") as fh:
        json.dump({**payload, "format": 99}, fh)
    with pytest.raises(ValueError, match="newer deepfuse"):
        MultiModalTorchModel.load(model_dir)


def test_load_from_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a deepfuse model folder"):
        MultiModalTorchModel.load(str(tmp_path))


@pytest.mark.parametrize(
    "change,key",
    [
        ({"fused_dim": 64}, "fused_dim"),
        ({"encoder_dim": 16}, "encoder_dim"),
        ({"gate_hidden": 24}, "gate_hidden"),
        ({"encoder_options": {"graph": {"n_layers": 3}}}, "encoder_options"),
    ],
)
def test_restore_into_a_different_configuration_names_the_key(
    trained, small_featurizer, make_tiny_kwargs, change, key
):
    _, _, model_dir, _ = trained
    other = DynamicFusionModel(
        N_TASKS, small_featurizer.modalities, model_dir=model_dir, **make_tiny_kwargs(**change)
    )
    with pytest.raises(ValueError, match=f"configuration differs(.|\\n)*{key}"):
        other.restore()


def test_restore_with_different_tasks_or_modalities_names_them(trained, make_tiny_kwargs):
    _, _, model_dir, _ = trained
    specs = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=64, max_length=48, progress=False
    ).modalities
    with pytest.raises(ValueError, match="modality 'ecfp'"):
        DynamicFusionModel(N_TASKS, specs, model_dir=model_dir, **make_tiny_kwargs()).restore()
    fewer = specs[1:]
    with pytest.raises(ValueError, match="modalities: saved"):
        DynamicFusionModel(N_TASKS, fewer, model_dir=model_dir, **make_tiny_kwargs()).restore()
    original = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=128, max_length=48, progress=False
    ).modalities
    with pytest.raises(ValueError, match="n_tasks"):
        DynamicFusionModel(1, original, model_dir=model_dir, **make_tiny_kwargs()).restore()


def test_training_settings_do_not_block_restore(
    trained, small_featurizer, make_tiny_kwargs, caplog
):
    model, ds, model_dir, _ = trained
    other = DynamicFusionModel(
        N_TASKS,
        small_featurizer.modalities,
        model_dir=model_dir,
        **make_tiny_kwargs(
            batch_size=3, learning_rate=1e-4, dropout=0.3, mask_end=0.2, lambda_ent=0.5
        ),
    )
    with caplog.at_level("WARNING"):
        other.restore()
    # architecture-neutral settings restore, but the user is told what differs
    assert "different training settings" in caplog.text
    assert "mask_end" in caplog.text and "dropout" in caplog.text
    # another batch size changes float summation order only
    np.testing.assert_allclose(other.predict(ds), model.predict(ds), rtol=1e-5, atol=1e-6)


def test_get_config_round_trips_every_constructor_argument(small_featurizer, tiny_model_kwargs):
    model = DynamicFusionModel(
        1,
        small_featurizer.modalities,
        mask_start=0.05,
        mask_end=0.3,
        lambda_align=0.2,
        lambda_div=0.03,
        lambda_ent=0.04,
        lambda_sparse=0.005,
        **tiny_model_kwargs,
    )
    config = model.get_config()
    json.dumps(config)
    for key in (
        "mask_start",
        "mask_end",
        "lambda_align",
        "lambda_div",
        "lambda_ent",
        "lambda_sparse",
        "gate_hidden",
        "attention_hidden",
        "decoder_hidden",
        "encoder_dim",
        "fused_dim",
        "head_hidden",
        "dropout",
        "fusion_loss_weight",
    ):
        assert config[key] == getattr(model, key), key
    assert model.fusion.loss_weights == {
        "rec": 1.0,
        "align": 0.2,
        "div": 0.03,
        "ent": 0.04,
        "sparse": 0.005,
    }
    rebuilt = DynamicFusionModel(
        **{k: v for k, v in config.items() if v is not None}, progress=False
    )
    assert rebuilt.get_config() == config


def test_invalid_constructor_arguments(small_featurizer):
    with pytest.raises(ValueError, match="mask_end"):
        DynamicFusionModel(1, small_featurizer.modalities, mask_end=1.0)
    with pytest.raises(ValueError, match="n_tasks"):
        DynamicFusionModel(0, small_featurizer.modalities)
    with pytest.raises(ValueError, match="mode"):
        DynamicFusionModel(1, small_featurizer.modalities, mode="ranking")


def test_modalities_given_by_name_use_default_specs():
    model = DynamicFusionModel(
        1,
        ["ecfp", "smiles"],
        encoder_dim=16,
        fused_dim=16,
        progress=False,
        encoder_options={"sequence": {"n_heads": 2}},
    )
    defaults = dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False).modalities
    assert model.modalities == defaults


# -- inference with missing modalities and bad input ----------------------------------------------
def test_predict_with_dropped_modalities(trained):
    model, ds, _, _ = trained
    full = model.predict(ds)
    without_graph = model.predict(ds, drop_modalities=["graph"])
    assert without_graph.shape == full.shape and np.isfinite(without_graph).all()
    assert not np.allclose(without_graph, full)
    weights = model.modality_weights(ds, drop_modalities=["graph"])
    assert (weights["graph"] == 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    # same thing when the samples themselves say the graph is missing
    data_missing = dfp.drop_modalities(ds, ["graph"], fraction=1.0)
    np.testing.assert_allclose(model.predict(data_missing), without_graph, rtol=1e-5, atol=1e-6)
    # only one modality left
    only_ecfp = model.predict(ds, drop_modalities=["graph", "smiles"])
    assert np.isfinite(only_ecfp).all()
    np.testing.assert_array_equal(model.modality_weights(ds, ["graph", "smiles"])["ecfp"], 1.0)
    with pytest.raises(ValueError, match="Cannot drop"):
        model.predict(ds, drop_modalities=["selfies"])
    np.testing.assert_array_equal(model.predict(ds), full)  # dropping did not stick


def test_predict_with_a_featurizer_whose_modalities_differ_is_a_clear_error(trained):
    model, ds, _, _ = trained
    fewer = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=128, progress=False)
    data = dc.data.NumpyDataset(fewer.featurize(["CCO", "CCN"]))
    with pytest.raises(ValueError, match=r"missing \['graph'\].*MultiModalFeaturizer\(modalities="):
        model.predict(data)
    with pytest.raises(ValueError, match=r"missing \['graph'\]"):
        model.fit(dc.data.NumpyDataset(data.X, np.zeros((2, N_TASKS))), nb_epoch=1)
    wider = dfp.MultiModalFeaturizer(["ecfp", "graph", "smiles"], ecfp_size=256, progress=False)
    with pytest.raises(ValueError, match="width 256, the model expects 128"):
        model.predict(dc.data.NumpyDataset(wider.featurize(["CCO"])))


def test_unfeaturized_data_is_a_clear_error(trained):
    model, _, _, _ = trained
    with pytest.raises(TypeError, match="not a MultiModalSample"):
        model.predict(dc.data.NumpyDataset(np.zeros((3, 128))))


def test_empty_dataset_is_a_clear_error(trained):
    model, _, _, _ = trained
    empty = dc.data.NumpyDataset(np.empty(0, dtype=object), np.zeros((0, N_TASKS)))
    with pytest.raises(ValueError, match="no rows"):
        model.fit(empty, nb_epoch=1)
    with pytest.raises(ValueError, match="no rows"):
        model.pretrain(empty, nb_epoch=1)
    with pytest.raises(ValueError, match="no rows"):
        model.predict(empty)
    with pytest.raises(ValueError, match="no rows"):
        model.modality_weights(empty)


def test_fit_with_wrong_number_of_label_columns(trained, featurized):
    model, _, _, _ = trained
    with pytest.raises(ValueError, match="n_tasks=2"):
        model.fit(dc.data.NumpyDataset(featurized, np.zeros((len(featurized), 3))), nb_epoch=1)


# -- self-supervised pretraining -------------------------------------------------------------------
def test_pretrain_needs_no_labels_and_changes_weights(
    small_featurizer, featurized, tiny_model_kwargs
):
    unlabelled = dc.data.NumpyDataset(featurized)
    model = DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    loss = model.pretrain(unlabelled, nb_epoch=2)
    assert np.isfinite(loss) and loss > 0
    after = model.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoders.") for k in changed)
    assert any(k.startswith("fusion.") for k in changed)
    assert not any(k.startswith("head.") for k in changed)  # no labels, no task head training


def test_pretrain_ignores_labels(small_featurizer, featurized, tiny_model_kwargs):
    states = []
    for y in (np.zeros((len(featurized), 1)), np.full((len(featurized), 1), 50.0)):
        torch.manual_seed(0)
        model = DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
        torch.manual_seed(1)
        model.pretrain(dc.data.NumpyDataset(featurized, y), nb_epoch=1, deterministic=True)
        states.append(model.model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])


# -- named outputs and inspection ------------------------------------------------------------------
def test_embedding_and_multiple_output_types(trained):
    model, ds, _, _ = trained
    emb = model.predict(ds, output_types=["embedding"])
    assert emb.shape == (len(ds), model.fused_dim)
    np.testing.assert_array_equal(model.predict_embedding(ds), emb)
    pred, emb2, weights = model.predict(
        ds, output_types=["prediction", "embedding", "modality_weights"]
    )
    assert pred.shape == (len(ds), N_TASKS) and weights.shape == (len(ds), 3)
    np.testing.assert_array_equal(emb2, emb)
    with pytest.raises(ValueError, match="Unknown output types"):
        model.predict(ds, output_types=["logits"])


def test_modality_weights_dataframe(trained):
    model, ds, _, _ = trained
    frame = model.modality_weights(ds)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["ecfp", "graph", "smiles"]
    assert list(frame.index) == list(ds.ids)
    assert (frame.values > 0).all()
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, rtol=1e-5)
    mean = model.mean_modality_weights(ds)
    assert list(mean.index) == ["ecfp", "graph", "smiles"]
    np.testing.assert_allclose(mean.values, frame.mean().values, rtol=1e-6)
    # a sample without a graph has graph weight exactly 0
    partial = dc.data.NumpyDataset(
        np.array([ds.X[0].without(["graph"]), ds.X[1]], dtype=object), ids=np.array(["a", "b"])
    )
    weights = model.modality_weights(partial)
    assert weights.loc["a", "graph"] == 0.0 and weights.loc["b", "graph"] > 0


def test_reconstruct_and_gate_activations(trained):
    model, ds, _, _ = trained
    rec = model.reconstruct(ds, "graph")
    assert rec.shape == (len(ds), model.encoder_dim) and np.isfinite(rec).all()
    with_graph = model.reconstruct(ds, "graph", drop_modalities=[])
    assert not np.allclose(rec, with_graph)  # default: reconstructed from the other modalities
    sims = model.reconstruction_similarity(ds, "smiles")
    assert sims.shape == (len(ds),) and (np.abs(sims) <= 1 + 1e-6).all()
    gates = model.gate_activations(ds)
    assert list(gates) == ["ecfp", "graph", "smiles"]
    for g in gates.values():
        assert g.shape == (len(ds), model.encoder_dim)
        assert ((g > 0) & (g < 1)).all()
    with pytest.raises(ValueError, match="Unknown modality 'selfies'"):
        model.reconstruct(ds, "selfies")
    with pytest.raises(KeyError, match="no 'nonexistent'"):
        model.collect_extras(ds, "nonexistent")


def test_every_modality_kind_trains_end_to_end(smiles, tiny_model_kwargs, tmp_path):
    """ecfp, graph, smiles, selfies, descriptors and a precomputed embedding in one model."""
    rng = np.random.default_rng(0)
    table = {s: rng.normal(size=8) for s in smiles[::2]}  # half the molecules have an embedding
    feat = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles", "selfies", "descriptors", "emb"],
        ecfp_size=64,
        max_length=40,
        embeddings={"emb": table},
        progress=False,
    )
    X = feat.featurize(smiles)
    assert [x.present("emb") for x in X] == [i % 2 == 0 for i in range(len(smiles))]
    ds = dc.data.NumpyDataset(X, rng.normal(size=(len(X), 1)), ids=np.array(smiles))
    model = DynamicFusionModel(1, feat.modalities, model_dir=str(tmp_path), **tiny_model_kwargs)
    assert np.isfinite(model.fit(ds, nb_epoch=2))
    weights = model.modality_weights(ds)
    assert list(weights.columns) == ["ecfp", "graph", "smiles", "selfies", "descriptors", "emb"]
    assert (weights["emb"].values[1::2] == 0).all() and (weights["emb"].values[::2] > 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    loaded = MultiModalTorchModel.load(str(tmp_path), progress=False)
    np.testing.assert_array_equal(loaded.predict(ds), model.predict(ds))
    # the saved specs rebuild the featurizer for new data (the embedding table is given again)
    again = dfp.MultiModalFeaturizer(
        modalities=loaded.modalities, embeddings={"emb": table}, progress=False
    )
    new = dc.data.NumpyDataset(again.featurize(smiles[:4]))
    np.testing.assert_allclose(loaded.predict(new), model.predict(ds)[:4], rtol=1e-5, atol=1e-6)


def test_pretrain_on_an_unlabelled_csv_then_fit(
    tmp_path, small_featurizer, smiles, tiny_model_kwargs
):
    path = tmp_path / "unlabelled.csv"
    pd.DataFrame({"smiles": smiles}).to_csv(path, index=False)
    unlabelled = dc.data.CSVLoader(
        tasks=[], feature_field="smiles", featurizer=small_featurizer
    ).create_dataset(str(path))
    assert unlabelled.get_task_names().size == 0
    model = DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    assert np.isfinite(model.pretrain(unlabelled, nb_epoch=1))
    with pytest.raises(ValueError, match="pretrain"):
        model.fit(unlabelled, nb_epoch=1)
    labelled = dc.data.NumpyDataset(unlabelled.X, np.ones((len(unlabelled), 1)))
    assert np.isfinite(model.fit(labelled, nb_epoch=1))


def test_predict_on_batch_of_featurized_samples(trained, small_featurizer):
    model, ds, _, _ = trained
    X = small_featurizer.featurize(["CCO", "c1ccccc1"])
    pred = model.predict_on_batch(X)
    assert pred.shape == (2, N_TASKS)
    np.testing.assert_allclose(pred, model.predict(dc.data.NumpyDataset(X)), rtol=1e-6)
    with_bad_row = small_featurizer.featurize(["CCO", "not a molecule"])
    with pytest.raises(TypeError, match="not a MultiModalSample"):
        model.predict_on_batch(with_bad_row)


def test_dynamic_fusion_regularises_fingerprint_encoders_by_default(
    small_featurizer, tiny_dataset, tiny_model_kwargs
):
    kwargs = {k: v for k, v in tiny_model_kwargs.items() if k != "encoder_options"}
    model = DynamicFusionModel(1, small_featurizer.modalities, **kwargs)
    ecfp_encoder = model.model.encoders["ecfp"]
    assert ecfp_encoder.input_dropout.p == pytest.approx(0.2)
    assert model.get_config()["encoder_options"] == {}  # defaults are not written into the config
    model.fit(tiny_dataset, nb_epoch=2)
    # dropout is off at inference: predictions are deterministic
    np.testing.assert_array_equal(model.predict(tiny_dataset), model.predict(tiny_dataset))
    # an explicit user setting wins over the model's default
    custom = DynamicFusionModel(
        1, small_featurizer.modalities, encoder_options={"vector": {"input_dropout": 0.0}}, **kwargs
    )
    assert custom.model.encoders["ecfp"].input_dropout.p == 0.0


def test_length_bucket_pool_regroups_training_batches_only(
    small_featurizer, featurized, smiles, tiny_model_kwargs
):
    from deepfuse_plugin.data.collate import sequence_lengths

    ds = dc.data.NumpyDataset(featurized, np.zeros((len(featurized), 1)), ids=np.array(smiles))
    kwargs = {**tiny_model_kwargs, "batch_size": 4}
    model = DynamicFusionModel(1, small_featurizer.modalities, length_bucket_pool=8, **kwargs)
    np.random.seed(0)
    fit_batches = list(model.default_generator(ds, epochs=1, mode="fit", deterministic=False))
    widths = [b[0][0].inputs["smiles"].ids.shape[1] for b in fit_batches]
    plain = DynamicFusionModel(1, small_featurizer.modalities, **kwargs)
    np.random.seed(0)
    plain_widths = [
        b[0][0].inputs["smiles"].ids.shape[1]
        for b in plain.default_generator(ds, epochs=1, mode="fit", deterministic=False)
    ]
    assert sum(len(b[1][0]) for b in fit_batches) == len(ds)
    assert sum(w * len(b[1][0]) for w, b in zip(widths, fit_batches)) < sum(
        w * len(b[1][0]) for w, b in zip(plain_widths, fit_batches)
    )
    # prediction keeps the dataset's order
    predict_lengths = [
        sequence_lengths(ds.X[i : i + 4], small_featurizer.modalities).max()
        for i in range(0, len(ds), 4)
    ]
    assert [
        b[0][0].inputs["smiles"].ids.shape[1] for b in model.default_generator(ds, mode="predict")
    ] == predict_lengths
    assert np.isfinite(
        model.fit(
            dc.data.NumpyDataset(
                featurized, np.random.default_rng(0).normal(size=(len(featurized), 1))
            ),
            nb_epoch=1,
        )
    )
    assert model.get_config()["length_bucket_pool"] == 8
    with pytest.raises(ValueError, match="length_bucket_pool"):
        DynamicFusionModel(1, small_featurizer.modalities, length_bucket_pool=-1)
