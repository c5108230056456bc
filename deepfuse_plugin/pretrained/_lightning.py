"""Pretraining on several processes, GPUs or machines under Lightning (DDP).

:func:`pretrain_distributed` (``pretrain_encoders(..., devices=N)``, ``deepfuse pretrain
--devices N``) trains the same :class:`~deepfuse_plugin.nn.pretraining.PretrainingNetwork` with
the same step as the one-process loop: :meth:`_Run.train_step <deepfuse_plugin.pretrained._loop>`
(masking curriculum, forward, finite-loss check, backward, gradient clipping, AdamW, warm-up +
cosine schedule), with Lightning's ``manual_backward`` so that DDP averages the gradients.

``batch_size`` stays the *global* batch: every epoch's seeded order is cut into global batches
as in one process, and each of the ``N`` processes takes ``batch_size / N`` rows of each, so a run
on ``N`` processes takes the same steps, on the same learning-rate and masking schedule.

Contrastive terms (cross-view InfoNCE, the relational term) use the other molecules of the
batch as negatives: under DDP that is the process's *local* batch of ``batch_size / N``
molecules, not the global one (as in chemprop and most DDP contrastive code without an
all-gather). With the targets term alone (``loss_weights={"contrastive": 0, "relational": 0,
"masked": 0}``), a mean over molecules, N processes train the same weights as one.

Global rank 0 validates after every epoch and writes the resume point (the one-process loop's
``resume_state.pt``: a run interrupted under DDP resumes in one process and the other way
round); the finished run's checkpoint is then written by the one-process code from that resume
point. The other ranks write nothing. Resuming reads ``out_dir`` on every process: on several
machines it must be on a file system they share.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.pretrained._loop import (
    RESUME_FILE,
    PretrainingConfig,
    _resume,
    _resume_settings,
    _Run,
    _samples,
    pretrain_encoders,  # the one-process run: it writes the finished checkpoint
)
from deepfuse_plugin.train.ddp import (
    callers_thread_count,
    check_same_first_epoch,
    distributed_trainer,
    optimizer_state_to_devices,
)

__all__ = ["PretrainingLightningModule", "pretrain_distributed"]

logger = logging.getLogger(__name__)

#: Molecules each process needs in its share of a global batch (contrastive negatives).
MIN_LOCAL_BATCH = 4


class EpochShare(Sampler[np.ndarray]):
    """One process's rows of every global batch of an epoch.

    The epoch's order is the one-process loop's (a permutation seeded by ``seed`` and the epoch;
    the incomplete last batch is dropped); each global batch of ``batch_size`` rows is dealt to
    the ``world`` processes, rank ``r`` taking rows ``r, r + world, ...``. Lightning calls
    :meth:`set_epoch` with the epochs done in this fit; ``first_epoch`` (a resumed run's) is
    added.

    Examples
    --------
    >>> share = EpochShare(10, batch_size=4, seed=0, rank=1, world=2)
    >>> [len(rows) for rows in share]
    [2, 2]
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int, world: int, first_epoch: int = 0
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.first_epoch = rank, world, first_epoch
        self.epoch = first_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.first_epoch + epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Any:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for start in range(0, self.n - self.batch_size + 1, self.batch_size):
            yield order[start : start + self.batch_size][self.rank :: self.world]


class PretrainingLightningModule(L.LightningModule):
    """A pretraining run's epochs under Lightning: the one-process run's network, optimizer,
    schedule and step (``_Run.train_step``), with rank-0 validation and resume points.

    Parameters
    ----------
    run: _Run
        The run (network, optimizer, schedule, train and validation molecules).
    out: Path
        Checkpoint folder (rank 0 writes the resume point there after every epoch).
    first_epoch, history, elapsed:
        Where a resumed run starts: epochs done, their history rows, seconds spent.
    """

    def __init__(
        self,
        run: _Run,
        out: Path,
        first_epoch: int = 0,
        history: Sequence[dict] = (),
        elapsed: float = 0.0,
    ) -> None:
        super().__init__()
        self.run, self.network = run, run.network
        self.out, self.first_epoch = out, first_epoch
        self.history, self.elapsed = list(history), elapsed
        self.automatic_optimization = False  # _Run.train_step steps, clips and schedules
        self._sums: dict[str, float] = {}
        self._started = time.perf_counter()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.run.optimizer

    def train_dataloader(self) -> DataLoader:
        run, trainer = self.run, self.trainer
        share = EpochShare(
            len(run.train),
            run.config.batch_size,
            run.config.seed,
            trainer.global_rank,
            trainer.world_size,
            self.first_epoch,
        )
        # batch_size=None: the sampler yields a process's rows of one batch and train[rows]
        # (an array serves as a Dataset) is their samples. Its own generator: a new epoch's
        # iterator draws a seed from it, not from the global RNG the epoch's masks come from
        samples: Any = run.train
        return DataLoader(
            samples,
            batch_size=None,
            sampler=share,
            collate_fn=self._collate,
            generator=torch.Generator(),
        )

    def _collate(self, samples: Any) -> Any:
        return collate_samples(list(samples), self.run.modalities)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, _: int) -> Any:
        return batch.to(device)

    def on_fit_start(self) -> None:
        self.run.device = self.device  # validation batches go where Lightning put the network
        optimizer_state_to_devices(self)
        check_same_first_epoch(self, self.first_epoch, str(self.out / RESUME_FILE))

    def on_train_start(self) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self.network.train()
        # the one-process loop's seed of this epoch's masks and dropout
        torch.manual_seed(self.run.config.seed * 100003 + self._epoch())
        self._sums = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self._epoch() * self.run.steps_per_epoch + batch_idx
        out = self.run.train_step(batch, step, self.manual_backward)
        for key, value in {"loss": out.loss, **out.terms}.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value.detach())
        return out.loss.detach()

    def on_train_epoch_end(self) -> None:
        epoch = self._epoch()
        row: dict[str, float] = {"epoch": epoch + 1, **self._train_means()}
        if self.trainer.is_global_zero:
            row.update({f"valid_{k}": v for k, v in self.run.validate().items()})
        row = self.trainer.strategy.broadcast(row, src=0)
        self.history.append(row)
        logger.info("pretraining %s", row)
        if self.trainer.is_global_zero:
            self._save_resume_point(epoch + 1)

    def _epoch(self) -> int:
        return self.first_epoch + self.current_epoch

    def _train_means(self) -> dict[str, float]:
        """This epoch's mean loss terms, averaged over the processes."""
        names = sorted(self._sums)
        steps = max(1, self.run.steps_per_epoch)
        local = torch.tensor([self._sums[k] / steps for k in names], device=self.device)
        means = self.trainer.strategy.reduce(local, reduce_op="mean")
        return {f"train_{k}": float(v) for k, v in zip(names, means.tolist())}

    def _save_resume_point(self, epochs_done: int) -> None:
        """The one-process loop's resume point (``_loop._resume`` reads it), written atomically."""
        run = self.run
        state = {
            "network": run.network.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(),
            "epoch": epochs_done,
            "history": json.dumps(self.history),
            "config": json.dumps(_resume_settings(run)),
            "elapsed": self.elapsed + time.perf_counter() - self._started,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        partial = self.out / f".{RESUME_FILE}.partial"
        torch.save(state, partial)
        os.replace(partial, self.out / RESUME_FILE)


def pretrain_distributed(
    corpus: Any,
    inputs: Sequence[Modality],
    targets: Sequence[Modality] = (),
    out_dir: str | os.PathLike = "pretrained",
    name: str = "DeepFuse-pretrained",
    config: PretrainingConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    corpus_info: dict[str, Any] | None = None,
    command: str | None = None,
    accelerator: str = "cpu",
    devices: int | str = 2,
    num_nodes: int = 1,
    strategy: str = "ddp_fork",
) -> Path:
    """:func:`~deepfuse_plugin.pretrained.pretrain_encoders` on ``devices`` x ``num_nodes``
    processes under Lightning (see the module docstring).

    Parameters
    ----------
    corpus, inputs, targets, out_dir, name, config, resume, progress, corpus_info, command:
        As :func:`~deepfuse_plugin.pretrained.pretrain_encoders`; ``config.batch_size`` is the
        global batch and must split evenly, at least 4 molecules per process.
    accelerator, devices, num_nodes, strategy:
        As ``lightning.Trainer``'s: ``"cpu", 2`` (two CPU processes, gloo), ``"gpu", 4``.
        ``"ddp_fork"``/``"ddp_spawn"`` start the processes from this one; ``"ddp"`` re-runs the
        script (guard it with ``if __name__ == "__main__":``) or joins processes started by
        ``torchrun``/SLURM on every node.

    Returns
    -------
    Path of the checkpoint folder (written by global rank 0 or the launching process; the
    other ranks return it without writing).

    Examples
    --------
    >>> from deepfuse_plugin.pretrained import pretrain_encoders  # doctest: +SKIP
    >>> pretrain_encoders(corpus, inputs, targets, "ckpt", config=config,
    ...                   devices=2, strategy="ddp_fork")  # doctest: +SKIP
    """
    config = config or PretrainingConfig()
    out = Path(out_dir)
    # built on the CPU: Lightning moves it to each process's device (and a fork must not
    # inherit an initialized CUDA context)
    run = _Run(_samples(corpus), list(inputs), list(targets), replace(config, device="cpu"))
    history, first_epoch, elapsed = _resume(run, out) if resume else ([], 0, 0.0)
    trainer = distributed_trainer(
        accelerator,
        devices,
        num_nodes,
        strategy,
        max_epochs=max(1, config.epochs - first_epoch),
        progress=progress,
        root_dir=str(out),
    )
    _check_batch_split(config.batch_size, trainer.world_size)
    if first_epoch < config.epochs:
        module = PretrainingLightningModule(run, out, first_epoch, history, elapsed)
        with callers_thread_count():
            trainer.fit(module)
    if trainer.global_rank != 0:
        return out  # another rank: global rank 0 writes the checkpoint
    # rank 0 (or the launcher of ddp_fork/ddp_spawn): the one-process code finishes the run
    # from the last resume point (all epochs done: it trains nothing more)
    return pretrain_encoders(
        corpus,
        inputs,
        targets,
        out,
        name=name,
        config=config,
        resume=True,
        progress=False,
        corpus_info=corpus_info,
        command=command,
    )


def _check_batch_split(batch_size: int, world_size: int) -> None:
    if batch_size % world_size or batch_size // world_size < MIN_LOCAL_BATCH:
        raise InvalidSettingError(
            f"batch_size {batch_size} must split evenly over the {world_size} processes, at "
            f"least {MIN_LOCAL_BATCH} molecules each (contrastive negatives come from a "
            f"process's own share): use a multiple of {world_size} that is at least "
            f"{MIN_LOCAL_BATCH * world_size}"
        )
