"""Modality specifications and the per-item multimodal sample.

A :class:`Modality` describes one view of a molecule or crystal (its name, its kind and the sizes an
encoder needs). Featurizers publish their specs through ``featurizer.modalities`` and models are built
from the same specs, so a model always knows exactly what its inputs look like.

A :class:`MultiModalSample` holds the values of one item. A modality that could not be computed for
that item is stored as ``None`` together with the reason: a missing modality is data, not an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Kinds an encoder can be chosen by. ``embedding`` is a precomputed vector (identity encoder plus
#: projection), ``vector`` a raw feature vector (MLP encoder).
MODALITY_KINDS = ("vector", "embedding", "sequence", "graph", "crystal_graph", "text")


@dataclass(frozen=True)
class Modality:
    """Specification of one modality.

    Parameters
    ----------
    name: str
        Unique name, e.g. ``"ecfp"`` or ``"graph"``.
    kind: str
        One of :data:`MODALITY_KINDS`; encoders are chosen by kind.
    dim: int, optional
        Width of a ``vector``/``embedding`` value.
    vocab: tuple of str, optional
        Token vocabulary of a ``sequence`` modality (index = token id).
    max_length: int, optional
        Maximum number of tokens of a ``sequence`` modality.
    node_dim, edge_dim: int, optional
        Node and edge feature widths of a ``graph`` modality.
    params: dict
        Featurizer parameters that produced the modality (radius, size, ...), so a featurizer can be
        rebuilt from the spec and two specs can be compared.

    Examples
    --------
    >>> from deepfuse_plugin import Modality
    >>> Modality("ecfp", "vector", dim=2048).vocab_size is None
    True
    """

    name: str
    kind: str
    dim: int | None = None
    vocab: tuple[str, ...] | None = None
    max_length: int | None = None
    node_dim: int | None = None
    edge_dim: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"Modality {self.name!r}: unknown kind {self.kind!r}; "
                             f"expected one of {MODALITY_KINDS}")
        if self.vocab is not None and not isinstance(self.vocab, tuple):
            object.__setattr__(self, "vocab", tuple(self.vocab))
        object.__setattr__(self, "params", dict(self.params))

    @property
    def vocab_size(self) -> int | None:
        return None if self.vocab is None else len(self.vocab)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (used in saved model configs)."""
        out = dataclasses.asdict(self)
        out["vocab"] = list(self.vocab) if self.vocab is not None else None
        return out

    @property
    def fingerprint(self) -> str:
        """Short hash of the full spec (params and vocabulary included).

        Samples record the fingerprint of the spec that produced them, so data featurized with other
        settings of the same width (another ECFP radius, a vocabulary of the same size) is caught.
        ``max_length`` is left out: it only truncates, and collate checks actual lengths.
        """
        spec = self.to_dict()
        spec.pop("max_length")
        spec["params"] = {k: v for k, v in spec["params"].items() if k != "max_length"}
        text = json.dumps(spec, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Modality":
        return cls(**dict(data))

    def __repr__(self) -> str:  # short: vocabularies can hold hundreds of tokens
        sizes = {k: getattr(self, k) for k in ("dim", "max_length", "node_dim", "edge_dim")
                 if getattr(self, k) is not None}
        if self.vocab is not None:
            sizes["vocab_size"] = len(self.vocab)
        inner = ", ".join(f"{k}={v}" for k, v in sizes.items())
        return f"Modality({self.name!r}, {self.kind!r}{', ' if inner else ''}{inner})"


def as_modalities(items: Iterable[Modality | Mapping[str, Any]]) -> list[Modality]:
    """Normalise specs given as :class:`Modality` objects or their dicts; names must be unique."""
    specs = [m if isinstance(m, Modality) else Modality.from_dict(m) for m in items]
    names = [m.name for m in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Duplicate modality names: {duplicates}")
    if not specs:
        raise ValueError("At least one modality is required")
    return specs


@dataclass
class GraphFeatures:
    """Atom/bond (or site/neighbour) arrays of one graph, ready to be batched for PyG.

    Attributes
    ----------
    node_features: np.ndarray, shape ``(n_nodes, node_dim)``, float32
    edge_index: np.ndarray, shape ``(2, n_edges)``, int64 (both directions of every bond)
    edge_features: np.ndarray, shape ``(n_edges, edge_dim)``, float32
    """

    node_features: np.ndarray
    edge_index: np.ndarray
    edge_features: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])


@dataclass
class MultiModalSample:
    """All modalities of one item, with presence.

    Attributes
    ----------
    values: dict
        Modality name -> value (``np.ndarray`` for vectors and token ids, :class:`GraphFeatures`
        for graphs), or ``None`` when the modality is missing for this item.
    missing_reasons: dict
        Modality name -> why it is missing (e.g. ``"no embedding for this SMILES"``).
    fingerprints: dict
        Modality name -> :attr:`Modality.fingerprint` of the spec that produced the value (empty
        for hand-made samples; then no consistency check is possible).

    Examples
    --------
    >>> import numpy as np
    >>> s = MultiModalSample({"ecfp": np.zeros(4, np.float32), "graph": None},
    ...                      {"graph": "RDKit could not kekulize"})
    >>> s.present("ecfp"), s.present("graph")
    (True, False)
    """

    values: dict[str, Any]
    missing_reasons: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def present(self, name: str) -> bool:
        return self.values.get(name) is not None

    def mask(self, names: Sequence[str]) -> np.ndarray:
        """Boolean presence vector in the order of ``names``."""
        return np.array([self.present(n) for n in names], dtype=bool)

    def __repr__(self) -> str:
        present = [n for n in self.values if self.present(n)]
        missing = [n for n in self.values if not self.present(n)]
        return f"MultiModalSample(present={present}, missing={missing})"

    def without(self, names: Iterable[str], reason: str = "dropped by user") -> "MultiModalSample":
        """Copy of the sample with ``names`` marked missing (the original is left untouched)."""
        names = set(names)
        values = {k: (None if k in names else v) for k, v in self.values.items()}
        reasons = dict(self.missing_reasons)
        reasons.update({k: reason for k in names if k in self.values})
        return MultiModalSample(values, reasons, self.fingerprints)
