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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError, RunFolderError
from deepfuse_plugin.models._settings import positive_int

logger = logging.getLogger(__name__)

__all__ = [
    "suggest_settings",
    "register_search_space",
    "run_hpopt",
    "HpoptResult",
    "check_study_setup",
    "remove_search",
    "load_best_params",
    "read_best_params",
    "HPOPT_FILES",
]

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


#: Files a search writes into its folder (``--overwrite`` removes these and nothing else).
HPOPT_FILES = ("study.db", "trials.csv", "trials.md", "best_params.json", "history.png")
#: Study attribute holding what the search was run on (data, model, fixed settings).
SETUP_ATTR = "deepfuse_setup"
#: Entries of a setup that describe it without defining it (a moved CSV is the same data).
SETUP_INFO_KEYS = ("csv",)


@dataclass
class HpoptResult:
    """Outcome of a search: the best trial's settings and score, and where everything went.

    ``table`` is the complete trials as a Markdown table, best first (``trials.md``).
    """

    best_params: dict[str, Any]
    best_score: float
    score_name: str
    n_trials: int
    out_dir: Path
    table: str = ""


def _optuna() -> Any:
    """The ``optuna`` module, or a clear error naming the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise InvalidSettingError(
            "The hyper-parameter search needs Optuna: pip install 'deepfuse-plugin[hpopt]'"
        ) from None
    return optuna


def study_name(model: str) -> str:
    """The Optuna study name of a search over ``model``'s settings."""
    return f"deepfuse-{model}"


def _storage_url(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def check_study_setup(out_dir: str | os.PathLike, model: str, setup: dict[str, Any] | None) -> int:
    """Whether the search folder ``out_dir`` can continue with ``model`` and ``setup``; returns
    the number of trials already complete there (0 for a new search). Nothing is changed.

    Raises
    ------
    RunFolderError
        ``out_dir`` is a file, its ``study.db`` is not a readable study, or it holds a search
        of another model or another setup (the message names every difference).
    """
    optuna = _optuna()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(
            f"--out {out} exists and is a file, not a folder; choose another --out"
        )
    if not (out / "study.db").exists():
        return 0
    hint = "choose another --out, or pass --overwrite to start the search over"
    try:
        names = optuna.study.get_all_study_names(storage=_storage_url(out))
    except Exception as err:  # SQLAlchemy/Optuna errors of a damaged or foreign file
        raise RunFolderError(
            f"{out / 'study.db'} is not a readable Optuna study ({type(err).__name__}); {hint}"
        ) from None
    others = [n.removeprefix("deepfuse-") for n in names if n != study_name(model)]
    if others:
        raise RunFolderError(
            f"{out} holds a search of model {others[0]!r}, not {model!r}: a search continues "
            f"only with the same model and data; {hint}"
        )
    if study_name(model) not in names:
        return 0
    study = optuna.load_study(study_name=study_name(model), storage=_storage_url(out))
    stored = study.user_attrs.get(SETUP_ATTR)
    differences = setup_differences(stored, setup) if setup is not None else []
    if differences:
        raise RunFolderError(
            f"{out} holds a search of other data or settings ({'; '.join(differences)}): "
            f"a search continues only with the same data and settings; {hint}"
        )
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def setup_differences(stored: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``"key: X there, Y now"`` for every entry of ``current`` that a stored setup has
    otherwise (:data:`SETUP_INFO_KEYS` aside); a study without a stored setup differs."""
    if not isinstance(stored, dict):
        return ["the study there records no setup (made outside deepfuse hpopt)"]
    keys = sorted((set(stored) | set(current)) - set(SETUP_INFO_KEYS))
    return [
        f"{k}: {stored.get(k)!r} there, {current.get(k)!r} now"
        for k in keys
        if stored.get(k) != current.get(k)
    ]


def remove_search(out_dir: str | os.PathLike) -> None:
    """Remove the files of an earlier search from ``out_dir`` (:data:`HPOPT_FILES` only; any
    other file there is kept)."""
    for name in HPOPT_FILES:
        path = Path(out_dir) / name
        if path.is_file():
            path.unlink()


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
    eval_every: int = 1,
    setup: dict[str, Any] | None = None,
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
        Settings that are not searched. A searched name (e.g. ``{"epochs": 2}``) takes that value
        in every trial and in ``best_params.json``; other names are constructor settings (e.g.
        ``{"batch_size": 64}``).
    eval_every: int
        Validate every N epochs; a trial scores its best validated epoch.
    setup: dict, optional
        What the search runs on (data, model, settings), JSON values. Stored with a new study; a
        stored study with another setup is refused (:func:`check_study_setup`).

    Raises
    ------
    RunFolderError
        ``out_dir`` holds a search of another model or setup.
    InvalidSettingError
        ``n_trials`` < 1, or no trial completed (the message gives the trials' errors).
    """
    from deepfuse_plugin.train.loop import train_with_validation
    from deepfuse_plugin.train.utils import resolve_model_class, set_seed

    optuna = _optuna()
    if not isinstance(n_trials, int) or n_trials < 1:
        raise InvalidSettingError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise InvalidSettingError(
            f"timeout must be a finite number of seconds > 0, got {timeout_s}"
        )
    out = Path(out_dir)
    check_study_setup(out, model, setup)
    out.mkdir(parents=True, exist_ok=True)
    model_cls = resolve_model_class(model)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(model),
        direction="minimize",
        storage=_storage_url(out),
        load_if_exists=True,
    )
    if setup is not None and SETUP_ATTR not in study.user_attrs:
        study.set_user_attr(SETUP_ATTR, setup)
    searched = _searched_names(model)
    fixed = dict(fixed or {})
    pinned = {k: v for k, v in fixed.items() if k in searched}
    # a resumed study must not replay the first session's random start-up trials: the sampler's
    # seed moves on by the number of trials already run (still reproducible)
    sampler: Any = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    if pinned:
        with warnings.catch_warnings():  # PartialFixedSampler is "experimental" since Optuna 2.4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(pinned, sampler)
    study.sampler = sampler
    score_name = {"name": ""}

    def objective(trial: Any) -> float:
        try:
            result = run_trial(trial)
        except ValueError as err:  # a setting this data cannot take: the next trial goes on
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:300])
            raise
        score_name["name"] = result.score_name
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("score_name", result.score_name)
        trial.set_user_attr("train_time_s", round(result.train_time_s, 1))
        return result.best_score if math.isfinite(result.best_score) else float("inf")

    def run_trial(trial: Any) -> Any:
        settings = {**suggest_settings(trial, model), **fixed}
        epochs = int(settings.pop("epochs"))
        set_seed(seed)
        network = model_cls(n_tasks, list(modalities), mode=mode, progress=False, **settings)
        with tempfile.TemporaryDirectory(prefix="deepfuse_hpopt_") as scratch:
            return train_with_validation(
                network,
                train,
                valid,
                epochs,
                eval_every,
                transformers,
                mode,
                scratch,
                desc=f"trial {trial.number}",
                progress=False,
            )

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done < n_trials:
        with warnings.catch_warnings():  # a pinned value outside its search range is meant
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            study.optimize(
                objective,
                n_trials=n_trials - done,
                timeout=timeout_s,
                show_progress_bar=progress,
                catch=(ValueError,),
            )
    return _write_results(study, out, model, score_name["name"], eval_every)


def _searched_names(model: str) -> set[str]:
    """Names ``model``'s search space suggests (read with a throw-away in-memory trial)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest_settings(trial, model)
    return set(trial.params) | {"mask_end"}


def _write_results(
    study: Any, out: Path, model: str, score_name: str, eval_every: int
) -> HpoptResult:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        failures = [
            f"trial {t.number}: {t.user_attrs.get('error', t.state.name.lower())}"
            for t in study.trials
        ]
        raise InvalidSettingError(
            f"No trial of the search in {out} completed ({'; '.join(failures[-3:]) or 'none ran'}"
            "); check the data and settings, or give a longer --timeout"
        )
    frame = study.trials_dataframe()
    frame.to_csv(out / "trials.csv", index=False)
    best = study.best_trial
    name = best.user_attrs.get("score_name", score_name) or "score"
    table = _trials_table(frame, name)
    (out / "trials.md").write_text(table + "\n")
    params = _settings_of(best.params)
    payload = {
        "model": model,
        "params": params,
        "validation_score": best.value,
        "score_name": name,
        "best_epoch": best.user_attrs.get("best_epoch"),
        # the validation interval the trials were scored with: `deepfuse train --params` keeps it
        "eval_every": eval_every,
        "trials_complete": len(complete),
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    (out / "best_params.json").write_text(json.dumps(payload, indent=1) + "\n")
    _plot_history(frame[frame["state"] == "COMPLETE"], out / "history.png", name)
    return HpoptResult(params, float(best.value), name, len(complete), out, table)


def _settings_of(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's constructor settings (``mask_span`` turned back into ``mask_end``)."""
    settings = {k: v for k, v in params.items() if k != "mask_span"}
    if "mask_span" in params:
        settings["mask_end"] = round(params["mask_start"] + params["mask_span"], 6)
    return settings


def _trials_table(frame: Any, score_name: str) -> str:
    """The complete trials as a Markdown table, best (lowest score) first."""
    complete = frame[frame["state"] == "COMPLETE"].sort_values("value")
    columns = {"number": "trial", "value": f"validation {score_name}"}
    columns.update({c: c.removeprefix("params_") for c in frame.columns if c.startswith("params_")})
    if "user_attrs_best_epoch" in frame.columns:
        columns["user_attrs_best_epoch"] = "best epoch"
    table = complete[list(columns)].rename(columns=columns)
    if "mask_span" in table.columns:  # shown as the setting it makes (as in best_params.json)
        table["mask_span"] = (table["mask_start"] + table["mask_span"]).round(6)
        table = table.rename(columns={"mask_span": "mask_end"})
    if "duration" in frame.columns:
        table["seconds"] = complete["duration"].dt.total_seconds().round(1)
    return str(table.to_markdown(index=False, floatfmt=".4g"))


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
    """The ``params`` of a ``best_params.json`` (``epochs`` included), for ``deepfuse train``.

    Raises
    ------
    InvalidInputError
        The file is missing, not JSON, or has no ``params`` mapping.
    """
    return dict(read_best_params(path)["params"])


def read_best_params(path: str | os.PathLike) -> dict[str, Any]:
    """The whole ``best_params.json``: ``params``, the score, and ``eval_every``, the validation
    interval the search scored its trials with (``deepfuse train --params`` keeps it; files
    written before it was recorded lack it).

    Raises
    ------
    InvalidInputError
        The file is missing, not JSON, has no ``params`` mapping, or an ``eval_every`` that is
        not a whole number >= 1.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(
            f"--params {path} does not exist; give the best_params.json that "
            "'deepfuse hpopt --out DIR' wrote (DIR/best_params.json)"
        ) from None
    except (OSError, ValueError) as err:  # a folder, unreadable bytes, not JSON
        raise InvalidInputError(
            f"{path} is not a deepfuse best_params.json ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
        raise InvalidInputError(f"{path} is not a deepfuse best_params.json (no 'params' mapping)")
    if payload.get("eval_every") is not None:
        try:
            positive_int("eval_every", payload["eval_every"])
        except InvalidSettingError as err:
            # the file is the input at fault: name it, keep the setting's rule in one place
            raise InvalidInputError(
                f"{path}: {err}; give the file 'deepfuse hpopt' wrote"
            ) from None
    return payload
