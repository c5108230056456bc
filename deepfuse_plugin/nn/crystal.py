"""Encoders of the crystal modality kinds (pure torch / PyG; transformers only for fine-tuning).

- ``crystal_graph``: :class:`CGCNNEncoder`, the crystal graph convolutional network of Xie &
  Grossman (PRL 120, 145301, 2018) built on PyG's :class:`~torch_geometric.nn.CGConv`; for a
  MatGL-format graph (``params["format"] == "matgl"``, the ``matgl_graph`` modality)
  :class:`~deepfuse_plugin.nn.matgl_backbone.MatGLGraphEncoder` (MEGNet, M3GNet or CGCNN, chosen
  by the ``backbone`` encoder option).
- ``text``: chosen by the spec's ``params["representation"]``:

  * ``"sentence_embeddings"``: :class:`SentenceEmbeddingEncoder` over frozen, precomputed
    per-sentence embeddings of the description (a few real text tokens per crystal);
  * ``"tokens"``: :class:`TransformerTextEncoder`, a pretrained transformers model fine-tuned on
    the token ids (``backbone="pretrained"``), or deepfuse's small
    :class:`~deepfuse_plugin.nn.encoders.SequenceEncoder` trained from scratch
    (``backbone="scratch"``).

Importing this module registers both kinds with :func:`~deepfuse_plugin.nn.encoders.register_encoder`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import CGConv, global_mean_pool

from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.nn.encoders import (EncodedModality, SequenceEncoder, check_length_chunk,
                                         encode_crystal, encode_in_length_chunks, register_encoder,
                                         reset_all)


class SafeBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` that falls back to its running statistics for a training batch of fewer
    than two rows (a lone one-atom crystal at the end of an epoch), instead of raising."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class CGCNNConv(nn.Module):
    """One CGCNN convolution: ``h_i <- softplus(h_i + BN(sum_j sigmoid(W_f z_ij) * softplus(W_s z_ij)))``
    with ``z_ij = [h_i, h_j, e_ij]``.

    The weights are PyG's ``CGConv`` (``lin_f``, ``lin_s`` over ``[x_i, x_j, e_ij]``); the batch
    norm over the summed messages and the outer softplus follow the original CGCNN ``ConvLayer``
    (PyG's ``CGConv.forward`` has neither). An atom without neighbours keeps ``softplus(h_i + BN(0))``.

    The messages are computed factorised, with the same weights and result as ``CGConv``:
    ``W z_ij = W_i h_i + W_j h_j + W_e e_ij``, where the atom terms are one matrix product per atom
    and only the edge term is per edge. With ~12 edges per atom this does about a third of
    ``CGConv``'s multiply work (most of CGCNN's CPU training time).
    """

    def __init__(self, channels: int, edge_dim: int):
        super().__init__()
        self.channels = channels
        self.conv = CGConv(channels, dim=edge_dim, aggr="add", batch_norm=False)
        self.norm = SafeBatchNorm1d(channels)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.norm.reset_parameters()

    def messages(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Summed gated messages per atom ``(N, channels)`` (edges run source -> target)."""
        c = self.channels
        weight = torch.cat([self.conv.lin_f.weight, self.conv.lin_s.weight])  # (2c, 2c + d)
        bias = torch.cat([self.conv.lin_f.bias, self.conv.lin_s.bias])
        source, target = edge_index
        gates = (F.linear(h, weight[:, :c])[target] + F.linear(h, weight[:, c:2 * c])[source]
                 + F.linear(edge_attr, weight[:, 2 * c:], bias))
        filters, cores = gates.split(c, dim=-1)
        out = h.new_zeros(h.shape[0], c)
        return out.index_add_(0, target, filters.sigmoid() * F.softplus(cores))

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return F.softplus(h + self.norm(self.messages(h, edge_index, edge_attr)))


class CGCNNEncoder(nn.Module):
    """CGCNN (Xie & Grossman, 2018) as a deepfuse encoder.

    Atom features are embedded to ``atom_fea_len`` (CGCNN default 64), ``n_conv`` (3) gated graph
    convolutions over the directed neighbour edges (neighbour -> centre, Gaussian-expanded distances
    as edge features), then CGCNN's head: mean pooling over atoms, softplus, a linear layer to the
    output width (CGCNN's ``h_fea_len``, 128: MatMMFuse uses ``encoder_dim=128``) and softplus.

    ``pooled (B, out_dim)`` is that crystal vector. ``tokens (B, max_atoms, out_dim)`` are the atoms
    passed through the same linear layer and softplus (node-level features for cross-attention);
    ``token_mask`` marks real atoms. A missing graph (no atoms) pools to the zero vector.

    Parameters
    ----------
    node_dim, edge_dim: int
        Atom and edge feature widths (from the ``crystal_graph`` modality spec).
    out_dim: int
        Output width (``h_fea_len``).
    atom_fea_len: int
        Hidden atom width.
    n_conv: int
        Number of convolutions.
    dropout: float
        Dropout on the crystal vector and atom tokens (CGCNN: 0).
    """

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int, atom_fea_len: int = 64,
                 n_conv: int = 3, dropout: float = 0.0, **_: Any):
        super().__init__()
        self.embedding = nn.Linear(node_dim, atom_fea_len)
        self.convs = nn.ModuleList(CGCNNConv(atom_fea_len, edge_dim) for _ in range(n_conv))
        self.conv_to_fc = nn.Linear(atom_fea_len, out_dim)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        reset_all(self)

    def node_states(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Atom states ``(N, atom_fea_len)`` after the convolutions."""
        h = self.embedding(x)
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        return h

    def forward(self, graph: Any) -> EncodedModality:
        h = self.node_states(graph.x, graph.edge_index, graph.edge_attr)
        n_graphs = int(graph.num_graphs)
        crystal = global_mean_pool(h, graph.batch, size=n_graphs)
        pooled = F.softplus(self.conv_to_fc(F.softplus(crystal)))
        # an empty (missing) graph must give exact zeros, not softplus(bias)
        return encode_crystal(pooled, lambda: F.softplus(self.conv_to_fc(F.softplus(h))),
                              graph.batch, n_graphs, self.dropout)


class SentenceEmbeddingEncoder(nn.Module):
    """Frozen per-sentence text embeddings ``(B, S, in_dim)`` -> text tokens ``(B, S, out_dim)``.

    ``LayerNorm -> Dropout -> Linear`` per sentence plus a learned sentence-position embedding (the
    fast describer writes its sentences in a fixed order: formula and space group, lattice, density,
    then one or two per inequivalent site), optionally ``n_layers`` self-attention blocks so that
    sentences see each other; ``pooled`` = masked mean over the real sentences (zeros when the
    text is missing).
    """

    def __init__(self, in_dim: int, out_dim: int, max_sentences: int = 64, n_layers: int = 0,
                 n_heads: int = 4, dropout: float = 0.1, **_: Any):
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout),
                                     nn.Linear(in_dim, out_dim))
        self.position = nn.Embedding(max_sentences, out_dim)
        self.max_sentences = max_sentences
        self.encoder = None
        if n_layers > 0:
            layer = nn.TransformerEncoderLayer(out_dim, n_heads, dim_feedforward=2 * out_dim,
                                               dropout=dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim)

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, batch: Any) -> EncodedModality:
        states, mask = batch.states, batch.mask
        positions = torch.arange(states.shape[1], device=states.device).clamp(
            max=self.max_sentences - 1)
        h = self.project(states) + self.position(positions)[None]
        if self.encoder is not None:
            safe = mask.clone()
            safe[:, 0] |= ~mask.any(dim=1)  # a missing text attends to its first (padding) slot
            h = self.encoder(h, src_key_padding_mask=~safe)
        h = self.norm(h)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return EncodedModality(pooled, h, mask)


class TransformerTextEncoder(nn.Module):
    """A pretrained transformers encoder (e.g. MiniLM, SciBERT) fine-tuned on description tokens.

    ``ids (B, L), attention_mask (B, L)`` -> last hidden states, projected to ``out_dim``
    (``tokens``), and their masked mean (``pooled``). ``freeze=True`` keeps the pretrained weights
    fixed (only the projection trains). The pretrained weights are loaded from ``model`` (a name or a
    local folder; the modality's ``params["model_path"]`` by default) when the encoder is built, and
    are part of the checkpoint afterwards.

    A batch larger than ``length_chunk`` is encoded in chunks of descriptions of similar length,
    each cut to its own longest one (:func:`~deepfuse_plugin.nn.encoders.encode_in_length_chunks`):
    the backbone masks padding, so the outputs are those of one padded pass. ``length_chunk=0``
    encodes in one pass.
    """

    def __init__(self, model: str, out_dim: int, freeze: bool = False, dropout: float = 0.1,
                 length_chunk: int = 16, **_: Any):
        super().__init__()
        from transformers import AutoModel

        check_length_chunk(length_chunk)
        self.backbone = AutoModel.from_pretrained(model)
        self.freeze = freeze
        self.length_chunk = length_chunk
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.project = nn.Sequential(nn.Dropout(dropout),
                                     nn.Linear(self.backbone.config.hidden_size, out_dim))

    def forward(self, tokens: Any) -> EncodedModality:
        return encode_in_length_chunks(self._encode, tokens.ids, tokens.attention_mask,
                                       self.length_chunk)

    def _encode(self, ids: Tensor, attention: Tensor) -> EncodedModality:
        safe = attention.clone()
        safe[:, 0] |= ~attention.any(dim=1)
        hidden = self.backbone(input_ids=ids, attention_mask=safe.long()).last_hidden_state
        h = self.project(hidden)
        h = torch.where(attention.unsqueeze(-1), h, torch.zeros_like(h))
        weights = attention.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return EncodedModality(pooled, h, attention)


def _text_encoder(spec: Modality, out_dim: int, options: dict[str, Any]) -> nn.Module:
    representation = spec.params.get("representation", "tokens")
    if representation == "sentence_embeddings":
        return SentenceEmbeddingEncoder(spec.dim, out_dim, **options)
    if representation == "tokens":
        options = dict(options)
        backbone = options.pop("backbone", "pretrained")
        if backbone == "scratch":
            return SequenceEncoder(int(spec.params["vocab_size"]), out_dim, spec.max_length or 256,
                                   pad_id=int(spec.params.get("pad_id", 0)), **options)
        if backbone != "pretrained":
            raise ValueError(f"text encoder backbone must be 'pretrained' or 'scratch', got "
                             f"{backbone!r}")
        model = options.pop("model", None) or _resolve_text_model(spec.params.get("model"))
        return TransformerTextEncoder(model, out_dim, **options)
    raise ValueError(f"Modality {spec.name!r}: unknown text representation {representation!r}")


def _resolve_text_model(model: Any) -> str:
    from deepfuse_plugin.feat.text import resolve_model_path

    return resolve_model_path(model)


def _crystal_graph_encoder(spec: Modality, out_dim: int, options: dict[str, Any]) -> nn.Module:
    options = dict(options)
    if spec.params.get("format") == "matgl":
        from deepfuse_plugin.nn.matgl_backbone import MatGLGraphEncoder

        return MatGLGraphEncoder(out_dim, options.pop("backbone", "megnet"),
                                 spec.params.get("element_types"), spec.params.get("cutoff", 4.0),
                                 **options)
    backbone = options.pop("backbone", "cgcnn")
    if backbone != "cgcnn":
        raise ValueError(f"Modality {spec.name!r} is a CGCNN-format crystal graph; backbone "
                         f"{backbone!r} reads MatGL-format graphs: featurize with the "
                         "'matgl_graph' modality (CrystalMultiModalFeaturizer(['matgl_graph', ...]))")
    return CGCNNEncoder(spec.node_dim, spec.edge_dim, out_dim, **options)


register_encoder("crystal_graph", _crystal_graph_encoder)
register_encoder("text", _text_encoder)
