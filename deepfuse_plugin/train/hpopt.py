"""Hyper-parameter search on validation data (Optuna, TPE), resumable, with a table and a plot.

Every trial builds a model with suggested settings, trains it with validation-based epoch
selection (:func:`~deepfuse_plugin.train.loop.train_with_validation`) and reports its best
validation score; the test split is never seen. The study lives in ``<out>/study.db`` (SQLite), so
running the same search again continues it until ``n_trials`` trials are complete. The best
settings go to ``<out>/best_params.json``, which ``deepfuse train --params`` reads.

Examples
--------
>>> import optuna
>>> from deepfuse_plugin.train.hpopt import suggest_settings
>>> trial = optuna.trial.FixedTrial({"learning_rate": 1e-3, "encoder_dim": 128, "dropout": 0.1,
...     "modality_dropout": 0.0, "epochs": 30, "mask_start": 0.3, "mask_span": 0.3,
...     "fusion_loss_weight": 0.1, "unimodal_loss_weight": 1.0})
>>> settings = suggest_settings(trial, "dynamic")
>>> settings["mask_end"], settings["epochs"]
(0.6, 30)
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["suggest_settings", "register_search_space", "run_hpopt", "HpoptResult"]

SearchSpace = Callable[[Any], dict[str, Any]]


def _common_space(trial: Any) -> dict[str, Any]:
    """Settings every deepfuse model has."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        "encoder_dim": trial.suggest_categorical("encoder_dim", [64, 128, 256]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "modality_dropout": trial.suggest_float("modality_dropout", 0.0, 0.3),
        "epochs": trial.suggest_int("epochs", 10, 60, step=10),
    }


def _dynamic_space(trial: Any) -> dict[str, Any]:
    start = trial.suggest_float("mask_start", 0.0, 0.4)
    return {
        "mask_start": start,
        "mask_end": round(start + trial.suggest_float("mask_span", 0.0, 0.3), 6),
        "fusion_loss_weight": trial.suggest_float("fusion_loss_weight", 0.01, 1.0, log=True),
        "unimodal_loss_weight": trial.suggest_categorical("unimodal_loss_weight", [0.0, 0.5, 1.0]),
    }


def _late_space(trial: Any) -> dict[str, Any]:
    return {"combine": trial.suggest_categorical("combine", ["mean", "learned", "stacking"])}


def _moe_space(trial: Any) -> dict[str, Any]:
    return {
        "balance_weight": trial.suggest_float("balance_weight", 1e-3, 0.1, log=True),
        "top_k": trial.suggest_categorical("top_k", [1, 2]),
    }


def _unimodal_loss_space(trial: Any) -> dict[str, Any]:
    return {
        "unimodal_loss_weight": trial.suggest_categorical("unimodal_loss_weight", [0.0, 0.5, 1.0])
    }


#: Model-specific parts of the search space, added to the common part.
SEARCH_SPACES: dict[str, SearchSpace] = {
    "dynamic": _dynamic_space,
    "late": _late_space,
    "moe": _moe_space,
    "early": _unimodal_loss_space,
    "crossattention": lambda trial: {},
    "unimodal": lambda trial: {},
}


def register_search_space(model: str, space: SearchSpace) -> None:
    """Search the settings ``space(trial)`` returns (besides the common ones) for ``model``."""
    SEARCH_SPACES[model] = space


def suggest_settings(trial: Any, model: str) -> dict[str, Any]:
    """Constructor settings (and ``epochs``) for one trial of ``model``."""
    return {**_common_space(trial), **SEARCH_SPACES.get(model, lambda t: {})(trial)}


@dataclass
class HpoptResult:
    """Outcome of a search: the best trial's settings and score, and where everything went."""

    best_params: dict[str, Any]
    best_score: float
    score_name: str
    n_trials: int
    out_dir: Path


def run_hpopt(
    train: Any,
    valid: Any,
    transformers: Sequence[Any],
    mode: str,
    modalities: Sequence[Any],
    n_tasks: int,
    out_dir: str | os.PathLike,
    model: str = "dynamic",
    n_trials: int = 20,
    timeout_s: float | None = None,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    progress: bool = True,
) -> HpoptResult:
    """Search ``model``'s settings with TPE, scoring each trial on ``valid``.

    Parameters
    ----------
    train, valid: DeepChem datasets (labels normalized as the model will see them)
    transformers: the label transformers (scores are in original units)
    mode: ``"regression"`` or ``"classification"``
    modalities: the featurizer's modality specs
    n_tasks: int
    out_dir: path
        ``study.db``, ``trials.csv``, ``trials.md``, ``best_params.json``, ``history.png``.
    model: str
        A registered model name (``dynamic``, ``late``, ``early``, ``moe``, ...).
    n_trials: int
        Trials to complete in total (a resumed study counts the ones already complete).
    timeout_s: float, optional
        Stop starting new trials after this many seconds.
    seed: int
        Sampler seed; every trial's model is seeded with ``seed`` too.
    fixed: dict, optional
        Constructor settings that stay fixed (not searched), e.g. ``{"batch_size": 64}``.
    """
    import optuna

    from deepfuse_plugin.train.loop import train_with_validation
    from deepfuse_plugin.train.utils import resolve_model_class, set_seed

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cls = resolve_model_class(model)
    study = optuna.create_study(
        study_name=f"deepfuse-{model}",
        direction="minimize",
        load_if_exists=True,
        storage=f"sqlite:///{out / 'study.db'}",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    score_name = {"name": ""}

    def objective(trial: Any) -> float:
        settings = {**suggest_settings(trial, model), **(fixed or {})}
        epochs = int(settings.pop("epochs"))
        set_seed(seed)
        network = model_cls(n_tasks, list(modalities), mode=mode, progress=False, **settings)
        with tempfile.TemporaryDirectory(prefix="deepfuse_hpopt_") as scratch:
            result = train_with_validation(
                network,
                train,
                valid,
                epochs,
                1,
                transformers,
                mode,
                scratch,
                desc=f"trial {trial.number}",
                progress=False,
            )
        score_name["name"] = result.score_name
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("score_name", result.score_name)
        trial.set_user_attr("train_time_s", round(result.train_time_s, 1))
        return result.best_score if math.isfinite(result.best_score) else float("inf")

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if done < n_trials:
        study.optimize(
            objective,
            n_trials=n_trials - done,
            timeout=timeout_s,
            show_progress_bar=progress,
            catch=(ValueError,),
        )
    return _write_results(study, out, model, score_name["name"])


def _write_results(study: Any, out: Path, model: str, score_name: str) -> HpoptResult:
    frame = study.trials_dataframe()
    frame.to_csv(out / "trials.csv", index=False)
    complete = frame[frame["state"] == "COMPLETE"].sort_values("value")
    columns = (
        ["number", "value"]
        + [c for c in frame.columns if c.startswith("params_")]
        + [c for c in ("user_attrs_best_epoch", "duration") if c in frame.columns]
    )
    (out / "trials.md").write_text(complete[columns].to_markdown(index=False) + "\n")
    best = study.best_trial
    name = best.user_attrs.get("score_name", score_name)
    params = {k: v for k, v in best.params.items() if k != "mask_span"}
    if "mask_span" in best.params:
        params["mask_end"] = round(best.params["mask_start"] + best.params["mask_span"], 6)
    payload = {
        "model": model,
        "params": params,
        "validation_score": best.value,
        "score_name": name,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "trials_complete": int(len(complete)),
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    (out / "best_params.json").write_text(json.dumps(payload, indent=1) + "\n")
    _plot_history(complete, out / "history.png", name)
    return HpoptResult(params, float(best.value), name, int(len(complete)), out)


def _plot_history(complete: Any, path: Path, score_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = complete.sort_values("number")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ordered["number"], ordered["value"], "o", alpha=0.6, label="trial")
    ax.plot(ordered["number"], ordered["value"].cummin(), "-", label="best so far")
    ax.set(
        xlabel="trial",
        ylabel=f"validation {score_name} (lower is better)",
        title="hyper-parameter search",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_best_params(path: str | os.PathLike) -> dict[str, Any]:
    """The ``params`` of a ``best_params.json`` (``epochs`` included), for ``deepfuse train``."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
        raise ValueError(f"{path} is not a deepfuse best_params.json (no 'params' mapping)")
    return dict(payload["params"])
