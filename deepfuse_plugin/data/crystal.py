"""Batching for the crystal modality kinds (registered with
:func:`~deepfuse_plugin.data.collate.register_collater` on import; no pymatgen needed).

- ``crystal_graph``: the same PyG ``Batch`` as molecular graphs (directed neighbour -> centre
  edges, Gaussian distance features); a missing crystal is an empty graph.
- ``text``: by the spec's ``params["representation"]``: ``"tokens"`` -> padded
  :class:`~deepfuse_plugin.data.collate.TokenBatch` (pad id from the spec, attention mask from the
  lengths), ``"sentence_embeddings"`` -> :class:`SentenceBatch` ``(B, S_max, d)`` float32 + mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepfuse_plugin.data.collate import TokenBatch, _batch_graphs, register_collater
from deepfuse_plugin.modalities import Modality


@dataclass
class SentenceBatch:
    """Padded per-sentence embeddings ``states (B, S, d)`` and ``mask (B, S)`` (True = real)."""

    states: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> SentenceBatch:
        return SentenceBatch(self.states.to(device), self.mask.to(device))


def collate_text(values: list[np.ndarray | None], spec: Modality) -> TokenBatch | SentenceBatch:
    representation = spec.params.get("representation", "tokens")
    if representation == "sentence_embeddings":
        return _pad_sentences(values, spec)
    if representation != "tokens":
        raise ValueError(f"Modality {spec.name!r}: unknown text representation {representation!r}")
    pad_id = int(spec.params.get("pad_id", 0))
    vocab_size = spec.params.get("vocab_size")
    lengths = [0 if v is None else len(v) for v in values]
    ids = np.full((len(values), max(1, max(lengths, default=0))), pad_id, dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if spec.max_length is not None and len(v) > spec.max_length:
            raise ValueError(
                f"Modality {spec.name!r}: row {i} has {len(v)} tokens, the model's "
                f"max_length is {spec.max_length}"
            )
        if vocab_size is not None and len(v) and int(v.max()) >= int(vocab_size):
            raise ValueError(
                f"Modality {spec.name!r}: row {i} has token id {int(v.max())} outside "
                f"the vocabulary of {vocab_size} tokens"
            )
        ids[i, : len(v)] = v
        mask[i, : len(v)] = True
    return TokenBatch(torch.from_numpy(ids), torch.from_numpy(mask))


def _pad_sentences(values: list[np.ndarray | None], spec: Modality) -> SentenceBatch:
    dim = spec.require("dim")
    lengths = [0 if v is None else v.shape[0] for v in values]
    states = np.zeros((len(values), max(1, max(lengths, default=0)), dim), dtype=np.float32)
    mask = np.zeros(states.shape[:2], dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if v.ndim != 2 or v.shape[1] != dim:
            raise ValueError(
                f"Modality {spec.name!r}: row {i} has shape {v.shape}, the model "
                f"expects (n_sentences, {dim})"
            )
        states[i, : len(v)] = v
        mask[i, : len(v)] = True
    return SentenceBatch(torch.from_numpy(states), torch.from_numpy(mask))


register_collater("crystal_graph", _batch_graphs)
register_collater("text", collate_text)
