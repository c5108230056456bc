"""End-to-end workflows behind the ``deepfuse`` command: train on a CSV, predict from a saved run.

Everything here is a plain function that tests (and notebooks) can call; :mod:`deepfuse_plugin.cli`
only parses arguments. DeepChem does the data work (datasets, splitters, transformers, metrics);
this module adds the glue a command-line user needs: input checks with clear messages, validation
based checkpoint selection, and a run folder that ``deepfuse predict`` can use on its own.

A run folder written by :func:`train_from_csv` (and by ``deepfuse demo``) looks like::

    DIR/model/              the model (``MultiModalTorchModel.load(DIR/model)``), best valid epoch;
                            while training also its resume point (``train --resume``)
    DIR/deepfuse_run.json   model name, SMILES column, tasks, mode, modalities, featurizer settings,
                            y normalization (mean/std per task), split and training settings
    DIR/metrics.json        metrics on the valid and test splits (original label units)
    DIR/std_scales.json     with ``--uncertainty evidential`` (regression): the std factor per set
                            of present modalities, fitted on the validation split
                            (:func:`~deepfuse_plugin.models.calibration.fit_std_scales`)
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from deepfuse_plugin import run_folder
from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError, RunFolderError
from deepfuse_plugin.inputs import (BINARY_SIGNATURES, MAX_ABS_LABEL, MISSING_LABELS,  # noqa: F401
                                    WorkflowError, labels_and_weights, parse_labels,
                                    rdkit_log_disabled, read_csv_checked, smiles_problems,
                                    valid_smiles_mask)
from deepfuse_plugin.run_folder import METRICS_FILE, RUN_FILE, STD_SCALES_FILE

if TYPE_CHECKING:
    from deepfuse_plugin.resume import ResumeState

logger = logging.getLogger(__name__)

RUN_FORMAT = 1
class _FusionModels(Mapping):
    """``--model`` name -> class: a read-only view of the fusion models of
    :mod:`deepfuse_plugin.models.registry` (one registry for the CLI, workflows and harness)."""

    def __getitem__(self, name: str) -> type:
        from deepfuse_plugin.models.registry import available_models, get_model_class
        if name not in available_models("fusion"):
            raise KeyError(name)
        return get_model_class(name, kind="fusion")

    def __iter__(self) -> Iterator[str]:
        from deepfuse_plugin.models.registry import available_models
        return iter(available_models("fusion"))

    def __len__(self) -> int:
        return len(list(iter(self)))


MODELS: Mapping[str, type] = _FusionModels()

#: Featurizer keyword arguments recorded with a run (the rest is in the model's modality specs).
FEATURIZER_KEYS = ("ecfp_radius", "ecfp_size", "ecfp_counts", "max_length")

SPLITS = ("scaffold", "random")
MODES = ("regression", "classification")


# -- small utilities ---------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed Python, NumPy (DeepChem's batch shuffling) and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def register_model(name: str, model_class: type) -> None:
    """Deprecated: decorate the class with
    :func:`deepfuse_plugin.models.registry.register_model` instead."""
    import warnings

    from deepfuse_plugin.models.registry import register_model as register

    warnings.warn("workflows.register_model is deprecated; use the @register_model decorator "
                  "of deepfuse_plugin.models.registry", FutureWarning, stacklevel=2)
    register(name, kind="fusion")(model_class)


def resolve_model_class(name: str) -> type:
    """The fusion model class for a ``--model`` name (see :mod:`deepfuse_plugin.models.registry`).

    Raises
    ------
    WorkflowError
        Unknown name.
    """
    import deepfuse_plugin  # noqa: F401  (importing it registers every model)
    from deepfuse_plugin.models.registry import available_models, get_model_class

    if name not in available_models("fusion"):
        raise WorkflowError(f"Unknown model {name!r}; available: {available_models('fusion')}")
    return get_model_class(name, kind="fusion")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NumPy values converted, NaN/inf as null)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_jsonable(payload), fh, indent=1)
        fh.write("\n")


def make_dataset(X: np.ndarray, y: np.ndarray | None, w: np.ndarray | None,
                 ids: Sequence[str]) -> Any:
    """A ``dc.data.NumpyDataset`` (object ``X`` kept as is)."""
    from deepchem.data import NumpyDataset

    return NumpyDataset(X, y, w, np.asarray(ids, dtype=object))


def split_indices(dataset: Any, split: str, seed: int, frac: tuple[float, float, float] = (0.8, 0.1,
                                                                                          0.1)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/valid/test indices from DeepChem's ``ScaffoldSplitter`` or ``RandomSplitter``.

    The indices can be applied to any dataset with the same rows (e.g. a baseline featurization),
    so every model sees exactly the same split.
    """
    import deepchem as dc

    if split not in SPLITS:
        raise WorkflowError(f"Unknown split {split!r}; choose one of {list(SPLITS)}")
    splitter = dc.splits.ScaffoldSplitter() if split == "scaffold" else dc.splits.RandomSplitter()
    train, valid, test = splitter.split(dataset, frac_train=frac[0], frac_valid=frac[1],
                                        frac_test=frac[2], seed=seed)
    return np.asarray(train, int), np.asarray(valid, int), np.asarray(test, int)


def fit_normalizer(train: Any) -> Any:
    """``dc.trans.NormalizationTransformer(transform_y=True)`` fitted on ``train``.

    DeepChem computes the mean/std over every entry, including weight-0 (missing) labels stored as
    0; when there are such entries the statistics are recomputed over the labelled entries only.
    """
    import deepchem as dc

    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=train)
    w = np.asarray(train.w, dtype=np.float64).reshape(len(train), -1)
    if (w == 0).any():
        y = np.asarray(train.y, dtype=np.float64).reshape(len(train), -1)
        labelled = np.where(w > 0, y, np.nan)
        means = np.nan_to_num(np.nanmean(labelled, axis=0))
        stds = np.nan_to_num(np.nanstd(labelled, axis=0), nan=1.0)
        stds[stds == 0] = 1.0
        transformer.y_means, transformer.y_stds = means, stds
    return transformer


def normalizer_to_dict(transformer: Any | None) -> dict[str, list[float]] | None:
    """JSON form of a y normalization (``None`` when labels were not normalized)."""
    if transformer is None:
        return None
    return {"y_means": np.atleast_1d(transformer.y_means).tolist(),
            "y_stds": np.atleast_1d(transformer.y_stds).tolist()}


def denormalize(predictions: np.ndarray, normalization: dict[str, list[float]] | None
                ) -> np.ndarray:
    """Undo a y normalization stored by :func:`normalizer_to_dict` (``pred * std + mean``)."""
    if not normalization:
        return predictions
    return predictions * np.asarray(normalization["y_stds"]) + np.asarray(normalization["y_means"])


# -- metrics -------------------------------------------------------------------------------------
def _task_arrays(y: np.ndarray, w: np.ndarray | None, n_tasks: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(len(y), n_tasks)
    w = (np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64).reshape(len(y), n_tasks))
    return y, w


def regression_metrics(y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None
                       ) -> dict[str, float]:
    """RMSE, MAE, R2 (coefficient of determination) and Pearson r^2, averaged over tasks.

    Only entries with weight > 0 count. Uses ``dc.metrics`` score functions and sklearn's
    ``r2_score``.
    """
    import deepchem as dc
    from sklearn.metrics import r2_score

    pred = np.asarray(pred, dtype=np.float64)
    n_tasks = pred.reshape(len(pred), -1).shape[1]
    y, w = _task_arrays(y, w, n_tasks)
    pred = pred.reshape(len(pred), n_tasks)
    scores: dict[str, list[float]] = {"rmse": [], "mae": [], "r2": [], "pearson_r2": []}
    for t in range(n_tasks):
        keep = w[:, t] > 0
        yt, pt = y[keep, t], pred[keep, t]
        if len(yt) == 0:
            continue
        scores["rmse"].append(float(dc.metrics.rms_score(yt, pt)))
        scores["mae"].append(float(dc.metrics.mae_score(yt, pt)))
        enough = len(yt) > 1 and np.std(yt) > 0
        scores["r2"].append(float(r2_score(yt, pt)) if enough else math.nan)
        scores["pearson_r2"].append(float(dc.metrics.pearson_r2_score(yt, pt))
                                    if enough and np.std(pt) > 0 else math.nan)
    out = {k: (float(np.nanmean(v)) if v and not np.isnan(v).all() else math.nan)
           for k, v in scores.items()}
    out["n"] = int((w > 0).any(axis=1).sum())
    return out


def classification_metrics(y: np.ndarray, prob: np.ndarray, w: np.ndarray | None = None
                           ) -> dict[str, float]:
    """ROC-AUC, accuracy (threshold 0.5) and log loss, averaged over tasks (weight > 0 only).

    ``prob`` is ``(N, n_tasks)`` probabilities of class 1, or DeepChem's ``(N, n_tasks, 2)``.
    ROC-AUC is NaN for a task whose entries are all one class.
    """
    import deepchem as dc
    from sklearn.metrics import log_loss

    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim == 3:
        prob = prob[..., 1]
    n_tasks = prob.reshape(len(prob), -1).shape[1]
    prob = prob.reshape(len(prob), n_tasks)
    y, w = _task_arrays(y, w, n_tasks)
    scores: dict[str, list[float]] = {"roc_auc": [], "accuracy": [], "log_loss": []}
    for t in range(n_tasks):
        keep = w[:, t] > 0
        yt, pt = y[keep, t].astype(int), np.clip(prob[keep, t], 1e-7, 1 - 1e-7)
        if len(yt) == 0:
            continue
        two_classes = len(np.unique(yt)) == 2
        scores["roc_auc"].append(float(dc.metrics.roc_auc_score(yt, pt)) if two_classes
                                  else math.nan)
        scores["accuracy"].append(float(np.mean((pt >= 0.5) == yt)))
        scores["log_loss"].append(float(log_loss(yt, pt, labels=[0, 1])))
    out = {k: (float(np.nanmean(v)) if v and not np.isnan(v).all() else math.nan)
           for k, v in scores.items()}
    out["n"] = int((w > 0).any(axis=1).sum())
    return out


def predict_original_units(model: Any, dataset: Any, transformers: Sequence[Any], mode: str
                           ) -> np.ndarray:
    """Regression: predictions with ``transformers`` undone; classification: P(class 1)
    ``(N, n_tasks)``."""
    pred = model.predict(dataset, list(transformers))
    pred = np.asarray(pred)
    if mode == "classification":
        return pred[..., 1] if pred.ndim == 3 else pred
    return pred.reshape(len(dataset), -1)


def evaluate(model: Any, dataset: Any, transformers: Sequence[Any], mode: str
             ) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``dataset`` in original label units, and the predictions."""
    from deepchem.trans import undo_transforms

    if len(dataset) == 0:
        return {"n": 0}, np.zeros((0,))
    pred = predict_original_units(model, dataset, transformers, mode)
    y = undo_transforms(dataset.y, list(transformers)) if mode == "regression" else dataset.y
    metrics = (regression_metrics(y, pred, dataset.w) if mode == "regression"
               else classification_metrics(y, pred, dataset.w))
    return metrics, pred


def selection_score(metrics: dict[str, float], mode: str) -> tuple[str, float]:
    """The validation number to minimise: RMSE (regression); -ROC-AUC, or log loss when ROC-AUC is
    undefined (classification)."""
    if mode == "regression":
        return "rmse", metrics.get("rmse", math.nan)
    auc = metrics.get("roc_auc", math.nan)
    if auc is not None and math.isfinite(auc):
        return "neg_roc_auc", -auc
    return "log_loss", metrics.get("log_loss", math.nan)


def fresh_model_dir(path: str, check_only: bool = False) -> str:
    """Make ``path`` ready for a new model: the files of a previous deepfuse/DeepChem model there
    are removed (its checkpoints must not mix with the new ones); a user's other files in it are
    kept; a non-empty folder without any model is an error.

    With ``check_only`` nothing is changed (used to fail fast before a long featurization).
    """
    if os.path.isdir(path) and os.listdir(path):
        entries = run_folder.own_model_entries(path)
        if not entries:
            raise WorkflowError(f"{path} exists and is not a deepfuse model folder; choose another "
                                "--out")
        if not check_only:
            for entry in entries:
                target = os.path.join(path, entry)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.remove(target)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise WorkflowError(f"{path} exists and is not a folder")
    if not check_only:
        os.makedirs(path, exist_ok=True)
    return path


# -- training with validation-based checkpoint selection ----------------------------------------
@dataclass
class TrainingResult:
    """What :func:`train_with_validation` did.

    Attributes
    ----------
    best_epoch: int
        Epoch whose checkpoint was kept (selected by the validation score, never by test).
    best_score: float
        Its validation score (lower is better; see :func:`selection_score`).
    score_name: str
        What the score is (``"rmse"``, ``"neg_roc_auc"`` or ``"log_loss"``).
    history: list of dict
        ``{"epoch", "score", ...validation metrics}`` at every evaluation.
    train_time_s: float
        Wall time of ``fit`` including the periodic validation passes and checkpoint writes
        (summed over the segments of a resumed run).
    resumed_at: list of int
        Epochs after which an interrupted run was continued from its resume point (empty for a
        run trained in one go).
    """

    best_epoch: int
    best_score: float
    score_name: str
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_at: list[int] = field(default_factory=list)


class BestCheckpointCallback:
    """A DeepChem ``fit`` callback: every ``eval_every`` epochs (and after the last step) evaluate
    on ``valid`` and save a checkpoint into ``save_dir`` when the validation score improves.

    Like ``dc.models.ValidationCallback``, but it records a history, feeds a progress bar, and puts
    the network back into training mode after evaluating (DeepChem's and deepfuse's ``predict``
    leave it in ``eval()`` mode, which would switch off dropout and modality masking for the rest
    of the ``fit`` call). A resumed run passes the ``epoch_offset`` epochs trained before this
    ``fit`` call and their result ``so_far``; ``on_epoch_end(model, epoch)``, if set, runs after
    every epoch (resume points).
    """

    def __init__(self, valid: Any, transformers: Sequence[Any], mode: str, steps_per_epoch: int,
                 total_steps: int, eval_every: int, save_dir: str,
                 bar: Any | None = None, epoch_offset: int = 0,
                 so_far: TrainingResult | None = None) -> None:
        self.valid, self.transformers, self.mode = valid, list(transformers), mode
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.eval_every, self.save_dir, self.bar = max(1, eval_every), save_dir, bar
        self.epoch_offset = epoch_offset
        self.on_epoch_end: Callable[[Any, int], None] | None = None
        self.start_step: int | None = None
        so_far = so_far or TrainingResult(0, math.inf, "")
        self.history: list[dict[str, float]] = list(so_far.history)
        self.best_score, self.best_epoch = so_far.best_score, so_far.best_epoch
        self.score_name = so_far.score_name

    def __call__(self, model: Any, step: int) -> None:
        if self.start_step is None:
            self.start_step = step - 1
        local = step - self.start_step
        if local % self.steps_per_epoch and local != self.total_steps:
            return
        epoch = self.epoch_offset + math.ceil(local / self.steps_per_epoch)
        if self.bar is not None:
            self.bar.update(1)
        if epoch % self.eval_every == 0 or local == self.total_steps:
            self._validate(model, epoch)
        if self.on_epoch_end is not None:
            self.on_epoch_end(model, epoch)

    def _validate(self, model: Any, epoch: int) -> None:
        from deepfuse_plugin.resume import save_checkpoint_atomically

        metrics, _ = evaluate(model, self.valid, self.transformers, self.mode)
        model.model.train()  # DeepChem models (the baselines) leave eval mode after predict()
        self.score_name, score = selection_score(metrics, self.mode)
        self.history.append({"epoch": epoch, "score": score, **metrics})
        if math.isfinite(score) and score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            save_checkpoint_atomically(model, self.save_dir)
        if self.bar is not None:
            self.bar.set_postfix({f"valid_{self.score_name}": f"{score:.3f}",
                                  "best_epoch": self.best_epoch})


def train_with_validation(model: Any, train: Any, valid: Any, epochs: int, eval_every: int,
                          transformers: Sequence[Any], mode: str, save_dir: str,
                          desc: str = "train", progress: bool = True,
                          resumable: bool = False) -> TrainingResult:
    """Fit ``model`` for ``epochs`` in ONE ``fit`` call (so epoch-based curricula run once), keep
    the checkpoint with the best validation score in ``save_dir`` and restore it into ``model``.

    With an empty ``valid`` split the last epoch is kept (a warning says so).

    ``resumable``: write a resume point into ``save_dir`` after every epoch, and continue from
    the one found there if an earlier call with the same plan (model configuration, training and
    validation rows, epochs, batch size) was interrupted; see :mod:`deepfuse_plugin.resume`. A
    different plan raises :class:`~deepfuse_plugin.resume.ResumeMismatchError`. Schedules counted
    per ``fit`` call (``DynamicFusionModel(curriculum_epochs=None)``'s masking curriculum) are
    counted over the run's ``epochs`` instead (``model.count_schedules_over``: the same schedule),
    so that they survive a restart.
    """
    from tqdm.auto import tqdm

    from deepfuse_plugin import resume

    steps_per_epoch = max(1, math.ceil(len(train) / model.batch_size))
    if len(valid) == 0:
        logger.warning("%s: the validation split is empty; keeping the last epoch", desc)
    eval_every = eval_every if len(valid) else epochs + 1
    state = _start_resumable(model, train, valid, epochs, eval_every, save_dir, desc) \
        if resumable else None
    done = state.epochs_done if state else 0
    with tqdm(total=epochs, initial=done, desc=desc, unit="epoch", disable=not progress,
              leave=True) as bar:
        so_far = state.result if state else TrainingResult(0, math.inf, "")
        callback = BestCheckpointCallback(
            valid, transformers, mode, steps_per_epoch, steps_per_epoch * (epochs - done),
            eval_every, save_dir, bar, epoch_offset=done, so_far=so_far)
        start = time.perf_counter()

        def result() -> TrainingResult:
            return TrainingResult(callback.best_epoch, callback.best_score, callback.score_name,
                                  callback.history,
                                  so_far.train_time_s + time.perf_counter() - start,
                                  list(so_far.resumed_at))

        def save_point(fitted: Any, epoch: int) -> None:
            assert state is not None
            try:
                resume.save_resume_point(fitted, save_dir, replace(state, epochs_done=epoch,
                                                                   result=result()))
            except OSError as err:  # e.g. a full disk: the run itself can still finish
                saved = resume.read_state(save_dir)
                logger.warning("%s: could not write the resume point of epoch %d (%s); training "
                               "goes on, but an interruption now continues from epoch %d", desc,
                               epoch, err, saved.epochs_done if saved else 0)

        if state is not None:
            callback.on_epoch_end = save_point
        if done < epochs:
            model.fit(train, nb_epoch=epochs - done, checkpoint_interval=0, callbacks=[callback])
        final = result()
    if final.best_epoch == 0:  # empty validation split or only NaN scores: keep the last epoch
        resume.save_checkpoint_atomically(model, save_dir)
        final.best_epoch = epochs
    else:
        model.restore(model_dir=save_dir)
    if state is not None:
        resume.clear(save_dir)
    return final


def _start_resumable(model: Any, train: Any, valid: Any, epochs: int, eval_every: int,
                     save_dir: str, desc: str) -> ResumeState:
    """The resume state to train from: a fresh one, or the interrupted run's (restored into
    ``model``)."""
    from deepfuse_plugin import resume

    count_schedules_over = getattr(model, "count_schedules_over", None)
    if count_schedules_over is not None:  # deepfuse models; DeepChem's have no such schedules
        count_schedules_over(epochs)
    plan = resume.training_plan(model, train, valid, epochs, eval_every)
    state = resume.read_state(save_dir)
    if state is None:
        return resume.ResumeState(plan, 0, TrainingResult(0, math.inf, ""))
    resume.check_plan(state, plan, save_dir)
    resume.restore_resume_point(model, save_dir, state)
    state.result.resumed_at.append(state.epochs_done)
    logger.warning("%s: continuing from the resume point after epoch %d of %d in %s", desc,
                   state.epochs_done, epochs, save_dir)
    return state


# -- deepfuse train ------------------------------------------------------------------------------
def train_from_csv(csv: str, smiles_column: str, tasks: Sequence[str], out: str,
                   mode: str = "regression", model: str = "dynamic", split: str = "scaffold",
                   modalities: Sequence[str] = ("ecfp", "graph", "smiles"), epochs: int = 30,
                   batch_size: int = 64, learning_rate: float = 1e-3, eval_every: int = 2,
                   seed: int = 0, featurizer_kwargs: dict[str, Any] | None = None,
                   model_kwargs: dict[str, Any] | None = None, n_jobs: int = 1,
                   resume: bool = False, uncertainty: str | None = None,
                   progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Featurize a CSV, split it, train a fusion model with validation-based epoch selection and
    write a run folder to ``out`` (see the module docstring).

    Training happens in a staging folder next to ``out`` (``out.deepfuse-partial``); the run is
    moved into ``out`` only when it has finished, so a failed run leaves ``out`` as it was.

    Parameters
    ----------
    csv, smiles_column, tasks:
        Input file, its SMILES column and its label columns.
    out: str
        Run folder (created).
    mode: str
        ``"regression"`` (labels normalized on the train split) or ``"classification"`` (0/1).
    model: str
        A key of :data:`MODELS`.
    split: str
        ``"scaffold"`` or ``"random"`` (80/10/10).
    modalities: sequence of str
        Built-in modality names for :class:`~deepfuse_plugin.MultiModalFeaturizer`.
    epochs, batch_size, learning_rate, eval_every, seed:
        Training budget; the validation split is scored every ``eval_every`` epochs.
    featurizer_kwargs, model_kwargs: dict, optional
        Extra arguments of the featurizer and the model.
    resume: bool
        Training writes a resume point into the staging folder after every epoch; with
        ``resume`` an interrupted run there continues from its last finished epoch (same CSV and
        settings required: :class:`~deepfuse_plugin.resume.ResumeMismatchError` otherwise).
        Without it training starts over.
    uncertainty: str, optional
        ``"evidential"``: the model predicts a distribution (``predict`` then writes a
        ``<task>_std`` column). For regression the std is rescaled per set of present modalities
        on the validation split (``std_scales.json``; see
        :func:`~deepfuse_plugin.models.calibration.fit_std_scales`), and the record gets the test
        split's calibration.
    overwrite: bool
        Replace a run already in ``out`` (only deepfuse's files there: ``model/``'s model files,
        ``deepfuse_run.json``, ``metrics.json``, ``std_scales.json``). Without it such an ``out``
        is refused before any work.

    Returns
    -------
    dict
        The run record written to ``deepfuse_run.json`` (metrics and checksums included).

    Raises
    ------
    RunFolderError
        ``out`` holds a run and ``overwrite`` is false, or something there is not deepfuse's.
    InvalidSettingError
        A training setting outside its range (the message names it and its value).
    WorkflowError
        Bad input data (missing column, no labelled rows for a task, non-numeric labels, ...).
    """
    from deepfuse_plugin import resume as resume_lib
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    tasks = list(tasks)
    if not tasks:
        raise WorkflowError("Give at least one task column (--tasks)")
    if mode not in MODES:
        raise WorkflowError(f"Unknown mode {mode!r}; choose one of {list(MODES)}")
    check_training_settings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            eval_every=eval_every, n_jobs=n_jobs)
    model_cls = resolve_model_class(model)
    try:
        featurizer = MultiModalFeaturizer(list(modalities), n_jobs=n_jobs, progress=progress,
                                          **(featurizer_kwargs or {}))
    except (ValueError, TypeError) as err:
        raise WorkflowError(f"Cannot build the featurizer: {err}") from err
    # fail fast, before a long featurization: nothing in out or the staging folder is touched yet
    run_folder.check_run_target(out, overwrite)
    staging = run_folder.staging_path(out)
    run_folder.check_staging(staging)
    continuing = resume and resume_lib.read_state(os.path.join(staging, "model")) is not None
    frame, ids, y, w, invalid = _labelled_rows(csv, smiles_column, tasks, mode)

    set_seed(seed)
    X = featurizer.featurize(ids)
    dataset = make_dataset(X, y, w, ids)
    train_idx, valid_idx, test_idx = split_indices(dataset, split, seed)
    train, valid, test = (dataset.select(i) for i in (train_idx, valid_idx, test_idx))
    _check_training_split(train, tasks, split, len(dataset))
    transformers = []
    normalizer = None
    if mode == "regression":
        normalizer = fit_normalizer(train)
        transformers = [normalizer]
        train, valid, test = (normalizer.transform(d) for d in (train, valid, test))

    run_folder.open_staging(staging, keep=continuing)
    model_dir = os.path.join(staging, "model")
    try:
        extra = dict(model_kwargs or {}, **({"uncertainty": uncertainty} if uncertainty else {}))
        fusion = model_cls(n_tasks=len(tasks), modalities=featurizer.modalities, mode=mode,
                           batch_size=batch_size, learning_rate=learning_rate,
                           model_dir=model_dir, progress=False, **extra)
        result = train_with_validation(fusion, train, valid, epochs, eval_every, transformers,
                                       mode, model_dir,
                                       desc=f"{model} ({'+'.join(fusion.modality_names)})",
                                       progress=progress, resumable=True)
        metrics = {"valid": evaluate(fusion, valid, transformers, mode)[0],
                   "test": evaluate(fusion, test, transformers, mode)[0]}
        record = {
            "format": RUN_FORMAT,
            "model": model, "model_class": type(fusion).__name__, "model_dir": "model",
            "smiles_column": smiles_column, "tasks": tasks, "mode": mode,
            "modalities": fusion.modality_names,
            "featurizer": {k: getattr(featurizer, k) for k in FEATURIZER_KEYS},
            "normalization": normalizer_to_dict(normalizer),
            "data": {"csv": os.path.abspath(csv), "rows": len(frame), "invalid_smiles": invalid,
                     "split": split, "n_train": len(train), "n_valid": len(valid),
                     "n_test": len(test)},
            "training": {"epochs": epochs, "batch_size": batch_size,
                         "learning_rate": learning_rate, "eval_every": eval_every, "seed": seed,
                         "best_epoch": result.best_epoch,
                         "selection": f"validation {result.score_name}",
                         "train_time_s": result.train_time_s, "history": result.history,
                         "resumed_at_epochs": result.resumed_at},
            "metrics": metrics,
        }
        if getattr(fusion, "uncertainty", None):
            record["uncertainty"] = calibrate_run(fusion, valid, test, transformers, mode,
                                                  staging)
        record = run_folder.seal_record(json.loads(json.dumps(_jsonable(record))), staging)
        write_json(os.path.join(staging, RUN_FILE), record)
        write_json(os.path.join(staging, METRICS_FILE), metrics)
    except BaseException:
        _keep_staging_only_to_resume(staging, out)
        raise
    run_folder.publish(staging, out, overwrite)
    return record


def check_training_settings(**settings: Any) -> None:
    """Refuse training settings outside their range, naming the setting and its value:
    ``epochs``, ``batch_size``, ``eval_every``, ``n_jobs`` (integers >= 1) and ``learning_rate``
    (a finite number > 0).

    Examples
    --------
    >>> check_training_settings(epochs=0)
    Traceback (most recent call last):
    ...
    deepfuse_plugin.errors.InvalidSettingError: epochs must be an integer >= 1, got 0
    """
    for name, value in settings.items():
        if name == "learning_rate":
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise InvalidSettingError(f"learning_rate must be a finite number > 0, got "
                                          f"{value!r}")
        elif not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                  and value >= 1):
            raise InvalidSettingError(f"{name} must be an integer >= 1, got {value!r}")


def _labelled_rows(csv: str, smiles_column: str, tasks: list[str], mode: str
                   ) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray, list[str]]:
    """``(frame, ids, y, w, invalid)`` of the rows with a valid SMILES, labels checked."""
    frame = read_csv_checked(csv, smiles_column, tasks)
    smiles = frame[smiles_column].tolist()
    ok, invalid = valid_smiles_mask(smiles)
    if not ok.any():
        raise WorkflowError(f"None of the {len(smiles)} SMILES in column {smiles_column!r} of "
                            f"{csv} could be parsed")
    frame_ok = frame[ok].reset_index(drop=True)
    ids = [str(s) for s in frame_ok[smiles_column]]
    y, w = labels_and_weights(frame_ok, tasks, ids)
    if mode == "classification":
        labelled = y[w > 0]
        if not np.isin(labelled, (0.0, 1.0)).all():
            bad = sorted(set(labelled[~np.isin(labelled, (0.0, 1.0))].tolist()))[:5]
            raise WorkflowError(f"Classification labels must be 0 or 1; found {bad} in {tasks}")
    return frame, ids, y, w, invalid


def _check_training_split(train: Any, tasks: Sequence[str], split: str, n_rows: int) -> None:
    """The training split must have rows, and a label for every task (else that task's head
    would stay untrained while its predictions look like any other)."""
    hint = "; try --split random" if split == "scaffold" else ""
    if len(train) == 0:
        raise WorkflowError(f"The {split} split left no training rows ({n_rows} molecules{hint})")
    counts = np.asarray(train.w, dtype=np.float64).reshape(len(train), -1).sum(axis=0)
    empty = [t for t, n in zip(tasks, counts) if n == 0]
    if empty:
        raise WorkflowError(f"No labelled rows for task(s) {empty} in the {split} training split "
                            f"(their few labels went to validation/test){hint}, or add labels")


def _keep_staging_only_to_resume(staging: str, out: str) -> None:
    """After a failed or interrupted run: keep the staging folder if it holds a resume point
    (``--resume`` continues it), remove it otherwise. ``out`` was never touched."""
    from deepfuse_plugin import resume as resume_lib

    if resume_lib.read_state(os.path.join(staging, "model")) is not None:
        logger.warning("Training stopped; %s is unchanged. The run so far is in %s: continue it "
                       "with --resume", out, staging)
    else:
        shutil.rmtree(staging, ignore_errors=True)


def calibrate_run(model: Any, valid: Any, test: Any, transformers: Sequence[Any], mode: str,
                  out: str) -> dict[str, Any]:
    """Fit the std factors of an evidential regression model on ``valid`` into
    ``out/std_scales.json`` and report the test calibration before and after (the record's
    ``uncertainty`` entry). Too few validation molecules for a factor: a warning, and the std is
    used as predicted."""
    from deepfuse_plugin.models.calibration import calibration_report, fit_std_scales

    entry: dict[str, Any] = {"kind": model.uncertainty, "std_scales": None}
    if mode != "regression":
        return entry
    path = os.path.join(out, STD_SCALES_FILE)
    if os.path.exists(path):
        os.remove(path)  # a factor of an earlier model in this folder must not survive
    try:
        scales = fit_std_scales(model, valid, list(transformers))
    except ValueError as err:
        logger.warning("No std factors fitted, the std is used as predicted: %s", err)
        return entry
    write_json(path, scales.to_dict())
    entry["std_scales"] = STD_SCALES_FILE
    try:
        entry["test_calibration"] = {
            "as_predicted": calibration_report(model, test, list(transformers)),
            "rescaled": calibration_report(model, test, list(transformers), std_scale=scales)}
    except ValueError as err:  # e.g. an empty test split, or rows without a fitted factor
        logger.warning("No test calibration in the record: %s", err)
    return entry


# -- deepfuse predict ----------------------------------------------------------------------------
def load_run(model_dir: str) -> tuple[Any, dict[str, Any]]:
    """The model and run record of a run folder (or of a bare model folder, without record).

    A run folder's record and model files are checked against the checksums written at training
    before any weight is loaded (:func:`~deepfuse_plugin.run_folder.verify_record`), and the
    record's mode, tasks and modalities against the loaded model.

    Raises
    ------
    RunFolderError
        ``model_dir`` is missing, or neither a run folder nor a deepfuse model folder, or its
        model folder is missing.
    CorruptCheckpointError
        The record or a model file is unreadable, edited, truncated or replaced.
    """
    from deepfuse_plugin.models.base import CONFIG_FILE

    if not os.path.isdir(model_dir):
        raise RunFolderError(f"Model folder {model_dir} does not exist" if not
                             os.path.exists(model_dir) else f"{model_dir} is a file, not a run "
                             "folder; give the folder written by 'deepfuse train --out'")
    run_path = os.path.join(model_dir, RUN_FILE)
    if os.path.exists(run_path):
        record = _read_record(run_path)
        inside = str(record.get("model_dir", "model"))
        if os.path.isabs(inside) or ".." in inside.replace("\\", "/").split("/"):
            raise CorruptCheckpointError(f"{run_path} points its model_dir outside the run folder "
                                         f"({inside!r}); restore the original record")
        folder = os.path.join(model_dir, inside)
        if not os.path.isdir(folder) or not os.listdir(folder):
            raise RunFolderError(f"{model_dir} has a {RUN_FILE} but its model folder {folder} is "
                                 f"{'empty' if os.path.isdir(folder) else 'missing'}: the run "
                                 "folder is incomplete; copy it again or train again")
        run_folder.verify_record(record, model_dir)
    elif os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        logger.warning("%s has no %s: using the bare model (no y de-normalization, give "
                       "--smiles-column)", model_dir, RUN_FILE)
        record, folder = {}, model_dir
    else:
        raise RunFolderError(f"{model_dir} is not a deepfuse run folder (no {RUN_FILE}) nor a "
                             f"model folder (no {CONFIG_FILE})")
    model = _load_model(folder)
    _check_record_matches_model(record, model, run_path)
    record.setdefault("tasks", [f"task{i}" for i in range(model.n_tasks)])
    record.setdefault("mode", model.mode)
    return model, record


def _read_record(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise CorruptCheckpointError(f"{path} is not a readable run record ({err}); restore it "
                                     "or train again") from None
    if not isinstance(record, dict):
        raise CorruptCheckpointError(f"{path} is not a run record (a JSON object was expected)")
    return record


def _load_model(folder: str) -> Any:
    """``MultiModalTorchModel.load(folder)`` with every way a damaged folder fails turned into
    one :class:`~deepfuse_plugin.errors.CorruptCheckpointError` naming the folder."""
    import pickle
    import zipfile

    from deepfuse_plugin.models.base import MultiModalTorchModel

    try:
        return MultiModalTorchModel.load(folder, progress=False)
    except CorruptCheckpointError:
        raise
    except FileNotFoundError as err:
        raise RunFolderError(f"{err}") from None
    except (ValueError, TypeError, KeyError, RuntimeError, EOFError, OSError,
            pickle.UnpicklingError, zipfile.BadZipFile) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CorruptCheckpointError(f"Cannot load the model in {folder}: {type(err).__name__}: "
                                     f"{first}. The checkpoint or its configuration is damaged "
                                     "or was edited; copy the run folder again or train again"
                                     ) from err


def _check_record_matches_model(record: dict[str, Any], model: Any, run_path: str) -> None:
    """What the record says about the outputs (mode, number of tasks, modalities, model class,
    normalization) must be what the model computes; a mismatch would misread every prediction."""
    if not record:
        return
    problems = []
    if record.get("mode", model.mode) != model.mode:
        problems.append(f"mode {record['mode']!r}, the model's is {model.mode!r}")
    tasks = record.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or len(tasks) != model.n_tasks):
        problems.append(f"tasks {tasks!r}, the model has {model.n_tasks} output(s)")
    saved_names = record.get("modalities")
    if saved_names and saved_names != model.modality_names:
        problems.append(f"modalities {saved_names}, the model has {model.modality_names}")
    if record.get("model_class", type(model).__name__) != type(model).__name__:
        problems.append(f"model_class {record['model_class']!r}, the model is a "
                        f"{type(model).__name__}")
    normalization = record.get("normalization")
    if normalization:
        for key in ("y_means", "y_stds"):
            try:
                values = np.asarray(normalization.get(key, []), dtype=np.float64).ravel()
            except (TypeError, ValueError, AttributeError):
                values = np.array([np.nan])
            if len(values) != model.n_tasks or not np.isfinite(values).all():
                problems.append(f"normalization {key} {normalization.get(key)!r} does not fit "
                                f"{model.n_tasks} task(s)")
    if problems:
        raise CorruptCheckpointError(f"{run_path} does not match its model: it records "
                                     f"{'; '.join(problems)}; restore the original record or "
                                     "train again")


def predict_with_std(model: Any, dataset: Any, record: dict[str, Any], model_dir: str
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, n_tasks)`` predictions in original units (classification: P(class 1)) and, for an
    evidential model, their std from the same forward pass (regression: rescaled with the run's
    ``std_scales.json`` when it has one; classification: the Dirichlet std of P(class 1)); the
    std is None for other models."""
    from deepfuse_plugin.models.calibration import StdScales

    mode, n = record.get("mode", model.mode), len(dataset)
    if not getattr(model, "uncertainty", None):
        pred = predict_original_units(model, dataset, [], mode)
        return (denormalize(pred, record.get("normalization")) if mode == "regression"
                else pred), None
    if mode == "classification":
        pred, std = model.predict_uncertainty(dataset)
        return pred[..., 1].reshape(n, -1), std[..., 1].reshape(n, -1)
    path = os.path.join(model_dir, (record.get("uncertainty") or {}).get("std_scales") or "")
    if os.path.isfile(path):
        with open(path) as fh:
            pred, std = StdScales.from_dict(json.load(fh)).predict_uncertainty(model, dataset)
    else:
        pred, std = model.predict_uncertainty(dataset)
    y_stds = np.asarray((record.get("normalization") or {}).get("y_stds", 1.0))
    return (denormalize(pred.reshape(n, -1), record.get("normalization")),
            std.reshape(n, -1) * y_stds)


def predict_from_csv(model_dir: str, csv: str, smiles_column: str | None = None,
                     out: str | None = None, batch_size: int | None = None,
                     progress: bool = False, overwrite: bool = False) -> pd.DataFrame:
    """Predict every row of ``csv`` with a saved run; rows with unparseable SMILES get empty
    predictions (and are reported), never dropped.

    Returns the input rows, their cells exactly as written (read as text), plus one
    ``<task>_pred`` column per task (regression: original units; classification: probability of
    class 1) and a ``deepfuse_status`` column (``"ok"`` or why the row has no prediction: an
    invalid SMILES, no modality computable, or a non-finite model output). An evidential model
    adds ``<task>_std``: the std of the prediction (regression: original units, times the run's
    factor for the row's present modalities when ``std_scales.json`` exists; classification: the
    Dirichlet std of P(class 1)). Written to ``out`` when given.

    Parameters
    ----------
    overwrite: bool
        Replace an existing ``out`` (never the input ``csv``, nor a file of the run folder).

    Raises
    ------
    RunFolderError
        ``out`` exists (without ``overwrite``), is the input, or lies inside the run folder.
    CorruptCheckpointError
        The run folder fails its checks (:func:`load_run`), or the model gives non-finite
        outputs for most rows (damaged weights).
    WorkflowError
        An input column clashes with an output column, or the CSV cannot be used.
    """
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    if batch_size is not None:
        check_training_settings(batch_size=batch_size)
    if out:  # before any work: nothing is computed for an output that cannot be written
        run_folder.check_output_file(out, overwrite, inputs=[csv], protected_dirs=[model_dir])
    model, record = load_run(model_dir)
    column = smiles_column or record.get("smiles_column")
    if not column:
        raise WorkflowError("Give --smiles-column: the model folder does not record one")
    frame = read_csv_checked(csv, column)
    tasks = record["tasks"]
    uncertain = bool(getattr(model, "uncertainty", None))
    _check_output_columns(frame, tasks, uncertain, csv)
    if batch_size:
        model.batch_size = batch_size
    featurizer = MultiModalFeaturizer(modalities=model.modalities, progress=progress)
    problems = smiles_problems(frame[column].tolist())
    ok = np.array([p is None for p in problems], dtype=bool)
    values = np.full((len(frame), len(tasks)), np.nan)
    stds = np.full_like(values, np.nan) if uncertain else None
    status = np.array([p or "ok" for p in problems], dtype=object)
    rows = np.flatnonzero(ok)
    X = (featurizer.featurize([str(s) for s in frame.loc[ok, column]]) if len(rows)
         else np.empty(0, dtype=object))
    # a molecule none of whose modalities could be computed has nothing to predict from
    usable = np.array([x.mask(model.modality_names).any() for x in X], dtype=bool)
    for i, x in zip(rows[~usable], X[~usable]):
        status[i] = "no modality could be computed: " + "; ".join(
            f"{name}: {reason}" for name, reason in x.missing_reasons.items())
    rows = rows[usable]
    if len(rows):
        ids = [str(s) for s in frame.loc[rows, column]]
        pred, std = predict_with_std(model, make_dataset(X[usable], None, None, ids), record,
                                     model_dir)
        values[rows] = pred.reshape(len(rows), len(tasks))
        if stds is not None:
            stds[rows] = std
        _flag_nonfinite_rows(values, stds, rows, status, model_dir)
    result = frame.copy()
    for t, task in enumerate(tasks):
        result[f"{task}_pred"] = values[:, t]
        if stds is not None:
            result[f"{task}_std"] = stds[:, t]
    result["deepfuse_status"] = status
    _log_row_failures(status)
    if out:
        run_folder.check_output_file(out, overwrite, inputs=[csv], protected_dirs=[model_dir])
        run_folder.write_csv_atomically(result, out)
    return result


#: Above this fraction of non-finite outputs the model, not the rows, is the problem.
CORRUPT_OUTPUT_FRACTION = 0.5


def _flag_nonfinite_rows(values: np.ndarray, stds: np.ndarray | None, rows: np.ndarray,
                         status: np.ndarray, model_dir: str) -> None:
    """A NaN/inf output is a row failure (emptied, with a status), never a number written as
    "ok"; when most rows give one, the checkpoint is reported as corrupt."""
    finite = np.isfinite(values[rows]).all(axis=1)
    if stds is not None:
        finite &= np.isfinite(stds[rows]).all(axis=1)
    bad = rows[~finite]
    if not len(bad):
        return
    if len(bad) > CORRUPT_OUTPUT_FRACTION * len(rows):
        raise CorruptCheckpointError(
            f"The model in {model_dir} gave non-finite (NaN/inf) outputs for {len(bad)} of "
            f"{len(rows)} rows: its weights are damaged or training diverged; copy the run "
            "folder again or train again (nothing was written)")
    values[bad] = np.nan
    if stds is not None:
        stds[bad] = np.nan
    status[bad] = "non-finite model output (NaN/inf)"


def _check_output_columns(frame: pd.DataFrame, tasks: Sequence[str], uncertain: bool,
                          csv: str) -> None:
    """Output columns must not replace a column of the input."""
    outputs = [f"{t}_pred" for t in tasks] + ([f"{t}_std" for t in tasks] if uncertain else [])
    clashing = [c for c in [*outputs, "deepfuse_status"] if c in frame.columns]
    if clashing:
        raise WorkflowError(f"{csv} already has column(s) {clashing}, which predict would write; "
                            "rename or drop them in the input so nothing is overwritten")


def _log_row_failures(status: np.ndarray) -> None:
    counts = {
        "their SMILES cannot be parsed or are over an input limit":
            [i for i, s in enumerate(status) if s.startswith("invalid SMILES")],
        "none of the model's modalities could be computed":
            [i for i, s in enumerate(status) if s.startswith("no modality")],
        "the model's output was not finite":
            [i for i, s in enumerate(status) if s.startswith("non-finite")]}
    for why, rows in counts.items():
        if rows:
            logger.warning("%d row(s) got no prediction because %s (rows %s%s; see "
                           "deepfuse_status)", len(rows), why, rows[:10],
                           " ..." if len(rows) > 10 else "")
