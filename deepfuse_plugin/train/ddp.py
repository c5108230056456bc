"""The ``lightning.Trainer`` deepfuse trains under, and where this process stands in a distributed
run: the pieces :func:`~deepfuse_plugin.train.lightning.fit_distributed` (fine-tuning) and
``pretrain_encoders(devices=...)`` (pretraining) share. It imports nothing of deepfuse but its
errors, so the pretraining package can use it without reaching the training layers.

Examples
--------
>>> from deepfuse_plugin.train.ddp import lightning_strategy
>>> lightning_strategy("ddp_fork")
'ddp_fork_find_unused_parameters_true'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import lightning as L
import torch

from deepfuse_plugin.errors import InvalidSettingError

__all__ = [
    "callers_thread_count",
    "check_same_first_epoch",
    "distributed_trainer",
    "lightning_strategy",
    "optimizer_state_to_devices",
    "process_rank",
]

#: DDP strategies whose parameters may go unused in a step (a masked modality's encoder, a
#: mixture-of-experts gate): Lightning's variant that lets DDP find them.
_DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def lightning_strategy(strategy: str) -> str:
    """Lightning's name for ``strategy``: DDP strategies in the variant that tolerates
    parameters without a gradient in a step (masked modalities, unused experts)."""
    return f"{strategy}_find_unused_parameters_true" if strategy in _DDP_STRATEGIES else strategy


def distributed_trainer(
    accelerator: str,
    devices: int | str,
    num_nodes: int,
    strategy: str,
    max_epochs: int = 1,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = False,
    root_dir: str | None = None,
) -> L.Trainer:
    """The ``lightning.Trainer`` deepfuse trains under: no logger, no Lightning checkpoints or
    sanity validation (deepfuse validates and saves itself), and no ``DistributedSampler``
    (deepfuse's data modules give each process its share of every global batch)."""
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=lightning_strategy(strategy),
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=root_dir,
    )


@contextlib.contextmanager
def callers_thread_count() -> Iterator[None]:
    """Train every process with this process's torch thread count (``deepfuse --threads``).

    Lightning's process launchers set each process's threads to ``cores / processes`` unless
    ``OMP_NUM_THREADS`` is set (on 2 shared cores, 2 threads for one process made a training
    step 4-10x slower than 1); inside this block it is set to the current count.
    """
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def check_same_first_epoch(module: L.LightningModule, first_epoch: int, resume_file: str) -> None:
    """Raise :class:`~deepfuse_plugin.errors.InvalidSettingError` unless every process of
    ``module``'s run resumes after the same epoch: each process reads the resume point itself
    (on several machines ``resume_file`` must be on a file system they all share). Call it from
    ``on_fit_start``."""
    gathered = module.all_gather(torch.tensor(first_epoch, device=module.device))
    starts = torch.as_tensor(gathered).reshape(-1)
    if bool((starts != first_epoch).any()):
        raise InvalidSettingError(
            f"The processes resume from different epochs ({starts.tolist()}): {resume_file} "
            "must be on a file system every machine shares (or start over without resuming)"
        )


def optimizer_state_to_devices(module: L.LightningModule) -> None:
    """Move a resumed optimizer state (loaded on the CPU) to the devices Lightning put the
    parameters on: loading a state dict does that, as ``torch`` does on load. Call it from
    ``on_fit_start``."""
    for optimizer in module.trainer.optimizers:
        optimizer.load_state_dict(optimizer.state_dict())


def process_rank(
    accelerator: str = "cpu", devices: int | str = 1, num_nodes: int = 1, strategy: str = "ddp"
) -> int:
    """The global rank this process takes in a run with these settings, before it starts.

    0 for the process that starts a run (it also launches the other processes of
    ``ddp_fork``/``ddp_spawn``, and of ``ddp`` on one machine); a process that Lightning's
    ``ddp`` launcher re-ran, or that ``torchrun``/SLURM started for another rank, reads its
    rank from their environment variables (``LOCAL_RANK``/``NODE_RANK``, ``RANK``,
    ``SLURM_PROCID``), as Lightning will. Only rank 0 should write a run's files.

    Examples
    --------
    >>> process_rank("cpu", devices=1, strategy="auto")
    0
    """
    return distributed_trainer(accelerator, devices, num_nodes, strategy).global_rank
