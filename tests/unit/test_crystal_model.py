"""MatMMFuseModel (CGCNN + text, cross-attention), its unimodal baselines, and the crystal
modalities in the other fusion models."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")

import deepchem as dc  # noqa: E402
import torch  # noqa: E402,F401

import deepfuse_plugin as dfp  # noqa: E402
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.nn.fusion import CrossAttentionFusion, ProjectionFusion  # noqa: E402
from tests.unit.test_crystal_structures import (
    cscl,
    disordered,
    lone_atom,
    nacl,  # noqa: E402
    needs_text_model,
    silicon,
    srtio3,
    with_isolated_atom,
)

TINY = dict(
    encoder_dim=32,
    fused_dim=32,
    head_hidden=32,
    n_heads=2,
    attention_hidden=16,
    batch_size=4,
    learning_rate=3e-3,
    progress=False,
    encoder_options={"crystal_graph": {"atom_fea_len": 16, "n_conv": 2}},
)


def _tiny(**overrides):
    kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    kwargs.update(overrides)
    return kwargs


STRUCTURES = [nacl, cscl, silicon, srtio3, with_isolated_atom, lone_atom, disordered]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    needs_text_model()
    return CrystalMultiModalFeaturizer(
        ["graph", "text_sentences", "text_embedding", "composition"],
        progress=False,
        cache_dir=tmp_path_factory.mktemp("c"),
    )


@pytest.fixture(scope="module")
def samples(featurizer):
    return featurizer.featurize([build() for build in STRUCTURES])


@pytest.fixture
def dataset(samples):
    y = np.linspace(-1.0, 1.0, len(samples)).reshape(-1, 1)
    return dc.data.NumpyDataset(samples, y, ids=np.array([b.__name__ for b in STRUCTURES]))


def _spec(featurizer, name):
    return next(m for m in featurizer.modalities if m.name == name)


def test_matmmfuse_fit_evaluate_restore(featurizer, dataset, tmp_path):
    specs = [_spec(featurizer, "graph"), _spec(featurizer, "text_sentences")]
    model = dc.models.MatMMFuseModel(1, specs, model_dir=str(tmp_path), **_tiny())
    assert isinstance(model.model.fusion, CrossAttentionFusion)
    assert type(model.model.encoders["graph"]).__name__ == "CGCNNEncoder"
    loss = model.fit(dataset, nb_epoch=2)
    assert np.isfinite(loss)
    scores = model.evaluate(dataset, [dc.metrics.Metric(dc.metrics.mean_absolute_error)])
    assert np.isfinite(scores["mean_absolute_error"])
    predictions = model.predict(dataset)
    assert predictions.shape == (len(dataset), 1) and np.isfinite(predictions).all()
    # the disordered structure has no graph: it is predicted from its text alone
    weights = model.modality_weights(dataset)
    assert weights.loc["disordered", "graph"] == 0.0
    assert weights.loc["disordered", "text_sentences"] == pytest.approx(1.0)
    restored = dfp.MultiModalTorchModel.load(str(tmp_path))
    assert type(restored) is dfp.MatMMFuseModel and restored.backbone == "cgcnn"
    np.testing.assert_allclose(restored.predict(dataset), predictions, atol=1e-5)


def test_attention_is_between_atoms_and_several_text_tokens(featurizer, dataset):
    """Non-degenerate attention: every atom of SrTiO3 attends over the null key plus one key per
    description sentence (9), the weights differ across keys, and the prediction depends on every
    sentence (a single pooled key would make the softmax identically 1)."""
    specs = [_spec(featurizer, "graph"), _spec(featurizer, "text_sentences")]
    model = dc.models.MatMMFuseModel(1, specs, **_tiny())
    model.fit(dataset, nb_epoch=1)
    maps = model.attention_maps(dataset, "graph")
    perovskite = maps[3]
    assert perovskite.shape == (5, 1 + 9)  # 5 atoms x (null + 9 sentences)
    np.testing.assert_allclose(perovskite.sum(axis=1), 1.0, atol=1e-5)
    assert (perovskite.max(axis=1) - perovskite.min(axis=1) > 1e-4).all()
    text_maps = model.attention_maps(dataset, "text_sentences")
    assert text_maps[3].shape == (9, 1 + 5)  # sentences attend over the 5 atoms
    # gradient of the prediction reaches every real sentence embedding
    from deepfuse_plugin.data.collate import collate_samples

    batch = collate_samples([dataset.X[3]], model.modalities)
    states = batch.inputs["text_sentences"].states.requires_grad_(True)
    model.model.eval()
    model.model(batch).prediction.sum().backward()
    per_sentence = states.grad[0].norm(dim=1)
    assert (per_sentence > 0).all() and len(per_sentence) == 9


def test_unimodal_baselines_from_the_same_class(featurizer, dataset):
    cgcnn = dc.models.MatMMFuseModel(1, [_spec(featurizer, "graph")], **_tiny())
    text_only = dc.models.MatMMFuseModel(1, [_spec(featurizer, "text_embedding")], **_tiny())
    for model in (cgcnn, text_only):
        assert isinstance(model.model.fusion, ProjectionFusion)
        model.fit(dataset, nb_epoch=1)
        assert model.predict(dataset).shape == (len(dataset), 1)
    with pytest.raises(ValueError, match="no cross-attention"):
        cgcnn.attention_maps(dataset, "graph")


def test_built_in_names_resolve_to_crystal_specs(featurizer):
    model = dc.models.MatMMFuseModel(1, ["graph", "composition"], **_tiny())
    assert [m.kind for m in model.modalities] == ["crystal_graph", "vector"]
    assert model.modalities[0] == _spec(featurizer, "graph")
    with pytest.raises(ValueError, match="backbone"):
        dc.models.MatMMFuseModel(1, ["graph"], backbone="schnet")


@pytest.mark.parametrize("model_cls", ["EarlyFusionModel", "DynamicFusionModel"])
def test_other_fusion_models_take_crystal_modalities(featurizer, dataset, model_cls):
    kwargs = _tiny()
    kwargs.pop("n_heads")
    if model_cls == "DynamicFusionModel":
        kwargs.update(gate_hidden=16, decoder_hidden=32)
    model = getattr(dc.models, model_cls)(1, featurizer.modalities, **kwargs)
    model.fit(dataset, nb_epoch=1)
    out = model.predict(dataset)
    assert out.shape == (len(dataset), 1) and np.isfinite(out).all()
    assert model.modality_weights(dataset).shape == (len(dataset), 4)


def test_text_tokens_route_with_a_scratch_encoder(tmp_path):
    """The fine-tuning route's data path: token ids -> padded batch -> a trainable text encoder."""
    try:
        feat = CrystalMultiModalFeaturizer(
            ["graph", "text"], text_max_length=64, progress=False, cache_dir=tmp_path
        )
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"offline text model not installed: {err}")
    X = feat.featurize([nacl(), cscl(), silicon(), srtio3()])
    ds = dc.data.NumpyDataset(X, np.arange(4.0).reshape(-1, 1))
    options = {
        "crystal_graph": {"atom_fea_len": 16, "n_conv": 2},
        "text": {"backbone": "scratch", "n_layers": 1, "n_heads": 2},
    }
    model = dc.models.MatMMFuseModel(1, feat.modalities, **_tiny(encoder_options=options))
    model.fit(ds, nb_epoch=1)
    assert model.predict(ds).shape == (4, 1)


@pytest.mark.slow
def test_fine_tuned_pretrained_text_encoder(tmp_path):
    """MatMMFuse's fine-tuned route: MiniLM trained end to end on the description tokens."""
    try:
        feat = CrystalMultiModalFeaturizer(
            ["graph", "text"], text_max_length=48, progress=False, cache_dir=tmp_path
        )
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"offline text model not installed: {err}")
    X = feat.featurize([nacl(), cscl(), silicon(), srtio3()])
    ds = dc.data.NumpyDataset(X, np.arange(4.0).reshape(-1, 1))
    options = {"crystal_graph": {"atom_fea_len": 16, "n_conv": 2}, "text": {"freeze": False}}
    model = dc.models.MatMMFuseModel(
        1, feat.modalities, model_dir=str(tmp_path / "m"), **_tiny(encoder_options=options)
    )
    backbone = model.model.encoders["text"].backbone
    before = next(backbone.parameters()).detach().clone()
    model.fit(ds, nb_epoch=1)
    assert not torch.equal(before, next(backbone.parameters()))  # the transformer was trained
    maps = model.attention_maps(ds, "graph")
    assert maps[3].shape[1] == 1 + int((X[3].values["text"] > 0).sum())  # atoms over all tokens
    restored = dfp.MultiModalTorchModel.load(str(tmp_path / "m"))
    np.testing.assert_allclose(restored.predict(ds), model.predict(ds), atol=1e-4)


def test_pretrained_text_encoder_in_length_chunks_equals_one_pass():
    from types import SimpleNamespace

    from deepfuse_plugin.feat.text import resolve_model_path
    from deepfuse_plugin.nn.crystal import TransformerTextEncoder

    try:
        path = resolve_model_path(None)
    except ImportError as err:
        pytest.skip(f"offline text model not installed: {err}")
    torch.manual_seed(0)
    one_pass = TransformerTextEncoder(path, 8, length_chunk=0).eval()
    chunked = TransformerTextEncoder(path, 8, length_chunk=2).eval()
    chunked.load_state_dict(one_pass.state_dict())
    lengths = torch.tensor([5, 30, 0, 12, 3])  # 0: a crystal without a description
    attention = torch.arange(30)[None] < lengths[:, None]
    ids = torch.randint(1000, 2000, (5, 30)).masked_fill(~attention, 0)
    batch = SimpleNamespace(ids=ids, attention_mask=attention)
    with torch.no_grad():
        expected, got = one_pass(batch), chunked(batch)
    torch.testing.assert_close(got.pooled, expected.pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.tokens, expected.tokens, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="length_chunk"):
        TransformerTextEncoder(path, 8, length_chunk=-1)


def test_crystal_modality_names_resolve_in_any_model(featurizer):
    model = dc.models.DynamicFusionModel(1, ["graph", "ecfp"], progress=False)
    assert [m.kind for m in model.modalities] == ["graph", "vector"]  # "graph" = molecular
    crystal = dc.models.EarlyFusionModel(
        1,
        ["matgl_graph", "composition"],
        progress=False,
        encoder_options={"crystal_graph": {"backbone": "cgcnn"}},
    )
    assert [m.kind for m in crystal.modalities] == ["crystal_graph", "vector"]
    assert crystal.modalities[0].params["format"] == "matgl"
    with pytest.raises(ValueError, match="crystal modalities"):
        dc.models.EarlyFusionModel(1, ["ecfp", "nope"], progress=False)
