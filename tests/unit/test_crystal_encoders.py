"""Crystal encoders, collaters and MatMMFuseModel on hand-made samples.

No pymatgen needed: these run in every environment (the materials extra only adds featurization).
"""

from __future__ import annotations

import deepchem as dc
import numpy as np
import pytest
import torch

import deepfuse_plugin as dfp
from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.data.crystal import SentenceBatch
from deepfuse_plugin.modalities import GraphFeatures, Modality, MultiModalSample
from deepfuse_plugin.nn.crystal import CGCNNEncoder, SentenceEmbeddingEncoder
from deepfuse_plugin.nn.fusion import CrossAttentionFusion, ProjectionFusion

GRAPH = Modality("graph", "crystal_graph", node_dim=6, edge_dim=5)
SENTENCES = Modality(
    "text_sentences", "text", dim=8, params={"representation": "sentence_embeddings"}
)
TOKENS = Modality(
    "text",
    "text",
    max_length=12,
    params={"representation": "tokens", "vocab_size": 50, "pad_id": 0},
)
TINY = dict(
    encoder_dim=16,
    fused_dim=16,
    head_hidden=16,
    n_heads=2,
    attention_hidden=8,
    batch_size=4,
    learning_rate=3e-3,
    progress=False,
    encoder_options={"crystal_graph": {"atom_fea_len": 8, "n_conv": 2}},
)


def _samples(n: int = 8, seed: int = 0) -> list[MultiModalSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = 1 + i % 4
        n_edges = 0 if atoms == 1 else 3 * atoms
        graph = GraphFeatures(
            rng.normal(size=(atoms, 6)).astype(np.float32),
            rng.integers(0, atoms, size=(2, n_edges)),
            rng.random((n_edges, 5)).astype(np.float32),
        )
        sentences = rng.normal(size=(3 + i % 3, 8)).astype(np.float16)
        tokens = rng.integers(1, 50, size=4 + i % 5).astype(np.int32)
        values = {"graph": graph, "text_sentences": sentences, "text": tokens}
        reasons = {}
        if i == n - 1:  # a disordered crystal: no graph
            values["graph"], reasons["graph"] = None, "disordered"
        out.append(MultiModalSample(values, reasons))
    return out


def _dataset(n: int = 8) -> dc.data.NumpyDataset:
    X = np.empty(n, dtype=object)
    X[:] = _samples(n)
    return dc.data.NumpyDataset(
        X, np.linspace(-1, 1, n).reshape(-1, 1), ids=np.array([f"c{i}" for i in range(n)])
    )


def test_text_collate_pads_tokens_and_sentences():
    batch = collate_samples(_samples(3), [GRAPH, SENTENCES, TOKENS])
    sentences, tokens = batch.inputs["text_sentences"], batch.inputs["text"]
    assert isinstance(sentences, SentenceBatch)
    assert sentences.states.shape == (3, 5, 8) and sentences.states.dtype == torch.float32
    assert sentences.mask.sum(1).tolist() == [3, 4, 5]
    assert tokens.ids.shape == (3, 6) and tokens.attention_mask.sum(1).tolist() == [4, 5, 6]
    assert batch.inputs["graph"].num_graphs == 3
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bad = _samples(1)[0]
        bad.values["text"] = np.array([1, 99])
        collate_samples([bad], [TOKENS])


def test_cgcnn_encoder_lone_atom_and_missing_graph():
    from torch_geometric.data import Batch

    encoder = CGCNNEncoder(node_dim=5, edge_dim=3, out_dim=8, atom_fea_len=4, n_conv=2)
    encoder.train()
    # one single-atom crystal without edges in a training batch (batch norm over one row)
    lone = Batch(
        x=torch.randn(1, 5),
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=torch.zeros(0, 3),
        batch=torch.zeros(1, dtype=torch.long),
        num_graphs=1,
    )
    out = encoder(lone)
    assert out.pooled.shape == (1, 8) and torch.isfinite(out.pooled).all()
    # a missing crystal (no atoms) next to a real one pools to exact zeros
    two = Batch(
        x=torch.randn(2, 5),
        edge_index=torch.tensor([[0, 1], [1, 0]]),
        edge_attr=torch.randn(2, 3),
        batch=torch.tensor([1, 1]),
        num_graphs=2,
    )
    out = encoder(two)
    assert torch.equal(out.pooled[0], torch.zeros(8))
    assert out.token_mask.tolist() == [[False, False], [True, True]]


def test_cgcnn_convolution_uses_the_edges():
    """Changing a neighbour's features changes the centre atom's state (messages flow
    neighbour -> centre along edge_index[0] -> edge_index[1])."""
    encoder = CGCNNEncoder(node_dim=4, edge_dim=2, out_dim=4, atom_fea_len=4, n_conv=1).eval()
    x = torch.randn(3, 4)
    edge_index = torch.tensor([[1], [0]])  # 1 -> 0 only
    edge_attr = torch.rand(1, 2)
    h = encoder.node_states(x, edge_index, edge_attr)
    x2 = x.clone()
    x2[1] += 1.0
    h2 = encoder.node_states(x2, edge_index, edge_attr)
    assert not torch.allclose(h[0], h2[0])  # centre 0 hears neighbour 1
    assert torch.allclose(h[2], h2[2])  # atom 2 is isolated


def test_sentence_encoder_missing_text_pools_to_zero():
    encoder = SentenceEmbeddingEncoder(8, 16, n_layers=1, n_heads=2).eval()
    states = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = encoder(SentenceBatch(states, mask))
    assert torch.equal(out.pooled[1], torch.zeros(16)) and torch.isfinite(out.tokens).all()
    assert out.tokens.shape == (2, 3, 16) and out.token_mask.tolist() == mask.tolist()


def test_matmmfuse_on_hand_made_samples(tmp_path):
    ds = _dataset()
    model = dfp.MatMMFuseModel(1, [GRAPH, SENTENCES], model_dir=str(tmp_path), **TINY)
    assert isinstance(model.model.fusion, CrossAttentionFusion)
    assert np.isfinite(model.fit(ds, nb_epoch=2))
    predictions = model.predict(ds)
    assert predictions.shape == (8, 1) and np.isfinite(predictions).all()
    weights = model.modality_weights(ds)
    assert weights.loc["c7", "graph"] == 0.0  # missing graph: text alone
    maps = model.attention_maps(ds, "graph")
    assert maps[3].shape == (4, 1 + 3)  # 4 atoms over null + 3 sentences
    assert (maps[3].max(axis=1) - maps[3].min(axis=1) > 1e-5).all()
    restored = dfp.MultiModalTorchModel.load(str(tmp_path))
    np.testing.assert_allclose(restored.predict(ds), predictions, atol=1e-5)


def test_matmmfuse_single_modality_is_the_unimodal_baseline():
    model = dfp.MatMMFuseModel(1, [GRAPH], **TINY)
    assert isinstance(model.model.fusion, ProjectionFusion)
    model.fit(_dataset(), nb_epoch=1)


def test_other_fusion_models_with_crystal_kinds():
    ds = _dataset()
    kwargs = {k: v for k, v in TINY.items() if k != "n_heads"}
    kwargs["encoder_options"] = {
        **TINY["encoder_options"],
        "text": {"backbone": "scratch", "n_layers": 1, "n_heads": 2},
    }
    for cls in (dfp.GatedMoEFusionModel, dfp.LateFusionModel):
        model = cls(1, [GRAPH, SENTENCES, TOKENS], **kwargs)
        model.fit(ds, nb_epoch=1)
        assert np.isfinite(model.predict(ds)).all()


def test_factorised_cgcnn_messages_equal_pyg_cgconv():
    from deepfuse_plugin.nn.crystal import CGCNNConv

    torch.manual_seed(0)
    conv = CGCNNConv(16, 5)
    h = torch.randn(30, 16, requires_grad=True)
    edge_index = torch.randint(0, 30, (2, 200))
    edge_attr = torch.rand(200, 5)
    reference = conv.conv.propagate(edge_index, x=(h, h), edge_attr=edge_attr)
    factorised = conv.messages(h, edge_index, edge_attr)
    torch.testing.assert_close(factorised, reference, atol=1e-5, rtol=1e-5)
    (grad_ref,) = torch.autograd.grad(reference.square().sum(), h)
    (grad_new,) = torch.autograd.grad(factorised.square().sum(), h)
    torch.testing.assert_close(grad_new, grad_ref, atol=1e-4, rtol=1e-4)
