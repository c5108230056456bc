"""Encoders of the crystal modality kinds (pure torch / PyG; transformers only for fine-tuning).

- ``crystal_graph``: :class:`~deepfuse_plugin.nn.cgcnn.CGCNNEncoder`, the crystal graph
  convolutional network of Xie & Grossman (PRL 120, 145301, 2018); for a
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

Importing this module registers both kinds with
:func:`~deepfuse_plugin.nn.encoders.register_encoder`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deepfuse_plugin.modalities import MATGL_FORMAT, Modality, resolve_model_path

# CGCNN lives in nn.cgcnn; its names stay importable from here
from deepfuse_plugin.nn.cgcnn import CGCNNConv, CGCNNEncoder, SafeBatchNorm1d  # noqa: F401
from deepfuse_plugin.nn.encoders import (
    EncodedModality,
    SequenceEncoder,
    check_length_chunk,
    encode_in_length_chunks,
    register_encoder,
    reset_all,
)
from deepfuse_plugin.nn.matgl_backbone import MatGLGraphEncoder


class SentenceEmbeddingEncoder(nn.Module):
    """Frozen per-sentence text embeddings ``(B, S, in_dim)`` -> text tokens ``(B, S, out_dim)``.

    ``LayerNorm -> Dropout -> Linear`` per sentence plus a learned sentence-position embedding (the
    fast describer writes its sentences in a fixed order: formula and space group, lattice, density,
    then one or two per inequivalent site), optionally ``n_layers`` self-attention blocks so that
    sentences see each other; ``pooled`` = masked mean over the real sentences (zeros when the
    text is missing).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        max_sentences: int = 64,
        n_layers: int = 0,
        n_heads: int = 4,
        dropout: float = 0.1,
        **_: Any,
    ):
        super().__init__()
        self.project = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim)
        )
        self.position = nn.Embedding(max_sentences, out_dim)
        self.max_sentences = max_sentences
        self.encoder = None
        if n_layers > 0:
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
        states, mask = batch.states, batch.mask
        positions = torch.arange(states.shape[1], device=states.device).clamp(
            max=self.max_sentences - 1
        )
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
    fixed (only the projection trains). The pretrained weights are loaded from ``model`` (a name or
    a local folder; the modality's ``params["model_path"]`` by default) when the encoder is built,
    and are part of the checkpoint afterwards.

    A batch larger than ``length_chunk`` is encoded in chunks of descriptions of similar length,
    each cut to its own longest one (:func:`~deepfuse_plugin.nn.encoders.encode_in_length_chunks`):
    the backbone masks padding, so the outputs are those of one padded pass. ``length_chunk=0``
    encodes in one pass.
    """

    def __init__(
        self,
        model: str,
        out_dim: int,
        freeze: bool = False,
        dropout: float = 0.1,
        length_chunk: int = 16,
        **_: Any,
    ):
        super().__init__()
        from transformers import AutoModel

        check_length_chunk(length_chunk)
        self.backbone = AutoModel.from_pretrained(model)
        self.freeze = freeze
        self.length_chunk = length_chunk
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.project = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.backbone.config.hidden_size, out_dim)
        )

    def forward(self, tokens: Any) -> EncodedModality:
        return encode_in_length_chunks(
            self._encode, tokens.ids, tokens.attention_mask, self.length_chunk
        )

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
        return SentenceEmbeddingEncoder(spec.require("dim"), out_dim, **options)
    if representation == "tokens":
        options = dict(options)
        backbone = options.pop("backbone", "pretrained")
        if backbone == "scratch":
            return SequenceEncoder(
                int(spec.params["vocab_size"]),
                out_dim,
                spec.max_length or 256,
                pad_id=int(spec.params.get("pad_id", 0)),
                **options,
            )
        if backbone != "pretrained":
            raise ValueError(
                f"text encoder backbone must be 'pretrained' or 'scratch', got {backbone!r}"
            )
        model = options.pop("model", None) or resolve_model_path(spec.params.get("model"))
        return TransformerTextEncoder(model, out_dim, **options)
    raise ValueError(f"Modality {spec.name!r}: unknown text representation {representation!r}")


def _crystal_graph_encoder(spec: Modality, out_dim: int, options: dict[str, Any]) -> nn.Module:
    options = dict(options)
    if spec.params.get("format") == MATGL_FORMAT:
        return MatGLGraphEncoder(
            out_dim,
            options.pop("backbone", "megnet"),
            spec.params.get("element_types"),
            spec.params.get("cutoff", 4.0),
            **options,
        )
    backbone = options.pop("backbone", "cgcnn")
    if backbone != "cgcnn":
        raise ValueError(
            f"Modality {spec.name!r} is a CGCNN-format crystal graph; backbone "
            f"{backbone!r} reads MatGL-format graphs: featurize with the "
            "'matgl_graph' modality (CrystalMultiModalFeaturizer(['matgl_graph', ...]))"
        )
    return CGCNNEncoder(spec.require("node_dim"), spec.require("edge_dim"), out_dim, **options)


register_encoder("crystal_graph", _crystal_graph_encoder)
register_encoder("text", _text_encoder)
