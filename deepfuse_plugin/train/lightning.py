"""Training a deepfuse model on several processes, GPUs or machines with Lightning (DDP).

:func:`fit_distributed` trains the ``MultiModalNetwork`` of an ordinary deepfuse model under a
``lightning.Trainer`` (``accelerator``, ``devices``, ``num_nodes``, ``strategy``: chemprop's names)
and leaves the kept weights in that model, so ``save_checkpoint``, ``MultiModalTorchModel.load``,
``restore`` and ``predict`` work as after ``fit``. Everything that makes the training math is the
model's own: its collate function, its loss (``_supervised_loss``: task loss, fusion and
per-modality auxiliary losses), its epoch hook (masking curriculum, evidential KL anneal,
``epochs_started``), its optimizer with parameter groups and gradient clipping, and its
learning-rate schedule. Validation-based epoch selection is
:class:`~deepfuse_plugin.train.loop.BestCheckpointCallback`'s, run on rank 0.

With ``resumable=True`` rank 0 also writes the one-process loop's resume point
(:mod:`deepfuse_plugin.train.resume`) after every epoch, and a run interrupted on any number of
processes continues from it, on any number (an uninterrupted run on the same number trains the
same weights; on another number the later epochs' batches differ, as on another machine). Every
process restores the resume point itself (``resume_from``): on several machines it must be on a
file system they share.

``batch_size`` stays the *global* batch: each of the ``N`` processes takes ``batch_size / N``
rows of every step's batch (a ``DistributedSampler`` shards each epoch's shuffled order) and DDP
averages the gradients, so a run on ``N`` processes takes the same steps, on the same schedule, as
one process does.

Why not DeepChem's ``DistributedTrainer`` (``DCLightningModule`` + ``DCLightningDatasetModule``,
DeepChem 2.8)? It cannot carry a deepfuse model:

1. its data module iterates ``dataset.make_pytorch_dataset()``, an ``IterableDataset`` that no
   ``DistributedSampler`` can shard: every process trains on the whole dataset. Its batches are
   raw object arrays of ``MultiModalSample``; the model's collate (``collate_samples``, which
   pads, builds graph batches and applies dropped modalities) never runs, so
   ``_prepare_batch`` receives arrays it cannot move;
2. ``configure_optimizers`` builds a new optimizer over ``parameters()``: the model's parameter
   groups (pretrained encoders at ``encoder_lr_scale``, frozen encoders left out), its
   gradient-clipping hook and its learning-rate schedule (``StepwiseLR``) are lost;
3. no epoch hook calls ``_on_epoch_start``: the masking curriculum, the evidential KL anneal
   and ``epochs_started`` stand still;
4. ``training_step`` moves every batch to ``model.device``, the same device on every rank
   (``cuda:0``), not the rank's own;
5. there is no validation or checkpoint selection; ``DistributedTrainer`` never passes its
   ``distributed_strategy`` to the ``Trainer`` and has no ``num_nodes``.

Examples
--------
>>> import deepfuse_plugin as dfp  # doctest: +SKIP
>>> from deepfuse_plugin.train.lightning import fit_distributed  # doctest: +SKIP
>>> model = dfp.DynamicFusionModel(1, featurizer.modalities, batch_size=64)  # doctest: +SKIP
>>> result = fit_distributed(model, train, valid, epochs=30, accelerator="gpu",
...                          devices=4)  # doctest: +SKIP
>>> model.predict(test)  # the best validation epoch's weights  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError
from deepfuse_plugin.models._batching import batch_to_device
from deepfuse_plugin.models._data_checks import check_training_data, refusing_non_finite
from deepfuse_plugin.models.checkpoints import restore_safely
from deepfuse_plugin.train import resume
from deepfuse_plugin.train.ddp import (  # the shared pieces, importable from here too
    callers_thread_count,
    check_same_first_epoch,
    distributed_trainer,
    lightning_strategy,
    optimizer_state_to_devices,
    process_rank,
)
from deepfuse_plugin.train.loop import (
    BestCheckpointCallback,
    keep_selected_epoch,
    start_resumable,
)
from deepfuse_plugin.train.result import TrainingResult
from deepfuse_plugin.train.utils import check_training_settings, write_json

__all__ = [
    "MultiModalDataModule",
    "MultiModalLightningModule",
    "distributed_trainer",
    "fit_distributed",
    "lightning_strategy",
    "process_rank",
]

logger = logging.getLogger(__name__)

#: Rank 0 leaves the run's :class:`TrainingResult` here for a launching process that did not
#: train itself (``ddp_spawn``/``ddp_fork``); that process reads and removes it.
RESULT_FILE = "distributed_result.json"


class MultiModalDataModule(L.LightningDataModule):
    """Each process's share of every global batch of ``dataset``, collated by the model's own
    ``collate_samples``; the shuffled order of an epoch is the same on every process (seeded by
    ``seed`` and the epoch, counted from ``first_epoch`` in a resumed run) and each takes every
    ``world_size``-th row of it.

    The rows are held in memory (``dataset.X``); ``fork``-started processes share them.
    """

    def __init__(self, model: Any, dataset: Any, seed: int = 0, first_epoch: int = 0) -> None:
        super().__init__()
        self.model, self.seed, self.first_epoch = model, seed, first_epoch
        self.X, self.y, self.w = dataset.X, dataset.y, dataset.w

    def train_dataloader(self) -> DataLoader:
        trainer: Any = self.trainer
        world, rank = trainer.world_size, trainer.global_rank
        rows: Any = range(len(self.X))  # a sequence of row numbers serves as a Dataset
        sampler = _OffsetEpochSampler(
            rows, self.first_epoch, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return DataLoader(
            rows,
            batch_size=per_process_batch(self.model.batch_size, world),
            sampler=sampler,
            collate_fn=self.collate,
        )

    def collate(self, rows: list[int]) -> tuple[list, list, list]:
        """``([MultiModalBatch], [y], [w])`` of ``rows``, as the model's ``default_generator``."""
        index = np.asarray(rows)
        samples = list(self.X[index])
        batch = collate_samples(samples, self.model.modalities, self.model._drop_modalities)
        return [batch], [self.y[index]], [self.w[index]]


class _OffsetEpochSampler(DistributedSampler):
    """``DistributedSampler`` whose epochs count from ``first_epoch`` (a resumed run's): Lightning
    calls :meth:`set_epoch` with the epochs of this fit only."""

    def __init__(self, rows: Any, first_epoch: int, **options: Any) -> None:
        super().__init__(rows, **options)
        self.first_epoch = first_epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.first_epoch + epoch)


class MultiModalLightningModule(L.LightningModule):
    """A deepfuse model's training step under Lightning: its network, loss, optimizer (parameter
    groups, gradient clipping), learning-rate schedule and epoch hook (curricula).

    ``epochs`` is the run's length; a resumed run starts after ``first_epoch`` of them (read from
    ``resume_file``, named in the error when the processes disagree)."""

    def __init__(
        self, model: Any, epochs: int, first_epoch: int = 0, resume_file: str = ""
    ) -> None:
        super().__init__()
        self.deepfuse_model, self.epochs = model, epochs
        self.first_epoch, self.resume_file = first_epoch, resume_file
        self.network = model.model
        self.loss_fn = refusing_non_finite(model._loss_fn, model)
        # DeepChem's step order (zero_grad, backward, step, schedule): Lightning's automatic
        # optimization runs backward inside ``step(closure)``, after the model's clipping hook
        self.automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.deepfuse_model._pytorch_optimizer

    def transfer_batch_to_device(self, batch: Any, device: torch.device, _: int) -> Any:
        return batch_to_device(batch, device)  # this rank's device, not the model's

    def on_fit_start(self) -> None:
        optimizer_state_to_devices(self)
        check_same_first_epoch(self, self.first_epoch, self.resume_file)

    def on_train_epoch_start(self) -> None:
        # one fit(nb_epoch=epochs) call passes the same progress to the curriculum
        epoch = self.first_epoch + self.current_epoch
        self.deepfuse_model._on_epoch_start(epoch / max(1, self.epochs - 1))

    def training_step(self, batch: tuple[list, list, list], batch_idx: int) -> torch.Tensor:
        model, optimizer = self.deepfuse_model, self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one
        inputs, labels, weights = batch
        optimizer.zero_grad()
        # DeepChem's fit_generator: one input is passed bare, outputs picked by _loss_outputs
        outputs = self.network(inputs[0] if len(inputs) == 1 else inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        if model._loss_outputs is not None:
            outputs = [outputs[i] for i in model._loss_outputs]
        loss = self.loss_fn(outputs, labels, weights)
        self.manual_backward(loss)  # DDP averages the gradients over the processes here
        optimizer.step()
        if model._lr_schedule is not None:
            model._lr_schedule.step()
        model._global_step += 1
        self.log(
            "train_loss",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(labels[0]),
        )
        return loss.detach()


class _RankZeroValidation(L.Callback):
    """Validation every ``eval_every`` epochs and after the last on rank 0 (the best epoch's
    checkpoint is saved into ``save_dir``); the history is broadcast so that every rank makes the
    same plateau and early-stopping decisions. With a resume ``state`` (a resumable run, maybe
    resumed) rank 0 writes a resume point into ``save_dir`` after every epoch."""

    def __init__(
        self,
        best: BestCheckpointCallback,
        epochs: int,
        save_dir: str,
        state: resume.ResumeState | None = None,
    ) -> None:
        self.best, self.epochs, self.save_dir, self.state = best, epochs, save_dir, state
        self.so_far = state.result if state else TrainingResult(0, math.inf, "")
        self.first_epoch = state.epochs_done if state else 0
        self.stopped_at: int | None = self.so_far.stopped_at
        self.trained_here = False
        self._started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained_here = True
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model, best = pl_module.deepfuse_model, self.best
        epoch = self.first_epoch + trainer.current_epoch + 1
        if best.valid is not None and (epoch % best.eval_every == 0 or epoch == self.epochs):
            if trainer.is_global_zero:
                best._validate(model, epoch)
            shared = (best.history, best.best_score, best.best_epoch, best.score_name)
            shared = trainer.strategy.broadcast(shared, src=0)
            best.history, best.best_score, best.best_epoch, best.score_name = shared
            best.report_scores(model)
        if best.patience is not None and best.waited() >= best.patience:
            self.stopped_at, trainer.should_stop = epoch, True
        if self.state is not None and trainer.is_global_zero:
            point = replace(self.state, epochs_done=epoch, result=self.result())
            resume.save_resume_point_or_warn(model, self.save_dir, point, "train", logger)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.best.best_epoch == 0:  # no validation split or only NaN scores: keep the last
            resume.save_checkpoint_atomically(pl_module.deepfuse_model, self.save_dir)
            self.best.best_epoch = self.first_epoch + trainer.current_epoch
        write_json(os.path.join(self.save_dir, RESULT_FILE), asdict(self.result()))

    def result(self) -> TrainingResult:
        best, so_far = self.best, self.so_far
        elapsed = time.perf_counter() - self._started if self.trained_here else 0.0
        return TrainingResult(
            best.best_epoch,
            best.best_score,
            best.score_name,
            best.history,
            so_far.train_time_s + elapsed,
            list(so_far.resumed_at),
            self.stopped_at,
        )


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Rows per process of a global batch of ``batch_size`` (rounded up)."""
    return math.ceil(batch_size / world_size)


def fit_distributed(
    model: Any,
    train: Any,
    valid: Any | None = None,
    epochs: int = 10,
    eval_every: int = 1,
    transformers: Sequence[Any] = (),
    save_dir: str | None = None,
    accelerator: str = "cpu",
    devices: int | str = 2,
    num_nodes: int = 1,
    strategy: str = "ddp",
    seed: int = 0,
    progress: bool | None = None,
    resumable: bool = False,
    resume_from: str | None = None,
) -> TrainingResult:
    """Train a deepfuse ``model`` on ``train`` under ``lightning.Trainer`` (DDP on
    ``devices`` x ``num_nodes`` processes) and leave the best validation epoch's weights in it.

    Parameters
    ----------
    model: MultiModalTorchModel
        Any deepfuse fusion model; its ``batch_size`` is the global batch (split over the
        processes), its learning-rate schedule, gradient clipping, curriculum and
        ``early_stopping`` apply as in ``train_with_validation``.
    train, valid: dc.data.Dataset
        Training rows, and the rows whose score chooses the kept epoch (None or empty: the
        last epoch is kept).
    epochs, eval_every: int
        Training epochs; validation every ``eval_every`` epochs and after the last.
    transformers: sequence
        DeepChem transformers of the labels (validation scores in original units).
    save_dir: str, optional
        Folder of the kept checkpoint (default: ``model.model_dir``).
    accelerator, devices, num_nodes, strategy:
        As ``lightning.Trainer``'s: e.g. ``"gpu", 4`` (four GPUs), ``"cpu", 2`` (two CPU
        processes, gloo). ``"ddp"`` starts the other processes by running the script again
        (guard it with ``if __name__ == "__main__":``) or joins processes started by
        ``torchrun``/SLURM; ``"ddp_spawn"``/``"ddp_fork"`` start them from this process.
    seed: int
        Seed of the shuffled order of every epoch (the same on every process).
    progress: bool, optional
        Lightning's progress bar (default: the model's ``progress``).
    resumable: bool
        Rank 0 writes a resume point into ``save_dir`` after every epoch (removed when the run
        finishes), and the run continues from the one in ``resume_from`` (default:
        ``save_dir``) if an earlier run of the same plan (model configuration, rows, epochs,
        batch size) was interrupted, on this or another number of processes, or in one process
        (:func:`~deepfuse_plugin.train.loop.train_with_validation`'s resume points are the same).
        A different plan raises :class:`~deepfuse_plugin.train.resume.ResumeMismatchError`.
    resume_from: str, optional
        Where this process reads the resume point: another rank that saves nowhere shared
        (``deepfuse train`` gives it a private folder) reads rank 0's ``save_dir``.

    Returns
    -------
    TrainingResult
        Kept epoch, its score and the validation history. On the process that started the run
        (rank 0, or the launcher of ``ddp_spawn``/``ddp_fork``) the model then holds the kept
        epoch's weights; other ranks keep their last epoch's.
    """
    check_training_settings(epochs=epochs, eval_every=eval_every, num_nodes=num_nodes)
    if isinstance(devices, int) and devices < 1:
        raise InvalidSettingError(f"devices must be >= 1 (or 'auto'), got {devices!r}")
    save_dir = save_dir or model.model_dir
    valid_rows = valid if valid is not None and len(valid) else None
    check_training_data(
        train, model.modalities, model.n_tasks, model.mode, model.n_classes, True, logger
    )
    model._ensure_built()
    model.count_schedules_over(epochs)
    eval_every = eval_every if valid_rows is not None else epochs + 1
    resume_from = resume_from or save_dir
    state = (
        start_resumable(model, train, valid_rows, epochs, eval_every, resume_from, "train")
        if resumable
        else None
    )
    model._start_schedule(len(train), epochs)  # after a restore: from its epochs_started
    so_far = state.result if state else None
    best = BestCheckpointCallback(
        valid_rows,
        list(transformers),
        model.mode,
        steps_per_epoch=1,
        total_steps=epochs,
        eval_every=eval_every,
        save_dir=save_dir,
        so_far=so_far,
        patience=model.early_stopping if valid_rows is not None else None,
    )
    best.report_scores(model)  # a resumed run continues at its plateau scale
    validation = _RankZeroValidation(best, epochs, save_dir, state)
    first_epoch = validation.first_epoch
    trainer = distributed_trainer(
        accelerator,
        devices,
        num_nodes,
        strategy,
        max_epochs=max(1, epochs - first_epoch),
        callbacks=[validation],
        progress=model.progress if progress is None else progress,
        root_dir=save_dir,
    )
    _warn_uneven_batch(model.batch_size, trainer.world_size)
    if first_epoch < epochs and validation.stopped_at is None:
        module = MultiModalLightningModule(
            model, epochs, first_epoch, os.path.join(resume_from, resume.STATE_FILE)
        )
        _fit(trainer, model, module, MultiModalDataModule(model, train, seed, first_epoch))
        result = _finish(model, validation, trainer, save_dir)
    else:  # interrupted after its last epoch or early stop: nothing left to train
        result = _finish_without_training(model, validation, trainer, save_dir)
    if state is not None and trainer.global_rank == 0:  # the launcher of ddp_fork/spawn too
        resume.clear(save_dir)
    return result


def _fit(trainer: L.Trainer, model: Any, module: L.LightningModule, data: Any) -> None:
    model._fitting = True
    try:
        with callers_thread_count():
            trainer.fit(module, data)
    finally:
        model._fitting = False
        model.model.to(model.device)  # Lightning's teardown leaves the network on the CPU


def _finish(
    model: Any, validation: _RankZeroValidation, trainer: L.Trainer, save_dir: str
) -> TrainingResult:
    """The run's result; the kept epoch's weights restored where this process started the run."""
    if validation.trained_here and not trainer.is_global_zero:
        return validation.result()  # another rank: rank 0 reports and keeps the run
    result_path = os.path.join(save_dir, RESULT_FILE)
    result = validation.result() if validation.trained_here else _read_result(result_path)
    if os.path.exists(result_path):
        os.remove(result_path)
    restore_safely(model, save_dir)
    return result


def _finish_without_training(
    model: Any, validation: _RankZeroValidation, trainer: L.Trainer, save_dir: str
) -> TrainingResult:
    """The result of a resumed run that had no epoch left; the kept epoch restored (by rank 0:
    another rank keeps the resume point's weights and nothing in its own folder)."""
    result = validation.result()
    if trainer.global_rank == 0:
        keep_selected_epoch(model, save_dir, result, validation.first_epoch)
    return result


def _read_result(path: str) -> TrainingResult:
    """The result rank 0 left for the launching process (``ddp_spawn``/``ddp_fork``)."""
    import json

    try:
        with open(path) as fh:
            saved = json.load(fh)
        saved["best_score"] = math.inf if saved["best_score"] is None else saved["best_score"]
        return TrainingResult(**saved)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CorruptCheckpointError(
            f"The distributed run left no readable result in {path} ({err}): rank 0 did not "
            "finish training; see its log"
        ) from err


def _warn_uneven_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        logger.warning(
            "batch_size %d does not split evenly over %d processes: each takes %d rows, a "
            "global batch of %d",
            batch_size,
            world_size,
            per_process_batch(batch_size, world_size),
            per_process_batch(batch_size, world_size) * world_size,
        )
