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

import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from deepfuse_bench.crystals_data import (
    BASELINE,
    DEFAULT_MODELS,
    DEFAULT_SIZES,
    MIN_FORMATION_ENERGY,
    MODELS,
    SPLITS,
    TARGET,
    CrystalData,
    check_family,
    check_models,
    prepare_data,
    resolve_data_file,
)
from deepfuse_bench.crystals_report import STEM, format_markdown, write_outputs
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.environment import environment as base_environment
from deepfuse_bench.records import fmt as _fmt
from deepfuse_plugin import workflows as wf

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_MODELS",
    "DEFAULT_SIZES",
    "MIN_FORMATION_ENERGY",
    "MODELS",
    "run_crystal_bench",
]

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3


# -- featurization timing ------------------------------------------------------------------------
def _warmup_structure() -> Any:
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_describer(
    describer: Any, structures: Sequence[Any], desc: str, progress: bool
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
                times.append(_timed(partial(describer.describe, s))[0] * 1e3)
            except Exception as err:  # robocrys fails on some structures: count, do not abort
                times.append(None)
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
    ok = [t for t in times if t is not None]
    return {
        "n": len(structures),
        "n_ok": len(ok),
        "errors": errors,
        "times_ms": times,
        "median_ms": statistics.median(ok) if ok else None,
        "mean_ms": statistics.fmean(ok) if ok else None,
    }


def describer_speedup(fast: dict[str, Any], robocrys: dict[str, Any]) -> float | None:
    """Median robocrys time over the median fast time, on the structures both described."""
    pairs = [
        (f, r)
        for f, r in zip(fast["times_ms"], robocrys["times_ms"])
        if f is not None and r is not None
    ]
    if not pairs:
        return None
    return statistics.median(r for _, r in pairs) / statistics.median(f for f, _ in pairs)


def time_featurization(
    structures: Sequence[Any],
    modalities: Sequence[str],
    robocrys_sample: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Cold-cache featurization timings on ``structures`` (see the module docstring, step 4)."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.feat.text import FastDescriber, RobocrysDescriber, TextEmbedder

    structures = list(structures)
    n = len(structures)
    out: dict[str, Any] = {
        "n": n,
        "method": "time.perf_counter per structure, cold caches, warm-up call on NaCl excluded",
    }
    out["fast"] = time_describer(FastDescriber(), structures, "time fast describer", progress)
    out["robocrys"] = _time_robocrys(RobocrysDescriber(), structures[:robocrys_sample], progress)
    out["speedup_median"] = (
        describer_speedup(out["fast"], out["robocrys"]) if out["robocrys"].get("times_ms") else None
    )
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
    return cls(
        1,
        [specs[m] for m in entry.modalities],
        mode="regression",
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        model_dir=model_dir,
        progress=False,
    )


def train_one(
    name: str,
    parts: dict[str, Any],
    specs: dict[str, Any],
    transformers: list[Any],
    budget: dict[str, Any],
    scratch: str,
    seed: int,
    progress: bool,
) -> tuple[dict[str, Any], Any, np.ndarray]:
    """Train one model (best validation epoch kept): its record, the model and test predictions."""
    import torch

    model_dir = wf.fresh_model_dir(os.path.join(scratch, name))
    wf.set_seed(seed)
    with PeakRSS() as memory:
        model = build_model(name, specs, budget, model_dir)
        result = wf.train_with_validation(
            model,
            parts["train"],
            parts["val"],
            budget["epochs"],
            budget["eval_every"],
            transformers,
            "regression",
            model_dir,
            desc=name,
            progress=progress,
        )
        valid, _ = wf.evaluate(model, parts["val"], transformers, "regression")
        test, pred = wf.evaluate(model, parts["test"], transformers, "regression")
    config = model.get_config()
    config["modalities"] = model.modality_names
    n_train = len(parts["train"])
    record = {
        "model": name,
        "label": MODELS[name].label,
        "model_class": type(model).__name__,
        "modalities": model.modality_names,
        "hyperparameters": config,
        "seed": seed,
        "epochs": budget["epochs"],
        "best_epoch": result.best_epoch,
        "selection": f"best validation {result.score_name}",
        "history": [
            {"epoch": h["epoch"], "rmse": h["score"], "mae": h.get("mae")} for h in result.history
        ],
        "valid": valid,
        "test": test,
        "valid_mae": valid.get("mae"),
        "test_mae": test.get("mae"),
        "train_time_s": result.train_time_s,
        "throughput_structures_per_s": n_train * budget["epochs"] / max(result.train_time_s, 1e-9),
        "peak_rss_mib": memory.peak_mib,
        "peak_rss_delta_mib": memory.delta_mib,
        "torch_threads": torch.get_num_threads(),
    }
    return record, model, pred


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """``test_ratio_to_cgcnn`` / ``zero_shot_ratio_to_cgcnn`` on every run (None without CGCNN)."""
    base = next((r for r in runs if r["model"] == BASELINE), None)
    for run in runs:
        for key in ("test_mae", "zero_shot_mae"):
            ref, value = (base or {}).get(key), run.get(key)
            ok = ref and value is not None and math.isfinite(ref) and math.isfinite(value)
            run[key.replace("_mae", "_ratio_to_cgcnn")] = value / ref if ok else None


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


def train_models(
    models: Sequence[str],
    data: CrystalData,
    budget: dict[str, Any],
    seed: int,
    payload: dict[str, Any],
    out: str,
    progress: bool,
    echo: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every model in turn (records appended to ``payload["runs"]``, outputs rewritten after
    each); returns the trained models and ``{model: (y_test, predictions)}``."""
    from tqdm.auto import tqdm

    trained, predictions = {}, {}
    y_test = wf.denormalize(np.asarray(data.parts["test"].y), data.info["normalization"]).ravel()
    with tempfile.TemporaryDirectory(prefix="deepfuse_crystal_models_") as scratch:
        for name in tqdm(models, desc="crystal models", unit="model", disable=not progress):
            record, trained[name], pred = train_one(
                name, data.parts, data.specs, data.transformers, budget, scratch, seed, progress
            )
            predictions[name] = (y_test, pred.ravel())
            payload["runs"].append(record)
            add_ratios(payload["runs"])
            echo(
                f"  {name:<20} valid MAE {_fmt(record['valid_mae'])}, test MAE "
                f"{_fmt(record['test_mae'])}, best epoch {record['best_epoch']}, "
                f"{record['train_time_s']:.0f} s, {record['throughput_structures_per_s']:.0f} "
                "structures/s"
            )
            write_outputs(payload, out)
    return trained, predictions


def zero_shot(
    trained: dict[str, Any], family: str, data: CrystalData, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every trained model on the held-out family, side by side (``zero_shot_evaluate``); sets
    ``zero_shot_mae`` on the runs."""
    from deepfuse_plugin.models.matmmfuse import zero_shot_evaluate

    table = zero_shot_evaluate(
        trained, {family: data.parts["zero_shot"]}, transformers=data.transformers
    )
    for run in runs:
        run["zero_shot_mae"] = float(table.loc[family, run["model"]])
    return {
        "family": family,
        "split": "test",
        "n": int(table.loc[family, "n"]),
        "mae": {m: float(table.loc[family, m]) for m in trained},
    }


def run_crystal_bench(
    data_dir: str | None = None,
    data_file: str | None = None,
    n_train: int | None = DEFAULT_SIZES["train"],
    n_val: int | None = DEFAULT_SIZES["val"],
    n_test: int | None = DEFAULT_SIZES["test"],
    full: bool = False,
    subset_seed: int = 0,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    eval_every: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    models: Sequence[str] | None = None,
    family: str | None = "sulfides",
    n_zero_shot: int | None = None,
    min_formation_energy: float | None = MIN_FORMATION_ENERGY,
    n_timing: int = 200,
    robocrys_sample: int = 10,
    cache_dir: str | None = None,
    out: str = "benchmarks",
    n_jobs: int = 1,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
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
    sizes = {p: None for p in SPLITS} if full else {"train": n_train, "val": n_val, "test": n_test}
    cache_label = cache_dir or "$DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse"
    cache_dir = str(cache_dir or default_cache_dir())
    settings = {
        "target": TARGET,
        "full": full,
        "n_train": sizes["train"],
        "n_val": sizes["val"],
        "n_test": sizes["test"],
        "subset_seed": subset_seed,
        "seed": seed,
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "models": models,
        "family": family,
        "n_zero_shot": n_zero_shot,
        "min_formation_energy": min_formation_energy,
        "n_timing": n_timing,
        "robocrys_sample": robocrys_sample,
        "describer": "fast",
        "threads": torch.get_num_threads(),
        "n_jobs": n_jobs,
        "cache_dir": cache_label,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    data = prepare_data(
        path,
        models,
        sizes,
        subset_seed,
        family,
        n_zero_shot,
        min_formation_energy,
        cache_dir,
        n_timing,
        n_jobs,
        progress,
        echo,
    )
    payload: dict[str, Any] = {
        "benchmark": "crystals",
        "format": FORMAT,
        "command": command or "deepfuse-bench crystals",
        "environment": environment(),
        "settings": settings,
        "data": data.info,
        "memory_method": PeakRSS.method,
        "runs": [],
        "notes": list(NOTES),
    }
    echo(
        f"timing featurization on {len(data.timing_structures)} structures "
        f"(robocrys on {min(robocrys_sample, len(data.timing_structures))})"
    )
    timing_s, payload["featurization"] = _timed(
        lambda: time_featurization(
            data.timing_structures, list(data.specs), robocrys_sample, progress
        )
    )
    payload["stage_times_s"] = {
        "read": data.info["read_s"],
        "featurize": data.info["featurize_s"],
        "timing": timing_s,
    }
    budget = {
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
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
