"""The fusion model family: layer shapes and masking invariants, cross-attention non-degeneracy, MoE
sparsity and balancing, late-fusion renormalisation, and a tiny DeepChem round trip per wrapper."""

from __future__ import annotations

import json
import math

import deepchem as dc
import numpy as np
import pytest
import torch

import deepfuse_plugin
from deepfuse_plugin import (
    CrossAttentionFusionModel,
    EarlyFusionModel,
    GatedMoEFusionModel,
    LateFusionModel,
    MultiModalTorchModel,
    UnimodalModel,
)
from deepfuse_plugin.nn.encoders import EncodedModality
from deepfuse_plugin.nn.fusion import (
    CrossAttentionFusion,
    EarlyFusion,
    GatedMoEFusion,
    LateFusion,
    ProjectionFusion,
    cv_squared,
)

D_IN, D_OUT, B = 16, 12, 6
NAMES = ("ecfp", "graph", "smiles")
LENGTHS = {"graph": 5, "smiles": 7}


# -- synthetic encoder outputs -------------------------------------------------------------------
def make_embeddings(
    batch: int = B, names: tuple[str, ...] = NAMES, seed: int = 0, grad: bool = False
) -> dict[str, EncodedModality]:
    """``ecfp`` is a vector modality (pooled only); graph/smiles have padded token states."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        if name in LENGTHS:
            length = LENGTHS[name]
            tokens = torch.randn(batch, length, D_IN, generator=g)
            n_real = torch.randint(2, length + 1, (batch,), generator=g)
            token_mask = torch.arange(length)[None] < n_real[:, None]
            pooled = (tokens * token_mask[..., None]).sum(1) / n_real[:, None]
            tokens.requires_grad_(grad)
            pooled = pooled.detach().requires_grad_(grad)
            out[name] = EncodedModality(pooled, tokens, token_mask)
        else:
            out[name] = EncodedModality(torch.randn(batch, D_IN, generator=g).requires_grad_(grad))
    return out


def build(kind: str, names: tuple[str, ...] = NAMES, mode: str = "regression", **kw):
    torch.manual_seed(0)
    if kind == "projection":
        return ProjectionFusion(names, D_IN, D_OUT)
    if kind == "early":
        return EarlyFusion(names, D_IN, D_OUT, hidden_dim=24, **kw)
    if kind.startswith("late"):
        combine = kind.split("-")[1]
        return LateFusion(
            names,
            D_IN,
            n_tasks=2,
            mode=mode,
            fused_dim=D_OUT,
            head_hidden=16,
            combine=combine,
            **kw,
        )
    if kind == "cross":
        vectors = tuple(n for n in names if n not in LENGTHS)
        return CrossAttentionFusion(
            names, D_IN, D_OUT, vectors, n_heads=2, n_layers=2, vector_tokens=3, **kw
        )
    if kind == "moe":
        return GatedMoEFusion(
            names, D_IN, D_OUT, n_experts_shared=2, top_k=2, expert_hidden=16, **kw
        )
    raise ValueError(kind)


LAYERS = ["projection", "early", "late-mean", "late-learned", "late-stacking", "cross", "moe"]
MIXED_MASK = torch.tensor(
    [[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool
)


def scalar_of(out) -> torch.Tensor:
    """Everything a layer outputs, summed (so any leak of a missing modality shows in gradients)."""
    total = out.fused.sum()
    if out.weights is not None:
        total = total + out.weights.sum()
    if out.task_outputs is not None:
        total = total + out.task_outputs[0].sum() + out.task_outputs[1].sum()
    return total + sum(v for v in out.aux_losses.values())


# -- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LAYERS)
def test_shapes_and_weights(kind):
    layer = build(kind)
    out = layer(make_embeddings(), MIXED_MASK)
    assert out.fused.shape == (B, D_OUT)
    assert torch.isfinite(out.fused).all()
    if kind == "early":
        assert out.weights is None
    else:
        assert out.weights.shape == (B, 3)
        assert torch.allclose(out.weights.sum(1), torch.ones(B), atol=1e-5)
        assert (out.weights[~MIXED_MASK] == 0).all()
    if kind.startswith("late"):
        assert out.task_outputs[0].shape == (B, 2)
        assert out.extras["unimodal_prediction"].shape == (B, 3, 2)


@pytest.mark.parametrize("kind", LAYERS)
def test_reset_parameters_reinitialises(kind):
    layer = build(kind).eval()
    emb = make_embeddings()
    before = layer(emb, MIXED_MASK).fused
    torch.manual_seed(1)
    layer.reset_parameters()
    after = layer(emb, MIXED_MASK).fused
    assert torch.isfinite(after).all() and not torch.allclose(before, after)
    if kind == "moe":
        assert (layer.w_gate.weight == 0).all() and (layer.w_noise.weight == 0).all()


def test_late_fusion_classification_shapes():
    layer = build("late-stacking", mode="classification")
    out = layer(make_embeddings(), MIXED_MASK)
    probs, log_probs = out.task_outputs
    assert probs.shape == log_probs.shape == (B, 2, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(B, 2), atol=1e-5)
    assert torch.allclose(log_probs.exp(), probs)


@pytest.mark.parametrize("kind", LAYERS)
def test_every_layer_accepts_a_single_modality(kind):
    layer = build(kind, names=("graph",))
    out = layer(make_embeddings(names=("graph",)), torch.tensor([[True]] * 4 + [[False]] * 2))
    assert out.fused.shape == (B, D_OUT) and torch.isfinite(out.fused).all()


# -- masking invariants ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LAYERS)
def test_missing_modality_gets_no_weight_and_no_gradient(kind):
    layer = build(kind)
    layer.train()  # noise, dropout, everything on
    emb = make_embeddings(grad=True)
    out = layer(emb, MIXED_MASK)
    scalar_of(out).backward()
    for j, name in enumerate(NAMES):
        missing = ~MIXED_MASK[:, j]
        for tensor in (emb[name].pooled, emb[name].tokens):
            if tensor is None or tensor.grad is None:
                continue
            assert (tensor.grad[missing] == 0).all(), f"gradient leaks into missing {name}"
        if emb[name].tokens is not None and emb[name].tokens.grad is not None:
            padded = ~emb[name].token_mask
            assert (emb[name].tokens.grad[padded] == 0).all(), f"gradient into padding of {name}"
    # and a missing modality's values cannot change the output, even NaN
    layer.eval()
    reference = layer(make_embeddings(), MIXED_MASK)
    poisoned = make_embeddings()
    for j, name in enumerate(NAMES):
        missing = ~MIXED_MASK[:, j]
        poisoned[name].pooled[missing] = float("nan")
        if poisoned[name].tokens is not None:
            poisoned[name].tokens[missing] = float("nan")
    out = layer(poisoned, MIXED_MASK)
    assert torch.allclose(out.fused, reference.fused, atol=1e-6)


@pytest.mark.parametrize("kind", LAYERS)
def test_no_nan_when_only_one_modality_is_present(kind):
    layer = build(kind)
    layer.train()
    mask = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 2, dtype=torch.bool)
    emb = make_embeddings(grad=True)
    out = layer(emb, mask)
    assert torch.isfinite(out.fused).all()
    if out.weights is not None:
        assert torch.equal(out.weights > 0, mask)
    scalar_of(out).backward()
    for name in NAMES:
        for tensor in (emb[name].pooled, emb[name].tokens):
            if tensor is not None and tensor.grad is not None:
                assert torch.isfinite(tensor.grad).all()


# -- cross-attention is not degenerate ------------------------------------------------------------
def test_cross_attention_is_not_degenerate_and_keys_matter():
    layer = build("cross").eval()
    emb = make_embeddings()
    mask = torch.ones(B, 3, dtype=torch.bool)
    out = layer(emb, mask)
    for name in NAMES:
        attention = out.extras[f"attention:{name}"]  # (B, Lq, Lk)
        key_mask, query_mask = out.extras[f"key_mask:{name}"], out.extras[f"query_mask:{name}"]
        assert (attention[~key_mask[:, None, :].expand_as(attention)] == 0).all()
        rows = attention[query_mask]  # real queries only
        assert torch.allclose(rows.sum(-1), torch.ones(len(rows)), atol=1e-5)
        entropy = -(rows.clamp(min=1e-12).log() * rows).sum(-1)
        assert (entropy > 0.5).all(), name  # not all mass on one key
        assert ((rows > 0.02).sum(-1) >= 3).all(), name  # several keys with real weight
        assert (rows.max(-1).values < 0.9).all(), name
    # ECFP tokens attend to graph atoms: changing one real atom of sample 0 changes sample 0 only
    changed = make_embeddings()
    changed["graph"].tokens[0, 0] = torch.randn(
        D_IN
    )  # not a constant shift: LayerNorm removes those
    out2 = layer(changed, mask)
    assert not torch.allclose(out2.extras["pooled"][0, 0], out.extras["pooled"][0, 0], atol=1e-4)
    assert not torch.allclose(out2.fused[0], out.fused[0], atol=1e-4)
    assert torch.allclose(out2.fused[1:], out.fused[1:], atol=1e-6)
    # ... while changing a padded atom changes nothing
    padded = make_embeddings()
    b, position = (~padded["graph"].token_mask).nonzero()[0].tolist()
    padded["graph"].tokens[b, position] = torch.randn(D_IN)
    assert torch.allclose(layer(padded, mask).fused, out.fused, atol=1e-6)


def test_cross_attention_with_all_other_modalities_missing_attends_to_null_key():
    layer = build("cross").eval()
    mask = torch.tensor([[0, 1, 0]] * B, dtype=torch.bool)
    out = layer(make_embeddings(), mask)
    attention = out.extras["attention:graph"][out.extras["query_mask:graph"]]  # real atoms
    assert torch.isfinite(out.fused).all()
    assert torch.allclose(attention[..., 0], torch.ones_like(attention[..., 0]))


CHUNKED_BATCH_MASK = torch.cat([MIXED_MASK, torch.ones_like(MIXED_MASK)])  # 12 rows


def one_pass_and_chunked(length_chunk: int, names: tuple[str, ...] = NAMES, **kw):
    """Two cross-attention layers with the same weights, in eval mode (no dropout, so both are
    deterministic): one padded pass, and chunks of ``length_chunk``."""
    one_pass = build("cross", names, length_chunk=0, **kw).eval()
    chunked = build("cross", names, length_chunk=length_chunk, **kw).eval()
    chunked.load_state_dict(one_pass.state_dict())
    return one_pass, chunked


def assert_maps_equal_at_real_queries(got, expected, name, blocks=("",)):
    """``name``'s attention maps (``blocks``: key suffixes, "" for the last block) agree at the
    real query tokens."""
    query_mask = expected.extras[f"query_mask:{name}"]
    for key in (f"attention:{name}{block}" for block in blocks):
        assert got.extras[key].shape == expected.extras[key].shape
        torch.testing.assert_close(
            got.extras[key][query_mask], expected.extras[key][query_mask], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("length_chunk", [1, 4, 5])
def test_cross_attention_in_length_chunks_equals_one_pass(length_chunk):
    batch, mask = len(CHUNKED_BATCH_MASK), CHUNKED_BATCH_MASK
    one_pass, chunked = one_pass_and_chunked(length_chunk)
    widths = []  # the token widths each chunk ran with
    attend = chunked._attend

    def recording_attend(states, valid):
        widths.append({n: s.shape[1] for n, s in states.items()})
        return attend(states, valid)

    chunked._attend = recording_attend
    emb_a, emb_b = (make_embeddings(batch, seed=3, grad=True) for _ in range(2))
    expected, got = one_pass(emb_a, mask), chunked(emb_b, mask)
    assert len(widths) == -(-batch // length_chunk)
    assert any(w[n] < LENGTHS[n] for w in widths for n in LENGTHS)  # some chunks were cut
    torch.testing.assert_close(got.fused, expected.fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.weights, expected.weights, atol=1e-5, rtol=1e-5)
    for name in NAMES:
        for kind in ("query_mask", "key_mask"):
            assert torch.equal(got.extras[f"{kind}:{name}"], expected.extras[f"{kind}:{name}"])
        assert_maps_equal_at_real_queries(got, expected, name, blocks=("", ":0"))  # both blocks
    scalar_of(expected).backward()
    scalar_of(got).backward()
    for (name, a), b in zip(one_pass.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=name)
    for name in NAMES:
        a = emb_a[name].tokens if name in LENGTHS else emb_a[name].pooled
        b = emb_b[name].tokens if name in LENGTHS else emb_b[name].pooled
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("names", [("graph",), ("graph", "smiles")])
def test_cross_attention_in_length_chunks_with_mean_pooling_and_self_attention(names):
    """One modality (self-attention) and two token modalities, pooled by a plain mean."""
    batch = 10
    mask = torch.ones(batch, len(names), dtype=torch.bool)
    one_pass, chunked = one_pass_and_chunked(3, names, pooling="mean")
    emb = make_embeddings(batch, names, seed=5)
    expected, got = one_pass(emb, mask), chunked(emb, mask)
    torch.testing.assert_close(got.fused, expected.fused, atol=1e-5, rtol=1e-5)
    for name in names:
        assert_maps_equal_at_real_queries(got, expected, name)


def test_cross_attention_in_length_chunks_with_a_modality_missing_from_the_whole_batch():
    """A batch without any atom (the graph removed from every molecule) has zero-width graph
    states; chunked and one-pass layers agree, and every key map still starts with the null key."""
    batch, mask = len(CHUNKED_BATCH_MASK), CHUNKED_BATCH_MASK.clone()
    mask[:, NAMES.index("graph")] = False
    emb = make_embeddings(batch, seed=3)
    emb["graph"] = EncodedModality(
        torch.zeros(batch, D_IN),
        torch.zeros(batch, 0, D_IN),
        torch.zeros(batch, 0, dtype=torch.bool),
    )
    one_pass, chunked = one_pass_and_chunked(4)
    expected, got = one_pass(emb, mask), chunked(emb, mask)
    torch.testing.assert_close(got.fused, expected.fused, atol=1e-5, rtol=1e-5)
    for name in NAMES:
        assert torch.equal(got.extras[f"key_mask:{name}"], expected.extras[f"key_mask:{name}"])
        assert got.extras[f"key_mask:{name}"][:, 0].all()  # the null key


def test_cross_attention_rejects_a_negative_length_chunk():
    with pytest.raises(ValueError, match="length_chunk must be >= 0"):
        build("cross", length_chunk=-1)


# -- mixture of experts ----------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_moe_keeps_exactly_top_k_available_experts(top_k, training):
    layer = GatedMoEFusion(NAMES, D_IN, D_OUT, n_experts_shared=2, top_k=top_k)
    torch.nn.init.normal_(layer.w_gate.weight)  # non-trivial gating
    layer.train(training)
    out = layer(make_embeddings(), MIXED_MASK)
    gates, available = out.extras["gates"], out.extras["expert_available"]
    assert layer.expert_names == ("ecfp:0", "graph:0", "smiles:0", "shared:0", "shared:1")
    expected = torch.clamp(available.sum(1), max=top_k)
    assert torch.equal((gates > 0).sum(1), expected)
    assert (gates[~available] == 0).all()
    assert torch.allclose(gates.sum(1), torch.ones(B), atol=1e-5)
    assert torch.allclose(out.weights.sum(1), torch.ones(B), atol=1e-5)
    assert torch.allclose(out.extras["shared_gate"], gates[:, 3:].sum(1))


def test_moe_balancing_loss_is_lower_for_balanced_usage_and_trains_towards_it():
    assert cv_squared(torch.tensor([5.0, 5.0, 5.0, 5.0])) < 1e-6
    assert cv_squared(torch.tensor([17.0, 1.0, 1.0, 1.0])) > 1.0
    emb, mask = make_embeddings(batch=64, seed=1), torch.ones(64, 3, dtype=torch.bool)
    torch.manual_seed(0)
    balanced = GatedMoEFusion(NAMES, D_IN, D_OUT, n_experts_shared=2, top_k=2).train()
    imbalanced = GatedMoEFusion(NAMES, D_IN, D_OUT, n_experts_shared=2, top_k=2).train()
    with torch.no_grad():
        imbalanced.w_gate.bias.copy_(torch.tensor([4.0, 3.0, 0.0, 0.0, 0.0]))
    aux_balanced = balanced(emb, mask).aux_losses
    aux_imbalanced = imbalanced(emb, mask).aux_losses
    for key in ("importance", "load"):
        assert aux_imbalanced[key] > 5 * aux_balanced[key] + 0.1, key
    # the smooth load estimate is differentiable: optimising the aux loss alone rebalances usage
    optimiser = torch.optim.Adam([imbalanced.w_gate.bias, imbalanced.w_noise.bias], lr=0.1)
    start = sum(aux_imbalanced.values()).item()
    for _ in range(30):
        optimiser.zero_grad()
        loss = sum(imbalanced(emb, mask).aux_losses.values())
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * start


# -- late fusion combination -----------------------------------------------------------------------
def test_late_fusion_mean_renormalises_over_present_modalities():
    layer = build("late-mean").eval()
    out = layer(make_embeddings(), MIXED_MASK)
    unimodal = out.extras["unimodal_prediction"]
    for b in range(B):
        present = MIXED_MASK[b]
        assert torch.allclose(out.task_outputs[0][b], unimodal[b, present].mean(0), atol=1e-6)
        assert torch.allclose(
            out.weights[b, present], torch.full((int(present.sum()),), 1.0 / int(present.sum()))
        )


def test_late_fusion_learned_weights_are_renormalised_softmax():
    layer = build("late-learned").eval()
    with torch.no_grad():
        layer.modality_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    out = layer(make_embeddings(), MIXED_MASK)
    for b in range(B):
        present = MIXED_MASK[b]
        expected = torch.zeros(3)
        expected[present] = torch.softmax(layer.modality_logits[present], 0)
        assert torch.allclose(out.weights[b], expected, atol=1e-6)
        pred = (out.extras["unimodal_prediction"][b] * expected[:, None]).sum(0)
        assert torch.allclose(out.task_outputs[0][b], pred, atol=1e-5)


def test_late_fusion_classification_is_a_mixture_of_probabilities():
    layer = build("late-learned", mode="classification").eval()
    with torch.no_grad():
        layer.modality_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = layer(make_embeddings(), MIXED_MASK)
    unimodal = out.extras["unimodal_prediction"]  # (B, M, T, C) probabilities
    mixture = (out.weights[:, :, None, None] * unimodal).sum(1)
    assert torch.allclose(out.task_outputs[0], mixture, atol=1e-5)


# -- generic modality dropout ----------------------------------------------------------------------
def test_network_modality_dropout_hides_modalities_only_in_training(dataset):
    ds, modalities = dataset
    model = EarlyFusionModel(
        2,
        modalities,
        encoder_dim=8,
        fused_dim=8,
        head_hidden=8,
        modality_dropout=0.5,
        progress=False,
    )
    batch = deepfuse_plugin.collate_samples(list(ds.X), model.modalities)
    torch.manual_seed(0)
    model.model.train()
    seen = model.model(batch).modality_weights.bool()
    assert (seen <= batch.mask).all() and seen.any(1).all()
    assert not torch.equal(seen, batch.mask)
    model.model.eval()
    assert torch.equal(model.model(batch).modality_weights.bool(), batch.mask)


# -- DeepChem wrappers ---------------------------------------------------------------------------
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


@pytest.fixture(scope="module")
def dataset():
    feat = deepfuse_plugin.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    X = feat.featurize(SMILES)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(len(SMILES), 2))
    y[[1, 4], 1] = np.nan  # multitask with missing labels
    return dc.data.NumpyDataset(X, y, ids=np.array(SMILES)), feat.modalities


SMALL = dict(encoder_dim=32, fused_dim=32, head_hidden=32, batch_size=8, progress=False)
WRAPPERS = [
    (EarlyFusionModel, {}),
    (LateFusionModel, {"combine": "mean"}),
    (LateFusionModel, {"combine": "stacking"}),
    (CrossAttentionFusionModel, {"n_heads": 2}),
    (GatedMoEFusionModel, {"top_k": 2, "n_experts_shared": 1}),
    (UnimodalModel, {}),
]
IDS = ["early", "late-mean", "late-stacking", "cross", "moe", "unimodal"]


def make_model(cls, kwargs, modalities, n_tasks, mode, model_dir=None):
    torch.manual_seed(0)
    if cls is UnimodalModel:
        return cls(n_tasks, modalities[1], mode=mode, model_dir=model_dir, **SMALL, **kwargs)
    return cls(n_tasks, modalities, mode=mode, model_dir=model_dir, **SMALL, **kwargs)


@pytest.mark.parametrize("cls,kwargs", WRAPPERS, ids=IDS)
def test_wrapper_regression_fit_predict_save_load(cls, kwargs, dataset, tmp_path):
    ds, modalities = dataset
    model = make_model(cls, kwargs, modalities, 2, "regression", str(tmp_path))
    assert getattr(dc.models, cls.__name__) is cls
    loss = model.fit(ds, nb_epoch=2)
    assert math.isfinite(loss)
    n_modalities = len(model.modality_names)
    prediction, embedding, weights = model.predict(
        ds, output_types=["prediction", "embedding", "modality_weights"]
    )
    assert prediction.shape == (12, 2) and np.isfinite(prediction).all()
    assert embedding.shape == (12, 32)
    assert weights.shape == (12, n_modalities)
    dropped = model.predict(
        ds, drop_modalities=[model.modality_names[0]] if n_modalities > 1 else []
    )
    assert np.isfinite(dropped).all()
    model.save_checkpoint()
    restored = MultiModalTorchModel.load(str(tmp_path))
    assert type(restored) is cls and restored.get_config() == model.get_config()
    np.testing.assert_allclose(restored.predict(ds), prediction, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,kwargs", WRAPPERS, ids=IDS)
def test_wrapper_classification_and_single_modality(cls, kwargs, dataset):
    ds, modalities = dataset
    y = (np.nan_to_num(ds.y) > 0).astype(float)
    y[2, 0] = np.nan
    cds = dc.data.NumpyDataset(ds.X, y, ids=ds.ids)
    model = make_model(cls, kwargs, modalities, 2, "classification")
    model.fit(cds, nb_epoch=2)
    probabilities = model.predict(cds)
    assert probabilities.shape == (12, 2, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    if cls is not UnimodalModel:  # every fusion model also runs on one modality
        single = make_model(cls, kwargs, [modalities[1]], 1, "regression")
        single.fit(dc.data.NumpyDataset(ds.X, ds.y[:, :1], ids=ds.ids), nb_epoch=1)
        assert single.modality_names == ["graph"]
        assert np.isfinite(single.predict(ds)).all()


def test_wrapper_extras(dataset):
    ds, modalities = dataset
    graph_only = UnimodalModel(1, modalities[1], progress=False)
    assert graph_only.modality_names == ["graph"]
    moe = make_model(GatedMoEFusionModel, {"top_k": 2}, modalities, 2, "regression")
    moe.fit(ds, nb_epoch=1)
    usage = moe.expert_usage(ds)
    assert list(usage.columns) == ["modality", "mean_gate", "selection_frequency", "availability"]
    assert usage["mean_gate"].sum() == pytest.approx(1.0, abs=1e-5)
    assert usage["selection_frequency"].sum() == pytest.approx(2.0)
    cross = make_model(CrossAttentionFusionModel, {"n_heads": 2}, modalities, 2, "regression")
    maps = cross.attention_maps(ds, "ecfp")
    assert len(maps) == 12 and all(m.shape[0] == 4 for m in maps)  # 4 ECFP tokens per molecule
    late = make_model(LateFusionModel, {"combine": "learned"}, modalities, 2, "regression")
    assert late.predict_unimodal(ds).shape == (12, 3, 2)
    with pytest.raises(ValueError, match="combine"):
        LateFusionModel(1, modalities, combine="median")
    with pytest.raises(ValueError, match="top_k"):
        GatedMoEFusionModel(1, modalities, top_k=9)
    with pytest.raises(ValueError, match="self-supervised"):  # nothing to pretrain on
        make_model(EarlyFusionModel, {}, modalities, 2, "regression").pretrain(ds, nb_epoch=1)


def test_cross_attention_length_chunk_is_a_training_setting(dataset, tmp_path, caplog):
    """Chunked and one-pass models predict alike from one checkpoint, and a configuration saved
    before ``length_chunk`` existed loads (with the default)."""
    ds, modalities = dataset
    kwargs = {"n_heads": 2, "length_chunk": 3}
    model = make_model(
        CrossAttentionFusionModel, kwargs, modalities, 2, "regression", model_dir=str(tmp_path)
    )
    model.fit(ds, nb_epoch=2)
    expected = model.predict(ds)  # 12 molecules in batches of 8: the first batch in 3 chunks
    one_pass = make_model(
        CrossAttentionFusionModel,
        {**kwargs, "length_chunk": 0},
        modalities,
        2,
        "regression",
        model_dir=str(tmp_path),
    )
    one_pass.restore()
    assert "different training settings: length_chunk" in caplog.text
    np.testing.assert_allclose(one_pass.predict(ds), expected, rtol=1e-5, atol=1e-6)
    path = tmp_path / "deepfuse_config.json"
    payload = json.loads(path.read_text())
    del payload["config"]["length_chunk"]
    path.write_text(json.dumps(payload))
    loaded = MultiModalTorchModel.load(str(tmp_path))
    assert loaded.length_chunk == 16
    np.testing.assert_allclose(loaded.predict(ds), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dynamic", "moe"])
def test_auxiliary_losses_are_skipped_without_gradients_and_outputs_unchanged(kind):
    from deepfuse_plugin.nn.fusion import DynamicFusion

    layer = DynamicFusion(NAMES, D_IN, D_OUT) if kind == "dynamic" else build("moe")
    layer.eval()
    embeddings = make_embeddings()
    with_grad = layer(embeddings, MIXED_MASK)
    with torch.no_grad():
        inference = layer(embeddings, MIXED_MASK)
    assert with_grad.aux_losses and inference.aux_losses == {}
    torch.testing.assert_close(inference.fused, with_grad.fused)
    torch.testing.assert_close(inference.weights, with_grad.weights)


@pytest.mark.parametrize("mode", ["regression", "classification"])
def test_unimodal_loss_trains_a_head_per_encoder_on_present_rows(
    small_featurizer, featurized, tiny_model_kwargs, mode
):
    from deepfuse_plugin.data.collate import collate_samples
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    n = 8
    y = (np.arange(n) % 2).reshape(-1, 1).astype(float)
    ds = deepfuse_plugin.drop_modalities(
        dc.data.NumpyDataset(featurized[:n], y), ["graph"], fraction=0.5, seed=0
    )
    plain = DynamicFusionModel(
        1, small_featurizer.modalities, mode=mode, unimodal_loss_weight=0.0, **tiny_model_kwargs
    )
    model = DynamicFusionModel(
        1, small_featurizer.modalities, mode=mode, unimodal_loss_weight=0.5, **tiny_model_kwargs
    )
    assert DynamicFusionModel(1, small_featurizer.modalities).unimodal_loss_weight == 1.0
    assert plain.model.unimodal_heads is None and set(model.model.unimodal_heads) == set(NAMES)
    batch = collate_samples(list(ds.X), model.modalities)
    labels, weights = torch.as_tensor(y, dtype=torch.float32), torch.ones(n, 1)
    torch.manual_seed(0)
    out = model.model(batch)
    assert out.unimodal_output.shape[:2] == (n, 3) and out.unimodal_mask.equal(batch.mask)
    per_modality = [
        model._task_loss(out.unimodal_output[:, j], labels, weights * batch.mask[:, j : j + 1])
        for j in range(3)
    ]
    expected = (
        model._task_loss(out.task_output, labels, weights)
        + out.aux_loss
        + 0.5 * torch.stack(per_modality).mean()
    )
    loss = model._supervised_loss(
        [out.task_output, out.aux_loss, out.unimodal_output, out.unimodal_mask], [labels], [weights]
    )
    torch.testing.assert_close(loss, expected)
    graph = NAMES.index("graph")
    assert 0 < int(batch.mask[:, graph].sum()) < n
    assert (out.unimodal_output[~batch.mask[:, graph], graph] == 0).all()  # missing: no signal
    with torch.no_grad():  # inference never runs the heads
        assert model.model(batch).unimodal_output.shape[1] == 0
    before = {k: v.clone() for k, v in model.model.unimodal_heads.state_dict().items()}
    model.fit(ds, nb_epoch=2)
    after = model.model.unimodal_heads.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="unimodal_loss_weight"):
        DynamicFusionModel(1, small_featurizer.modalities, unimodal_loss_weight=-1.0)
