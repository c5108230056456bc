"""The crystal modalities: one class per modality, each a ``spec`` and a ``compute``.

:class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` builds them from built-in
names (``"graph"``, ``"text"``, ``"composition"``, ``"text_embedding"``, ``"text_sentences"``,
``"matgl_graph"``; the pretrained ``"chgnet"``, ``"chgnet_atoms"`` and ``"chgnet_graph"`` live in
:mod:`deepfuse_plugin.feat.crystal_pretrained`) or takes instances, including your own subclasses of
:class:`CrystalModalityFeaturizer`. pymatgen is imported lazily (the ``materials`` extra).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.feat.elements import (
    ATOM_FEATURE_DIM,
    COMPOSITION_DIM,
    COMPOSITION_PROPERTIES,
    MAX_Z,
    _composition_property_table,
    atom_feature_table,
)
from deepfuse_plugin.feat.text import DEFAULT_TEXT_MODEL, TextEmbedder, load_tokenizer
from deepfuse_plugin.modalities import MATGL_FORMAT, GraphFeatures, Modality, default_element_types

__all__ = [
    "BUILTIN_CRYSTAL_MODALITIES",
    "BatchedCrystalModality",
    "CompositionModality",
    "CrystalContext",
    "CrystalGraphModality",
    "CrystalModalityFeaturizer",
    "DisorderedStructureError",
    "MatGLGraphModality",
    "TextEmbeddingModality",
    "TextTokensModality",
]

BUILTIN_CRYSTAL_MODALITIES = (
    "graph",
    "text",
    "composition",
    "text_embedding",
    "text_sentences",
    "matgl_graph",
    "chgnet",
    "chgnet_atoms",
    "chgnet_graph",
)


class CrystalContext:
    """Per-structure shared work, computed lazily once: the description (used by the text
    modalities), written by ``featurizer`` (a
    :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`)."""

    def __init__(self, structure: Any, featurizer: Any):
        self.structure, self._featurizer = structure, featurizer
        self._description: str | None = None
        self._description_error: Exception | None = None

    @property
    def description(self) -> str:
        if self._description is None and self._description_error is None:
            try:
                self._description = _encodable(self._featurizer._describe_checked(self.structure))
            except Exception as err:
                self._description_error = err
        if self._description_error is not None:
            raise self._description_error
        return self._description  # type: ignore[return-value]


class CrystalModalityFeaturizer(ABC):
    """Computes one modality from a pymatgen ``Structure``; subclasses implement :meth:`compute`."""

    name: str
    spec: Modality
    #: computed after the per-structure pass, batched over all descriptions (language models):
    #: such a modality implements ``compute_batch``, as :class:`BatchedCrystalModality` does
    batched: bool = False
    #: :meth:`prepare` runs before the per-structure pass, over every structure (pretrained
    #: structure models, :mod:`deepfuse_plugin.feat.crystal_pretrained`)
    up_front: bool = False

    @abstractmethod
    def compute(self, structure: Any, context: CrystalContext) -> Any:
        """Value for one structure; raise to mark the modality missing."""

    def prepare(self, structures: Sequence[Any], progress: bool = False) -> None:
        """Batched work over all ``structures`` (already checked against the featurizer's input
        limits) before :meth:`compute` sees them one by one; only for ``up_front`` modalities."""
        return None  # nothing to prepare by default


class BatchedCrystalModality(CrystalModalityFeaturizer):
    """A modality computed from the descriptions of many structures at once (a language model):
    the featurizer calls :meth:`compute_batch` after the per-structure pass."""

    batched = True

    @abstractmethod
    def compute_batch(self, descriptions: Sequence[str], progress: bool = False) -> list[Any]:
        """Values for many descriptions at once, in their order."""

    def compute(self, structure: Any, context: CrystalContext) -> Any:
        return self.compute_batch([context.description])[0]


class DisorderedStructureError(ValueError):
    """The structure has partial occupancies."""


class CrystalGraphModality(CrystalModalityFeaturizer):
    """Periodic neighbour graph, CGCNN convention.

    For every atom, its ``max_neighbors`` nearest neighbours (periodic images included) within
    ``radius`` Å become directed edges neighbour -> atom (the k-NN relation is not symmetric, as in
    CGCNN); ties are broken deterministically by distance, neighbour index and image. Edge features:
    Gaussian expansion of the distance, ``exp(-(d - mu_k)^2 / var^2)`` with centres
    ``mu_k = 0, step, ..., radius`` (CGCNN: step 0.2, var 0.2; 41 centres for 8 Å). Node features:
    ``atom_features="cgcnn"`` (default) the 91-d binned elemental property one-hot
    (:data:`ATOM_FEATURE_BLOCKS`), or ``"onehot"``, the element one-hot over Z = 1..100.

    An atom with no neighbour within ``radius`` simply has no incoming edge (it keeps its own
    features through the convolutions); a structure without any edge is still a valid graph.
    A disordered structure (partial occupancies) raises :class:`DisorderedStructureError`, so the
    graph is marked missing for it with that reason (the composition and, when the describer copes,
    the text are still computed); order it first, e.g. with pymatgen's
    ``OrderDisorderedStructureTransformation``, to get a graph.
    """

    def __init__(
        self,
        radius: float = 8.0,
        max_neighbors: int = 12,
        gaussian_step: float = 0.2,
        gaussian_var: float = 0.2,
        atom_features: str = "cgcnn",
        name: str = "graph",
    ):
        if atom_features not in ("cgcnn", "onehot"):
            raise ValueError(f"atom_features must be 'cgcnn' or 'onehot', got {atom_features!r}")
        self.name, self.radius, self.max_neighbors = name, float(radius), int(max_neighbors)
        self.gaussian_step, self.gaussian_var = float(gaussian_step), float(gaussian_var)
        self.atom_features = atom_features
        self.centers = np.arange(0.0, self.radius + self.gaussian_step / 2, self.gaussian_step)
        node_dim = ATOM_FEATURE_DIM if atom_features == "cgcnn" else MAX_Z
        self.spec = Modality(
            name,
            "crystal_graph",
            node_dim=node_dim,
            edge_dim=len(self.centers),
            params={
                "radius": self.radius,
                "max_neighbors": self.max_neighbors,
                "gaussian_step": self.gaussian_step,
                "gaussian_var": self.gaussian_var,
                "atom_features": atom_features,
            },
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any], name: str = "graph") -> CrystalGraphModality:
        """The modality a spec's ``params`` describe (missing settings: CGCNN's defaults)."""
        return cls(
            params.get("radius", 8.0),
            params.get("max_neighbors", 12),
            params.get("gaussian_step", 0.2),
            params.get("gaussian_var", 0.2),
            params.get("atom_features", "cgcnn"),
            name=name,
        )

    def compute(self, structure: Any, context: CrystalContext) -> GraphFeatures:
        if not structure.is_ordered:
            raise DisorderedStructureError(
                "disordered structure (partial occupancies): no crystal graph; order it first "
                "(e.g. pymatgen OrderDisorderedStructureTransformation)"
            )
        numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
        if numbers.size == 0:
            raise ValueError("structure has no sites")
        if numbers.max() > MAX_Z:
            raise ValueError(f"element with Z > {MAX_Z} has no atom features")
        if self.atom_features == "cgcnn":
            x = atom_feature_table()[numbers]
        else:
            x = np.zeros((len(numbers), MAX_Z), dtype=np.float32)
            x[np.arange(len(numbers)), numbers - 1] = 1.0
        centres, neighbours, images, distances = structure.get_neighbor_list(self.radius)
        if len(centres):
            images = np.asarray(images, dtype=np.float64)
            order = np.lexsort(
                (
                    images[:, 2],
                    images[:, 1],
                    images[:, 0],
                    neighbours,
                    np.round(distances, 8),
                    centres,
                )
            )
            centres, neighbours, distances = centres[order], neighbours[order], distances[order]
            first = np.searchsorted(centres, centres, side="left")
            keep = (np.arange(len(centres)) - first) < self.max_neighbors
            centres, neighbours, distances = centres[keep], neighbours[keep], distances[keep]
        edge_index = np.stack([neighbours, centres]).astype(np.int64).reshape(2, -1)
        edge_attr = np.exp(
            -((np.asarray(distances)[:, None] - self.centers[None]) ** 2) / self.gaussian_var**2
        ).astype(np.float32)
        return GraphFeatures(
            x.astype(np.float32), edge_index, edge_attr.reshape(-1, len(self.centers))
        )


class MatGLGraphModality(CrystalModalityFeaturizer):
    """Crystal graph in MatGL's format, for MatGL's MEGNet/M3GNet backbones in the DeepChem route.

    Built with MatGL's own converter (``matgl.ext.pymatgen.Structure2Graph``: every neighbour within
    ``cutoff`` Å, both directions, periodic images included), stored in a
    :class:`~deepfuse_plugin.modalities.GraphFeatures`: node features ``[node_type, x, y, z]``
    ``(N, 4)`` (the index into ``element_types`` and Cartesian coordinates in Å), edge features
    the Cartesian shift of the neighbour's periodic image ``(E, 3)``. Bond lengths and angles are
    computed by the backbone (:class:`~deepfuse_plugin.nn.matgl_backbone.MatGLGraphEncoder`). An
    atom without neighbours inside the cutoff simply has no edge. A disordered structure raises
    :class:`DisorderedStructureError` (marked missing), as does an element outside
    ``element_types``.
    """

    def __init__(
        self,
        cutoff: float = 4.0,
        element_types: Sequence[str] | None = None,
        name: str = "matgl_graph",
    ):
        self.name, self.cutoff = name, float(cutoff)
        self.element_types = tuple(element_types or default_element_types())
        self._converter: Any = None
        self.spec = Modality(
            name,
            "crystal_graph",
            node_dim=4,
            edge_dim=3,
            params={
                "format": MATGL_FORMAT,
                "cutoff": self.cutoff,
                "element_types": list(self.element_types),
            },
        )

    def compute(self, structure: Any, context: CrystalContext) -> GraphFeatures:
        if not structure.is_ordered:
            raise DisorderedStructureError(
                "disordered structure (partial occupancies): no MatGL graph; order it first"
            )
        unknown = sorted({el.symbol for el in structure.composition} - set(self.element_types))
        if unknown:
            raise ValueError(f"elements {unknown} are not in the graph's element_types")
        if self._converter is None:
            from matgl.ext.pymatgen import Structure2Graph

            self._converter = Structure2Graph(self.element_types, self.cutoff)
        graph, lattice, _ = self._converter.get_graph(structure)
        lattice = lattice.reshape(3, 3).double().numpy()
        node_type = graph.node_type.numpy().astype(np.float64)[:, None]
        cartesian = graph.frac_coords.double().numpy() @ lattice
        shift = graph.pbc_offset.double().numpy() @ lattice
        nodes = np.concatenate([node_type, cartesian], axis=1).astype(np.float32)
        return GraphFeatures(
            nodes,
            graph.edge_index.numpy().astype(np.int64),
            shift.astype(np.float32).reshape(-1, 3),
        )


class CompositionModality(CrystalModalityFeaturizer):
    """Element fractions over Z = 1..100, then for each of :data:`COMPOSITION_PROPERTIES`
    (z-scored over the elements) the fraction-weighted mean and standard deviation and the min and
    max over the elements present. A property unknown for an element (NaN in pymatgen) is left out
    of that property's statistics; a statistic with no known value is 0 (documented NaN -> 0).
    Partial occupancies are fine (fractions of the disordered composition)."""

    def __init__(self, name: str = "composition"):
        self.name = name
        self.spec = Modality(
            name,
            "vector",
            dim=COMPOSITION_DIM,
            params={"properties": list(COMPOSITION_PROPERTIES), "max_z": MAX_Z},
        )

    def compute(self, structure: Any, context: CrystalContext) -> np.ndarray:
        amounts = structure.composition.fractional_composition.get_el_amt_dict()
        from pymatgen.core.periodic_table import Element

        zs = np.array([Element(el).Z for el in amounts], dtype=np.int64)
        fractions = np.array(list(amounts.values()), dtype=np.float64)
        if zs.size == 0:
            raise ValueError("empty composition")
        if zs.max() > MAX_Z:
            raise ValueError(f"element with Z > {MAX_Z}")
        out = np.zeros(COMPOSITION_DIM, dtype=np.float64)
        np.add.at(out, zs - 1, fractions)
        props = _composition_property_table()[zs]  # (n_elements, n_props)
        stats = np.zeros((len(COMPOSITION_PROPERTIES), 4))
        for p in range(props.shape[1]):
            known = np.isfinite(props[:, p])
            if not known.any():
                continue
            v, w = props[known, p], fractions[known] / fractions[known].sum()
            mean = float((w * v).sum())
            stats[p] = [mean, float(np.sqrt((w * (v - mean) ** 2).sum())), v.min(), v.max()]
        out[MAX_Z:] = stats.reshape(-1)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


class TextTokensModality(CrystalModalityFeaturizer):
    """Token ids of the description (transformers tokenizer of ``model``, ``[CLS] ... [SEP]``,
    truncated to ``max_length``), for a text encoder fine-tuned end to end.

    The ids (not the string) are stored: tokenizing once here keeps collate a pure padding step,
    the featurized dataset is self-contained for the model it was made for, and the tokenizer name
    is in the spec so data and model cannot silently disagree. The text itself stays available
    through :meth:`CrystalMultiModalFeaturizer.describe` (cached)."""

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        max_length: int = 256,
        describer_key: str = "",
        name: str = "text",
    ):
        self.name, self.model, self.max_length = name, str(model), int(max_length)
        self._tokenizer = None
        tokenizer = self.tokenizer
        self.spec = Modality(
            name,
            "text",
            max_length=self.max_length,
            params={
                "representation": "tokens",
                "model": self.model,
                "vocab_size": int(len(tokenizer)),
                "pad_id": int(tokenizer.pad_token_id or 0),
                "describer": describer_key,
                "max_length": self.max_length,
            },
        )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model)
        return self._tokenizer

    def compute(self, structure: Any, context: CrystalContext) -> np.ndarray:
        ids = self.tokenizer(context.description, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        return np.asarray(ids, dtype=np.int32)


class TextEmbeddingModality(BatchedCrystalModality):
    """Frozen language-model encoding of the description (:class:`TextEmbedder`).

    ``level="text"`` (kind ``embedding``): the mean-pooled text vector ``(d,)`` (384 for MiniLM).
    ``level="sentence"`` (kind ``text``, representation ``sentence_embeddings``): one vector per
    sentence ``(S, d)`` float16, mean-pooled from the *same* contextual hidden states. These are
    the text tokens MatMMFuse's cross-attention attends over: a few real, distinct text units per
    crystal (space group sentence, lattice sentence, one per inequivalent site) at about
    S * d * 2 bytes (7-15 KB) per structure; storing every token's hidden state would cost ~20x
    more.
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        describer_key: str,
        level: str = "text",
        name: str = "text_embedding",
    ):
        if level not in ("text", "sentence"):
            raise ValueError(f"level must be 'text' or 'sentence', got {level!r}")
        self.name, self.embedder, self.level = name, embedder, level
        params = {
            "model": embedder.model_name,
            "pooling": "mean",
            "level": level,
            "max_length": embedder.max_length,
            "normalize": embedder.normalize,
            "describer": describer_key,
        }
        if level == "text":
            self.spec = Modality(name, "embedding", dim=embedder.dim, params=params)
        else:
            self.spec = Modality(
                name,
                "text",
                dim=embedder.dim,
                params={**params, "representation": "sentence_embeddings"},
            )

    def compute_batch(
        self, descriptions: Sequence[str], progress: bool = False
    ) -> list[np.ndarray]:
        encoded = self.embedder.embed(descriptions, progress=progress)
        return [pooled if self.level == "text" else sentences for pooled, sentences in encoded]


def _encodable(description: str) -> str:
    """The description, checked to encode as UTF-8: a lone surrogate from a custom describer would
    otherwise raise inside the batched text modalities and cost every structure of the batch."""
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"description character at position {err.start} cannot be encoded as "
            "UTF-8 (lone surrogate)"
        ) from None
    return description
