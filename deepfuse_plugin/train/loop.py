"""The training loop: one ``fit`` call, validation-based checkpoint selection, resume points.

:func:`train_with_validation` trains a DeepChem ``TorchModel`` (a deepfuse model or a DeepChem
baseline) for a fixed number of epochs in one ``fit`` call, scores the validation split every few
epochs with :class:`BestCheckpointCallback`, keeps the checkpoint with the best score (never the
test split) and restores it at the end. With ``resumable=True`` an interrupted run continues from
its last finished epoch (:mod:`deepfuse_plugin.train.resume`).

Examples
--------
>>> import deepchem as dc, numpy as np, tempfile
>>> from deepfuse_plugin.train import make_dataset, set_seed, train_with_validation
>>> set_seed(0)
>>> X, y = np.random.rand(40, 8).astype(np.float32), np.random.rand(40, 1)
>>> train, valid = make_dataset(X[:32], y[:32], None, range(32)), make_dataset(
...     X[32:], y[32:], None, range(8))
>>> model = dc.models.MultitaskRegressor(1, 8, batch_size=8, model_dir=tempfile.mkdtemp())
>>> result = train_with_validation(model, train, valid, epochs=4, eval_every=2,
...     transformers=[], mode="regression", save_dir=model.model_dir, progress=False)
>>> result.best_epoch in (2, 4), result.score_name
(True, 'rmse')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from deepfuse_plugin.models.checkpoints import restore_safely
from deepfuse_plugin.train import resume
from deepfuse_plugin.train.metrics import evaluate, selection_score
from deepfuse_plugin.train.result import TrainingResult

__all__ = ["BestCheckpointCallback", "train_with_validation"]

logger = logging.getLogger(__name__)


class _EarlyStop(Exception):
    """Raised by :class:`BestCheckpointCallback` to end ``fit`` when the patience runs out."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"early stop after epoch {epoch}")
        self.epoch = epoch


class BestCheckpointCallback:
    """A DeepChem ``fit`` callback: every ``eval_every`` epochs (and after the last step) evaluate
    on ``valid`` and save a checkpoint into ``save_dir`` when the validation score improves.

    Like ``dc.models.ValidationCallback``, but it records a history, feeds a progress bar, and puts
    the network back into training mode after evaluating (DeepChem's and deepfuse's ``predict``
    leave it in ``eval()`` mode, which would switch off dropout and modality masking for the rest
    of the ``fit`` call). A resumed run passes the ``epoch_offset`` epochs trained before this
    ``fit`` call and their result ``so_far``; ``on_epoch_end(model, epoch)``, if set, runs after
    every epoch (resume points).

    Every validation score goes to the model's ``report_validation`` (deepfuse models: the
    ``"plateau"`` learning-rate schedule), and with ``patience`` (the model's ``early_stopping``)
    ``fit`` ends after that many validations without improvement.
    """

    def __init__(
        self,
        valid: Any,
        transformers: Sequence[Any],
        mode: str,
        steps_per_epoch: int,
        total_steps: int,
        eval_every: int,
        save_dir: str,
        bar: Any | None = None,
        epoch_offset: int = 0,
        so_far: TrainingResult | None = None,
        patience: int | None = None,
    ) -> None:
        self.valid, self.transformers, self.mode = valid, list(transformers), mode
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.eval_every, self.save_dir, self.bar = max(1, eval_every), save_dir, bar
        self.epoch_offset, self.patience = epoch_offset, patience
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
        if self.patience is not None and self.waited() >= self.patience:
            raise _EarlyStop(epoch)

    def waited(self) -> int:
        """Validations since the best one (all of them while none had a finite score)."""
        return sum(1 for h in self.history if h["epoch"] > self.best_epoch)

    def report_scores(self, model: Any) -> None:
        """Hand every validation score so far to the model (its plateau schedule)."""
        report = getattr(model, "report_validation", None)
        if report is not None:
            report([h["score"] for h in self.history])

    def _validate(self, model: Any, epoch: int) -> None:
        metrics, _ = evaluate(model, self.valid, self.transformers, self.mode)
        model.model.train()  # DeepChem models (the baselines) leave eval mode after predict()
        self.score_name, score = selection_score(metrics, self.mode)
        self.history.append({"epoch": epoch, "score": score, **metrics})
        if math.isfinite(score) and score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            resume.save_checkpoint_atomically(model, self.save_dir)
        self.report_scores(model)
        if self.bar is not None:
            self.bar.set_postfix(
                {f"valid_{self.score_name}": f"{score:.3f}", "best_epoch": self.best_epoch}
            )


def train_with_validation(
    model: Any,
    train: Any,
    valid: Any,
    epochs: int,
    eval_every: int,
    transformers: Sequence[Any],
    mode: str,
    save_dir: str,
    desc: str = "train",
    progress: bool = True,
    resumable: bool = False,
) -> TrainingResult:
    """Fit ``model`` for ``epochs`` in ONE ``fit`` call (so epoch-based curricula run once), keep
    the checkpoint with the best validation score in ``save_dir`` and restore it into ``model``.

    With an empty ``valid`` split the last epoch is kept (a warning says so).

    ``resumable``: write a resume point into ``save_dir`` after every epoch, and continue from
    the one found there if an earlier call with the same plan (model configuration, training and
    validation rows, epochs, batch size) was interrupted; see :mod:`deepfuse_plugin.train.resume`.
    A different plan raises :class:`~deepfuse_plugin.train.resume.ResumeMismatchError`. Schedules
    counted per ``fit`` call (``DynamicFusionModel(curriculum_epochs=None)``'s masking
    curriculum) are counted over the run's ``epochs`` instead (``model.count_schedules_over``: the
    same schedule), so that they survive a restart; so is the learning-rate schedule.

    A deepfuse model's ``early_stopping`` patience ends training after that many validations
    without improvement (``result.stopped_at``); its ``"plateau"`` schedule reads the scores.
    """
    from tqdm.auto import tqdm

    steps_per_epoch = max(1, math.ceil(len(train) / model.batch_size))
    if len(valid) == 0:
        logger.warning("%s: the validation split is empty; keeping the last epoch", desc)
    eval_every = eval_every if len(valid) else epochs + 1
    count_schedules_over = getattr(model, "count_schedules_over", None)
    if count_schedules_over is not None:  # deepfuse models; DeepChem's have no such schedules
        count_schedules_over(epochs)
    state = (
        start_resumable(model, train, valid, epochs, eval_every, save_dir, desc)
        if resumable
        else None
    )
    done = state.epochs_done if state else 0
    with tqdm(
        total=epochs, initial=done, desc=desc, unit="epoch", disable=not progress, leave=True
    ) as bar:
        so_far = state.result if state else TrainingResult(0, math.inf, "")
        callback = BestCheckpointCallback(
            valid,
            transformers,
            mode,
            steps_per_epoch,
            steps_per_epoch * (epochs - done),
            eval_every,
            save_dir,
            bar,
            epoch_offset=done,
            so_far=so_far,
            patience=getattr(model, "early_stopping", None) if len(valid) else None,
        )
        callback.report_scores(model)  # a resumed run continues at its plateau scale
        stopped_at = state.result.stopped_at if state else None
        start = time.perf_counter()

        def result() -> TrainingResult:
            return TrainingResult(
                callback.best_epoch,
                callback.best_score,
                callback.score_name,
                callback.history,
                so_far.train_time_s + time.perf_counter() - start,
                list(so_far.resumed_at),
                stopped_at,
            )

        def save_point(fitted: Any, epoch: int) -> None:
            assert state is not None
            point = replace(state, epochs_done=epoch, result=result())
            resume.save_resume_point_or_warn(fitted, save_dir, point, desc, logger)

        if state is not None:
            callback.on_epoch_end = save_point
        if done < epochs and stopped_at is None:
            try:
                model.fit(
                    train, nb_epoch=epochs - done, checkpoint_interval=0, callbacks=[callback]
                )
            except _EarlyStop as stop:
                stopped_at = stop.epoch
                logger.info(
                    "%s: no better validation score in %d evaluations; stopped after epoch %d",
                    desc,
                    callback.patience,
                    stop.epoch,
                )
        final = result()
    keep_selected_epoch(model, save_dir, final, epochs)
    if state is not None:
        resume.clear(save_dir)
    return final


def keep_selected_epoch(model: Any, save_dir: str, result: TrainingResult, last: int) -> None:
    """Leave the kept epoch's weights in ``model`` and ``save_dir``: the best validation epoch's
    checkpoint, or (no validation split, only NaN scores: ``best_epoch`` 0) the weights ``model``
    holds, as epoch ``last``."""
    if result.best_epoch == 0:
        resume.save_checkpoint_atomically(model, save_dir)
        result.best_epoch = last
    else:  # DeepChem's own restore would unpickle without weights_only: never for baselines
        restore_safely(model, save_dir)


def start_resumable(
    model: Any, train: Any, valid: Any, epochs: int, eval_every: int, save_dir: str, desc: str
) -> resume.ResumeState:
    """The resume state to train from: a fresh one, or the interrupted run's in ``save_dir``
    (restored into ``model``: weights, optimizer, global step, random states; a different plan
    raises :class:`~deepfuse_plugin.train.resume.ResumeMismatchError`)."""
    plan = resume.training_plan(model, train, valid, epochs, eval_every)
    state = resume.read_state(save_dir)
    if state is None:
        return resume.ResumeState(plan, 0, TrainingResult(0, math.inf, ""))
    resume.check_plan(state, plan, save_dir)
    resume.restore_resume_point(model, save_dir, state)
    state.result.resumed_at.append(state.epochs_done)
    logger.warning(
        "%s: continuing from the resume point after epoch %d of %d in %s",
        desc,
        state.epochs_done,
        epochs,
        save_dir,
    )
    return state
