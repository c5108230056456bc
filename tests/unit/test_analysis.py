"""deepfuse_plugin.analysis: missing-modality evaluation, ablation, modality weights, projections.

Every analysis runs once on every model type of the family (tiny models, one epoch)."""

from __future__ import annotations

import deepchem as dc
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import deepfuse_plugin
from deepfuse_plugin import (
    CrossAttentionFusionModel,
    DynamicFusionModel,
    EarlyFusionModel,
    GatedMoEFusionModel,
    LateFusionModel,
    UnimodalModel,
)
from deepfuse_plugin.analysis import (
    AnalysisResult,
    NoModalityWeightsError,
    embedding_projection,
    evaluate_missing_modalities,
    mean_modality_weights,
    modality_ablation,
    modality_weights,
    plot_degradation,
    weights_vs_masking_rate,
)
from deepfuse_plugin.analysis._common import presence, random_drop, shuffle_modality

SMILES = [
    "CCO",
    "CCN",
    "c1ccccc1",
    "CC(=O)O",
    "CCCC",
    "c1ccncc1",
    "CC(C)O",
    "OCCO",
    "CCOC(=O)C",
    "c1ccc(O)cc1",
    "CN(C)C",
    "ClCCl",
]
NAMES = ("ecfp", "graph", "smiles")
SMALL = dict(
    encoder_dim=32,
    fused_dim=32,
    head_hidden=32,
    batch_size=8,
    progress=False,
    encoder_options={"graph": {"n_layers": 2}, "sequence": {"n_layers": 1, "n_heads": 2}},
)
KINDS = ["dynamic", "early", "late", "cross", "moe", "unimodal"]
WEIGHTED = ["dynamic", "late", "cross", "moe", "unimodal"]
R2 = dc.metrics.Metric(dc.metrics.pearson_r2_score)
MAE = dc.metrics.Metric(dc.metrics.mae_score)


def build(kind: str, modalities, mode: str = "regression"):
    torch.manual_seed(0)
    if kind == "dynamic":
        return DynamicFusionModel(
            1, modalities, mode, gate_hidden=16, attention_hidden=16, decoder_hidden=32, **SMALL
        )
    if kind == "early":
        return EarlyFusionModel(1, modalities, mode, fusion_hidden=32, **SMALL)
    if kind == "late":
        return LateFusionModel(1, modalities, mode, combine="learned", **SMALL)
    if kind == "cross":
        return CrossAttentionFusionModel(1, modalities, mode, n_heads=2, vector_tokens=2, **SMALL)
    if kind == "moe":
        return GatedMoEFusionModel(
            1, modalities, mode, n_experts_shared=1, top_k=2, expert_hidden=32, **SMALL
        )
    if kind == "unimodal":  # graph only
        return UnimodalModel(1, modalities[1], mode, **SMALL)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def data():
    feat = deepfuse_plugin.MultiModalFeaturizer(
        list(NAMES), ecfp_size=128, max_length=48, progress=False
    )
    X = feat.featurize(SMILES)
    y = np.random.default_rng(0).normal(size=(len(SMILES), 1))
    return dc.data.NumpyDataset(X, y, ids=np.array(SMILES)), feat.modalities


@pytest.fixture(scope="module")
def models(data):
    dataset, modalities = data
    out = {}
    for kind in KINDS:
        model = build(kind, modalities)
        model.fit(dataset, nb_epoch=1)
        out[kind] = model
    return out


def with_missing(dataset, row: int, names) -> dc.data.NumpyDataset:
    X = np.array(dataset.X, dtype=object)
    X[row] = X[row].without(names)
    return dc.data.NumpyDataset(X, dataset.y, dataset.w, dataset.ids)


# -- missing modalities --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_missing_modalities_every_model(kind, data, models):
    dataset, _ = data
    model = models[kind]
    result = evaluate_missing_modalities(
        model, dataset, [R2, MAE], modalities=NAMES, random_drop=(0.25, 0.5), seeds=(0, 1)
    )
    assert isinstance(result, AnalysisResult) and isinstance(result.figure, Figure)
    table = result.table
    assert list(table.columns[:7]) == [
        "condition",
        "removed",
        "kept",
        "drop_fraction",
        "seed",
        "metric",
        "value",
    ]
    # 1 full + 6 proper subsets of 3 modalities + 2 rates x 2 seeds, per metric
    assert len(table) == 2 * (1 + 6 + 4)
    assert table.attrs["model"] == type(model).__name__
    full = table[table.condition == "full"].set_index("metric")["value"]
    expected = model.evaluate(dataset, [R2, MAE])
    for name in (R2.name, MAE.name):
        assert full[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6)
    subsets = table[table.condition == "subset"]
    assert set(subsets.removed) == {
        "ecfp",
        "graph",
        "smiles",
        "ecfp+graph",
        "ecfp+smiles",
        "graph+smiles",
    }
    random = table[table.condition == "random"]
    assert (random.n_excluded == 0).all() and (random.n_samples == len(SMILES)).all()
    assert sorted(random.seed.unique().tolist()) == [0, 1]

    if kind == "unimodal":
        # graph-only model: a pattern with "graph" removes all its input -> flagged, not computed
        impossible = subsets[subsets.removed.str.contains("graph")]
        assert not impossible.applicable.any() and impossible.value.isna().all()
        assert impossible.reason.str.contains("cannot predict without an input").all()
        assert (impossible.n_samples == 0).all()
        harmless = subsets[~subsets.removed.str.contains("graph")]
        assert harmless.applicable.all() and np.allclose(harmless.delta, 0.0)
        assert harmless.reason.str.contains("does not use").all()
        # random dropping never removes a sample's last modality: nothing to drop for it
        assert np.allclose(random.removed_fraction, 0.0) and np.allclose(random.delta, 0.0)
    else:
        assert subsets.applicable.all() and subsets.value.notna().all()
        # removing all but one modality changes the predictions (hence the metric)
        two_removed = subsets[subsets.removed.str.count(r"\+") == 1]
        assert (two_removed.delta.abs() > 0).all()
        assert np.allclose(two_removed.removed_fraction, 2 / 3)
        assert (random.removed_fraction > 0).all() and (random.removed_fraction < 1).all()


def test_missing_modalities_default_patterns_and_errors(data, models, tmp_path):
    dataset, _ = data
    model = models["dynamic"]
    path = tmp_path / "degradation.png"
    table, fig = evaluate_missing_modalities(model, dataset, MAE, random_drop=(), plot=path)
    assert path.stat().st_size > 1000 and isinstance(fig, Figure)
    assert list(table.condition) == ["full"] + ["subset"] * 6
    assert table.seed.isna().all()
    table, fig = evaluate_missing_modalities(
        model, dataset, MAE, patterns=["graph", ("ecfp", "smiles")], random_drop=(), plot=False
    )
    assert fig is None and table.removed.tolist() == ["", "graph", "ecfp+smiles"]
    assert table.kept.tolist() == ["ecfp+graph+smiles", "ecfp+smiles", "graph"]
    with pytest.raises(ValueError, match="unknown modalities"):
        evaluate_missing_modalities(model, dataset, MAE, patterns=["selfies"], plot=False)
    with pytest.raises(ValueError, match="empty pattern"):
        evaluate_missing_modalities(model, dataset, MAE, patterns=[()], plot=False)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        evaluate_missing_modalities(model, dataset, MAE, random_drop=(1.0,), plot=False)
    assert isinstance(plot_degradation(table), Figure)


def test_label_transformers_are_undone_like_evaluate(data, models):
    dataset, _ = data
    shifted = dc.data.NumpyDataset(dataset.X, dataset.y * 3.0 + 5.0, ids=dataset.ids)
    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=shifted)
    transformed = transformer.transform(shifted)
    model = models["late"]
    table, _ = evaluate_missing_modalities(
        model, transformed, MAE, [transformer], patterns=["ecfp"], random_drop=(), plot=False
    )
    expected = model.evaluate(transformed, [MAE], [transformer])[MAE.name]
    assert table.value.iloc[0] == pytest.approx(expected, rel=1e-5)
    table, _ = modality_ablation(model, transformed, MAE, [transformer], plot=False)
    assert np.allclose(table.full_value, expected, rtol=1e-5)


def test_samples_left_without_input_are_excluded(data, models):
    dataset, _ = data
    partial = with_missing(dataset, 0, ["ecfp", "smiles"])  # row 0: graph only
    table, _ = evaluate_missing_modalities(
        models["early"], partial, MAE, patterns=["graph"], random_drop=(0.5,), seeds=0, plot=False
    )
    row = table[table.removed == "graph"].iloc[0]
    assert row.applicable and row.n_excluded == 1 and row.n_samples == len(SMILES) - 1
    random = table[table.condition == "random"].iloc[0]
    assert random.n_excluded == 0


def test_classification_full_row_matches_evaluate(data):
    dataset, modalities = data
    y = (np.arange(len(SMILES)) % 2).astype(float).reshape(-1, 1)
    labelled = dc.data.NumpyDataset(dataset.X, y, ids=dataset.ids)
    model = build("late", modalities, "classification")
    model.fit(labelled, nb_epoch=1)
    auc = dc.metrics.Metric(dc.metrics.roc_auc_score)
    table, _ = evaluate_missing_modalities(
        model, labelled, auc, random_drop=(0.5,), seeds=0, plot=False
    )
    full = table[table.condition == "full"].value.iloc[0]
    assert full == pytest.approx(model.evaluate(labelled, [auc])[auc.name])
    assert table.value.between(0, 1).all()


def test_random_drop_never_empties_a_sample(data):
    dataset, _ = data
    samples = list(dataset.X)
    new, dropped = random_drop(samples, list(NAMES), list(NAMES), 0.9, np.random.default_rng(0))
    kept = presence(new, NAMES)
    assert kept.any(axis=1).all() and dropped.sum() > len(samples)
    assert np.array_equal(kept, presence(samples, NAMES) & ~dropped)
    assert presence(samples, NAMES).all()  # the originals are untouched


# -- ablation ------------------------------------------------------------------------------------
def test_shuffle_keeps_presence_and_permutes_values(data):
    dataset, _ = data
    partial = with_missing(dataset, 3, ["smiles"])
    samples = list(partial.X)
    shuffled = shuffle_modality(samples, "smiles", np.random.default_rng(0))
    assert np.array_equal(presence(shuffled, NAMES), presence(samples, NAMES))
    before = sorted(tuple(s.values["smiles"]) for s in samples if s.present("smiles"))
    after = sorted(tuple(s.values["smiles"]) for s in shuffled if s.present("smiles"))
    assert before == after  # the same values, redistributed
    moved = [
        i
        for i, (a, b) in enumerate(zip(samples, shuffled))
        if a.present("smiles") and not np.array_equal(a.values["smiles"], b.values["smiles"])
    ]
    assert len(moved) >= 2
    # the other modalities stay with their molecule
    assert all(a.values["graph"] is b.values["graph"] for a, b in zip(samples, shuffled))


@pytest.mark.parametrize("kind", KINDS)
def test_ablation_every_model(kind, data, models):
    dataset, _ = data
    model = models[kind]
    drop, fig = modality_ablation(model, dataset, MAE, mode="drop", modalities=NAMES)
    assert isinstance(fig, Figure) and len(drop) == 3 and drop.seed.isna().all()
    assert np.allclose(drop.delta, drop.value - drop.full_value, equal_nan=True)
    shuffle, _ = modality_ablation(model, dataset, MAE, mode="shuffle", seeds=(0, 1), plot=False)
    assert len(shuffle) == 2 * len(model.modality_names)
    assert shuffle.applicable.all() and shuffle.value.notna().all()
    if kind == "unimodal":
        graph = drop.set_index("modality").loc["graph"]
        assert not graph.applicable and np.isnan(graph.value)
        others = drop[drop.modality != "graph"]
        assert others.applicable.all() and np.allclose(others.delta, 0.0)
        assert others.reason.str.contains("does not use").all()
    else:
        assert drop.applicable.all() and (drop.delta.abs() > 0).all()


def test_ablation_rejects_unknown_mode(data, models):
    with pytest.raises(ValueError, match="mode"):
        modality_ablation(models["early"], data[0], MAE, mode="zero")


# -- modality weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", WEIGHTED)
def test_weights_sum_to_one_on_present_modalities(kind, data, models):
    dataset, _ = data
    model = models[kind]
    partial = with_missing(dataset, 2, ["graph"] if kind != "unimodal" else ["ecfp"])
    weights = modality_weights(model, partial)
    assert weights.attrs["kind"] == "weights"
    assert list(weights.columns) == model.modality_names and list(weights.index) == SMILES
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    present = presence(list(partial.X), model.modality_names)
    assert (weights.to_numpy()[~present] == 0).all()
    assert (weights.to_numpy() >= 0).all()


def test_early_fusion_has_no_weights(data, models):
    dataset, _ = data
    with pytest.raises(NoModalityWeightsError, match="no modality weights"):
        modality_weights(models["early"], dataset)
    with pytest.raises(ValueError, match="no modality weights"):
        mean_modality_weights(models["early"], dataset)
    with pytest.raises(NoModalityWeightsError):
        weights_vs_masking_rate(models["early"], dataset, rates=(0.0,))
    mask = modality_weights(
        models["early"], dataset, drop_modalities=["smiles"], allow_presence=True
    )
    assert mask.attrs["kind"] == "presence"
    assert mask.to_numpy().tolist() == [[1.0, 1.0, 0.0]] * len(SMILES)


def test_mean_modality_weights(data, models, tmp_path):
    dataset, _ = data
    table, fig = mean_modality_weights(models["dynamic"], dataset, plot=tmp_path / "w.png")
    assert isinstance(fig, Figure) and (tmp_path / "w.png").exists()
    assert list(table.index) == list(NAMES)
    assert table.mean_weight.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(table.presence_rate, 1.0)
    assert np.allclose(table.mean_weight, table.mean_weight_present)
    # the model's own summary (mean over present samples) agrees
    own = models["dynamic"].mean_modality_weights(dataset)
    assert np.allclose(own.to_numpy(), table.mean_weight_present.to_numpy(), atol=1e-6)


@pytest.mark.parametrize("kind", ["dynamic", "moe"])
def test_weights_vs_masking_rate(kind, data, models):
    dataset, _ = data
    table, fig = weights_vs_masking_rate(
        models[kind], dataset, rates=(0.0, 0.25, 0.75), seeds=(0, 1)
    )
    assert isinstance(fig, Figure)
    assert len(table) == (1 + 2 + 2) * 3  # rate 0 once, other rates per seed; 3 modalities
    sums = table.groupby(["rate", "seed"], dropna=False).mean_weight.sum()
    assert np.allclose(sums, 1.0, atol=1e-5)
    presence_by_rate = table.groupby("rate").presence_rate.mean()
    assert presence_by_rate.loc[0.0] == 1.0
    assert presence_by_rate.loc[0.0] > presence_by_rate.loc[0.25] > presence_by_rate.loc[0.75]
    assert presence_by_rate.loc[0.75] >= 1 / 3  # never all of a sample's modalities


# -- embedding projection ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,method",
    [
        ("dynamic", "tsne"),
        ("early", "pca"),
        ("late", "pca"),
        ("cross", "pca"),
        ("moe", "pca"),
        ("unimodal", "tsne"),
    ],
)
def test_embedding_projection(kind, method, data, models):
    dataset, _ = data
    coords, fig = embedding_projection(models[kind], dataset, method=method)
    assert isinstance(fig, Figure)
    assert coords.shape == (len(SMILES), 3) and list(coords.index) == SMILES
    assert np.isfinite(coords[["dim1", "dim2"]].to_numpy()).all()
    assert np.allclose(coords.color, dataset.y[:, 0])


def test_embedding_projection_options(data, models):
    dataset, _ = data
    model = models["dynamic"]
    small = dataset.select(range(4))
    coords, _ = embedding_projection(
        model,
        small,
        method="tsne",
        perplexity=50,
        color_by=None,
        drop_modalities=["graph"],
        plot=False,
    )
    assert coords.shape == (4, 2)
    coords, _ = embedding_projection(
        model, dataset, method="pca", color_by=np.arange(12.0), plot=False
    )
    assert coords.color.tolist() == list(range(12))
    with pytest.raises(ValueError, match="task"):
        embedding_projection(model, dataset, color_by=3, plot=False)
    with pytest.raises(ValueError, match="method"):
        embedding_projection(model, dataset, method="mds", plot=False)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            embedding_projection(model, dataset, method="umap", plot=False)


def test_classification_projection_is_categorical(data):
    dataset, modalities = data
    y = (np.arange(len(SMILES)) % 2).astype(float).reshape(-1, 1)
    w = np.ones_like(y)
    w[0] = 0.0  # unlabelled: grey, NaN colour
    labelled = dc.data.NumpyDataset(dataset.X, y, w, ids=dataset.ids)
    model = build("early", modalities, "classification")
    coords, fig = embedding_projection(model, labelled, method="pca")
    assert coords.attrs["categorical"] and np.isnan(coords.color.iloc[0])
    assert isinstance(pd.Series(coords.color.iloc[1:]).sum(), float)
    legend = fig.axes[0].get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} >= {"0", "1"}
