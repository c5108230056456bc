"""Rows and features of the crystal benchmark: which structures of mp36k each part uses, and their
featurized, cached datasets.

Examples
--------
>>> from deepfuse_bench.crystals_data import check_models
>>> check_models(["cgcnn", "dynamic", "cgcnn"])
['cgcnn', 'dynamic']
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepfuse_bench.environment import PeakRSS
from deepfuse_plugin import workflows as wf

TARGET = "formation_energy_per_atom"
SPLITS = ("train", "val", "test")
DATA_FILE = os.path.join("materials", "mp36k.extxyz.xz")
#: Default subset and epochs: what ``make bench-crystals`` runs in about an hour on 2 shared CPU
#: cores (CGCNN trains at ~45 structures/s there; see :mod:`deepfuse_bench.crystals`).
DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 500}
MIN_FORMATION_ENERGY = -5.0


@dataclass(frozen=True)
class CrystalModel:
    """A benchmarked model: its class (in ``deepfuse_plugin``) and the modalities it reads."""

    label: str
    model_class: str
    modalities: tuple[str, ...]


_GRAPH_TEXT = ("graph", "text_sentences")
MODELS: dict[str, CrystalModel] = {
    "cgcnn": CrystalModel("CGCNN (graph only)", "MatMMFuseModel", ("graph",)),
    "text": CrystalModel(
        "text only (frozen MiniLM sentence embeddings)", "MatMMFuseModel", ("text_sentences",)
    ),
    "matmmfuse": CrystalModel(
        "MatMMFuse (graph + text, cross-attention)", "MatMMFuseModel", _GRAPH_TEXT
    ),
    "dynamic": CrystalModel("DynamicFusion (graph + text)", "DynamicFusionModel", _GRAPH_TEXT),
    "late": CrystalModel("late fusion (graph + text)", "LateFusionModel", _GRAPH_TEXT),
    "dynamic_composition": CrystalModel(
        "DynamicFusion (graph + text + composition)",
        "DynamicFusionModel",
        (*_GRAPH_TEXT, "composition"),
    ),
    # the pretrained view: MatMMFuse's atoms attend over CHGNet's atom states; the pooled models
    # read CHGNet's crystal vector (both come from one CHGNet pass)
    "chgnet_only": CrystalModel("CHGNet crystal vector + MLP head", "MatMMFuseModel", ("chgnet",)),
    "matmmfuse_chgnet": CrystalModel(
        "MatMMFuse (graph + text + CHGNet atoms)",
        "MatMMFuseModel",
        (*_GRAPH_TEXT, "chgnet_atoms"),
    ),
    "dynamic_chgnet": CrystalModel(
        "DynamicFusion (graph + text + CHGNet)", "DynamicFusionModel", (*_GRAPH_TEXT, "chgnet")
    ),
    "late_chgnet": CrystalModel(
        "late fusion (graph + text + CHGNet)", "LateFusionModel", (*_GRAPH_TEXT, "chgnet")
    ),
    # CHGNet's atom states as the graph's node inputs (``chgnet_graph``): the convolutions start
    # from them instead of attending over them as a separate view
    "cgcnn_chgnet": CrystalModel(
        "CGCNN on CHGNet atom states (chgnet_graph only)", "MatMMFuseModel", ("chgnet_graph",)
    ),
    "matmmfuse_chgnet_graph": CrystalModel(
        "MatMMFuse (CHGNet-state graph + text)",
        "MatMMFuseModel",
        ("chgnet_graph", "text_sentences"),
    ),
}
DEFAULT_MODELS = (
    "cgcnn",
    "text",
    "matmmfuse",
    "dynamic",
    "late",
    "chgnet_only",
    "matmmfuse_chgnet",
    "dynamic_chgnet",
    "late_chgnet",
    "cgcnn_chgnet",
    "matmmfuse_chgnet_graph",
)
#: The model every other model's MAE is divided by (``x CGCNN`` columns).
BASELINE = "cgcnn"
#: Views computed by a model trained on Materials Project data (CHGNet: MPtrj). On an MP-derived
#: dataset (mp36k) they have seen the test labels' source: such runs are marked leaked.
MP_TRAINED_MODALITIES = frozenset({"chgnet", "chgnet_atoms", "chgnet_graph"})
#: Datasets whose structures and labels come from the Materials Project.
MP_DATASETS = frozenset({"mp36k"})


def is_leaked(dataset: str, model: str) -> bool:
    """Whether ``model`` on ``dataset`` reads a view pretrained on the dataset's own source.

    Examples
    --------
    >>> is_leaked("mp36k", "matmmfuse_chgnet"), is_leaked("castelli", "matmmfuse_chgnet")
    (True, False)
    >>> is_leaked("mp36k", "matmmfuse")
    False
    """
    return dataset in MP_DATASETS and bool(MP_TRAINED_MODALITIES & set(MODELS[model].modalities))


def check_models(models: Sequence[str]) -> list[str]:
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise wf.WorkflowError(f"Unknown crystal model(s) {unknown}; available: {list(MODELS)}")
    return list(dict.fromkeys(models))


def check_family(family: str | None) -> None:
    from deepfuse_plugin.data.loaders import FAMILIES

    if family is not None and family not in FAMILIES:
        raise wf.WorkflowError(f"Unknown family {family!r}; built-in: {sorted(FAMILIES)}")


def resolve_data_file(
    data_dir: str | None,
    data_file: str | None = None,
    relative: str = DATA_FILE,
    option: str = "--data-file",
    what: str = "Crystal data",
) -> str:
    """``data_file`` or ``<data_dir>/<relative>`` (default ``materials/mp36k.extxyz.xz``);
    raises if neither is given or the file does not exist."""
    hint = f"pass --data-dir (folder with {relative}) or {option}"
    if data_file is None and data_dir is None:
        raise wf.WorkflowError(f"No {what.lower()} given: {hint}")
    path = data_file or os.path.join(str(data_dir), relative)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found at {path}; {hint}")
    return path


# -- rows ----------------------------------------------------------------------------------------
def _first(rows: np.ndarray, n: int | None) -> np.ndarray:
    return rows if n is None else rows[:n]


def select_rows(
    info: Any,
    in_family: np.ndarray | None,
    sizes: dict[str, int | None],
    subset_seed: int,
    min_formation_energy: float | None,
    n_zero_shot: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Row indices of every part (``train``/``val``/``test`` without the family, ``zero_shot`` =
    the family's rows of the test split) and a report of what was dropped and carved out.

    Each part is shuffled with its own generator (``subset_seed``, part index), then its first
    ``sizes[part]`` rows are kept (``None``: all), so the choice of one part never depends on
    another's size.
    """
    import pandas as pd

    split = info["split"].astype(str).to_numpy()
    energy = pd.to_numeric(info[TARGET], errors="coerce").to_numpy(dtype=np.float64)
    labelled = np.isfinite(energy)
    outlier = labelled & (
        energy < min_formation_energy
        if min_formation_energy is not None
        else np.zeros(len(info), bool)
    )
    family = np.zeros(len(info), bool) if in_family is None else np.asarray(in_family, bool)
    usable = labelled & ~outlier
    pools = {p: np.flatnonzero(usable & ~family & (split == p)) for p in SPLITS}
    if in_family is not None:
        pools["zero_shot"] = np.flatnonzero(usable & family & (split == "test"))
    limits = {**sizes, "zero_shot": n_zero_shot}
    rows = {
        p: _first(np.random.default_rng([subset_seed, i]).permutation(pool), limits.get(p))
        for i, (p, pool) in enumerate(pools.items())
    }
    ids = info["material_id"].astype(str).to_numpy()
    report = {
        "n_structures": len(info),
        "split_counts": {str(k): int(v) for k, v in zip(*np.unique(split, return_counts=True))},
        "unlabelled": int((~labelled).sum()),
        "outliers": [
            {"material_id": ids[i], TARGET: float(energy[i]), "split": split[i]}
            for i in np.flatnonzero(outlier)
        ],
        "family_per_split": {p: int((family & usable & (split == p)).sum()) for p in SPLITS},
        "pool_sizes": {p: len(v) for p, v in pools.items()},
        "n": {p: len(v) for p, v in rows.items()},
    }
    return rows, report


# -- features ------------------------------------------------------------------------------------
def make_featurizer(
    models: Sequence[str],
    cache_dir: str | bool,
    n_jobs: int = 1,
    progress: bool = False,
    chgnet_layers: Sequence[int] | None = None,
) -> Any:
    """One fast-describer featurizer with the union of the models' modalities; ``chgnet_layers``
    (CHGNetProvider's ``atom_layers``) for every CHGNet atom view, CHGNet's ``atom_fea`` if None."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

    names = list(dict.fromkeys(m for name in models for m in MODELS[name].modalities))
    options = {"chgnet": {"atom_layers": list(chgnet_layers)}} if chgnet_layers else None
    return CrystalMultiModalFeaturizer(
        names,
        describer="fast",
        cache_dir=cache_dir,
        n_jobs=n_jobs,
        progress=progress,
        pretrained_options=options,
    )


#: Cache layout: pickle-free shards (older caches, pickled ``DiskDataset`` folders, have other
#: keys and are never read).
CACHE_FORMAT = "shards-1"


def _dataset_key(featurizer: Any, ids: Sequence[Any] | np.ndarray, target: str) -> str:
    parts = [CACHE_FORMAT, str(featurizer), featurizer.describer.key, target, *map(str, ids)]
    text = "|".join(parts)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def featurize_part(
    structures: Sequence[Any],
    ids: np.ndarray,
    y: np.ndarray,
    featurizer: Any,
    cache_root: str,
    target: str = TARGET,
) -> tuple[Any, bool]:
    """The featurized part as a ``CrystalDataset`` and whether it came from the dataset cache.

    Cached as pickle-free shards (:class:`~deepfuse_plugin.data.ShardedMultiModalDataset`) under
    ``<cache_root>/<key>`` (written to a temporary folder, then renamed, so an interrupted run
    leaves no half-written cache).
    """
    from deepfuse_plugin.data import ShardedMultiModalDataset
    from deepfuse_plugin.data.loaders import CrystalDataset

    folder = os.path.join(cache_root, _dataset_key(featurizer, ids, target))
    w = np.isfinite(y).astype(np.float64)
    if os.path.isdir(folder):
        cached = ShardedMultiModalDataset(folder)
        return CrystalDataset(cached.X, cached.y, cached.w, cached.ids, tasks=[target]), True
    X = featurizer.featurize(list(structures))
    dataset = CrystalDataset(X, np.nan_to_num(y), w, ids, tasks=[target])
    os.makedirs(cache_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".partial_", dir=cache_root)
    ShardedMultiModalDataset.from_dataset(dataset, scratch, modalities=featurizer.modalities)
    os.replace(scratch, folder)
    return dataset, False


def missing_modalities(dataset: Any, names: Sequence[str]) -> dict[str, int]:
    """Samples per modality that the featurizer marked missing (e.g. no description)."""
    return {
        n: int(sum(not hasattr(s, "values") or s.values.get(n) is None for s in dataset.X))
        for n in names
    }


@dataclass
class CrystalData:
    """Featurized parts (normalized labels), the featurizer and what was done to get them."""

    parts: dict[str, Any]
    transformers: list[Any]
    specs: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    timing_structures: list[Any] = field(default_factory=list)
    featurizer: Any = None


def featurize_parts(
    structures: Sequence[Any],
    ids: np.ndarray,
    labels: np.ndarray,
    rows: dict[str, np.ndarray],
    featurizer: Any,
    cache_dir: str,
    target: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every part featurized (or read from the dataset cache), raw labels; and a report of the
    time, cache use, peak memory and missing modalities."""
    parts, cached = {}, {}
    with PeakRSS() as memory:
        begin = time.perf_counter()
        for part, index in rows.items():
            parts[part], cached[part] = featurize_part(
                [structures[i] for i in index],
                ids[index],
                labels[index][:, None],
                featurizer,
                os.path.join(cache_dir, "crystal_bench"),
                target,
            )
        featurize_s = time.perf_counter() - begin
    n_featurized = sum(len(p) for p in parts.values())
    missing = {p: missing_modalities(ds, featurizer.modality_names) for p, ds in parts.items()}
    hits = list(cached.values())
    report = {
        "featurize_s": featurize_s,
        "n_featurized": n_featurized,
        "featurize_ms_per_structure": featurize_s * 1e3 / max(n_featurized, 1),
        "dataset_cache": "hit" if all(hits) else "miss" if not any(hits) else f"partial {cached}",
        "featurize_peak_rss_mib": memory.peak_mib,
        "missing": {p: m for p, m in missing.items() if any(m.values())},
    }
    return parts, report


def normalized_data(
    parts: dict[str, Any],
    featurizer: Any,
    report: dict[str, Any],
    timing_structures: list[Any],
) -> CrystalData:
    """Labels normalized with the training part's mean and std (recorded in the report)."""
    normalizer = wf.fit_normalizer(parts["train"])
    report["normalization"] = wf.normalizer_to_dict(normalizer)
    return CrystalData(
        {p: normalizer.transform(ds) for p, ds in parts.items()},
        [normalizer],
        {m.name: m for m in featurizer.modalities},
        report,
        timing_structures,
        featurizer,
    )


def prepare_data(
    path: str,
    models: Sequence[str],
    sizes: dict[str, int | None],
    subset_seed: int,
    family: str | None,
    n_zero_shot: int | None,
    min_formation_energy: float | None,
    cache_dir: str,
    n_timing: int,
    n_jobs: int = 1,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    chgnet_layers: Sequence[int] | None = None,
) -> CrystalData:
    """Read the file, choose the rows, featurize (or load the cached parts), normalize."""
    from deepfuse_plugin.data.loaders import family_mask, read_extxyz

    start = time.perf_counter()
    structures, info = read_extxyz(path)
    read_s = time.perf_counter() - start
    absent = [c for c in ("material_id", "split", TARGET) if c not in info.columns]
    if absent:
        raise wf.WorkflowError(f"{path} lacks the info key(s) {absent}; found {list(info.columns)}")
    in_family = family_mask(structures, family) if family else None
    rows, report = select_rows(
        info, in_family, sizes, subset_seed, min_formation_energy, n_zero_shot
    )
    echo(
        f"read {len(structures)} structures in {read_s:.0f} s; parts {report['n']}, "
        f"{len(report['outliers'])} outlier(s) dropped"
    )
    featurizer = make_featurizer(models, cache_dir, n_jobs, progress, chgnet_layers)
    ids = info["material_id"].astype(str).to_numpy(dtype=object)
    energy = info[TARGET].astype(float).to_numpy()
    parts, featurized = featurize_parts(
        structures, ids, energy, rows, featurizer, cache_dir, TARGET
    )
    report.update(file=path, read_s=read_s, **featurized)
    timing = [structures[i] for i in rows["train"][:n_timing]]
    return normalized_data(parts, featurizer, report, timing)
