"""SequenceEncoder: encoding a batch in length chunks gives the one-pass outputs and gradients;
EncodedModality builds token states only when a fusion layer reads them; a spec without the sizes
its encoder needs, or a network that has nothing to predict with, is refused with a clear error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from deepfuse_plugin.data.collate import MultiModalBatch
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.nn.encoders import (
    EncodedModality,
    GraphEncoder,
    SequenceEncoder,
    build_encoder,
)
from deepfuse_plugin.nn.fusion import ProjectionFusion
from deepfuse_plugin.nn.network import MultiModalNetwork


def padded_batch(lengths: list[int], width: int, vocab: int = 30, seed: int = 0) -> SimpleNamespace:
    """Right-padded token ids; a length of 0 is a sample whose sequence is missing."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=generator)
    attention = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    return SimpleNamespace(ids=ids.masked_fill(~attention, 0), attention_mask=attention)


def encoders(length_chunk: int) -> tuple[SequenceEncoder, SequenceEncoder]:
    torch.manual_seed(0)
    one_pass = SequenceEncoder(30, 16, max_length=40, length_chunk=0)
    chunked = SequenceEncoder(30, 16, max_length=40, length_chunk=length_chunk)
    chunked.load_state_dict(one_pass.state_dict())
    return one_pass.eval(), chunked.eval()  # eval: dropout off, so both are deterministic


LENGTHS = [3, 40, 0, 17, 9, 25, 1, 33, 12, 0, 5, 28, 19]


@pytest.mark.parametrize("length_chunk", [1, 4, 5])
def test_length_chunks_give_the_one_pass_outputs_and_gradients(length_chunk):
    one_pass, chunked = encoders(length_chunk)
    batch = padded_batch(LENGTHS, width=40)
    expected, got = one_pass(batch), chunked(batch)
    torch.testing.assert_close(got.pooled, expected.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.tokens, expected.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.token_mask, batch.attention_mask)
    (expected.pooled.square().sum() + expected.tokens.sum()).backward()
    (got.pooled.square().sum() + got.tokens.sum()).backward()
    for (name, a), b in zip(one_pass.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_padding_states_are_zero_and_missing_sequences_pool_to_zero():
    _, chunked = encoders(4)
    batch = padded_batch(LENGTHS, width=40)
    out = chunked(batch)
    assert out.tokens.shape == (len(LENGTHS), 40, 16)
    assert torch.all(out.tokens[~batch.attention_mask] == 0)
    assert torch.all(out.pooled[torch.tensor(LENGTHS) == 0] == 0)
    assert torch.isfinite(out.pooled).all()


def test_left_padded_input_is_not_cut():
    one_pass, chunked = encoders(2)
    right = padded_batch([4, 7, 2, 6, 3], width=7)
    left = SimpleNamespace(ids=right.ids.flip(1), attention_mask=right.attention_mask.flip(1))
    torch.testing.assert_close(chunked(left).pooled, one_pass(left).pooled, atol=1e-5, rtol=1e-5)


def test_training_mode_runs_in_chunks_and_rejects_a_negative_chunk():
    _, chunked = encoders(4)
    out = chunked.train()(padded_batch(LENGTHS, width=40))
    assert torch.isfinite(out.pooled).all()
    out.pooled.sum().backward()
    with pytest.raises(ValueError, match="length_chunk must be >= 0"):
        SequenceEncoder(30, 16, length_chunk=-1)


def test_token_states_are_built_once_on_first_access():
    calls = []

    def token_states():
        calls.append(1)
        return torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)

    encoded = EncodedModality(torch.zeros(2, 4), token_states=token_states)
    assert calls == []  # a pooled-only fusion layer never pays for them
    assert encoded.tokens.shape == (2, 3, 4) and encoded.token_mask.all()
    assert encoded.token_mask is encoded.token_mask and calls == [1]
    with pytest.raises(ValueError, match="either tokens or token_states"):
        EncodedModality(torch.zeros(2, 4), torch.ones(2, 3, 4), token_states=token_states)


def test_graph_atom_states_are_the_node_states_padded_per_molecule():
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    graphs = [
        Data(
            x=torch.randn(n, 5),
            edge_index=torch.tensor([[0], [n - 1]]),
            edge_attr=torch.randn(1, 3),
        )
        for n in (2, 4, 3)
    ]
    batch = Batch.from_data_list(graphs)
    encoder = GraphEncoder(5, 3, 8).eval()
    encoded = encoder(batch)
    nodes = encoder.node_states(batch.x, batch.edge_index, batch.edge_attr)
    assert encoded.tokens.shape == (3, 4, 8)
    assert encoded.token_mask.sum(1).tolist() == [2, 4, 3]
    torch.testing.assert_close(encoded.tokens[encoded.token_mask], nodes)
    assert (encoded.tokens[~encoded.token_mask] == 0).all()


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (Modality("fp", "vector"), "dim"),
        (Modality("emb", "embedding"), "dim"),
        (Modality("smiles", "sequence"), "vocab_size"),
        (Modality("graph", "graph", node_dim=8), "edge_dim"),
    ],
)
def test_a_spec_without_the_size_its_encoder_needs_is_refused_by_name(spec, size):
    with pytest.raises(InvalidSettingError, match=f"'{spec.name}'.*gives no {size}"):
        build_encoder(spec, 16, {})


def test_a_network_without_a_head_needs_a_fusion_layer_with_its_own_predictors():
    spec = Modality("fp", "vector", dim=4)
    network = MultiModalNetwork([spec], ProjectionFusion(("fp",), 8, 8), head=None, encoder_dim=8)
    batch = MultiModalBatch({"fp": torch.ones(2, 4)}, torch.ones(2, 1, dtype=torch.bool), ("fp",))
    with pytest.raises(InvalidSettingError, match="ProjectionFusion gives no task outputs"):
        network(batch)
