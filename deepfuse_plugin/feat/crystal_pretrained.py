"""Pretrained crystal views: a structure provider's crystal vector and atom states as modalities.

A :class:`~deepfuse_plugin.feat.pretrained.StructureEmbeddingProvider` (CHGNet:
:mod:`deepfuse_plugin.feat.chgnet`) becomes two crystal modalities of
:class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`, computed by one pass of the
model:

- ``<name>`` (e.g. ``"chgnet"``, kind ``embedding``): the crystal vector;
- ``<name>_atoms`` (e.g. ``"chgnet_atoms"``, kind ``vector_set``): one state per site, which
  MatMMFuse's cross-attention attends over like the atoms of a crystal graph;
- ``<name>_graph`` (e.g. ``"chgnet_graph"``, kind ``crystal_graph``): the CGCNN neighbour graph
  of the ``"graph"`` modality whose node features are each site's atom features followed by its
  pretrained state, so a graph network convolves over the pretrained states themselves.

Before the per-structure pass, the featurizer hands every structure that passed its
:class:`~deepfuse_plugin.limits.InputLimits` to :meth:`StructureEmbedder.prepare`, which embeds
those not yet cached, in batches with a progress bar, and stores the results (and the reasons for
structures the model cannot embed) in ``<cache_dir>/embeddings.sqlite`` (table
``structure_embeddings``), keyed by the provider's identity and the structure hash
(:func:`~deepfuse_plugin.feat.text.structure_hash`: lattice, species and fractional coordinates
rounded to 1e-4). A structure the model cannot embed has the modality missing with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.feat import chgnet as _chgnet  # noqa: F401 (registers the "chgnet" provider)
from deepfuse_plugin.feat.crystal_modalities import (
    CrystalContext,
    CrystalGraphModality,
    CrystalModalityFeaturizer,
)
from deepfuse_plugin.feat.pretrained import (
    StructureEmbedding,
    StructureEmbeddingProvider,
    StructureResult,
    available_structure_providers,
    cache_location,
    structure_provider,
)
from deepfuse_plugin.feat.text import _SQLiteStore, default_cache_dir, structure_hash
from deepfuse_plugin.modalities import GraphFeatures, Modality

__all__ = [
    "LEVELS",
    "PretrainedStateGraphModality",
    "StructureEmbedder",
    "StructureEmbeddingCache",
    "StructureEmbeddingModality",
    "pretrained_crystal_modality",
    "pretrained_crystal_modality_from_spec",
]

#: What :class:`StructureEmbeddingModality` computes: ``crystal``, one vector per structure
#: (kind ``embedding``); ``atoms``, one per site (kind ``vector_set``).
LEVELS = ("crystal", "atoms")
#: What each level adds to the provider's name in the modality's name (``chgnet``,
#: ``chgnet_atoms``; ``graph``: :class:`PretrainedStateGraphModality`'s ``chgnet_graph``).
_SUFFIX = {"crystal": "", "atoms": "_atoms", "graph": "_graph"}


class StructureEmbeddingCache:
    """Provider results on disk: ``<cache_dir>/embeddings.sqlite``, table ``structure_embeddings``,
    one row per (provider key, structure hash); raw little-endian arrays, no pickle."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._store = _SQLiteStore(self.cache_dir / "embeddings.sqlite", "structure_embeddings")

    def get_many(self, provider_key: str, hashes: Sequence[str]) -> dict[str, StructureResult]:
        keys = {f"{provider_key}|{h}": h for h in hashes}
        found = self._store.get_many(list(keys))
        return {keys[k]: _decode(v) for k, v in found.items()}

    def put_many(self, provider_key: str, results: dict[str, StructureResult]) -> None:
        self._store.put_many([(f"{provider_key}|{h}", _encode(r)) for h, r in results.items()])


def _encode(result: StructureResult) -> bytes:
    if isinstance(result, str):
        return b"E" + result.encode("utf-8", "replace")
    crystal = np.asarray(result.crystal, dtype="<f4").reshape(-1)
    atoms = np.asarray(result.atoms, dtype="<f2")
    header = np.array([crystal.shape[0], *atoms.shape], dtype="<i8").tobytes()
    return b"S" + header + crystal.tobytes() + atoms.tobytes()


def _decode(blob: bytes) -> StructureResult:
    if blob[:1] == b"E":
        return blob[1:].decode("utf-8", "replace")
    dim, n_atoms, atom_dim = (int(v) for v in np.frombuffer(blob[1:25], dtype="<i8"))
    crystal = np.frombuffer(blob[25 : 25 + 4 * dim], dtype="<f4").astype(np.float32)
    atoms = np.frombuffer(blob[25 + 4 * dim :], dtype="<f2").reshape(n_atoms, atom_dim)
    return StructureEmbedding(crystal, atoms.astype(np.float16))


class StructureEmbedder:
    """One provider, its disk cache and the results of the current featurization, shared by the
    ``<name>`` and ``<name>_atoms`` modalities so the model runs once per structure.

    Parameters
    ----------
    provider: str or StructureEmbeddingProvider
        A registered name (``"chgnet"``) or a provider object.
    cache_dir: path, False or None
        Where ``embeddings.sqlite`` lives (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``); ``False`` keeps results in memory only.
    chunk_size: int
        Structures embedded between two cache writes (progress and resumability of long runs).
    provider_options: dict, optional
        Options for a provider given by name (CHGNet: ``model``, ``batch_size``, ``device``).
    """

    def __init__(
        self,
        provider: str | StructureEmbeddingProvider,
        cache_dir: str | os.PathLike | None | bool = None,
        chunk_size: int = 500,
        provider_options: Mapping[str, Any] | None = None,
    ):
        if isinstance(provider, str):
            provider = structure_provider(provider, **dict(provider_options or {}))
        self.provider = provider
        self.chunk_size = int(chunk_size)
        self._cache = (
            None if cache_dir is False else StructureEmbeddingCache(cache_location(cache_dir))
        )
        self._prepared: dict[str, StructureResult] = {}

    def prepare(self, structures: Sequence[Any], progress: bool = False) -> None:
        """Embed every structure not yet cached (in chunks, with a progress bar) and keep the
        results of this call in memory for :meth:`result`. The structures must already have
        passed the featurizer's input limits."""
        self._prepared = self._results({structure_hash(s): s for s in structures}, progress)

    def result(self, structure: Any) -> StructureResult:
        """The prepared result for ``structure`` (embedded alone when it was not prepared)."""
        key = structure_hash(structure)
        if key not in self._prepared:
            self._prepared.update(self._results({key: structure}, progress=False))
        return self._prepared[key]

    def embedding(self, structure: Any) -> StructureEmbedding:
        """:meth:`result` for a structure the provider could embed; raises
        :class:`~deepfuse_plugin.errors.InvalidInputError` with the provider's reason otherwise
        (the modality is then marked missing with it)."""
        result = self.result(structure)
        if isinstance(result, str):
            raise InvalidInputError(result)
        return result

    def _results(self, by_hash: dict[str, Any], progress: bool) -> dict[str, StructureResult]:
        known = {h: self._prepared[h] for h in by_hash if h in self._prepared}
        missing = [h for h in by_hash if h not in known]
        if self._cache and missing:
            known.update(self._cache.get_many(self.provider.key, missing))
        todo = [h for h in by_hash if h not in known]
        with tqdm(
            total=len(todo),
            desc=f"embed {self.provider.name}",
            unit="structure",
            disable=not progress or not todo,
        ) as bar:
            for start in range(0, len(todo), self.chunk_size):
                part = todo[start : start + self.chunk_size]
                results = dict(zip(part, self.provider.embed([by_hash[h] for h in part])))
                if self._cache:
                    self._cache.put_many(self.provider.key, results)
                known.update(results)
                bar.update(len(part))
        return known

    def __getstate__(self) -> dict:  # a worker process gets the model, not this call's results
        return {**self.__dict__, "_prepared": {}}


class _EmbedderModality(CrystalModalityFeaturizer):
    """A modality read from a :class:`StructureEmbedder` (``self.embedder``), which embeds every
    structure in batches before the per-structure pass."""

    up_front = True
    embedder: StructureEmbedder

    def prepare(self, structures: Sequence[Any], progress: bool = False) -> None:
        self.embedder.prepare(structures, progress)


class StructureEmbeddingModality(_EmbedderModality):
    """A crystal modality computed by a :class:`StructureEmbedder`.

    ``level="crystal"``: kind ``embedding``, the crystal vector ``(dim,)`` float32;
    ``level="atoms"``: kind ``vector_set``, the atom states ``(n_sites, atom_dim)`` float16, one
    per site in the structure's site order. A structure the provider cannot embed has the modality
    missing with the provider's reason.

    Examples
    --------
    >>> embedder = StructureEmbedder("chgnet", cache_dir=False)  # doctest: +SKIP
    >>> StructureEmbeddingModality(embedder, "atoms").spec  # doctest: +SKIP
    Modality('chgnet_atoms', 'vector_set', dim=64)
    """

    def __init__(
        self, embedder: StructureEmbedder, level: str = "crystal", name: str | None = None
    ):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        provider = embedder.provider
        self.embedder, self.level = embedder, level
        self.name = name or provider.name + _SUFFIX[level]
        params = _provider_params(provider, level)
        if level == "crystal":
            self.spec = Modality(self.name, "embedding", dim=int(provider.dim), params=params)
        else:
            self.spec = Modality(self.name, "vector_set", dim=int(provider.atom_dim), params=params)

    def compute(self, structure: Any, context: CrystalContext) -> np.ndarray:
        result = self.embedder.embedding(structure)
        return result.crystal if self.level == "crystal" else result.atoms


class PretrainedStateGraphModality(_EmbedderModality):
    """The crystal graph of ``graph`` with a provider's atom states appended to its node features.

    Kind ``crystal_graph``: the neighbour graph, edges and edge features of ``graph`` (a
    :class:`~deepfuse_plugin.feat.crystal_modalities.CrystalGraphModality`), node features
    ``[atom features, pretrained state]`` of width ``graph.spec.node_dim + provider.atom_dim``
    (CGCNN's 91 + CHGNet's 64), one row per site in the structure's site order. Any crystal-graph
    encoder reads it (CGCNN, MatMMFuse's graph branch), so the convolutions start from what the
    pretrained network knows of each atom's environment instead of from the element alone: on the
    Castelli perovskites this beats attending over the same states as a separate view
    (``docs/crystals.md``). A structure the provider cannot embed has the modality missing with the
    provider's reason (keep the plain ``"graph"`` beside it if such structures matter).

    Examples
    --------
    >>> embedder = StructureEmbedder("chgnet", cache_dir=False)  # doctest: +SKIP
    >>> PretrainedStateGraphModality(embedder, CrystalGraphModality()).spec  # doctest: +SKIP
    Modality('chgnet_graph', 'crystal_graph', node_dim=155, edge_dim=41)
    """

    def __init__(
        self, embedder: StructureEmbedder, graph: CrystalGraphModality, name: str | None = None
    ):
        provider, base = embedder.provider, graph.spec
        assert base.node_dim is not None and base.edge_dim is not None  # a crystal_graph spec
        self.embedder, self.graph = embedder, graph
        self.name = name or provider.name + _SUFFIX["graph"]
        self.spec = Modality(
            self.name,
            "crystal_graph",
            node_dim=base.node_dim + int(provider.atom_dim),
            edge_dim=base.edge_dim,
            params={**base.params, **_provider_params(provider, "graph")},
        )

    def compute(self, structure: Any, context: CrystalContext) -> GraphFeatures:
        base = self.graph.compute(structure, context)
        states = np.asarray(self.embedder.embedding(structure).atoms, dtype=np.float32)
        if states.shape[0] != base.num_nodes:
            raise InvalidInputError(
                f"{self.embedder.provider.name} gave {states.shape[0]} atom states for "
                f"{base.num_nodes} sites"
            )
        nodes = np.concatenate([base.node_features, states], axis=1)
        return GraphFeatures(nodes, base.edge_index, base.edge_features)


def _provider_params(provider: StructureEmbeddingProvider, level: str) -> dict[str, Any]:
    """What a spec records of its provider: rebuilt from it, and checked against this machine's."""
    return {
        "provider": provider.name,
        "provider_key": provider.key,
        "provider_settings": provider.settings(),
        "provider_options": provider.rebuild_options(),
        "level": level,
    }


#: Embedders of one featurizer, by the provider's cache key (shared by its modalities).
Embedders = dict[str, StructureEmbedder]


def _embedder(
    embedders: Embedders,
    provider: str,
    options: Mapping[str, Any],
    cache_dir: str | os.PathLike | None | bool,
) -> StructureEmbedder:
    built = structure_provider(provider, **dict(options))
    # keyed by what the provider computes, not by how it was asked for: "chgnet" by name and a
    # saved spec's {"model": "0.3.0"} are the same network and must run once per structure
    if built.key not in embedders:
        embedders[built.key] = StructureEmbedder(built, cache_dir)
    return embedders[built.key]


def pretrained_crystal_modality(
    item: str,
    embedders: Embedders,
    cache_dir: str | os.PathLike | None | bool = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    graph: CrystalGraphModality | None = None,
) -> StructureEmbeddingModality | PretrainedStateGraphModality | None:
    """The modality ``item`` names: ``"<provider>"`` (crystal vector), ``"<provider>_atoms"``
    (atom states) or ``"<provider>_graph"`` (``graph``, default CGCNN's settings, with the atom
    states as node features) of a registered structure provider, else ``None``. ``options`` holds
    each provider's constructor options by provider name."""
    registered = available_structure_providers()
    # "crystal" (no suffix) is tried first: a name without a suffix is never read as another level
    named = ((item.removesuffix(suffix), level) for level, suffix in _SUFFIX.items())
    provider, level = next(((p, lv) for p, lv in named if p in registered), (None, None))
    if provider is None or level is None:
        return None
    embedder = _embedder(embedders, provider, (options or {}).get(provider, {}), cache_dir)
    if level == "graph":
        return PretrainedStateGraphModality(embedder, graph or CrystalGraphModality())
    return StructureEmbeddingModality(embedder, level)


def pretrained_crystal_modality_from_spec(
    spec: Modality,
    embedders: Embedders,
    cache_dir: str | os.PathLike | None | bool = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> StructureEmbeddingModality | PretrainedStateGraphModality:
    """Rebuild a pretrained crystal modality from its spec; the provider's identity must match
    (a model trained on CHGNet 0.3.0 states must not silently receive other states)."""
    params = spec.params
    provider = params["provider"]
    own = {**(options or {}).get(provider, {}), **params.get("provider_options", {})}
    embedder = _embedder(embedders, provider, own, cache_dir)
    modality: StructureEmbeddingModality | PretrainedStateGraphModality
    if params["level"] == "graph":
        graph = CrystalGraphModality.from_params(params)
        modality = PretrainedStateGraphModality(embedder, graph, name=spec.name)
    else:
        modality = StructureEmbeddingModality(embedder, params["level"], name=spec.name)
    if modality.spec.params["provider_key"] != params.get("provider_key"):
        raise ValueError(
            f"Modality {spec.name!r} was made by {params.get('provider_key')} "
            f"({params.get('provider_settings')}); this machine's provider is "
            f"{modality.spec.params['provider_key']} "
            f"({modality.spec.params['provider_settings']}): install the same package version"
        )
    return modality
