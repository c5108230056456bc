"""MoleculeNet accuracy benchmark: ``deepfuse bench moleculenet`` (and ``make bench``).

Every deepfuse fusion model, the unimodal baselines and the peers
(:mod:`deepfuse_plugin.bench.peers`: DeepChem baselines and chemprop v2) are trained on exactly
the same molecules and split:

1. **Data.** Each dataset is loaded through DeepChem's own loader (``dc.molnet.load_<name>``,
   ``splitter=None``, no transformers, ``data_dir=<data-dir>/moleculenet``) three times, once per
   feature set: ``MultiModalFeaturizer(["ecfp", "graph", "smiles"])`` (deepfuse models),
   ``CircularFingerprint(size=2048)`` (MLP, random forest) and ``DMPNNFeaturizer`` (DMPNNModel).
   DeepChem drops the rows a featurizer fails on, so the three datasets are aligned by id (the
   SMILES; the k-th occurrence of a duplicated SMILES matches the k-th occurrence elsewhere) and
   only the rows valid in *all three* are kept; how many each featurizer lost is recorded. The
   rows are the same whichever ``--models`` are chosen, so runs can be combined.
2. **Split.** ``ScaffoldSplitter`` (or ``RandomSplitter`` with ``--split-seed``) 80/10/10 is
   computed once on the aligned rows and applied by index to every feature set, and exported as
   CSV (``<out>/splits/<dataset>_<split>_{train,valid,test}.csv``: ``smiles`` plus one column per
   task, empty where the label is missing) for other tools; chemprop trains on these files.
3. **Training.** Every neural model gets the same epochs, batch size, learning rate and seed, and
   keeps the epoch with the best validation score
   (:func:`deepfuse_plugin.workflows.train_with_validation`: ROC-AUC or RMSE on the valid split,
   never test). Regression labels are normalized on the train split; metrics are in original
   units. Classification: ROC-AUC, mean over tasks, missing labels (``w == 0``) masked, no class
   balancing for any model. The random forest has no epochs. chemprop
   (:mod:`deepfuse_plugin.bench.chemprop`) runs its own CLI in its own virtual environment
   (created on first use; if that fails its runs are recorded as skipped, with the reason, and
   the table says so) with its default settings, the same epochs and batch size, and keeps its
   lowest-validation-loss checkpoint; its validation and test predictions are scored by the same
   metric code on the same rows.
4. **Records.** Every run (dataset, split, seed, model, hyper-parameters, valid/test metrics,
   best epoch, train time, peak memory) goes to ``<out>/moleculenet.json`` as soon as it finishes
   (``--resume`` skips the runs already there, e.g. to add seeds, and continues an interrupted
   neural run from the resume point it wrote after its last finished epoch in
   ``<out>/unfinished/``; see :mod:`deepfuse_plugin.resume`); the table
   ``<out>/moleculenet.md`` (mean ± std over seeds, best per dataset in bold) and the plot
   ``<out>/moleculenet.png`` are rewritten from all the runs.
5. **Parallel runs.** ``--processes N`` trains each dataset's runs in ``N`` forked worker
   processes (:func:`run_many`), the dearest first; each run is seeded on its own, so the
   results equal a one-process run's (a test checks it). On one machine this is the simple way
   to use several cores: a run trains with one torch thread best here (see ``deepfuse --help``).
6. **Merging.** Datasets or seeds run in separate processes or on other machines, each with its
   own ``--out``, are combined by :func:`merge_results` (``deepfuse bench merge SRC... --out
   DIR``), which requires the same shared settings and equal split files.

Peak memory: a background thread samples the process resident set size (``psutil``, every 50 ms)
during each run; ``peak_rss_mib`` is the peak and ``peak_rss_delta_mib`` the peak minus the RSS
when the run started (the process keeps what earlier runs allocated, so the delta is a lower bound
of what a run needs on its own). chemprop runs in a child process: its peak is that process
tree's, and the delta equals the peak. Without ``psutil`` both are null.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import shlex
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from deepfuse_plugin import resume as resume_lib
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.bench import peers as peer_lib

logger = logging.getLogger(__name__)

FORMAT = 1
STEM = "moleculenet"
FUSION_MODALITIES = ("ecfp", "graph", "smiles")

#: Datasets whose task type is known; anything else is decided from its labels (all 0/1 ->
#: classification).
KNOWN_MODES = {
    "bbbp": "classification", "bace_classification": "classification",
    "clintox": "classification", "hiv": "classification", "tox21": "classification",
    "toxcast": "classification", "sider": "classification", "muv": "classification",
    "pcba": "classification",
    "delaney": "regression", "sampl": "regression", "freesolv": "regression",
    "lipo": "regression", "bace_regression": "regression", "qm7": "regression",
    "qm8": "regression", "qm9": "regression", "hppb": "regression", "clearance": "regression",
    "thermosol": "regression", "ppb": "regression",
}
#: Common names -> DeepChem loader names.
ALIASES = {"esol": "delaney", "bace": "bace_classification", "lipophilicity": "lipo"}
#: Display names for the tables.
DISPLAY = {"bbbp": "BBBP", "bace_classification": "BACE", "clintox": "ClinTox", "hiv": "HIV",
           "tox21": "Tox21", "delaney": "ESOL (delaney)", "sampl": "FreeSolv (sampl)",
           "lipo": "Lipophilicity", "freesolv": "FreeSolv"}

UNIMODAL = tuple(f"unimodal_{m}" for m in FUSION_MODALITIES)
FULL_DATASETS = ("bbbp", "bace_classification", "clintox", "hiv", "tox21", "delaney", "sampl")
#: ``--suite``: defaults for datasets, seeds and epochs (explicit options override them).
SUITES: dict[str, dict[str, Any]] = {
    "reduced": {"datasets": ("bbbp", "delaney"), "seeds": (0,), "epochs": 30},
    "full": {"datasets": FULL_DATASETS, "seeds": (0, 1, 2), "epochs": 30},
}
DEFAULT_EVAL_EVERY = 1
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3


def default_models() -> list[str]:
    """Every deepfuse fusion model registered in :data:`workflows.MODELS`, the unimodal
    baselines and the DeepChem peers."""
    return [*wf.MODELS, *UNIMODAL, *peer_lib.PEERS]


def model_kind(name: str) -> str:
    """``"deepchem"``/``"chemprop"`` (peers), ``"deepfuse unimodal"`` or ``"deepfuse fusion"``."""
    if name in peer_lib.PEERS:
        return peer_lib.PEERS[name].library
    if name in UNIMODAL:
        return "deepfuse unimodal"
    return "deepfuse fusion"


def model_features(name: str) -> str:
    return peer_lib.PEERS[name].features if name in peer_lib.PEERS else "multimodal"


def model_label(name: str) -> str:
    if name in peer_lib.PEERS:
        return peer_lib.PEERS[name].label
    if name in UNIMODAL:
        return f"UnimodalModel ({name.split('_', 1)[1]} only)"
    target = wf.MODELS.get(name, name)
    cls = target if isinstance(target, str) else target.__name__
    return f"{cls} ({'+'.join(FUSION_MODALITIES)})"


def check_models(models: Sequence[str]) -> list[str]:
    known = default_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise wf.WorkflowError(f"Unknown model(s) {unknown}; available: {known}")
    return list(dict.fromkeys(models))


def resolve_dataset(name: str) -> tuple[str, Callable[..., Any]]:
    """``(loader name, dc.molnet.load_<name>)`` for a dataset name (aliases: esol, bace, ...)."""
    import deepchem as dc

    key = ALIASES.get(name.lower(), name.lower())
    loader = getattr(dc.molnet, f"load_{key}", None)
    if loader is None:
        available = sorted(n[5:] for n in dir(dc.molnet) if n.startswith("load_")
                           and n != "load_function")
        raise wf.WorkflowError(f"DeepChem has no loader for dataset {name!r} "
                               f"(dc.molnet.load_{key}); available: {available}")
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
    return "classification" if labelled.size and np.isin(labelled, (0.0, 1.0)).all() \
        else "regression"


def primary_metric(mode: str) -> tuple[str, bool]:
    """``(metric key, higher is better)``."""
    return ("roc_auc", True) if mode == "classification" else ("rmse", False)


# -- data ----------------------------------------------------------------------------------------
def featurizers(n_jobs: int = 1, progress: bool = False) -> dict[str, Any]:
    import deepchem as dc

    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    return {"multimodal": MultiModalFeaturizer(list(FUSION_MODALITIES), n_jobs=n_jobs,
                                               progress=progress),
            "ecfp": dc.feat.CircularFingerprint(size=peer_lib.ECFP_SIZE),
            "dmpnn": dc.feat.DMPNNFeaturizer()}


def occurrence_keys(ids: Sequence[Any]) -> list[tuple[str, int]]:
    """``(id, k)`` for the k-th occurrence of each id (duplicated SMILES stay distinct rows)."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for i in ids:
        keys.append((str(i), seen[str(i)]))
        seen[str(i)] += 1
    return keys


def align(datasets: dict[str, Any], reference: str = "multimodal"
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
        aligned[name] = wf.make_dataset(ds.X[rows] if len(rows) else ds.X[:0], ds.y[rows],
                                        ds.w[rows], ds.ids[rows])
    ref = aligned[reference]
    for name, ds in aligned.items():
        same = np.allclose(np.asarray(ds.y, float) * (ds.w > 0), np.asarray(ref.y, float) *
                           (ref.w > 0), equal_nan=True)
        if not same:
            raise wf.WorkflowError(f"Labels of feature set {name!r} differ from {reference!r} "
                                   "after alignment by id")
    dropped = sorted(union - common)
    report = {"n_featurized": {name: len(ds) for name, ds in datasets.items()},
              "n_molecules": len(order), "n_union": len(union),
              "dropped": {name: len(union) - len(k) for name, k in keys.items()},
              "n_dropped": len(dropped),
              "dropped_ids": [k[0] for k in dropped[:50]]}
    return aligned, report


def load_dataset(name: str, data_dir: str, cache_dir: str, n_jobs: int = 1,
                 progress: bool = False
                 ) -> tuple[list[str], dict[str, Any], int | None]:
    """Load ``name`` once per feature set with DeepChem's loader (no split, no transformers).

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
        for set_name, featurizer in featurizers(n_jobs, progress).items():
            start = time.perf_counter()
            seen = _count_inputs(featurizer)
            with wf.rdkit_log_disabled():
                try:
                    tasks, (dataset,), _ = loader(featurizer=featurizer, splitter=None,
                                                  transformers=[], data_dir=folder,
                                                  save_dir=cache_dir)
                except (OSError, ValueError) as err:  # urllib errors are OSErrors
                    raise wf.WorkflowError(f"Cannot load {key} from {folder}: {err} (is the "
                                           "DeepChem file there? --data-dir)") from err
            out[set_name] = wf.make_dataset(dataset.X, dataset.y, dataset.w, dataset.ids)
            rows_read[set_name] = seen[0] or None  # None: served from the featurization cache
            logger.info("%s: %s features for %d molecules in %.1f s", key, set_name, len(dataset),
                        time.perf_counter() - start)
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


def export_split(out: str, dataset: str, tag: str, tasks: Sequence[str],
                 parts: dict[str, Any]) -> dict[str, str]:
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


def split_tag(split: str, split_seed: int) -> str:
    return split if split == "scaffold" else f"{split}{split_seed}"


def prepare_dataset(name: str, data_dir: str, cache_dir: str, out: str, split: str,
                    split_seed: int, n_jobs: int = 1, limit: int | None = None,
                    progress: bool = False) -> PreparedDataset:
    """Load, align, split, export and (regression) normalize one dataset."""
    key, _ = resolve_dataset(name)
    start = time.perf_counter()
    tasks, raw, rows = load_dataset(key, data_dir, cache_dir, n_jobs, progress)
    featurize_s = time.perf_counter() - start
    aligned, report = align(raw)
    report["n_rows_in_file"] = rows
    if limit and limit < report["n_molecules"]:  # after alignment: the same rows for every set
        aligned = {n: ds.select(np.arange(limit)) for n, ds in aligned.items()}
        report["n_molecules"] = limit
    if report["n_dropped"]:
        logger.warning("%s: %d molecule(s) failed in at least one featurizer and are left out for "
                       "every model: %s", key, report["n_dropped"], report["dropped"])
    ref = aligned["multimodal"]
    if len(ref) < 3:
        raise wf.WorkflowError(f"{key}: only {len(ref)} molecules are valid in every featurizer")
    mode = decide_mode(key, ref.y, ref.w)
    indices = wf.split_indices(ref, split, split_seed)
    if len(indices[0]) == 0:
        raise wf.WorkflowError(f"{key}: the {split} split left no training rows")
    split_parts = {n: tuple(ds.select(i) for i in indices) for n, ds in aligned.items()}
    tag = split_tag(split, split_seed)
    files = export_split(out, key, tag, tasks, dict(zip(("train", "valid", "test"),
                                                        split_parts["multimodal"])))
    transformers: list[Any] = []
    normalizer = None
    if mode == "regression":
        normalizer = wf.fit_normalizer(split_parts["multimodal"][0])
        transformers = [normalizer]
        split_parts = {n: tuple(normalizer.transform(d) for d in p) for n, p in split_parts.items()}
    modalities = featurizers(n_jobs)["multimodal"].modalities
    metric, _ = primary_metric(mode)
    info = {"loader": f"dc.molnet.load_{key}", "tasks": tasks, "n_tasks": len(tasks),
            "mode": mode, "metric": metric, **report, "split": split, "split_tag": tag,
            "split_seed": split_seed if split == "random" else None,
            "splitter": ("ScaffoldSplitter" if split == "scaffold" else "RandomSplitter") +
                        " 80/10/10",
            "n_train": len(indices[0]), "n_valid": len(indices[1]), "n_test": len(indices[2]),
            "split_files": files, "featurize_s": featurize_s, "limit": limit,
            "normalization": wf.normalizer_to_dict(normalizer)}
    return PreparedDataset(key, tasks, mode, split_parts, transformers, modalities, info,
                           {part: os.path.join(out, path) for part, path in files.items()})


# -- memory --------------------------------------------------------------------------------------
class PeakRSS:
    """Sample a process's resident set size in a thread while the block runs (psutil).

    By default this process; ``pid`` another one, and ``tree`` adds its descendants' (the chemprop
    child process tree). A process that has exited counts as 0.
    """

    method = "psutil RSS sampled every 50 ms (peak during the run; delta = peak - RSS at start)"

    def __init__(self, interval: float = 0.05, pid: int | None = None, tree: bool = False
                 ) -> None:
        self.interval, self.tree = interval, tree
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self._process = None
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ipykernel ([test] extra)
            psutil = None
        if psutil is not None:
            self._gone = (psutil.NoSuchProcess, psutil.AccessDenied)
            with contextlib.suppress(*self._gone):  # it may have ended before sampling began
                self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> float:
        total = 0
        try:
            processes = [self._process, *(self._process.children(recursive=True) if self.tree
                                          else [])]
        except self._gone:
            return 0.0
        for process in processes:
            try:
                total += process.memory_info().rss
            except self._gone:
                pass
        return total / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib or 0.0, self._rss())

    def __enter__(self) -> "PeakRSS":
        if self._process is not None:
            self.start_mib = self.peak_mib = self._rss()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib or 0.0, self._rss())

    @property
    def delta_mib(self) -> float | None:
        if self.start_mib is None or self.peak_mib is None:
            return None
        return self.peak_mib - self.start_mib


# -- one run -------------------------------------------------------------------------------------
def build_deepfuse(name: str, data: PreparedDataset, model_dir: str, budget: dict[str, Any]
                   ) -> Any:
    common = dict(n_tasks=len(data.tasks), mode=data.mode, batch_size=budget["batch_size"],
                  learning_rate=budget["learning_rate"], model_dir=model_dir, progress=False,
                  length_bucket_pool=budget.get("length_bucket_pool", 0))
    if name in UNIMODAL:
        from deepfuse_plugin.models.unimodal import UnimodalModel

        modality = name.split("_", 1)[1]
        spec = next(m for m in data.modalities if m.name == modality)
        return UnimodalModel(modality=spec, **common)
    cls = wf.resolve_model_class(name)
    return cls(modalities=list(data.modalities), **common)


def hyperparameters(name: str, model: Any, data: PreparedDataset, budget: dict[str, Any]
                    ) -> dict[str, Any]:
    from deepfuse_plugin.nn.encoders import SequenceEncoder

    if name in peer_lib.PEERS:
        return peer_lib.peer_hyperparameters(name, data.mode, budget)
    config = dict(model.get_config())
    config["modalities"] = [m.get("name") if isinstance(m, dict) else str(m)
                            for m in config.get("modalities", [])]
    chunks = sorted({e.length_chunk for e in model.model.modules()
                     if isinstance(e, SequenceEncoder)})
    if chunks:  # provenance: runs recorded before SequenceEncoder had length chunks lack it
        config["sequence_length_chunk"] = chunks[0] if len(chunks) == 1 else chunks
    return config


def run_header(name: str, data: PreparedDataset, seed: int) -> dict[str, Any]:
    """The identifying fields of a run record."""
    import torch

    return {"dataset": data.name, "split": data.info["split"],
            "split_seed": data.info["split_seed"], "seed": seed, "model": name,
            "label": model_label(name), "kind": model_kind(name),
            "features": model_features(name), "metric": primary_metric(data.mode)[0],
            "torch_threads": torch.get_num_threads()}


def finish_record(record: dict[str, Any], valid_m: dict[str, Any], test_m: dict[str, Any],
                  fit_s: float | None, wall_s: float | None, peak_mib: float | None,
                  delta_mib: float | None, memory_method: str | None) -> dict[str, Any]:
    """Add the metrics, times and memory to ``record`` (the same fields for every model)."""
    metric = record["metric"]
    if memory_method is None:
        memory_method = ("unavailable (psutil not installed)" if peak_mib is None
                         else PeakRSS.method)
    record.update(valid=valid_m, test=test_m, valid_metric=valid_m.get(metric),
                  test_metric=test_m.get(metric), train_time_s=fit_s, wall_time_s=wall_s,
                  peak_rss_mib=peak_mib, peak_rss_delta_mib=delta_mib,
                  memory_method=memory_method)
    return record


def run_one(name: str, data: PreparedDataset, seed: int, budget: dict[str, Any], scratch: str,
            progress: bool = False, chemprop: peer_lib.ChempropSetup | None = None,
            work_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and score one model on one prepared dataset with one seed: the JSON run record.

    ``chemprop``: its environment, prepared once per benchmark (default: prepared here).
    ``work_dir``: where epoch-trained models keep their checkpoints and resume points while they
    train (default ``scratch``); with ``resume`` an interrupted run found there continues from its
    last finished epoch (a run of other settings starts over, with a warning).
    """
    peer = peer_lib.PEERS.get(name)
    if peer is not None and peer.library == "chemprop":
        return run_chemprop_peer(name, data, seed, budget, scratch,
                                 chemprop or peer_lib.chemprop_setup())
    train, valid, test = data.parts[model_features(name)]
    model_dir = os.path.join(work_dir or scratch, f"{data.name}_{name}_{seed}")
    if not (resume and resume_lib.read_state(model_dir) is not None):
        wf.fresh_model_dir(model_dir)
    record = run_header(name, data, seed)
    with PeakRSS() as memory:
        wall = time.perf_counter()
        if peer is not None and not peer.epochs:
            wf.set_seed(seed)
            model, valid_m, test_m, fit_s = peer_lib.fit_forest(
                name, len(data.tasks), data.mode, seed, budget, train, valid, test,
                data.transformers)
            record.update(model_class="SklearnModel", epochs=None, eval_every=None,
                          best_epoch=None, selection="none (no epochs)", history=[],
                          device="cpu")
        else:
            model, result = _train_resumable(name, data, seed, budget, model_dir, progress)
            valid_m = wf.evaluate(model, valid, data.transformers, data.mode)[0]
            test_m = wf.evaluate(model, test, data.transformers, data.mode)[0]
            fit_s = result.train_time_s
            record.update(model_class=type(model).__name__, epochs=budget["epochs"],
                          device=str(model.device),  # DeepChem's default: CUDA when present
                          eval_every=budget["eval_every"], best_epoch=result.best_epoch,
                          selection=f"best validation {result.score_name}",
                          history=[{"epoch": h["epoch"], "score": h["score"]}
                                   for h in result.history])
            if result.resumed_at:
                record["resumed_at_epochs"] = result.resumed_at
        wall = time.perf_counter() - wall
    record["hyperparameters"] = hyperparameters(name, model, data, budget)
    finish_record(record, valid_m, test_m, fit_s, wall, memory.peak_mib, memory.delta_mib, None)
    shutil.rmtree(model_dir, ignore_errors=True)
    del model
    return record


#: Seconds of one run on BBBP (seed 0, 30 epochs, one torch thread, a one-process ``make bench``
#: on this project's 2-core test machine): parallel runs start with the dearest. Only the order
#: matters.
RUN_COST_S = {"crossattention": 605, "dynamic": 295, "moe": 273, "early": 257, "late": 253,
              "chemprop": 217, "unimodal_smiles": 194, "dc_dmpnn": 128, "unimodal_graph": 44,
              "dc_mlp": 23, "dc_rf": 10, "unimodal_ecfp": 8}

#: The dataset a forked worker runs on: set in the parent just before the fork, so that workers
#: share it copy-on-write instead of unpickling it per run.
_WORKER_DATA: PreparedDataset | None = None


def _run_in_worker(name: str, seed: int, threads: int, kwargs: dict[str, Any]
                   ) -> dict[str, Any]:
    import torch

    assert _WORKER_DATA is not None, "workers must be forked after _WORKER_DATA is set"
    torch.set_num_threads(threads)
    return run_one(name, _WORKER_DATA, seed, progress=False, **kwargs)


def run_many(todo: Sequence[tuple[int, str]], data: PreparedDataset, processes: int = 1,
             progress: bool = False, **kwargs: Any) -> Iterable[tuple[int, str, dict[str, Any]]]:
    """``(seed, model, record)`` of each run in ``todo`` on ``data``, in the order they finish.

    ``processes > 1`` runs them in that many forked worker processes, the dearest first
    (:data:`RUN_COST_S`), each with ``torch threads // processes`` threads (at least 1). Each run
    is seeded on its own, so a run's result does not depend on where it ran. ``kwargs`` go to
    :func:`run_one`.
    """
    if processes <= 1 or len(todo) <= 1:
        for seed, name in todo:
            yield seed, name, run_one(name, data, seed, progress=progress, **kwargs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    global _WORKER_DATA
    threads = max(1, torch.get_num_threads() // processes)
    default_cost = float(np.median(list(RUN_COST_S.values())))
    ordered = sorted(todo, key=lambda run: -RUN_COST_S.get(run[1], default_cost))
    _WORKER_DATA = data
    pool = ProcessPoolExecutor(max_workers=min(processes, len(todo)),
                               mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(_run_in_worker, name, seed, threads, kwargs): (seed, name)
                   for seed, name in ordered}
        for future in as_completed(futures):
            seed, name = futures[future]
            yield seed, name, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORKER_DATA = None


def _train_resumable(name: str, data: PreparedDataset, seed: int, budget: dict[str, Any],
                     model_dir: str, progress: bool) -> tuple[Any, wf.TrainingResult]:
    """Build and train an epoch-trained model with resume points in ``model_dir``; a resume
    point of other settings (e.g. written by another deepfuse version) is discarded."""
    train, valid, _ = data.parts[model_features(name)]
    peer = peer_lib.PEERS.get(name)

    def build() -> Any:
        wf.set_seed(seed)
        if peer is not None:
            return peer.build(len(data.tasks), data.mode, model_dir, seed, budget)
        return build_deepfuse(name, data, model_dir, budget)

    def fit(model: Any) -> wf.TrainingResult:
        return wf.train_with_validation(
            model, train, valid, budget["epochs"], budget["eval_every"], data.transformers,
            data.mode, model_dir, desc=f"{data.name} {name} s{seed}", progress=progress,
            resumable=True)

    model = build()
    try:
        return model, fit(model)
    except resume_lib.ResumeMismatchError as err:
        logger.warning("%s Starting this run over.", err)
    wf.fresh_model_dir(model_dir)
    model = build()
    return model, fit(model)


CHEMPROP_MEMORY = ("psutil RSS of the chemprop child process tree (train, then predict), sampled "
                   "every 50 ms; a fresh process, so delta = peak")


def run_chemprop_peer(name: str, data: PreparedDataset, seed: int, budget: dict[str, Any],
                      scratch: str, setup: peer_lib.ChempropSetup) -> dict[str, Any]:
    """The chemprop run record: train on the exported split CSVs, score on the same rows.

    An unavailable environment or a failing chemprop command gives a record with ``skipped``
    (the reason) and null metrics instead of an exception, so the benchmark goes on.
    """
    from deepfuse_plugin.bench import chemprop as cp

    record = run_header(name, data, seed)
    record.update(model_class="chemprop.models.MPNN", epochs=budget["epochs"], eval_every=1,
                  selection=cp.SELECTION, best_epoch=None, history=[], hyperparameters={},
                  device="cpu")  # run_chemprop passes --accelerator cpu
    if setup.executable is None:
        return skipped_record(record, f"chemprop environment unavailable: {setup.reason}")
    _, valid, test = data.parts["multimodal"]  # the rows of the exported CSVs, in their order
    workdir = os.path.join(scratch, f"{data.name}_{name}_{seed}")
    wall = time.perf_counter()
    try:
        result, valid_m, test_m = peer_lib.fit_chemprop(
            data.split_paths, data.tasks, data.mode, seed, budget, valid, test,
            data.transformers, workdir, setup.executable, record["torch_threads"])
    except cp.ChempropError as err:
        return skipped_record(record, f"chemprop run failed: {err}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record.update(best_epoch=result.best_epoch,
                  history=[{"epoch": h["epoch"], "score": h["val_loss"]} for h in result.history],
                  hyperparameters=peer_lib.chemprop_hyperparameters(result, setup),
                  chemprop={"commands": [shlex.join(c) for c in result.commands],
                            "epochs_run": result.epochs_run, "n_train": result.n_train,
                            "epoch_times_s": result.epoch_times_s,
                            "seconds_per_epoch": result.seconds_per_epoch,
                            "train_process_s": result.train_process_s,
                            "predict_process_s": result.predict_process_s,
                            "versions": setup.versions})
    return finish_record(record, valid_m, test_m, result.train_time_s,
                         time.perf_counter() - wall, result.peak_rss_mib, result.peak_rss_mib,
                         CHEMPROP_MEMORY)


def skipped_record(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """A run that did not happen: null metrics, times and memory, and ``skipped`` = why."""
    logger.warning("%s %s seed %s skipped: %s", record["dataset"], record["model"],
                   record["seed"], reason)
    finish_record(record, {}, {}, None, None, None, None, "not measured (skipped)")
    record["skipped"] = reason
    return record


# -- aggregation and output ----------------------------------------------------------------------
def run_key(run: dict[str, Any]) -> tuple:
    return (run["dataset"], run["split"], run.get("split_seed"), run["seed"], run["model"])


def summarize(runs: Sequence[dict[str, Any]], key: str = "test_metric"
              ) -> dict[tuple[str, str], dict[str, Any]]:
    """``(dataset, model) -> {mean, std, n, values}`` of ``run[key]`` over seeds (std: sample
    standard deviation, ddof=1; NaN with one seed)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        value = run.get(key)
        groups[(run["dataset"], run["model"])].append(math.nan if value is None else float(value))
    out = {}
    for k, values in groups.items():
        arr = np.asarray(values, dtype=float)
        finite = arr[np.isfinite(arr)]
        out[k] = {"mean": float(finite.mean()) if finite.size else math.nan,
                  "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                  "n": int(finite.size), "values": values}
    return out


def _cell(stat: dict[str, Any] | None, digits: int = 3, expected_n: int | None = None) -> str:
    """``mean ± std``; ``(n=k)`` when this cell has fewer seeds than the row's fullest cell."""
    if not stat or not math.isfinite(stat["mean"]):
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1 and math.isfinite(stat["std"]):
        text += f" ± {stat['std']:.{digits}f}"
    if expected_n is not None and stat["n"] < expected_n:
        text += f" (n={stat['n']})"
    return text


def ordered_models(runs: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["model"] for r in runs}
    order = [m for m in default_models() if m in present]
    return order + sorted(present - set(order))


def ordered_datasets(runs: Sequence[dict[str, Any]], datasets: dict[str, Any]) -> list[str]:
    present = list(dict.fromkeys(r["dataset"] for r in runs))
    known = [d for d in FULL_DATASETS if d in present]
    return known + [d for d in present if d not in known]


def best_models(stats: dict[tuple[str, str], dict[str, Any]], dataset: str, models: Sequence[str],
                higher: bool) -> set[str]:
    means = {m: stats[(dataset, m)]["mean"] for m in models if (dataset, m) in stats
             and math.isfinite(stats[(dataset, m)]["mean"])}
    if not means:
        return set()
    target = max(means.values()) if higher else min(means.values())
    return {m for m, v in means.items() if round(v, 3) == round(target, 3)}


def metric_table(runs: Sequence[dict[str, Any]], datasets: dict[str, Any], key: str,
                 title_metric: Callable[[dict[str, Any]], str], higher_fn: Callable[[str], bool],
                 dataset_filter: Callable[[str], bool] = lambda d: True) -> list[str]:
    """Markdown table: one row per dataset, one column per model, best per row in bold."""
    models = ordered_models(runs)
    names = [d for d in ordered_datasets(runs, datasets) if dataset_filter(d)]
    if not names:
        return []
    stats = summarize(runs, key)
    header = "| dataset | metric | n mol (train/valid/test) | " + " | ".join(models) + " |"
    lines = [header, "|" + "---|" * (3 + len(models))]
    for d in names:
        info = datasets.get(d, {})
        higher = higher_fn(d)
        best = best_models(stats, d, models, higher)
        seeds = max((stats[(d, m)]["n"] for m in models if (d, m) in stats), default=0)
        cells = []
        for m in models:
            text = _cell(stats.get((d, m)), expected_n=seeds)
            cells.append(f"**{text}**" if m in best else text)
        sizes = (f"{info.get('n_molecules', '?')} ({info.get('n_train', '?')}/"
                 f"{info.get('n_valid', '?')}/{info.get('n_test', '?')})")
        lines.append(f"| {DISPLAY.get(d, d)} | {title_metric(info)} {'↑' if higher else '↓'} | "
                     f"{sizes} | " + " | ".join(cells) + " |")
    return lines


def seed_values(runs: Sequence[dict[str, Any]], key: str = "test_metric"
                ) -> dict[tuple[str, str], dict[int, float]]:
    """``(dataset, model) -> {seed: value}`` for the runs with a finite ``run[key]``."""
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        value = run.get(key)
        if value is not None and math.isfinite(float(value)):
            out[(run["dataset"], run["model"])][int(run["seed"])] = float(value)
    return out


def paired_means(ours: dict[int, float], theirs: dict[int, float]
                 ) -> tuple[float, float, str] | None:
    """Means over the seeds both models ran (None if none), and a note naming those seeds when
    either ran seeds the other did not: a goal compares models on the same seeds."""
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return None
    note = "" if set(ours) == set(theirs) else f" (seed(s) {', '.join(map(str, shared))} only)"
    return (float(np.mean([ours[s] for s in shared])), float(np.mean([theirs[s] for s in shared])),
            note)


def goal_check(runs: Sequence[dict[str, Any]], datasets: dict[str, Any]) -> list[str]:
    """Issue 5's goal: every fusion model at least as good as the best DeepChem baseline
    (test metric, means over the seeds both ran)."""
    stats, by_seed = summarize(runs), seed_values(runs)
    lines = []
    models = ordered_models(runs)
    fusion = [m for m in models if model_kind(m) == "deepfuse fusion"]
    baselines = [m for m in models if model_kind(m) == "deepchem"]
    for d in ordered_datasets(runs, datasets):
        mode = datasets.get(d, {}).get("mode", "classification")
        _, higher = primary_metric(mode)
        base = {m: stats[(d, m)]["mean"] for m in baselines if (d, m) in stats
                and math.isfinite(stats[(d, m)]["mean"])}
        if not base or not fusion:
            continue
        best_name = max(base, key=base.get) if higher else min(base, key=base.get)
        ok, not_ok = [], []
        for m in fusion:
            paired = paired_means(by_seed.get((d, m), {}), by_seed[(d, best_name)])
            if paired is None:
                continue
            v, best, note = paired
            text = f"{m} {v:.3f}" + (f" vs {best:.3f}{note}" if note else "")
            (ok if (v >= best if higher else v <= best) else not_ok).append(text)
        lines.append(f"- {DISPLAY.get(d, d)}: best DeepChem baseline {best_name} "
                     f"{base[best_name]:.3f}; fusion models as good or better: "
                     f"{', '.join(ok) or 'none'}; worse: {', '.join(not_ok) or 'none'}.")
    return lines + chemprop_goal(runs, datasets, by_seed)


#: Issue 5: DynamicFusionModel at least as good as chemprop v2 on this many of the 7 datasets.
CHEMPROP_GOAL = 5


def chemprop_goal(runs: Sequence[dict[str, Any]], datasets: dict[str, Any],
                  by_seed: dict[tuple[str, str], dict[int, float]]) -> list[str]:
    """Issue 5's second goal: ``dynamic`` at least as good as ``chemprop`` (test means over the
    seeds both ran) on :data:`CHEMPROP_GOAL` of the 7 :data:`FULL_DATASETS`; a line only when
    both ran somewhere."""
    compared: dict[str, bool] = {}
    details = []
    for d in ordered_datasets(runs, datasets):
        paired = paired_means(by_seed.get((d, "dynamic"), {}), by_seed.get((d, "chemprop"), {}))
        if paired is None:
            continue
        ours, theirs, note = paired
        higher = primary_metric(datasets.get(d, {}).get("mode", "classification"))[1]
        compared[d] = ours >= theirs if higher else ours <= theirs
        details.append(f"{DISPLAY.get(d, d)} {ours:.3f} vs {theirs:.3f}{note}"
                       + ("" if compared[d] else " (worse)"))
    if not compared:
        return []
    wins = sum(compared[d] for d in FULL_DATASETS if d in compared)
    losses = sum(not compared[d] for d in FULL_DATASETS if d in compared)
    if wins >= CHEMPROP_GOAL:
        status = "met"
    elif losses > len(FULL_DATASETS) - CHEMPROP_GOAL:
        status = "not met"
    else:
        status = f"open ({wins + losses} of the {len(FULL_DATASETS)} datasets compared so far)"
    return [f"- DynamicFusionModel (`dynamic`) vs chemprop v2 (`chemprop`), test mean: as good "
            f"or better on {sum(compared.values())} of {len(compared)} dataset(s): "
            f"{'; '.join(details)}. Goal (at least {CHEMPROP_GOAL} of the "
            f"{len(FULL_DATASETS)} issue-5 datasets): {status}."]


def provenance_text(payload: dict[str, Any]) -> str:
    """The sentence naming the command(s) behind a table.

    A table merged from many runs would otherwise open with every command in full (their
    ``--out`` folders are often local scratch paths); the JSON keeps the full list.
    """
    commands = payload.get("commands") or [payload.get("command", "deepfuse bench moleculenet")]
    if len(commands) == 1:
        return f"Generated by `{commands[0]}`."
    return (f"Generated by {len(commands)} invocations of `deepfuse bench moleculenet` "
            f"(resumed, or merged with `deepfuse bench merge`); the first was `{commands[0]}`, and "
            f"`{STEM}.json` lists every command under `commands`.")


def format_markdown(payload: dict[str, Any]) -> str:
    runs, datasets, settings = payload["runs"], payload["datasets"], payload["settings"]
    seeds = sorted({r["seed"] for r in runs})
    models = ordered_models(runs)
    env = payload.get("environment", {})

    def higher(d: str) -> bool:
        return primary_metric(datasets.get(d, {}).get("mode", "classification"))[1]

    def metric_name(info: dict[str, Any]) -> str:
        return "ROC-AUC" if info.get("mode") == "classification" else "RMSE"

    with_chemprop = any(model_kind(m) == "chemprop" for m in models)
    lines = [
        "# MoleculeNet benchmark: deepfuse vs DeepChem baselines"
        + (" and chemprop v2" if with_chemprop else ""),
        "",
        provenance_text(payload) + " Test-split metric, mean ± sample std over model seeds "
        f"{', '.join(map(str, seeds))} (one seed: no std); best mean per dataset in **bold** "
        "(ties at 3 decimals all bold). Every model sees the same molecules and the same split.",
        "",
        *metric_table(runs, datasets, "test_metric", metric_name, higher),
        "",
        "Models: " + "; ".join(f"`{m}` = {model_label(m)}" for m in models) + ".",
        "",
        "## Settings",
        "",
        f"- Split: {_split_text(datasets)}; exported to `splits/` (`smiles` + task columns) so "
        "other tools can reuse exactly the same membership.",
        f"- Neural models: {settings['epochs']} epochs, batch size {settings['batch_size']}, "
        f"learning rate {settings['learning_rate']}, validation every {settings['eval_every']} "
        "epoch(s); the checkpoint with the best validation score (ROC-AUC / RMSE) is kept, the "
        "test split is never used for selection. deepfuse models use their default architecture "
        "(encoder/fused width 128); DeepChem models their defaults (see the JSON).",
        *([f"- deepfuse models train on length-bucketed batches (`length_bucket_pool="
           f"{settings['length_bucket_pool']}`), not their default shuffled batches."]
          if settings.get("length_bucket_pool") else []),
        f"- Random forest: {peer_lib.RF_TREES} trees, one per task on labelled rows, no epochs.",
        *([CHEMPROP_SETTINGS.format(epochs=settings["epochs"],
                                    batch_size=settings["batch_size"])] if with_chemprop else []),
        "- Classification: ROC-AUC averaged over tasks, missing labels masked (w = 0); no class "
        "balancing for any model. Regression: labels normalized on train, metrics in original "
        "units.",
        f"- Machine: {env.get('cpu_count', '?')} CPU cores"
        + (f" ({env['cpu']})" if env.get("cpu") else "") + " shared with other jobs, "
        f"torch threads {settings.get('threads', '?')}; times are wall clock and noisy. "
        + device_text(runs, env),
        "",
    ]
    reg = [d for d in ordered_datasets(runs, datasets) if not higher(d)]
    if reg:
        mae_runs = [{**r, "mae": (r.get("test") or {}).get("mae")} for r in runs]
        lines += ["## Regression MAE (test)", "",
                  *metric_table(mae_runs, datasets, "mae", lambda i: "MAE", lambda d: False,
                                lambda d: d in reg), ""]
    valid_lines = metric_table(runs, datasets, "valid_metric", metric_name, higher)
    lines += ["## Validation metric of the selected checkpoint", "", *valid_lines, ""]
    lines += ["## Train time (s) and peak memory", "",
              "Train time: wall time of `fit` including the per-epoch validation passes "
              "(random forest: fit). Peak RSS delta: " + PeakRSS.method + "; a lower bound, as "
              "the process keeps memory from earlier runs."
              + (" chemprop: Lightning `fit` in its child process (sanity check, epochs, "
                 "validation, checkpoints; not the interpreter start-up and featurization), and "
                 "the peak RSS of that process tree." if with_chemprop else ""), ""]
    time_stats = summarize(runs, "train_time_s")
    mem_stats = summarize(runs, "peak_rss_delta_mib")
    epoch_stats = summarize(runs, "best_epoch")
    header = "| dataset | " + " | ".join(models) + " |"
    lines += [header, "|" + "---|" * (1 + len(models))]
    for d in ordered_datasets(runs, datasets):
        cells = []
        for m in models:
            t, mem, ep = (s.get((d, m)) for s in (time_stats, mem_stats, epoch_stats))
            text = _cell(t, 0) + " s"
            if mem and math.isfinite(mem["mean"]):
                text += f" / {mem['mean']:.0f} MiB"
            if ep and math.isfinite(ep["mean"]):
                text += f" / ep {ep['mean']:.0f}"
            cells.append(text)
        lines.append(f"| {DISPLAY.get(d, d)} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean train time / mean peak RSS delta / mean best epoch.", ""]
    lines += ["## Goal check (issue 5: every fusion model ≥ the best DeepChem baseline; "
              f"DynamicFusionModel ≥ chemprop v2 on ≥ {CHEMPROP_GOAL} of the "
              f"{len(FULL_DATASETS)} datasets)", "",
              *goal_check(runs, datasets), ""]
    lines += ["## Data", ""]
    for d in ordered_datasets(runs, datasets):
        info = datasets.get(d, {})
        rows = info.get("n_rows_in_file")
        unparsed = (rows - max(info.get("n_featurized", {}).values() or [0])) if rows else None
        lines.append(f"- {DISPLAY.get(d, d)} (`{info.get('loader')}`, {info.get('n_tasks')} "
                     f"task(s), {info.get('mode')}): "
                     + (f"{rows} rows in the file" if rows else "rows in the file not recorded "
                        "(features served from a cache older than the row count)")
                     + (f", {unparsed} not parseable by any featurizer" if unparsed else "")
                     + f"; featurized per set {info.get('n_featurized')}; "
                     f"{info.get('n_dropped', 0)} more left out because one featurizer failed "
                     f"on them; {info.get('n_molecules')} molecules used by every model"
                     + (f" (first {info['limit']}, --limit)" if info.get("limit") else "") + ".")
    observed = observations(payload)
    if observed:
        lines += ["", "## Observations (computed from the runs)", "", *[f"- {o}" for o in observed]]
    notes = [*payload.get("notes", []), *skipped_notes(runs)]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def device_text(runs: Sequence[dict[str, Any]], env: dict[str, Any]) -> str:
    """Where the runs trained: the GPU named when any deepfuse/DeepChem run used CUDA."""
    devices = sorted({r["device"] for r in runs if r.get("device")})
    if not any(d.startswith("cuda") for d in devices):
        return "No GPU" + (" used (CUDA was available)." if env.get("gpu") else ".")
    return (f"GPU: {env.get('gpu') or 'CUDA'}. deepfuse and DeepChem neural models ran on "
            f"{', '.join(d for d in devices if d != 'cpu')} (the random forest and chemprop, "
            "run with `--accelerator cpu`, on CPU).")


def skipped_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One note per reason for the runs recorded as skipped (their cells show "–")."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        if run.get("skipped"):
            reasons[run["skipped"]].append(f"{run['model']} on {run['dataset']} seed {run['seed']}")
    return [f"Skipped, shown as \"–\": {', '.join(which)}. Reason: {reason.strip()}"
            for reason, which in reasons.items()]


def observations(payload: dict[str, Any]) -> list[str]:
    """Facts worth a reader's attention, derived from the runs: models still improving at the
    epoch budget, models whose validation score peaks in the first epochs, a large gap
    between the validation and test metric (a split whose validation part is not like its
    test part), and runs continued after an interruption."""
    runs, datasets = payload["runs"], payload["datasets"]
    epochs = payload["settings"]["epochs"]
    out = []
    for d in ordered_datasets(runs, datasets):
        these = [r for r in runs if r["dataset"] == d and r.get("best_epoch") is not None]
        if not these:
            continue
        name = DISPLAY.get(d, d)
        last = sorted({r["model"] for r in these if r["best_epoch"] >= epochs})
        early = sorted({r["model"] for r in these if r["best_epoch"] <= max(2, epochs // 15)})
        if last:
            out.append(f"{name}: best validation score at the last epoch ({epochs}) for "
                       f"{', '.join(last)} in at least one seed: still improving, the epoch "
                       "budget limits them.")
        if early:
            out.append(f"{name}: best validation score within the first "
                       f"{max(2, epochs // 15)} epochs for {', '.join(early)} in at least one "
                       "seed: validation peaks (or overfitting starts) almost at once.")
        pairs = [(r["valid_metric"], r["test_metric"]) for r in runs if r["dataset"] == d
                 and r.get("valid_metric") is not None and r.get("test_metric") is not None]
        if pairs:
            valid, test = (float(np.mean(v)) for v in zip(*pairs))
            mode = datasets.get(d, {}).get("mode")
            gap = valid - test if mode == "classification" else test - valid
            if (mode == "classification" and gap > 0.1) or (mode == "regression" and
                                                           gap > 0.25 * valid):
                out.append(f"{name}: mean validation {primary_metric(mode)[0]} {valid:.3f} vs "
                           f"test {test:.3f} over all models: the {datasets[d].get('split')} "
                           "validation part is much easier than the test part, so epoch "
                           "selection on it is a weak guide.")
        resumed = [f"{r['model']} seed {r['seed']} (after epoch "
                   f"{', '.join(map(str, r['resumed_at_epochs']))})"
                   for r in these if r.get("resumed_at_epochs")]
        if resumed:
            out.append(f"{name}: continued from a resume point after an interruption: "
                       f"{'; '.join(resumed)}. Same epochs as an uninterrupted run; the train "
                       "time adds the segments, the peak memory is the last segment's.")
    return out


def _split_text(datasets: dict[str, Any]) -> str:
    splitters = sorted({f"{i.get('splitter')}" + (f" (split seed {i['split_seed']})"
                                                  if i.get("split_seed") is not None else "")
                        for i in datasets.values()})
    return ", ".join(splitters) or "?"


def plot(payload: dict[str, Any], path: str) -> None:
    """Grouped bar chart: one panel per metric (ROC-AUC, RMSE), datasets as groups, models as bars
    (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, datasets = payload["runs"], payload["datasets"]
    models = ordered_models(runs)
    stats = summarize(runs)
    panels = []
    for mode, label in (("classification", "test ROC-AUC (higher is better)"),
                        ("regression", "test RMSE (lower is better)")):
        names = [d for d in ordered_datasets(runs, datasets)
                 if datasets.get(d, {}).get("mode") == mode]
        if names:
            panels.append((names, label))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 3.2 * sum(len(p[0]) for p in panels)
                                                          + 2), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab20")
    width = 0.8 / max(1, len(models))
    for ax, (names, label) in zip(axes[0], panels):
        x = np.arange(len(names))
        for j, m in enumerate(models):
            means = [stats.get((d, m), {}).get("mean", math.nan) for d in names]
            stds = [stats.get((d, m), {}).get("std", math.nan) for d in names]
            stds = [0.0 if not math.isfinite(s) else s for s in stds]
            ax.bar(x - 0.4 + width * (j + 0.5), means, width, yerr=stds, capsize=2,
                   color=cmap(j % 20), label=m,
                   edgecolor="black" if m in peer_lib.PEERS else "none",
                   hatch="//" if m in peer_lib.PEERS else None)
        ax.set_xticks(x, [DISPLAY.get(d, d) for d in names])
        ax.set_ylabel(label)
        finite = [stats[(d, m)]["mean"] for d in names for m in models
                  if (d, m) in stats and math.isfinite(stats[(d, m)]["mean"])]
        if finite and "ROC" in label:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle(f"MoleculeNet, {_split_text(datasets)}, seeds {seeds} "
                 "(hatched: peers, DeepChem and chemprop)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(payload: dict[str, Any], out: str, png: bool = True) -> None:
    """``<out>/moleculenet.json`` (atomically), ``.md`` and (``png``) ``.png``."""
    path = os.path.join(out, f"{STEM}.json")
    wf.write_json(path + ".tmp", payload)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, f"{STEM}.md"), "w") as fh:
        fh.write(format_markdown(payload))
    if png:
        plot(payload, os.path.join(out, f"{STEM}.png"))


# -- the command ---------------------------------------------------------------------------------
def _environment() -> dict[str, Any]:
    import deepchem as dc
    import rdkit
    import sklearn
    import torch

    from deepfuse_plugin._version import __version__

    return {"deepfuse": __version__, "deepchem": dc.__version__, "torch": torch.__version__,
            "rdkit": rdkit.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_simd": cpu_simd_flags(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


#: CPU vector extensions worth recording: NumPy's and scikit-learn's float sums can round
#: differently with and without them (``benchmarks/experiments/forest_label_rounding.py``).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "neon", "asimd")


@functools.lru_cache(maxsize=1)
def _cpuinfo_lines() -> tuple[str, ...]:
    """``/proc/cpuinfo`` (Linux; empty elsewhere), read once per process."""
    try:
        with open("/proc/cpuinfo") as fh:
            return tuple(fh)
    except OSError:
        return ()


def cpu_model() -> str:
    """The CPU's model name (Linux), else what :mod:`platform` knows."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_simd_flags() -> list[str] | None:
    """Which of :data:`SIMD_FLAGS` the CPU reports (Linux); None where that cannot be read."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            reported = set(line.split(":", 1)[1].split())
            return [flag for flag in SIMD_FLAGS if flag in reported]
    return None


NOTES = [
    "Peak memory is process RSS sampled with psutil; the delta over the RSS at the start of a run "
    "is a lower bound of the run's own need (memory from earlier runs is reused).",
]
#: Subfolder of ``--out`` where neural runs keep checkpoints and resume points while training.
UNFINISHED_DIR = "unfinished"


#: The Settings line for chemprop (formatted with the run's epochs and batch size).
CHEMPROP_SETTINGS = (
    "- chemprop v2 (`chemprop`): chemprop==2.3.1 in its own virtual environment (it pins another "
    "RDKit), driven through its CLI on the exported split CSVs (train/valid/test given as three "
    "files: its predefined split) with its default settings (D-MPNN, hidden 300, depth 3, "
    "1-layer FFN, Noam learning rate 1e-4 to 1e-3 to 1e-4), {epochs} epochs and batch size "
    "{batch_size}. It keeps the checkpoint with the lowest validation loss (its default "
    "tracking metric: MSE of standardized targets / binary cross-entropy), not the best "
    "validation ROC-AUC/RMSE; its predictions are scored by the same metric code on the same "
    "rows as every other model.")


def run_moleculenet_bench(datasets: Sequence[str] | None = None, data_dir: str = "../shared/data",
                          seeds: Sequence[int] | None = None, epochs: int | None = None,
                          split: str = "scaffold", split_seed: int = 0,
                          models: Sequence[str] | None = None, out: str = "benchmarks",
                          suite: str = "reduced", eval_every: int = DEFAULT_EVAL_EVERY,
                          batch_size: int = DEFAULT_BATCH_SIZE,
                          learning_rate: float = DEFAULT_LEARNING_RATE, n_jobs: int = 1,
                          cache_dir: str | None = None, resume: bool = False,
                          limit: int | None = None, length_bucket_pool: int = 0,
                          processes: int = 1, progress: bool = True,
                          command: str | None = None,
                          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and write ``<out>/moleculenet.{json,md,png}`` and ``<out>/splits/``.

    Parameters
    ----------
    datasets, seeds, epochs:
        Default to the ``suite``'s (``"reduced"``: BBBP + ESOL, seed 0, 30 epochs; ``"full"``: the
        seven datasets of issue 5, seeds 0-2, 30 epochs).
    data_dir: str
        Folder holding the DeepChem files (or its ``moleculenet/`` subfolder).
    split, split_seed:
        ``"scaffold"`` (deterministic) or ``"random"`` (seeded by ``split_seed``), 80/10/10.
    models: list of str
        Default :func:`default_models` (every fusion model, unimodal baselines, DeepChem peers,
        chemprop). chemprop's environment is created on first use (``.venv-chemprop`` in the
        current folder, or ``$DEEPFUSE_CHEMPROP_VENV``); if that fails, its runs are recorded as
        skipped with the reason.
    out: str
        Output folder.
    eval_every, batch_size, learning_rate:
        Shared budget of every neural model.
    n_jobs: int
        Featurization processes and random-forest jobs.
    cache_dir: str, optional
        Where DeepChem caches the featurized datasets (reused across calls); default: a temporary
        folder removed at the end.
    resume: bool
        Keep the runs already in ``<out>/moleculenet.json`` (same settings required) and skip
        them; used to add seeds or models to a table. Runs recorded as skipped are tried again.
        A neural run that was interrupted (its resume point is in ``<out>/unfinished/``, written
        after every epoch) continues from its last finished epoch instead of starting over.
    limit: int, optional
        First ``limit`` molecules of each dataset (tests, quick runs).
    length_bucket_pool: int
        Passed to every deepfuse model (0: DeepChem's shuffled batches, the models' default;
        ``k``: length-bucketed training batches, faster for the SMILES Transformer on a CPU).
    processes: int
        Run each dataset's runs in this many worker processes (see :func:`run_many`): on a
        CPU machine with ``N`` cores, ``processes=N`` with one torch thread each finishes the
        reduced suite about ``N`` times sooner. Results do not depend on it; train times are
        measured per run, beside the other workers.

    Returns
    -------
    dict
        The JSON payload.
    """
    from tqdm.auto import tqdm

    if suite not in SUITES:
        raise wf.WorkflowError(f"Unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    defaults = SUITES[suite]
    names = [resolve_dataset(d)[0] for d in (datasets or defaults["datasets"])]
    seeds = list(seeds if seeds is not None else defaults["seeds"])
    epochs = int(epochs or defaults["epochs"])
    models = check_models(models or default_models())
    if split not in wf.SPLITS:
        raise wf.WorkflowError(f"Unknown split {split!r}; choose one of {list(wf.SPLITS)}")
    if epochs < 1:
        raise wf.WorkflowError(f"epochs must be >= 1, got {epochs}")
    import multiprocessing

    import torch

    settings = {"epochs": epochs, "eval_every": eval_every, "batch_size": batch_size,
                "learning_rate": learning_rate, "split": split,
                "split_seed": split_seed if split == "random" else None, "limit": limit,
                "threads": torch.get_num_threads(), "n_jobs": n_jobs,
                "length_bucket_pool": length_bucket_pool, "processes": processes}
    if processes < 1:
        raise wf.WorkflowError(f"processes must be >= 1, got {processes}")
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise wf.WorkflowError("--processes > 1 needs the 'fork' start method (Linux or macOS); "
                               "run with --processes 1")
    if processes > 1 and torch.cuda.is_available():
        # CUDA cannot be used again in a forked child once the parent has touched it
        raise wf.WorkflowError("--processes > 1 is for CPU machines: with a CUDA GPU, run one "
                               "process (the GPU trains one model at a time)")
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"{STEM}.json")
    payload: dict[str, Any] = {"benchmark": "moleculenet", "format": FORMAT,
                               "command": command or "deepfuse bench moleculenet",
                               "environment": _environment(), "settings": settings,
                               "memory_method": PeakRSS.method, "datasets": {}, "runs": [],
                               "notes": list(NOTES)}
    if resume and os.path.exists(json_path):
        previous = read_payload(json_path)
        check_same_settings(previous["settings"], settings, f"--resume: {json_path}")
        payload["datasets"] = previous.get("datasets", {})
        payload["runs"] = [r for r in previous.get("runs", []) if not r.get("skipped")]
        payload["commands"] = previous.get("commands", [previous.get("command")])
        payload["wall_time_s"] = previous.get("wall_time_s", 0.0)
    payload.setdefault("commands", []).append(payload["command"])
    done = {run_key(r) for r in payload["runs"]}
    budget = {"epochs": epochs, "eval_every": eval_every, "batch_size": batch_size,
              "learning_rate": learning_rate, "n_jobs": n_jobs,
              "length_bucket_pool": length_bucket_pool}

    plan = [(d, s, m) for d in names for s in seeds for m in models
            if (d, split, settings["split_seed"], s, m) not in done]
    summary = (f"deepfuse bench moleculenet: {len(names)} dataset(s) {names}, seeds {seeds}, "
               f"{len(models)} model(s), {epochs} epochs, {split} split: {len(plan)} run(s)")
    if resume:
        summary += f" to do, {len(done)} already in {json_path}"
    echo(summary)
    chemprop = None
    if any(model_kind(m) == "chemprop" for _, _, m in plan):
        chemprop = peer_lib.chemprop_setup(echo=echo)
        if chemprop.executable is None:
            echo(f"chemprop is unavailable; its runs are recorded as skipped: {chemprop.reason}")
        payload["environment"]["chemprop"] = chemprop.versions or None
    own_cache = cache_dir is None
    cache = cache_dir or tempfile.mkdtemp(prefix="deepfuse_molnet_cache_")
    unfinished = os.path.join(out, UNFINISHED_DIR, split_tag(split, split_seed))
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="deepfuse_molnet_models_") as scratch, \
                tqdm(total=len(plan), desc="moleculenet runs", unit="run",
                     disable=not progress) as bar:
            for name in names:
                todo = [(s, m) for d, s, m in plan if d == name]
                if not todo:
                    continue
                bar.set_postfix_str(f"{name}: featurizing")
                data = prepare_dataset(name, data_dir, cache, out, split, split_seed, n_jobs,
                                       limit, progress=False)
                payload["datasets"][name] = combine_dataset_info(
                    name, payload["datasets"].get(name), data.info, f"--resume: {json_path}")
                echo(f"{name}: {data.info['n_molecules']} molecules ({data.mode}, "
                     f"{len(data.tasks)} task(s)), split {data.info['n_train']}/"
                     f"{data.info['n_valid']}/{data.info['n_test']}, "
                     f"{data.info['n_dropped']} dropped by a featurizer")
                if resume:
                    for seed, model in todo:
                        _echo_unfinished(unfinished, f"{name}_{model}_{seed}", echo)
                bar.set_postfix_str(f"{name}: {len(todo)} run(s)")
                for seed, model, record in run_many(
                        todo, data, processes, progress=progress, budget=budget,
                        scratch=scratch, chemprop=chemprop, work_dir=unfinished, resume=resume):
                    payload["runs"].append(record)
                    bar.update(1)
                    echo(f"  {name:<12} {model:<16} seed {seed}: {_run_summary(record)}")
                    write_outputs(payload, out, png=False)
                write_outputs(payload, out)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):  # only while empty: unfinished runs stay resumable
            os.removedirs(unfinished)
    payload["wall_time_s"] = payload.get("wall_time_s", 0.0) + time.perf_counter() - start
    write_outputs(payload, out)
    echo(format_markdown(payload).split("\n## Settings")[0])
    echo(f"Wrote {json_path}, {STEM}.md, {STEM}.png and splits/ to {out} "
         f"({time.perf_counter() - start:.0f} s)")
    return payload


def _echo_unfinished(unfinished: str, run: str, echo: Callable[[str], None]) -> None:
    state = resume_lib.read_state(os.path.join(unfinished, run))
    if state is not None:
        echo(f"  {run}: continuing the interrupted run after epoch {state.epochs_done} of "
             f"{state.plan.get('epochs')}")


# -- merging runs made elsewhere -------------------------------------------------------------------
#: Settings that must agree for runs to share a table (threads and n_jobs change speed only).
SHARED_SETTINGS = ("epochs", "eval_every", "batch_size", "learning_rate", "split", "split_seed",
                   "limit", "length_bucket_pool")
#: Values of settings added after the first results were written (older JSON lacks them).
LATER_SETTINGS = {"length_bucket_pool": 0}


def read_payload(json_path: str) -> dict[str, Any]:
    """A ``moleculenet.json`` written by :func:`run_moleculenet_bench`."""
    with open(json_path) as fh:
        payload = json.load(fh)
    if payload.get("benchmark") != "moleculenet" or "runs" not in payload:
        raise wf.WorkflowError(f"{json_path} is not a 'deepfuse bench moleculenet' result")
    return payload


def check_same_settings(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    def value(settings: dict[str, Any], key: str) -> Any:
        return settings.get(key, LATER_SETTINGS.get(key))

    differ = {k: (value(old, k), value(new, k)) for k in SHARED_SETTINGS
              if value(old, k) != value(new, k)}
    if differ:
        raise wf.WorkflowError(f"{where} was made with other settings (old, new): {differ}")


def combine_dataset_info(name: str, old: dict[str, Any] | None, new: dict[str, Any],
                         where: str) -> dict[str, Any]:
    """The dataset facts of two runs sharing a table; they must have the same rows and split
    sizes. A fact only one side knows (a row count a cached run could not take) is kept."""
    keys = ("n_molecules", "n_train", "n_test")
    if not old:
        return new
    if any(old.get(k) != new.get(k) for k in keys):
        raise wf.WorkflowError(f"{where}: {name} has other rows or split sizes "
                               f"({[new.get(k) for k in keys]} vs {[old.get(k) for k in keys]})")
    return {**old, **{k: v for k, v in new.items() if v is not None}}


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("skipped") == b.get("skipped") and a.get("test") == b.get("test")


def _merge_splits(source: str, out: str) -> None:
    """Copy ``<source>/splits/*.csv`` into ``<out>/splits``; a file already there must be equal
    (the same split of the same molecules)."""
    import filecmp

    folder = os.path.join(source, "splits")
    if not os.path.isdir(folder):
        return
    target = os.path.join(out, "splits")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(folder)):
        src, dst = os.path.join(folder, name), os.path.join(target, name)
        if not os.path.exists(dst):
            shutil.copyfile(src, dst)
        elif not filecmp.cmp(src, dst, shallow=False):
            raise wf.WorkflowError(f"{src} differs from {dst}: the two folders split "
                                   f"{name.split('_')[0]} differently")


def merge_results(sources: Sequence[str], out: str, replace: bool = False,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge the runs of other ``deepfuse bench moleculenet`` output folders into ``out``.

    For datasets or seeds run in parallel processes or on other machines (each with its own
    ``--out``): the runs, dataset facts, commands, notes and split CSVs are combined and the
    table, JSON and plot of ``out`` rewritten. All folders must have the same shared settings
    (epochs, validation, batch size, learning rate, split). A run present twice must have the same
    result (unless ``replace``); a skipped run gives way to a finished one.

    Parameters
    ----------
    sources: list of str
        Output folders holding ``moleculenet.json``.
    out: str
        The folder to merge into (its own runs, if any, are kept).
    replace: bool
        A run of ``sources`` replaces the run of the same dataset, model, seed and split in
        ``out`` (a model re-run after its defaults changed). The JSON's notes record how many runs
        were replaced and from where.

    Returns
    -------
    dict
        The merged JSON payload.
    """
    folders = ([out] if os.path.exists(os.path.join(out, f"{STEM}.json")) else []) + [
        s for s in sources if os.path.abspath(s) != os.path.abspath(out)]
    if not folders:
        raise wf.WorkflowError("nothing to merge: give at least one folder with moleculenet.json")
    payloads = [read_payload(os.path.join(f, f"{STEM}.json")) for f in folders]
    merged = dict(payloads[0], datasets={}, runs=[], commands=[], notes=[], wall_time_s=0.0)
    by_key: dict[tuple, dict[str, Any]] = {}
    for folder, payload in zip(folders, payloads):
        check_same_settings(merged["settings"], payload["settings"], folder)
        for name, info in payload["datasets"].items():
            merged["datasets"][name] = combine_dataset_info(
                name, merged["datasets"].get(name), info, folder)
        merged["commands"] += [c for c in payload.get("commands", [])
                               if c not in merged["commands"]]
        merged["wall_time_s"] += payload.get("wall_time_s", 0.0)
        # a source's notes (e.g. runs it replaced in an earlier merge) describe its runs
        merged["notes"] += [n for n in payload.get("notes", []) if n not in merged["notes"]]
        is_source = os.path.abspath(folder) != os.path.abspath(out)
        replacing, replaced = replace and is_source, []
        for run in payload["runs"]:
            key = run_key(run)
            kept = by_key.get(key)
            if kept is None or (kept.get("skipped") and not run.get("skipped")):
                by_key[key] = run
            elif replacing and not run.get("skipped"):
                if not _same_result(kept, run):
                    replaced.append(run)
                by_key[key] = run
            elif not run.get("skipped") and not _same_result(kept, run):
                raise wf.WorkflowError(f"{folder}: run {key} is also in another folder with a "
                                       f"different result; remove one of them, or merge with "
                                       f"--replace to let the newer folder's run replace it")
        if replaced:
            merged["notes"].append(_replaced_note(replaced))
        if is_source:
            _merge_splits(folder, out)
    merged["runs"] = list(by_key.values())
    os.makedirs(out, exist_ok=True)
    write_outputs(merged, out)
    echo(f"Merged {len(merged['runs'])} runs from {len(folders)} folder(s) into {out}")
    return merged


def _replaced_note(runs: Sequence[dict[str, Any]]) -> str:
    """Which runs a ``bench merge --replace`` re-ran, by model and dataset (no local paths: the
    note is committed with the table)."""
    seeds: dict[tuple[str, str], list[int]] = defaultdict(list)
    for run in runs:
        seeds[(run["model"], run["dataset"])].append(run["seed"])
    which = "; ".join(f"{model} on {dataset} seed(s) {', '.join(map(str, sorted(s)))}"
                      for (model, dataset), s in sorted(seeds.items()))
    return f"{len(runs)} run(s) replaced by a re-run (bench merge --replace): {which}."


def _run_summary(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return f"skipped ({record['skipped'].splitlines()[0]})"
    return (f"valid {record['metric']} {_fmt(record['valid_metric'])}, test "
            f"{_fmt(record['test_metric'])}, best epoch {record['best_epoch']}, "
            f"{record['train_time_s']:.1f} s, peak RSS +{_fmt(record['peak_rss_delta_mib'], 0)} "
            "MiB")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "nan"
    return f"{value:.{digits}f}"
