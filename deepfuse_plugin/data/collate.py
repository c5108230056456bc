"""Turn a list of :class:`MultiModalSample` into model-ready tensors.

Vectors are stacked (zeros where missing), token ids are padded with an attention mask, graphs
become one PyG :class:`~torch_geometric.data.Batch` with an empty graph where missing (so graph
``i`` is sample ``i``), and the ``(batch, n_modalities)`` presence mask says what is real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from deepfuse_plugin.modalities import GraphFeatures, Modality, MultiModalSample


@dataclass
class TokenBatch:
    """Padded token ids ``(B, L)`` and attention mask ``(B, L)`` (True = real token)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.attention_mask.to(device))


@dataclass
class MultiModalBatch:
    """Collated inputs of one batch.

    Attributes
    ----------
    inputs: dict
        Modality name -> ``Tensor (B, d)`` for vectors, :class:`TokenBatch` for sequences,
        PyG ``Batch`` for graphs.
    mask: torch.Tensor
        ``(B, M)`` bool presence, columns in the order of ``names``.
    names: tuple of str
        Modality names, the model's order.
    """

    inputs: dict[str, Any]
    mask: torch.Tensor
    names: tuple[str, ...]

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def to(self, device: torch.device | str) -> MultiModalBatch:
        return MultiModalBatch(
            {k: v.to(device) for k, v in self.inputs.items()}, self.mask.to(device), self.names
        )


def _check_samples(samples: Sequence[Any], modalities: Sequence[Modality]) -> None:
    for i, sample in enumerate(samples):
        if not isinstance(sample, MultiModalSample):
            raise TypeError(
                f"Row {i} of the batch is a {type(sample).__name__}, not a "
                "MultiModalSample: featurize the data with a deepfuse featurizer "
                "(e.g. MultiModalFeaturizer) before training or predicting"
            )
    expected = [m.name for m in modalities]
    available = set(samples[0].values) if samples else set(expected)
    absent = [n for n in expected if n not in available]
    if absent:
        raise ValueError(
            f"The model expects modalities {expected} but the data was featurized with "
            f"{sorted(available)}: missing {absent}. Use a featurizer built from the "
            "model's modalities (MultiModalFeaturizer(modalities=model.modalities))."
        )


def _check_fingerprints(
    samples: Sequence[MultiModalSample], modalities: Sequence[Modality]
) -> None:
    """Same-width data from other featurizer settings (ECFP radius, vocabulary) is an error."""
    if not samples:
        return
    recorded = samples[0].fingerprints
    differ = [m for m in modalities if m.name in recorded and recorded[m.name] != _fingerprint(m)]
    if differ:
        raise ValueError(
            f"Modalities {[m.name for m in differ]} were featurized with settings "
            f"that differ from the model's specs ({differ}): featurize with "
            "MultiModalFeaturizer(modalities=model.modalities)"
        )


# Modality.fingerprint hashes the whole spec, vocabulary included (~0.2 ms, more than collating a
# batch of one); specs are frozen, so it is computed once per spec object. The cache holds the spec
# itself, so an id cannot be reused by another object while its entry exists.
_FINGERPRINTS: dict[int, tuple[Modality, str]] = {}


def _fingerprint(spec: Modality) -> str:
    entry = _FINGERPRINTS.get(id(spec))
    if entry is None:
        if len(_FINGERPRINTS) >= 4096:  # many short-lived models: keep the cache bounded
            _FINGERPRINTS.clear()
        entry = _FINGERPRINTS[id(spec)] = (spec, spec.fingerprint)
    return entry[1]


def _stack_vectors(values: list[np.ndarray | None], spec: Modality) -> torch.Tensor:
    out = np.zeros((len(values), spec.require("dim")), dtype=np.float32)
    for i, v in enumerate(values):
        if v is not None:
            if v.shape[-1] != spec.dim:
                raise ValueError(
                    f"Modality {spec.name!r}: row {i} has width {v.shape[-1]}, the model "
                    f"expects {spec.dim} (featurizer and model configurations differ)"
                )
            out[i] = v
    return torch.from_numpy(out)


def _pad_tokens(values: list[np.ndarray | None], spec: Modality, pad_id: int = 0) -> TokenBatch:
    lengths = [0 if v is None else len(v) for v in values]
    width = max(1, max(lengths))
    ids = np.full((len(values), width), pad_id, dtype=np.int64)
    for i, v in enumerate(values):
        if v is not None:
            if spec.vocab_size is not None and len(v) and v.max() >= spec.vocab_size:
                raise ValueError(
                    f"Modality {spec.name!r}: row {i} has token id {int(v.max())} outside "
                    f"the model's vocabulary of {spec.vocab_size} tokens"
                )
            if spec.max_length is not None and len(v) > spec.max_length:
                raise ValueError(
                    f"Modality {spec.name!r}: row {i} has {len(v)} tokens, the model's "
                    f"max_length is {spec.max_length} (featurizer and model "
                    "configurations differ)"
                )
            ids[i, : len(v)] = v
    ids_t = torch.from_numpy(ids)
    return TokenBatch(ids_t, ids_t != pad_id)


def _batch_graphs(values: list[GraphFeatures | None], spec: Modality) -> Batch:
    node_dim, edge_dim = spec.require("node_dim"), spec.require("edge_dim")
    xs, edges, edge_attrs, counts = [], [], [], []
    offset = 0
    for i, g in enumerate(values):
        if g is None:
            counts.append(0)
            continue
        if g.node_features.shape[1] != node_dim or g.edge_features.shape[1] != edge_dim:
            raise ValueError(
                f"Modality {spec.name!r}: row {i} has node/edge widths "
                f"{g.node_features.shape[1]}/{g.edge_features.shape[1]}, the model "
                f"expects {node_dim}/{edge_dim}"
            )
        xs.append(g.node_features)
        edges.append(g.edge_index + offset)
        edge_attrs.append(g.edge_features)
        counts.append(g.num_nodes)
        offset += g.num_nodes
    x = np.concatenate(xs) if xs else np.zeros((0, node_dim), np.float32)
    edge_index = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    edge_attr = np.concatenate(edge_attrs) if edge_attrs else np.zeros((0, edge_dim), np.float32)
    # numpy, not torch: three small torch ops cost more than the rest of the graph batching
    sizes = np.asarray(counts, dtype=np.int64)
    batch_vec = np.repeat(np.arange(len(values), dtype=np.int64), sizes)
    ptr = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
    return Batch(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(edge_index),
        edge_attr=torch.from_numpy(edge_attr),
        batch=torch.from_numpy(batch_vec),
        ptr=torch.from_numpy(ptr),
        num_graphs=len(values),
    )


#: ``collate(values, spec)``: one modality's values of a batch (``None`` where missing) -> what
#: its encoder reads.
Collater = Callable[[list[Any], Modality], Any]

_COLLATERS: dict[str, Collater] = {
    "vector": _stack_vectors,
    "embedding": _stack_vectors,
    "sequence": _pad_tokens,
    "graph": _batch_graphs,
}


def register_collater(kind: str, fn: Collater) -> None:
    """Add batching for a new modality kind (used by the crystal modalities)."""
    _COLLATERS[kind] = fn


def collate_samples(
    samples: Sequence[MultiModalSample], modalities: Sequence[Modality], drop: Iterable[str] = ()
) -> MultiModalBatch:
    """Collate samples for the model whose modalities are ``modalities``.

    Parameters
    ----------
    samples: sequence of MultiModalSample
    modalities: sequence of Modality
        The model's modality specs (order defines mask columns).
    drop: iterable of str
        Modalities to treat as missing for every sample (inference-time ablation).

    Examples
    --------
    >>> from deepfuse_plugin import MultiModalFeaturizer
    >>> feat = MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    >>> batch = collate_samples(list(feat.featurize(["CCO", "CCN"])), feat.modalities)
    >>> batch.inputs["ecfp"].shape, batch.mask.tolist()
    (torch.Size([2, 2048]), [[True, True], [True, True]])
    """
    _check_samples(samples, modalities)
    drop = set(drop)
    unknown = drop - {m.name for m in modalities}
    if unknown:
        raise ValueError(
            f"Cannot drop {sorted(unknown)}: the model's modalities are "
            f"{[m.name for m in modalities]}"
        )
    inputs: dict[str, Any] = {}
    mask = np.zeros((len(samples), len(modalities)), dtype=bool)
    for j, spec in enumerate(modalities):
        values = [None if spec.name in drop else s.values.get(spec.name) for s in samples]
        mask[:, j] = [v is not None for v in values]
        if spec.kind not in _COLLATERS:
            raise ValueError(f"No collate function for modality kind {spec.kind!r}")
        inputs[spec.name] = _COLLATERS[spec.kind](values, spec)
    _check_fingerprints(samples, modalities)  # after collating: width errors are more specific
    return MultiModalBatch(inputs, torch.from_numpy(mask), tuple(m.name for m in modalities))


#: Modality kinds collated by padding to the longest row (token ids, crystal text tokens or
#: sentence embeddings).
PADDED_KINDS = ("sequence", "text")


def sequence_lengths(
    samples: Sequence[MultiModalSample] | np.ndarray, modalities: Sequence[Modality]
) -> np.ndarray:
    """Positions each sample adds to a padded batch: its lengths summed over the modalities of a
    :data:`PADDED_KINDS` kind (0 for a missing one)."""
    names = [m.name for m in modalities if m.kind in PADDED_KINDS]
    return np.array(
        [sum(len(v) for v in (s.values.get(n) for n in names) if v is not None) for s in samples],
        dtype=np.int64,
    )


def _take(array: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if array is None else array[rows]


def _concat(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    arrays = [p for p in parts if p is not None]
    return np.concatenate(arrays) if len(arrays) == len(parts) else None


def length_bucketed(
    batches: Iterable[tuple[Any, Any, Any, Any]],
    modalities: Sequence[Modality],
    pool: int,
    rng: np.random.Generator,
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Regroup a shuffled stream of DeepChem batches ``(X, y, w, ids)`` by sequence length.

    Every ``pool`` consecutive batches are pooled, sorted by :func:`sequence_lengths` and cut
    again into batches of the same size, which are yielded in random order. A batch then holds
    molecules of similar length, so token padding (and a Transformer's work on it) shrinks; each
    epoch still sees every molecule once, and which molecules meet in a pool stays random.

    Parameters
    ----------
    batches: iterable of tuple
        ``(X, y, w, ids)`` as from ``Dataset.iterbatches``; ``X`` holds MultiModalSamples.
    modalities: sequence of Modality
        The model's modalities (the padded ones set the length).
    pool: int
        Batches per pool (>= 1; 1 sorts within each batch only, which changes nothing).
    rng: numpy.random.Generator
        Orders the batches of a pool.

    Examples
    --------
    >>> from deepfuse_plugin import MultiModalFeaturizer
    >>> feat = MultiModalFeaturizer(["smiles"], progress=False)
    >>> X = feat.featurize(["CCO", "c1ccccc1CCCCCC", "C", "CCCCCCCCCCCC(=O)O"])
    >>> stream = [(X[:2], None, None, None), (X[2:], None, None, None)]
    >>> out = length_bucketed(stream, feat.modalities, pool=2, rng=np.random.default_rng(0))
    >>> sorted(sequence_lengths(b[0], feat.modalities).tolist() for b in out)
    [[3, 5], [16, 19]]
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1 batches, got {pool}")
    buffer: list[tuple[Any, Any, Any, Any]] = []

    def flush() -> Iterator[tuple[Any, Any, Any, Any]]:
        size = max(len(b[0]) for b in buffer)
        X = np.concatenate([b[0] for b in buffer])  # the samples: never None
        y, w, ids = (_concat([b[k] for b in buffer]) for k in (1, 2, 3))
        order = np.argsort(sequence_lengths(X, modalities), kind="stable")
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        for k in rng.permutation(len(chunks)):
            rows = chunks[k]
            yield X[rows], _take(y, rows), _take(w, rows), _take(ids, rows)

    for batch in batches:
        buffer.append(batch)
        if len(buffer) == pool:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()
