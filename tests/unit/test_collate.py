"""collate_samples: stacked vectors, padded tokens, PyG batches with empty graphs, presence mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import deepfuse_plugin as dfp
from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.modalities import Modality

SMILES = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "C"]


@pytest.fixture(scope="module")
def feat():
    return dfp.MultiModalFeaturizer(["ecfp", "graph", "smiles"], ecfp_size=64, progress=False)


@pytest.fixture(scope="module")
def samples(feat):
    out = list(feat.featurize(SMILES))
    # sample 1 has no graph, sample 2 no smiles, sample 3 no ecfp
    out[1] = out[1].without(["graph"])
    out[2] = out[2].without(["smiles"])
    out[3] = out[3].without(["ecfp"])
    return out


def test_presence_mask_and_names(feat, samples):
    batch = collate_samples(samples, feat.modalities)
    assert batch.names == ("ecfp", "graph", "smiles")
    assert batch.batch_size == 4
    assert batch.mask.dtype == torch.bool
    assert batch.mask.tolist() == [
        [True, True, True],
        [True, False, True],
        [True, True, False],
        [False, True, True],
    ]


def test_vectors_stacked_with_zeros_where_missing(feat, samples):
    x = collate_samples(samples, feat.modalities).inputs["ecfp"]
    assert x.shape == (4, 64) and x.dtype == torch.float32
    for i in range(3):
        np.testing.assert_array_equal(x[i].numpy(), samples[i].values["ecfp"])
    assert (x[3] == 0).all()


def test_tokens_padded_with_attention_mask(feat, samples):
    tokens = collate_samples(samples, feat.modalities).inputs["smiles"]
    lengths = [len(s.values["smiles"]) if s.present("smiles") else 0 for s in samples]
    assert tokens.ids.shape == (4, max(lengths)) and tokens.ids.dtype == torch.int64
    assert tokens.attention_mask.dtype == torch.bool
    assert tokens.attention_mask.sum(1).tolist() == lengths
    for i, s in enumerate(samples):
        n = lengths[i]
        if n:
            np.testing.assert_array_equal(tokens.ids[i, :n].numpy(), s.values["smiles"])
        assert (tokens.ids[i, n:] == 0).all()  # [PAD] = 0
        assert not tokens.attention_mask[i, n:].any()


def test_graphs_batched_with_an_empty_graph_where_missing(feat, samples):
    graph = collate_samples(samples, feat.modalities).inputs["graph"]
    assert isinstance(graph, Batch)
    assert graph.num_graphs == 4
    counts = [s.values["graph"].num_nodes if s.present("graph") else 0 for s in samples]
    assert torch.bincount(graph.batch, minlength=4).tolist() == counts
    assert graph.ptr.tolist() == np.concatenate([[0], np.cumsum(counts)]).tolist()
    # graph i == sample i: nodes and (offset) edges line up with the sample's arrays
    offset = 0
    for i, s in enumerate(samples):
        nodes = graph.x[graph.batch == i].numpy()
        if not s.present("graph"):
            assert nodes.shape[0] == 0
            continue
        g = s.values["graph"]
        np.testing.assert_array_equal(nodes, g.node_features)
        in_graph = (graph.edge_index[0] >= offset) & (graph.edge_index[0] < offset + g.num_nodes)
        np.testing.assert_array_equal(graph.edge_index[:, in_graph].numpy() - offset, g.edge_index)
        np.testing.assert_array_equal(graph.edge_attr[in_graph].numpy(), g.edge_features)
        offset += g.num_nodes
    assert graph.edge_index.max() < graph.x.shape[0]


def test_all_graphs_missing_and_single_atoms(feat):
    samples = [s.without(["graph"]) for s in feat.featurize(["CCO", "CCN"])]
    graph = collate_samples(samples, feat.modalities).inputs["graph"]
    assert graph.x.shape == (0, feat.modalities[1].node_dim)
    assert graph.edge_index.shape == (2, 0) and graph.num_graphs == 2
    one_atom = collate_samples(list(feat.featurize(["C", "O"])), feat.modalities).inputs["graph"]
    assert one_atom.x.shape[0] == 2 and one_atom.edge_index.shape == (2, 0)


def test_batch_goes_through_every_encoder(feat, samples):
    from deepfuse_plugin.nn.encoders import build_encoder

    batch = collate_samples(samples, feat.modalities)
    for spec in feat.modalities:
        encoder = build_encoder(spec, 16, {"n_heads": 2} if spec.kind == "sequence" else {})
        encoder.eval()
        out = encoder(batch.inputs[spec.name])
        assert out.pooled.shape == (4, 16)
        assert torch.isfinite(out.pooled).all()


def test_drop_makes_modalities_missing_for_every_sample(feat, samples):
    batch = collate_samples(samples, feat.modalities, drop=["ecfp"])
    assert not batch.mask[:, 0].any()
    assert (batch.inputs["ecfp"] == 0).all()
    with pytest.raises(ValueError, match="Cannot drop"):
        collate_samples(samples, feat.modalities, drop=["selfies"])


def test_mismatched_modalities_is_a_clear_error(feat):
    other = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, progress=False)
    with pytest.raises(ValueError, match=r"missing \['graph'\]"):
        collate_samples(list(other.featurize(["CCO"])), feat.modalities)


def test_extra_modalities_in_the_data_are_ignored(feat):
    richer = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles", "selfies"], ecfp_size=64, progress=False
    )
    batch = collate_samples(list(richer.featurize(["CCO"])), feat.modalities)
    assert set(batch.inputs) == {"ecfp", "graph", "smiles"}


def test_mismatched_widths_are_clear_errors(feat):
    wide = dfp.MultiModalFeaturizer(["ecfp", "graph", "smiles"], ecfp_size=128, progress=False)
    with pytest.raises(ValueError, match="'ecfp': row 0 has width 128, the model expects 64"):
        collate_samples(list(wide.featurize(["CCO"])), feat.modalities)
    small_vocab = [
        Modality("smiles", "sequence", vocab=("[PAD]", "[UNK]", "[BOS]", "[EOS]"), max_length=8)
    ]
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        collate_samples(list(feat.featurize(["CCO"])), small_vocab)
    # sequences longer than the model's max_length would be cut silently (EOS lost) by the encoder
    long_feat = dfp.MultiModalFeaturizer(["smiles"], max_length=64, progress=False)
    short_spec = dfp.MultiModalFeaturizer(["smiles"], max_length=8, progress=False).modalities
    with pytest.raises(
        ValueError, match="'smiles': row 0 has 12 tokens, the model's max_length is 8"
    ):
        collate_samples(list(long_feat.featurize(["CCCCCCCCCC"])), short_spec)
    collate_samples(list(long_feat.featurize(["CCC"])), short_spec)  # short enough: fine
    graph_spec = [Modality("graph", "graph", node_dim=5, edge_dim=12)]
    with pytest.raises(ValueError, match="node/edge widths"):
        collate_samples(list(feat.featurize(["CCO"])), graph_spec)


def test_non_sample_rows_are_a_clear_error(feat):
    rows = [feat.featurize(["CCO"])[0], np.array([])]
    with pytest.raises(TypeError, match="Row 1 .* not a MultiModalSample"):
        collate_samples(rows, feat.modalities)
    with pytest.raises(TypeError, match="MultiModalSample"):
        collate_samples([np.zeros(64)], feat.modalities)


def test_batch_to_device_keeps_everything(feat, samples):
    batch = collate_samples(samples, feat.modalities).to("cpu")
    assert batch.names == ("ecfp", "graph", "smiles")
    assert batch.inputs["graph"].num_graphs == 4
    assert batch.inputs["smiles"].ids.shape[0] == 4


def test_same_width_data_from_other_featurizer_settings_is_an_error():
    """An ECFP of radius 3 has the width of one of radius 2: only the spec fingerprint tells."""
    radius2 = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=64, progress=False)
    radius3 = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=64, ecfp_radius=3, progress=False)
    samples = list(radius3.featurize(["CCO", "CCN"]))
    with pytest.raises(ValueError, match=r"\['ecfp'\] were featurized with settings that differ"):
        collate_samples(samples, radius2.modalities)
    assert collate_samples(samples, radius3.modalities).inputs["ecfp"].shape == (2, 64)


# -- length-bucketed training batches --------------------------------------------------------------
def _padded_positions(batches, modalities) -> int:
    from deepfuse_plugin.data.collate import sequence_lengths

    return sum(len(X) * int(sequence_lengths(X, modalities).max()) for X, *_ in batches)


def test_length_bucketed_keeps_every_row_aligned_and_pads_less():
    from deepfuse_plugin.data.collate import length_bucketed, sequence_lengths

    feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=16, progress=False)
    smiles = [("C" * n) + "O" for n in np.random.default_rng(0).integers(1, 40, size=50)]
    X = feat.featurize(smiles)
    y = np.arange(50, dtype=float).reshape(-1, 1)
    ids = np.array(smiles, dtype=object)
    stream = [
        (X[i : i + 8], y[i : i + 8], y[i : i + 8] * 0 + 1, ids[i : i + 8]) for i in range(0, 50, 8)
    ]
    out = list(length_bucketed(stream, feat.modalities, pool=4, rng=np.random.default_rng(1)))
    # every molecule once, labels and ids still on their own sample, batch sizes kept
    assert sorted(v for b in out for v in b[1][:, 0]) == y[:, 0].tolist()
    for Xb, yb, wb, idb in out:
        assert [smiles[int(v)] for v in yb[:, 0]] == list(idb)
        lengths = sequence_lengths(Xb, feat.modalities)
        assert lengths.tolist() == [len(s) + 2 for s in idb]  # + begin/end tokens
        assert (wb == 1).all()
    assert sorted(len(b[0]) for b in out) == sorted(len(b[0]) for b in stream)
    assert _padded_positions(out, feat.modalities) < 0.8 * _padded_positions(
        stream, feat.modalities
    )
    with pytest.raises(ValueError, match="pool"):
        list(length_bucketed(stream, feat.modalities, pool=0, rng=np.random.default_rng(0)))


def test_length_bucketed_passes_missing_labels_and_tokens_through(feat, samples):
    from deepfuse_plugin.data.collate import length_bucketed, sequence_lengths

    X = np.empty(len(samples), dtype=object)
    X[:] = samples
    out = list(
        length_bucketed(
            [(X, None, None, None)], feat.modalities, pool=2, rng=np.random.default_rng(0)
        )
    )
    assert len(out) == 1 and out[0][1] is None and out[0][3] is None
    assert sorted(sequence_lengths(out[0][0], feat.modalities)) == sorted(
        sequence_lengths(X, feat.modalities)
    )
    assert 0 in sequence_lengths(X, feat.modalities)  # sample 2 has no smiles: length 0
