"""``pretrain_encoders``: the one-process loop (:mod:`._loop`) or, with several devices or
machines, the same run under Lightning DDP (:mod:`._lightning`, imported only then: Lightning is
the ``distributed`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.pretrained import _loop
from deepfuse_plugin.pretrained._loop import PretrainingConfig


def pretrain_encoders(
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
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str | None = None,
    shuffle_window: int = _loop.DEFAULT_SHUFFLE_WINDOW,
) -> Path:
    """Pretrain encoders of ``inputs`` on ``corpus`` and write a checkpoint to ``out_dir``.

    Parameters
    ----------
    corpus: DeepChem dataset or sequence of MultiModalSample
        Featurized unlabelled molecules holding every input and target view.
    inputs, targets: sequence of Modality
        Views encoded (shipped) and views used only as targets/teacher (not shipped).
    out_dir: path
        Receives ``encoders.safetensors``, ``model.json``, ``history.json``, ``loss_curve.png``
        and, while the run is unfinished, ``resume_state.pt``.
    name: str
        The checkpoint's name (``<Arch>-<Data>-<version>-<Task>``).
    config: PretrainingConfig, optional
        The run's settings; ``batch_size`` is the global batch under DDP.
    resume: bool
        Continue from ``out_dir``'s resume point when there is one (settings must match; a run
        interrupted on N processes resumes on any number, one included).
    corpus_info: dict, optional
        What the corpus is (description, subset, seed), recorded in ``model.json``.
    command: str, optional
        The command line that regenerates the checkpoint (recorded and shown in its README).
    accelerator, devices, num_nodes, strategy:
        More than one device or node, or any ``strategy``: train on ``devices`` x ``num_nodes``
        processes under Lightning DDP (default strategy ``ddp_fork``; ``ddp`` on several
        machines, the same call started on each). Contrastive negatives then come from each
        process's share of the batch; global rank 0 writes ``out_dir``. See
        :mod:`deepfuse_plugin.pretrained._lightning`.

    shuffle_window: int
        A :class:`~deepfuse_plugin.data.ShardedMultiModalDataset` corpus is streamed: each epoch
        visits its shards in a seeded order and shuffles the rows of this many shards together
        (one process only for now).

    Returns
    -------
    Path of the checkpoint folder; load it with ``DynamicFusionModel(..., pretrained=path)``.

    Examples
    --------
    >>> from deepfuse_plugin.pretrained import PretrainingConfig, pretrain_encoders
    >>> path = pretrain_encoders(samples, featurizer.modalities[:3], featurizer.modalities[3:],
    ...                          "ckpt", config=PretrainingConfig(epochs=5),
    ...                          devices=2)  # doctest: +SKIP
    """
    run: dict[str, Any] = dict(
        name=name,
        config=config,
        resume=resume,
        progress=progress,
        corpus_info=corpus_info,
        command=command,
    )
    if devices == 1 and num_nodes == 1 and strategy is None:
        return _loop.pretrain_encoders(
            corpus, inputs, targets, out_dir, **run, shuffle_window=shuffle_window
        )
    from deepfuse_plugin.data.shard_dataset import ShardedMultiModalDataset

    if isinstance(corpus, ShardedMultiModalDataset):
        # the DDP sampler deals rows of an in-memory epoch order; a streamed corpus has no
        # random access, so each rank would have to read every shard
        raise InvalidSettingError(
            "A sharded (streamed) pretraining corpus trains in one process only: drop "
            "--devices/--num-nodes/--strategy, or pretrain on several processes from an "
            "in-memory corpus (without --shards-dir)"
        )
    from deepfuse_plugin.pretrained._lightning import pretrain_distributed

    return pretrain_distributed(
        corpus,
        inputs,
        targets,
        out_dir,
        **run,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy or "ddp_fork",
    )
