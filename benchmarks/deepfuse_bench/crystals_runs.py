"""Runs of the crystal benchmark: build, train and score one model with one seed (resumable), the
``x CGCNN`` ratios, and the test predictions kept for the parity plot; see
:mod:`deepfuse_bench.crystals`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import numpy as np

from deepfuse_bench import crystals_castelli as castelli
from deepfuse_bench.crystals_data import BASELINE, MODELS, CrystalData, is_leaked
from deepfuse_bench.crystals_report import STEM, write_outputs
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.records import fmt as _fmt
from deepfuse_bench.runner import train_or_start_over
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.train import resume as resume_lib

logger = logging.getLogger(__name__)

#: Constructor arguments of the schedule every model gets from the budget.
SCHEDULE_KEYS = ("lr_schedule", "warmup_epochs", "grad_clip", "early_stopping")


def stem(dataset: str) -> str:
    """File stem of a dataset's outputs: ``crystals`` (mp36k), ``crystals_castelli``."""
    return STEM if dataset == "mp36k" else f"{STEM}_{dataset}"


def build_model(name: str, specs: dict[str, Any], budget: dict[str, Any], model_dir: str) -> Any:
    """The model ``name`` on its modalities, with the budget's batch size, learning rate and
    schedule."""
    import deepfuse_plugin

    entry = MODELS[name]
    cls = getattr(deepfuse_plugin, entry.model_class)
    return cls(
        1,
        [specs[m] for m in entry.modalities],
        mode="regression",
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        **{key: budget[key] for key in SCHEDULE_KEYS},
        model_dir=model_dir,
        progress=False,
    )


def _train(
    name: str, data: CrystalData, budget: dict[str, Any], model_dir: str, seed: int, progress: bool
) -> tuple[Any, wf.TrainingResult]:
    """Build and train with resume points in ``model_dir``; a resume point of another plan is
    discarded (the run starts over, with a warning)."""

    def build() -> Any:
        wf.set_seed(seed)
        return build_model(name, data.specs, budget, model_dir)

    def fit(model: Any) -> wf.TrainingResult:
        return wf.train_with_validation(
            model,
            data.parts["train"],
            data.parts["val"],
            budget["epochs"],
            budget["eval_every"],
            data.transformers,
            "regression",
            model_dir,
            desc=f"{name} s{seed}",
            progress=progress,
            resumable=True,
        )

    return train_or_start_over(build, fit, model_dir)


def train_one(
    name: str,
    seed: int,
    data: CrystalData,
    budget: dict[str, Any],
    work_dir: str,
    resume: bool,
    zero_shot: castelli.ZeroShotSet | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """Train one model with one seed (best validation epoch kept), score it on every part it has
    to answer for: the run's record and its test predictions."""
    import torch

    model_dir = os.path.join(work_dir, f"{name}_s{seed}")
    if not (resume and resume_lib.read_state(model_dir) is not None):
        wf.fresh_model_dir(model_dir)
    with PeakRSS() as memory:
        model, result = _train(name, data, budget, model_dir, seed, progress)
        valid, _ = wf.evaluate(model, data.parts["val"], data.transformers, "regression")
        test, pred = wf.evaluate(model, data.parts["test"], data.transformers, "regression")
        family = data.parts.get("zero_shot")
        family_metrics = (
            wf.evaluate(model, family, data.transformers, "regression")[0]
            if family is not None and len(family)
            else None
        )
        transfer = (
            castelli.castelli_zero_shot(model, zero_shot, data.transformers) if zero_shot else None
        )
    config = model.get_config()
    config["modalities"] = model.modality_names
    trained_epochs = result.stopped_at or budget["epochs"]
    record = {
        "model": name,
        "label": MODELS[name].label,
        "dataset": data.info.get("dataset", "mp36k"),
        "leaked": is_leaked(data.info.get("dataset", "mp36k"), name),
        "model_class": type(model).__name__,
        "modalities": model.modality_names,
        "hyperparameters": config,
        "seed": seed,
        "epochs": budget["epochs"],
        "epochs_trained": trained_epochs,
        "best_epoch": result.best_epoch,
        "stopped_at": result.stopped_at,
        "selection": f"best validation {result.score_name}",
        "history": [
            {"epoch": h["epoch"], "rmse": h["score"], "mae": h.get("mae")} for h in result.history
        ],
        "valid": valid,
        "test": test,
        "valid_mae": valid.get("mae"),
        "test_mae": test.get("mae"),
        "zero_shot_mae": None if family_metrics is None else family_metrics.get("mae"),
        "castelli_zero_shot": transfer,
        "train_time_s": result.train_time_s,
        "train_time_h": result.train_time_s / 3600,
        "throughput_structures_per_s": len(data.parts["train"])
        * trained_epochs
        / max(result.train_time_s, 1e-9),
        "peak_rss_mib": memory.peak_mib,
        "peak_rss_delta_mib": memory.delta_mib,
        "torch_threads": torch.get_num_threads(),
        "device": str(model.device),
    }
    if result.resumed_at:
        record["resumed_at_epochs"] = result.resumed_at
    shutil.rmtree(model_dir, ignore_errors=True)
    return record, np.asarray(pred).ravel()


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """``test_ratio_to_cgcnn`` / ``zero_shot_ratio_to_cgcnn`` on every run: its MAE over the
    CGCNN run's with the same seed (None without one)."""
    base = {r["seed"]: r for r in runs if r["model"] == BASELINE}
    for run in runs:
        for key in ("test_mae", "zero_shot_mae"):
            ref, value = base.get(run["seed"], {}).get(key), run.get(key)
            ratio = value / ref if _finite(ref) and _finite(value) and ref != 0 else None
            run[key.replace("_mae", "_ratio_to_cgcnn")] = ratio


# -- predictions kept for the plot ---------------------------------------------------------------
def predictions_dir(out: str, dataset: str) -> str:
    return os.path.join(out, f"{stem(dataset)}_predictions")


def save_predictions(folder: str, name: str, seed: int, data: CrystalData, pred: Any) -> None:
    """``<folder>/<name>_s<seed>.npz``: test ids, labels and predictions (plain arrays)."""
    test = data.parts["test"]
    y = wf.denormalize(np.asarray(test.y), data.info["normalization"]).ravel()
    os.makedirs(folder, exist_ok=True)
    ids = np.asarray([str(i) for i in test.ids])
    np.savez(os.path.join(folder, f"{name}_s{seed}.npz"), ids=ids, y=y, pred=np.asarray(pred))


def load_predictions(folder: str, runs: Sequence[dict[str, Any]]) -> dict[str, tuple]:
    """``{model: (y, pred)}`` of each model's lowest-seed run found in ``folder``."""
    out: dict[str, tuple] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        path = os.path.join(folder, f"{run['model']}_s{run['seed']}.npz")
        if run["model"] not in out and os.path.exists(path):
            with np.load(path, allow_pickle=False) as saved:
                out[run["model"]] = (saved["y"], saved["pred"])
    return out


def train_plan(
    plan: Sequence[tuple[str, int]],
    data: CrystalData,
    budget: dict[str, Any],
    payload: dict[str, Any],
    out: str,
    resume: bool,
    zero_shot: castelli.ZeroShotSet | None,
    wall_time: Callable[[], float],
    progress: bool,
    echo: Callable[[str], None],
) -> None:
    """Train every (model, seed) of the plan in turn; the record is appended to
    ``payload["runs"]`` and the outputs rewritten after each, with the wall time so far
    (``wall_time()``), so that a stopped process leaves its time up to its last finished run."""
    from tqdm.auto import tqdm

    dataset = payload["settings"]["dataset"]
    work_dir = os.path.join(out, f"unfinished_{stem(dataset)}")
    folder = predictions_dir(out, dataset)
    for name, seed in tqdm(plan, desc="crystal runs", unit="run", disable=not progress):
        state = resume_lib.read_state(os.path.join(work_dir, f"{name}_s{seed}"))
        if resume and state is not None:
            echo(f"  {name} seed {seed}: continuing after epoch {state.epochs_done}")
        record, pred = train_one(name, seed, data, budget, work_dir, resume, zero_shot, progress)
        save_predictions(folder, name, seed, data, pred)
        payload["runs"].append(record)
        add_ratios(payload["runs"])
        echo(f"  {name:<18} seed {seed}: {run_summary(record)}")
        payload["wall_time_s"] = wall_time()
        write_outputs(payload, out, stem(dataset))
    if os.path.isdir(work_dir) and not os.listdir(work_dir):
        os.rmdir(work_dir)


def run_summary(record: dict[str, Any]) -> str:
    """One line: valid/test MAE, the kept epoch, time and throughput (and the zero-shot MAEs)."""
    text = (
        f"valid MAE {_fmt(record['valid_mae'])}, test MAE {_fmt(record['test_mae'])}"
        f"{' (leaked)' if record['leaked'] else ''}, best epoch {record['best_epoch']}"
        f"/{record['epochs_trained']}, {record['train_time_s']:.0f} s, "
        f"{record['throughput_structures_per_s']:.0f} structures/s"
    )
    transfer = record.get("castelli_zero_shot")
    if transfer:
        text += (
            f"; Castelli zero-shot MAE raw {_fmt(transfer['raw_mae'])}, recalibrated "
            f"{_fmt(transfer['recalibrated_mae'])}"
        )
    return text
