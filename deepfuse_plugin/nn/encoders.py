"""Per-modality encoders (pure torch / PyG, no DeepChem import), chosen by modality kind.

Every encoder maps its modality's batched input to :class:`EncodedModality`: a pooled vector per
sample ``(B, d)`` and, where the modality has parts (tokens, atoms), the token/atom-level states
``(B, L, d)`` with a mask, which intermediate (cross-attention) fusion attends over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn import GINEConv, global_mean_pool
from torch_geometric.utils import to_dense_batch

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality


class EncodedModality:
    """Encoder output.

    Attributes
    ----------
    pooled: Tensor ``(B, d)``
    tokens: Tensor ``(B, L, d)`` or None (vector modalities have no parts)
    token_mask: Tensor ``(B, L)`` bool or None (True = real token/atom)

    An encoder may pass ``token_states``, a function returning ``(tokens, token_mask)``, instead
    of the tensors: they are then built on first access. Only intermediate (cross-attention)
    fusion reads them, and padding graphs and sequence chunks into them cost the other layers
    about 5% of a one-molecule prediction for nothing.
    """

    __slots__ = ("pooled", "_tokens", "_token_mask", "_token_states")

    def __init__(
        self,
        pooled: Tensor,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        *,
        token_states: Callable[[], tuple[Tensor, Tensor]] | None = None,
    ):
        if token_states is not None and tokens is not None:
            raise ValueError("Pass either tokens or token_states, not both")
        self.pooled = pooled
        self._tokens, self._token_mask = tokens, token_mask
        self._token_states = token_states

    @property
    def tokens(self) -> Tensor | None:
        self._build_token_states()
        return self._tokens

    @property
    def token_mask(self) -> Tensor | None:
        self._build_token_states()
        return self._token_mask

    def _build_token_states(self) -> None:
        if self._token_states is not None:
            self._tokens, self._token_mask = self._token_states()
            self._token_states = None

    def __repr__(self) -> str:
        shape = None if self._tokens is None else tuple(self._tokens.shape)
        pending = " (built on access)" if self._token_states is not None else ""
        return f"EncodedModality(pooled={tuple(self.pooled.shape)}, tokens={shape}{pending})"


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    n_layers: int = 2,
    dropout: float = 0.0,
    activation: Callable[[], nn.Module] = nn.SiLU,
) -> nn.Sequential:
    """``n_layers`` linear layers with activation and dropout between them (none after the last)."""
    dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            layers += [activation(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def reset_all(module: nn.Module) -> None:
    """Re-initialise every sub-module that has ``reset_parameters`` (PyG convention)."""
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if child is not module and callable(reset):
            reset()


class VectorEncoder(nn.Module):
    """MLP for raw feature vectors (fingerprints, descriptors). ``(B, in_dim) -> (B, out_dim)``.

    ``input_dropout`` drops input features (fingerprint bits) during training: a 2048-bit
    fingerprint MLP memorises a small training set within a few epochs, and dropping bits was the
    lever that stopped it from dominating fusion (see DynamicFusionModel's defaults).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        **_: Any,
    ):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.net = mlp(in_dim, hidden_dim, out_dim, n_layers, dropout)
        self.norm = nn.LayerNorm(out_dim)

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, x: Tensor) -> EncodedModality:
        return EncodedModality(self.norm(self.net(self.input_dropout(x))))


class EmbeddingEncoder(nn.Module):
    """Identity plus projection for precomputed embeddings. ``(B, in_dim) -> (B, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1, **_: Any):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim)
        )

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, x: Tensor) -> EncodedModality:
        return EncodedModality(self.net(x))


class VectorSetEncoder(nn.Module):
    """Precomputed sets of vectors (a pretrained model's atom states) -> tokens and pooled vector.

    ``states (B, L, in_dim), mask (B, L)`` (True = real; any object with ``.states`` and
    ``.mask``, e.g. :class:`~deepfuse_plugin.data.crystal.SentenceBatch`) -> ``tokens (B, L,
    out_dim)`` (zero at padding) and their masked mean ``pooled (B, out_dim)`` (zeros for a
    missing set). Each vector gets ``LayerNorm -> Dropout -> Linear``; ``n_layers`` optional
    self-attention blocks let the vectors of a set see each other. There is no position
    embedding: a crystal's site order carries no meaning, and the encoder is permutation
    equivariant (the pooled vector invariant).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_layers: int = 0,
        n_heads: int = 4,
        dropout: float = 0.1,
        **_: Any,
    ):
        super().__init__()
        self.project = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim)
        )
        self.encoder = None
        if n_layers > 0:
            if n_heads < 1 or out_dim % n_heads:
                raise InvalidSettingError(
                    f"encoder_dim={out_dim} must be a multiple of the vector_set encoder's "
                    f"n_heads={n_heads}: choose another encoder_dim or "
                    "encoder_options={'vector_set': {'n_heads': ...}}"
                )
            layer = nn.TransformerEncoderLayer(
                out_dim,
                n_heads,
                dim_feedforward=2 * out_dim,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim)

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, batch: Any) -> EncodedModality:
        mask = batch.mask
        h = self.project(batch.states)
        if self.encoder is not None:
            safe = mask.clone()
            safe[:, 0] |= ~mask.any(dim=1)  # a missing set attends to its first (padding) slot
            h = self.encoder(h, src_key_padding_mask=~safe)
        h = torch.where(mask.unsqueeze(-1), self.norm(h), torch.zeros_like(h))
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return EncodedModality(pooled, h, mask)


def check_length_chunk(length_chunk: int) -> None:
    if length_chunk < 0:
        raise ValueError(f"length_chunk must be >= 0 (0: one pass), got {length_chunk}")


def last_real_extents(mask: Tensor) -> Tensor:
    """``(B,)`` the width each row of a ``(B, L)`` token mask can be cut to: its last real token
    + 1 (the length for right-padded rows, safe for any mask), at least 1 (a row without tokens
    keeps position 0); 0 when ``L`` is 0 (a modality missing from the whole batch)."""
    if mask.shape[1] == 0:
        return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (positions * mask).amax(dim=1).clamp(min=1)


def length_sorted_chunks(
    extents: Tensor, size: int
) -> tuple[list[tuple[Tensor, list[int]]], Tensor]:
    """A batch split into chunks of ``size`` samples of similar length.

    ``extents (K, B)`` is each sample's width in each of ``K`` sequences (e.g.
    :func:`last_real_extents` of every modality). Samples are sorted by their total width. Returns
    the chunks as ``(rows, widths)``, ``widths[k]`` the chunk's largest width in sequence ``k``,
    and ``back``: indexing the chunks' concatenated results with it restores the input order.
    """
    order = torch.argsort(extents.sum(dim=0))
    sorted_extents = extents[:, order].tolist()  # one host sync, not one per chunk
    chunks = [
        (rows, [max(widths[start : start + len(rows)]) for widths in sorted_extents])
        for start, rows in zip(range(0, len(order), size), order.split(size))
    ]
    return chunks, torch.argsort(order)


def encode_in_length_chunks(
    encode: Callable[[Tensor, Tensor], EncodedModality],
    ids: Tensor,
    attention: Tensor,
    length_chunk: int,
) -> EncodedModality:
    """``encode(ids, attention)`` applied to chunks of ``length_chunk`` sequences of similar
    length, each cut to its own longest sequence; outputs put back in the input order.

    For encoders that never mix samples and whose token states are zero at padding (Transformer
    encoders with a key-padding mask): the result is that of one padded pass. ``length_chunk=0``,
    or a batch no larger than a chunk, is one pass. Token states are assembled only when read.
    """
    if not 0 < length_chunk < ids.shape[0]:
        return encode(ids, attention)
    chunks, back = length_sorted_chunks(last_real_extents(attention)[None], length_chunk)
    pooled, states = [], []
    for rows, (longest,) in chunks:
        encoded = encode(ids[rows, :longest], attention[rows, :longest])
        tokens = encoded.tokens
        if tokens is None:
            raise ValueError("encode_in_length_chunks needs an encoder that returns token states")
        pooled.append(encoded.pooled)
        states.append(tokens)

    def token_states() -> tuple[Tensor, Tensor]:
        padded = [F.pad(t, (0, 0, 0, ids.shape[1] - t.shape[1])) for t in states]
        return torch.cat(padded)[back], attention

    return EncodedModality(torch.cat(pooled)[back], token_states=token_states)


class SequenceEncoder(nn.Module):
    """Transformer encoder over token ids with learned positions; masked mean pooling.

    ``ids (B, L), attention_mask (B, L) -> pooled (B, d), tokens (B, L, d)``; token states at
    padding positions are zero.

    A batch larger than ``length_chunk`` is encoded in chunks of ``length_chunk`` sequences of
    similar length, each padded only to its own longest sequence. Every sequence is encoded on its
    own (attention, layer norms and the feed-forward net never mix samples), so the outputs are
    those of one padded pass, at a fraction of the cost: a batch of 64 HIV SMILES is padded to
    about 114 tokens for a mean of 45, and chunks of 16 halve the forward+backward time. Only
    dropout's random masks differ. ``length_chunk=0`` encodes in one pass.
    """

    def __init__(
        self,
        vocab_size: int,
        out_dim: int,
        max_length: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
        pad_id: int = 0,
        length_chunk: int = 16,
        **_: Any,
    ):
        super().__init__()
        check_length_chunk(length_chunk)
        self.token_embedding = nn.Embedding(vocab_size, out_dim, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_length, out_dim)
        if n_heads < 1 or out_dim % n_heads:
            raise InvalidSettingError(
                f"encoder_dim={out_dim} must be a multiple of the sequence encoder's "
                f"n_heads={n_heads} (attention splits the width across heads): "
                "choose another encoder_dim or encoder_options={'sequence': "
                "{'n_heads': ...}}"
            )
        layer = nn.TransformerEncoderLayer(
            out_dim,
            n_heads,
            dim_feedforward=2 * out_dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim)
        self.max_length = max_length
        self.length_chunk = length_chunk

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, tokens: Any) -> EncodedModality:
        ids, attention = (
            tokens.ids[:, : self.max_length],
            tokens.attention_mask[:, : self.max_length],
        )
        return encode_in_length_chunks(self._encode, ids, attention, self.length_chunk)

    def _encode(self, ids: Tensor, attention: Tensor) -> EncodedModality:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.token_embedding(ids) + self.position_embedding(positions)[None]
        # A sample whose sequence is missing has no real token; let it attend to position 0 so the
        # softmax stays finite. Its output is ignored downstream because the presence mask is False.
        safe = attention.clone()
        safe[:, 0] |= ~attention.any(dim=1)
        h = self.norm(self.encoder(h, src_key_padding_mask=~safe))
        weights = attention.unsqueeze(-1).to(h.dtype)
        states = h * weights  # zero at padding
        return EncodedModality(states.sum(1) / weights.sum(1).clamp(min=1.0), states, attention)


def encode_crystal(
    pooled: Tensor,
    atom_states: Callable[[], Tensor],
    batch: Tensor,
    n_graphs: int,
    dropout: nn.Module,
) -> EncodedModality:
    """A crystal encoder's output: ``pooled (B, D)`` with exact zeros for a crystal without atoms
    (a missing one), and padded atom states ``atom_states() (N, D)`` built on first access (only
    attention-based fusion reads them); both pass through ``dropout``."""
    has_atoms = torch.bincount(batch, minlength=n_graphs)[:n_graphs] > 0
    pooled = torch.where(has_atoms.unsqueeze(1), pooled, torch.zeros_like(pooled))

    def tokens() -> tuple[Tensor, Tensor]:
        states, token_mask = to_dense_batch(atom_states(), batch, batch_size=n_graphs)
        return dropout(states), token_mask

    return EncodedModality(dropout(pooled), token_states=tokens)


class GraphEncoder(nn.Module):
    """GINE message passing with bond features (PyG), residual updates, mean pooling.

    ``Batch(x (N, node_dim), edge_index (2, E), edge_attr (E, edge_dim)) -> pooled (B, d),
    atoms (B, max_atoms, d)``. Empty graphs (missing modality) pool to zeros.
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        out_dim: int,
        n_layers: int = 3,
        dropout: float = 0.1,
        **_: Any,
    ):
        super().__init__()
        self.node_in = nn.Linear(node_dim, out_dim)
        self.convs = nn.ModuleList(
            GINEConv(mlp(out_dim, out_dim, out_dim, 2), edge_dim=edge_dim, train_eps=True)
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(out_dim) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        reset_all(self)

    def node_states(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Atom embeddings ``(N, d)``; exposed for atom-level attributions."""
        h = self.node_in(x)
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.dropout(torch.relu(conv(norm(h), edge_index, edge_attr)))
        return h

    def forward(self, graph: Any) -> EncodedModality:
        h = self.node_states(graph.x, graph.edge_index, graph.edge_attr)
        n_graphs = int(graph.num_graphs)
        pooled = global_mean_pool(h, graph.batch, size=n_graphs)
        return EncodedModality(
            pooled, token_states=lambda: to_dense_batch(h, graph.batch, batch_size=n_graphs)
        )


EncoderFactory = Callable[[Modality, int, dict[str, Any]], nn.Module]

ENCODERS: dict[str, EncoderFactory] = {
    "vector": lambda m, d, o: VectorEncoder(m.require("dim"), d, **o),
    "embedding": lambda m, d, o: EmbeddingEncoder(m.require("dim"), d, **o),
    "sequence": lambda m, d, o: SequenceEncoder(
        m.require("vocab_size"), d, m.max_length or 128, **o
    ),
    "graph": lambda m, d, o: GraphEncoder(m.require("node_dim"), m.require("edge_dim"), d, **o),
    "vector_set": lambda m, d, o: VectorSetEncoder(m.require("dim"), d, **o),
}


def register_encoder(kind: str, factory: EncoderFactory) -> None:
    """Register the encoder used for a modality kind (``factory(spec, out_dim, options)``)."""
    ENCODERS[kind] = factory


def build_encoder(
    modality: Modality, out_dim: int, options: dict[str, Any] | None = None
) -> nn.Module:
    """Encoder for ``modality`` chosen by its kind; ``options`` are passed to the encoder class."""
    if modality.kind not in ENCODERS:
        raise ValueError(
            f"No encoder registered for modality kind {modality.kind!r} "
            f"(modality {modality.name!r}); known kinds: {sorted(ENCODERS)}"
        )
    return ENCODERS[modality.kind](modality, out_dim, dict(options or {}))
