"""Crystal benchmark: ``deepfuse-bench crystals`` (and ``make bench-crystals``).

Two datasets (``--dataset``):

- ``mp36k``: formation energy per atom on ``mp36k.extxyz.xz`` (Materials Project, MEGNet-2018
  split labels), steps 1-2 below;
- ``castelli``: ``heat_ref`` of the Castelli perovskites (GPAW/RPBE, outside the Materials
  Project), a seeded random split of all usable rows (default 70/15/15,
  :func:`~deepfuse_bench.crystals_castelli.castelli_split`), optionally capped per part.

Models (:data:`~deepfuse_bench.crystals_data.MODELS`): CGCNN alone, text alone, MatMMFuse
(CGCNN + text, cross-attention), DynamicFusion and late fusion over the same two modalities, the
CHGNet view alone, and the three fusion models with the pretrained CHGNet view added; each trained
with the same epochs, batch size, learning rate, schedule (``lr_schedule``, ``warmup_epochs``,
``grad_clip``, ``early_stopping``) and seeds (``seeds``: every model once per seed). CHGNet is
trained on MPtrj (Materials Project): every mp36k run that reads it is marked ``leaked`` in the
table and the JSON (:func:`~deepfuse_bench.crystals_data.is_leaked`).

``--zero-shot-castelli`` (mp36k only): every model trained on mp36k also predicts the Castelli
perovskites, which it never saw; raw MAE and the MAE after a linear recalibration fitted on a
small labelled sample (:mod:`deepfuse_bench.crystals_castelli`).

``--resume``: the runs (model, seed) already in ``<out>/<stem>.json`` are kept and skipped (same
shared settings required), and a run interrupted mid-training continues from the resume point it
wrote after its last finished epoch (``<out>/unfinished_<stem>/``). Test predictions of every run
are kept in ``<out>/<stem>_predictions/<model>_s<seed>.npz`` (for the parity plot). Seeds or
models run in parallel processes, each with its own ``--out``, become one table with
``deepfuse-bench merge`` (:func:`~deepfuse_bench.crystals_merge.merge_crystal_results`).

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
   pickle-free shards (``ShardedMultiModalDataset``) under ``<cache_dir>/crystal_bench/<key>``
   (key: cache format, featurizer identity, target and row ids), descriptions and embeddings in
   the featurizer's SQLite caches, so reruns skip featurization.
4. **Timing** (cold caches: describers called directly, featurizer and embedder with
   ``cache_dir=False``; one untimed warm-up call on NaCl first, so imports and model loading are not
   counted): the fast describer on ``n_timing`` structures of the training subset, robocrys on the
   first ``robocrys_sample`` of them (seconds each), the describer speed ratio as the median
   robocrys time over the median fast time on the *same* structures, MiniLM embedding time and the
   whole featurizer per structure.
5. **Training.** Labels normalized on train;
   :func:`~deepfuse_plugin.workflows.train_with_validation` keeps the epoch with the best
   validation RMSE (and stops early after ``early_stopping`` validations without improvement);
   metrics in the target's units. Throughput = training structures x epochs trained / fit wall
   time (validation passes included). Peak memory: :class:`~deepfuse_bench.environment.PeakRSS`.

Outputs (stem ``crystals`` for mp36k, ``crystals_castelli`` for the perovskites):
``<out>/<stem>.json`` (rewritten after every run), ``<stem>.md`` and ``<stem>.png`` (MAE bars and a
test parity plot).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepfuse_bench import crystals_castelli as castelli
from deepfuse_bench.crystals_data import (
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
from deepfuse_bench.crystals_report import format_markdown, planned_runs, write_outputs
from deepfuse_bench.crystals_runs import (
    SCHEDULE_KEYS,
    load_predictions,
    predictions_dir,
    stem,
    train_plan,
)
from deepfuse_bench.crystals_timing import (  # noqa: F401 (their names before the move)
    describer_speedup,
    time_describer,
    time_featurization,
)
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.environment import environment as base_environment
from deepfuse_plugin import workflows as wf

__all__ = [
    "DATASETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_MODELS",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SIZES",
    "MIN_FORMATION_ENERGY",
    "MODELS",
    "run_crystal_bench",
]

logger = logging.getLogger(__name__)

FORMAT = 2
DATASETS = ("mp36k", "castelli")
DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
#: Schedule of every model (constructor arguments of the deepfuse models): a cosine decay after a
#: one-epoch linear warm-up, gradient norm clipped to 1, stop after 10 validations without
#: improvement. See the module docstring of :mod:`deepfuse_bench.crystals` for how they were chosen.
DEFAULT_SCHEDULE: dict[str, Any] = {
    "lr_schedule": "cosine",
    "warmup_epochs": 1.0,
    "grad_clip": 1.0,
    "early_stopping": 10,
}
#: Settings that runs sharing one table must have in common (``--resume`` checks them).
SHARED_SETTINGS = (
    "dataset",
    "target",
    "full",
    "n_train",
    "n_val",
    "n_test",
    "subset_seed",
    "split_fractions",
    "epochs",
    "eval_every",
    "batch_size",
    "learning_rate",
    *SCHEDULE_KEYS,
    "chgnet_layers",
    "family",
    "n_zero_shot",
    "min_formation_energy",
    "zero_shot_castelli",
    "n_calibration",
    "n_castelli_eval",
    "device",
)


# -- the command ---------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Versions (molecule benchmark's record plus pymatgen, matgl, robocrys, chgnet)."""
    from importlib.metadata import PackageNotFoundError, version

    env = base_environment()
    for package in ("pymatgen", "matgl", "robocrys", "chgnet"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = None
    return env


def read_payload(json_path: str, way_out: str) -> dict[str, Any]:
    """The results at ``json_path``, written by this version of ``deepfuse-bench crystals``
    (``way_out``: what the user can do instead, for the error)."""
    with open(json_path) as fh:
        payload = json.load(fh)
    if payload.get("benchmark") != "crystals" or payload.get("format") != FORMAT:
        raise wf.WorkflowError(
            f"{json_path} was not written by this version of 'deepfuse-bench crystals' "
            f"(format {payload.get('format')}, expected {FORMAT}); {way_out}"
        )
    return payload


def differing(
    old: dict[str, Any] | None, new: dict[str, Any] | None, keys: Sequence[str]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` of the ``keys`` whose values differ."""
    old, new = old or {}, new or {}
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def check_same_settings(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """Runs sharing a table must have the same :data:`SHARED_SETTINGS` (rows, budget, schedule,
    zero-shot sets); ``where`` names the results that differ in the error."""
    differ = differing(old, new, SHARED_SETTINGS)
    if differ:
        raise wf.WorkflowError(f"{where} was made with other settings (old, new): {differ}")


def resume_payload(payload: dict[str, Any], json_path: str) -> None:
    """Take over the finished runs, stage times, timing, commands and time of the results at
    ``json_path``; their shared settings must be this run's."""
    previous = read_payload(json_path, "choose another --out")
    try:
        check_same_settings(previous["settings"], payload["settings"], json_path)
    except wf.WorkflowError as error:
        raise wf.WorkflowError(f"--resume: {error}; use the same ones, or another --out") from None
    old, new = previous["settings"], payload["settings"]
    for key in ("runs", "featurization", "zero_shot_castelli", "wall_time_s"):
        if key in previous:
            payload[key] = previous[key]
    payload["planned"] = planned_runs(previous)  # before the settings take this run's
    for key in ("seeds", "models"):  # every seed and model the table holds
        new[key] = list(dict.fromkeys([*old.get(key, []), *new[key]]))
    payload["commands"] = [*previous.get("commands", [previous.get("command")])]


def run_crystal_bench(
    data_dir: str | None = None,
    data_file: str | None = None,
    dataset: str = "mp36k",
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    full: bool = False,
    subset_seed: int = 0,
    seeds: Sequence[int] = (0,),
    epochs: int = DEFAULT_EPOCHS,
    eval_every: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    lr_schedule: str = DEFAULT_SCHEDULE["lr_schedule"],
    warmup_epochs: float = DEFAULT_SCHEDULE["warmup_epochs"],
    grad_clip: float | None = DEFAULT_SCHEDULE["grad_clip"],
    early_stopping: int | None = DEFAULT_SCHEDULE["early_stopping"],
    chgnet_layers: Sequence[int] | None = None,
    models: Sequence[str] | None = None,
    family: str | None = "sulfides",
    n_zero_shot: int | None = None,
    min_formation_energy: float | None = MIN_FORMATION_ENERGY,
    split_fractions: Sequence[float] = castelli.DEFAULT_FRACTIONS,
    castelli_file: str | None = None,
    zero_shot_castelli: bool = False,
    n_calibration: int = castelli.DEFAULT_N_CALIBRATION,
    n_castelli_eval: int | None = None,
    n_timing: int = 200,
    robocrys_sample: int = 10,
    cache_dir: str | None = None,
    out: str = "benchmarks",
    resume: bool = False,
    n_jobs: int = 1,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the crystal benchmark and write ``<out>/<stem>.{json,md,png}`` (stem ``crystals`` for
    mp36k, ``crystals_castelli`` for the perovskites).

    Parameters
    ----------
    data_dir, data_file:
        ``data_file`` (mp36k: any extended XYZ with ``material_id``, ``split`` and
        ``formation_energy_per_atom`` info keys) or ``<data_dir>/materials/mp36k.extxyz.xz``; one
        of them is required for mp36k. The Castelli file is ``castelli_file`` or
        ``<data_dir>/materials/perovskites_castelli.csv.gz``.
    dataset: str
        ``"mp36k"`` (MEGNet split) or ``"castelli"`` (seeded ``split_fractions`` split).
    n_train, n_val, n_test: int, optional
        First N rows of each part after the seeded shuffle. None: mp36k 2000/500/500
        (:data:`DEFAULT_SIZES`), Castelli the whole part. ``full=True``: every mp36k row.
    subset_seed: int
        Seed of the mp36k subset shuffle, of the Castelli split and of the calibration sample.
    seeds: sequence of int
        Model seeds: every model is trained once per seed.
    epochs, eval_every, batch_size, learning_rate:
        Shared training budget; the epoch with the best validation RMSE is kept.
    lr_schedule, warmup_epochs, grad_clip, early_stopping:
        Schedule given to every model (:data:`DEFAULT_SCHEDULE`; ``early_stopping=None`` trains
        every epoch).
    models: list of str
        Keys of :data:`MODELS`; default :data:`DEFAULT_MODELS`.
    family: str, optional
        mp36k: family carved out of every split and evaluated zero-shot on the test split (a
        name of :data:`~deepfuse_plugin.data.loaders.FAMILIES`); None: no carving.
    n_zero_shot: int, optional
        At most this many family structures (default: all of the test split's).
    min_formation_energy: float, optional
        mp36k rows below it are dropped (None keeps every row).
    zero_shot_castelli, n_calibration, n_castelli_eval:
        mp36k: also predict the Castelli perovskites with every trained model; the linear
        recalibration is fitted on ``n_calibration`` of them and scored on the others (at most
        ``n_castelli_eval``).
    n_timing, robocrys_sample:
        Structures timed with the fast describer / robocrys (0 skips robocrys).
    cache_dir: str, optional
        Featurized parts and the description/embedding caches (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``).
    resume: bool
        Keep and skip the runs already in ``<out>/<stem>.json``; continue an interrupted run.

    Returns
    -------
    dict
        The JSON payload.
    """
    import torch

    from deepfuse_plugin.feat.text import default_cache_dir

    if dataset not in DATASETS:
        raise wf.WorkflowError(f"Unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if zero_shot_castelli and dataset != "mp36k":
        raise wf.WorkflowError("--zero-shot-castelli evaluates models trained on mp36k")
    models = check_models(models or DEFAULT_MODELS)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise wf.WorkflowError("give at least one model seed")
    if epochs < 1:
        raise wf.WorkflowError(f"epochs must be >= 1, got {epochs}")
    mp36k = dataset == "mp36k"
    family = family if mp36k else None
    check_family(family)
    if mp36k:
        path = resolve_data_file(data_dir, data_file)
    else:
        path = castelli.resolve_castelli_file(data_dir, castelli_file)
        split_fractions = castelli.check_fractions(split_fractions)
    castelli_path = (
        castelli.resolve_castelli_file(data_dir, castelli_file) if zero_shot_castelli else None
    )
    given = {"train": n_train, "val": n_val, "test": n_test}
    if full and mp36k:
        sizes: dict[str, int | None] = {p: None for p in SPLITS}
    elif mp36k:
        sizes = {p: DEFAULT_SIZES[p] if n is None else n for p, n in given.items()}
    else:
        sizes = given
    cache_label = cache_dir or "$DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse"
    cache_dir = str(cache_dir or default_cache_dir())
    schedule = {
        "lr_schedule": lr_schedule,
        "warmup_epochs": warmup_epochs,
        "grad_clip": grad_clip,
        "early_stopping": early_stopping,
    }
    settings = {
        "dataset": dataset,
        "target": TARGET if mp36k else castelli.CASTELLI_TARGET,
        "full": bool(full and mp36k),
        "n_train": sizes["train"],
        "n_val": sizes["val"],
        "n_test": sizes["test"],
        "subset_seed": subset_seed,
        "split_fractions": None if mp36k else list(split_fractions),
        "seeds": seeds,
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        **schedule,
        # None: CHGNet's atom_fea (so tables made before the option share settings with new ones)
        "chgnet_layers": list(chgnet_layers) if chgnet_layers else None,
        "models": models,
        "family": family,
        "n_zero_shot": n_zero_shot if mp36k else None,
        "min_formation_energy": min_formation_energy if mp36k else None,
        "zero_shot_castelli": zero_shot_castelli,
        "n_calibration": n_calibration if zero_shot_castelli else None,
        "n_castelli_eval": n_castelli_eval if zero_shot_castelli else None,
        "n_timing": n_timing,
        "robocrys_sample": robocrys_sample,
        "describer": "fast",
        "threads": torch.get_num_threads(),
        "n_jobs": n_jobs,
        "cache_dir": cache_label,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"{stem(dataset)}.json")
    payload: dict[str, Any] = {
        "benchmark": "crystals",
        "format": FORMAT,
        "command": command or "deepfuse-bench crystals",
        "environment": environment(),
        "settings": settings,
        "memory_method": PeakRSS.method,
        "runs": [],
        "notes": list(NOTES),
    }
    if resume and os.path.exists(json_path):
        resume_payload(payload, json_path)
    payload.setdefault("commands", []).append(payload["command"])
    runs = [(m, s) for s in seeds for m in models]
    payload["planned"] = list(dict.fromkeys([*payload.get("planned", []), *runs]))
    done = {(r["model"], r["seed"]) for r in payload["runs"]}
    plan = [run for run in runs if run not in done]
    echo(
        f"deepfuse-bench crystals ({dataset}): {len(plan)} run(s) to do"
        + (f", {len(done)} already in {json_path}" if resume else "")
    )
    start, earlier = time.perf_counter(), payload.get("wall_time_s", 0.0)

    def wall_time() -> float:  # this command's time so far plus the resumed ones' (if recorded)
        return earlier + time.perf_counter() - start

    if mp36k:
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
            chgnet_layers=chgnet_layers,
        )
    else:
        data = castelli.prepare_castelli_data(
            path,
            models,
            split_fractions,
            sizes,
            subset_seed,
            cache_dir,
            n_timing,
            n_jobs=n_jobs,
            progress=progress,
            echo=echo,
            chgnet_layers=chgnet_layers,
        )
    data.info["dataset"] = dataset
    payload["data"] = data.info
    zero_shot = None
    if castelli_path is not None:
        zero_shot = castelli.prepare_zero_shot_castelli(
            castelli_path,
            data.featurizer,
            cache_dir,
            n_calibration,
            subset_seed,
            n_castelli_eval,
            echo=echo,
        )
        payload["zero_shot_castelli"] = zero_shot.info
    if "featurization" not in payload:
        payload["featurization"] = _time(data, robocrys_sample, progress, echo)
    payload["stage_times_s"] = {
        "read": data.info["read_s"],
        "featurize": data.info["featurize_s"],
    }
    budget = {
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        **schedule,
    }
    train_plan(plan, data, budget, payload, out, resume, zero_shot, wall_time, progress, echo)
    payload["wall_time_s"] = wall_time()
    folder = predictions_dir(out, dataset)
    write_outputs(payload, out, stem(dataset), load_predictions(folder, payload["runs"]))
    echo(format_markdown(payload).split("\n## Data and settings")[0])
    echo(f"Wrote {stem(dataset)}.json, .md and .png to {out} ({payload['wall_time_s']:.0f} s)")
    return payload


def _time(
    data: CrystalData, robocrys_sample: int, progress: bool, echo: Callable[[str], None]
) -> dict[str, Any]:
    echo(
        f"timing featurization on {len(data.timing_structures)} structures "
        f"(robocrys on {min(robocrys_sample, len(data.timing_structures))})"
    )
    start = time.perf_counter()
    timing = time_featurization(data.timing_structures, list(data.specs), robocrys_sample, progress)
    timing["wall_s"] = time.perf_counter() - start
    return timing


NOTES = [
    "Reference MAEs on the full MP-2018.6.1 split (60k training structures, data README): CGCNN "
    "0.039, MEGNet 0.028, ALIGNN 0.022 eV/atom. A subset run trains on far fewer structures for "
    "far fewer epochs, so its absolute MAEs are not comparable to those; the comparison between "
    "models (same rows, same budget) is the point.",
    "CHGNet (the chgnet views) is trained on MPtrj, Materials Project relaxations that include "
    "mp36k's structures and the energies its labels come from, test split included: an mp36k "
    "row that reads it is marked leaked and is no fair test of anything. The Castelli "
    "perovskites (GPAW/RPBE, not from the Materials Project) are where the pretrained view is "
    "judged.",
]
