"""The pretraining loop: resumable, seeded, with a progress bar, a loss curve and a checkpoint.

Every epoch draws its batch order and masks from ``seed`` and the epoch number, so an interrupted
run resumed from its last finished epoch trains exactly the epochs an uninterrupted run would. The
resume point holds the network and optimizer state as plain tensors, loaded with
``torch.load(weights_only=True)`` (nothing executes on load).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError
from deepfuse_plugin.modalities import Modality, MultiModalSample
from deepfuse_plugin.nn.pretraining import PretrainingNetwork, PretrainingOutput
from deepfuse_plugin.pretrained._checkpoints import render_readme, save_encoders
from deepfuse_plugin.pretrained._stream import (
    ShardedCorpus,
    StreamedRows,
    streamed_target_statistics,
)

logger = logging.getLogger(__name__)

RESUME_FILE = "resume_state.pt"


@dataclass
class PretrainingConfig:
    """Settings of a pretraining run (all stored in the checkpoint's ``model.json``).

    Parameters
    ----------
    epochs: int
    batch_size: int
        Molecules per step; contrastive terms use the other molecules of the batch as negatives.
    learning_rate: float
        Peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine decay).
    weight_decay: float
    encoder_dim, projection_dim: int
    encoder_options: dict kind -> dict
    loss_weights: dict, optional
        Overrides of :data:`~deepfuse_plugin.nn.pretraining.DEFAULT_LOSS_WEIGHTS`.
    mask_rate: tuple of float
        Masking curriculum: the probability of hiding a view grows linearly from the first value
        to the second over the run.
    temperature: float
    valid_fraction: float
        Molecules held out to report a validation loss per epoch.
    seed: int
    device: str, optional
        ``"cuda"``, ``"cpu"``, ...; default: the GPU when one is present.
    """

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    encoder_dim: int = 128
    projection_dim: int = 128
    encoder_options: dict | None = None
    loss_weights: dict | None = None
    mask_rate: tuple[float, float] = (0.1, 0.5)
    temperature: float = 0.1
    valid_fraction: float = 0.02
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "encoder_dim", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidSettingError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 4:
            raise InvalidSettingError(
                f"batch_size must be at least 4 (contrastive negatives come "
                f"from the batch), got {self.batch_size}"
            )
        for name in ("learning_rate", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InvalidSettingError(f"{name} must be a positive finite number, got {value!r}")
        if not 0 <= self.valid_fraction < 0.5:
            raise InvalidSettingError(
                f"valid_fraction must be in [0, 0.5), got {self.valid_fraction}"
            )
        if not all(0 <= r < 1 for r in self.mask_rate):
            raise InvalidSettingError(f"mask_rate values must be in [0, 1), got {self.mask_rate}")


#: Shards of a sharded corpus whose rows are shuffled together (see :mod:`._stream`).
DEFAULT_SHUFFLE_WINDOW = 4

#: A corpus as the run reads it: samples in memory, or a sharded dataset streamed from disk.
Corpus = np.ndarray | ShardedCorpus
#: Training or validation rows: samples in memory, or rows of a sharded corpus.
Rows = np.ndarray | StreamedRows


def _samples(dataset: Any, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> Corpus:
    """The corpus as the run reads it: a :class:`~deepfuse_plugin.data.ShardedMultiModalDataset`
    is streamed (never loaded whole); any other DeepChem dataset or sequence gives its
    MultiModalSample objects in memory, failures dropped."""
    from deepfuse_plugin.data.shard_dataset import ShardedMultiModalDataset

    if isinstance(dataset, ShardedMultiModalDataset):
        if len(dataset) == 0:
            raise InvalidInputError("The pretraining corpus has no featurized molecule")
        return ShardedCorpus(dataset, shuffle_window)
    X = dataset.X if hasattr(dataset, "X") else np.asarray(list(dataset), dtype=object)
    keep = np.array([isinstance(x, MultiModalSample) for x in X], dtype=bool)
    if not keep.any():
        raise InvalidInputError("The pretraining corpus has no featurized molecule")
    return X[keep]


def _target_statistics(
    samples: Rows, targets: Sequence[Modality]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per target view, the mean and standard deviation of its values over ``samples``."""
    if isinstance(samples, StreamedRows):
        return streamed_target_statistics(samples, targets)
    out = {}
    for target in targets:
        values = [s.values.get(target.name) for s in samples]
        stacked = (
            np.stack([np.asarray(v, dtype=np.float64) for v in values if v is not None])
            if any(v is not None for v in values)
            else np.zeros((1, target.require("dim")))
        )
        out[target.name] = (stacked.mean(0), stacked.std(0))
    return out


def _split(samples: Corpus, order: np.ndarray, n_valid: int) -> tuple[Rows, Rows]:
    """``(valid, train)``: the rows ``order[:n_valid]`` and the others (in ``order``'s order for
    samples in memory)."""
    if isinstance(samples, ShardedCorpus):
        return samples.split(order, n_valid)
    return samples[order[:n_valid]], samples[order[n_valid:]]


def _in_memory_batches(samples: np.ndarray, size: int, seed: list[int], shuffle: bool) -> Any:
    """Lists of samples: a permutation from ``seed`` cut into full batches, or in order."""
    n = len(samples)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n - size + 1 if shuffle else n, size):
        yield list(samples[order[start : start + size]])


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Run:
    """One run's state: network, optimizer, schedule, data order."""

    def __init__(
        self,
        samples: Corpus,
        inputs: list[Modality],
        targets: list[Modality],
        config: PretrainingConfig,
    ):
        self.config, self.inputs, self.targets = config, inputs, targets
        # how a streamed corpus is read changes every epoch's order: a resume point must match it
        self.corpus_order = (
            {"shuffle_window": samples.window} if isinstance(samples, ShardedCorpus) else {}
        )
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(samples))
        n_valid = int(round(config.valid_fraction * len(samples)))
        self.valid, self.train = _split(samples, order, n_valid)
        if len(self.train) < config.batch_size:
            raise InvalidInputError(
                f"{len(self.train)} training molecules, fewer than one batch of {config.batch_size}"
            )
        torch.manual_seed(config.seed)
        self.network = PretrainingNetwork(
            inputs,
            targets,
            config.encoder_dim,
            config.encoder_options,
            config.projection_dim,
            config.temperature,
            config.loss_weights,
        )
        for name, (mean, std) in _target_statistics(self.train, targets).items():
            self.network.set_target_scaling(name, torch.tensor(mean), torch.tensor(std))
        default = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(config.device or default)
        self.network.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.steps_per_epoch = len(self.train) // config.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, self.total_steps)
        )
        self.modalities = inputs + targets

    def mask_rate(self, step: int) -> float:
        start, end = self.config.mask_rate
        return start + (end - start) * step / max(1, self.total_steps - 1)

    def batches(self, samples: Rows, epoch: int, shuffle: bool) -> Any:
        """Collated batches of ``samples``: shuffled from ``(seed, epoch)`` (full batches only)
        or in order; batches of fewer than 4 molecules are skipped (no contrastive negatives)."""
        size = self.config.batch_size
        if isinstance(samples, StreamedRows):
            groups = samples.sample_batches(size, [self.config.seed, epoch], shuffle)
        else:
            groups = _in_memory_batches(samples, size, [self.config.seed, epoch], shuffle)
        for rows in groups:
            if len(rows) >= 4:
                yield collate_samples(rows, self.modalities).to(self.device)

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        self.network.train()
        torch.manual_seed(self.config.seed * 100003 + epoch)
        sums: dict[str, float] = {}
        bar = tqdm(
            self.batches(self.train, epoch, True),
            total=self.steps_per_epoch,
            desc=f"pretrain epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            disable=not progress,
        )
        for i, batch in enumerate(bar):
            out = self.train_step(batch, epoch * self.steps_per_epoch + i)
            for key, value in {"loss": out.loss, **out.terms}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        return {k: v / max(1, self.steps_per_epoch) for k, v in sums.items()}

    def train_step(
        self,
        batch: Any,
        step: int,
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    ) -> PretrainingOutput:
        """One optimizer step on ``batch``, the run's ``step``-th: the masking curriculum's rate,
        forward, a finite-loss check, backward, gradient clipping (norm 5), AdamW, and the
        learning-rate schedule. ``backward`` runs the backward pass (under Lightning DDP its
        ``manual_backward``, which averages the gradients over the processes)."""
        self.network.mask_rate = self.mask_rate(step)
        out = self.network(batch)
        if not torch.isfinite(out.loss):
            epoch, i = divmod(step, max(1, self.steps_per_epoch))
            raise InvalidSettingError(
                f"The pretraining loss became {out.loss.item()} at epoch "
                f"{epoch + 1}, batch {i + 1}: lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        backward(out.loss)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 5.0)
        self.optimizer.step()
        self.schedule.step()
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if len(self.valid) < 4:
            return {}
        self.network.eval()
        self.network.mask_rate = self.config.mask_rate[1]
        torch.manual_seed(self.config.seed)
        sums: dict[str, float] = {}
        count = 0
        for batch in self.batches(self.valid, 0, False):
            out = self.network(batch)
            for key, value in {"loss": out.loss, **out.terms}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * batch.batch_size
            count += batch.batch_size
        return {k: v / count for k, v in sums.items()}


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
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
) -> Path:
    """Pretrain encoders of ``inputs`` on ``corpus`` and write a checkpoint to ``out_dir``.

    Parameters
    ----------
    corpus: DeepChem dataset or sequence of MultiModalSample
        Featurized unlabelled molecules holding every input and target view. A
        :class:`~deepfuse_plugin.data.ShardedMultiModalDataset` (from
        :func:`~deepfuse_plugin.data.featurize_corpus_to_disk`) is streamed from disk, a few
        shards at a time, so a corpus larger than memory pretrains; anything else is held in
        memory.
    inputs, targets: sequence of Modality
        Views encoded (shipped) and views used only as targets/teacher (not shipped).
    out_dir: path
        Receives ``encoders.safetensors``, ``model.json``, ``history.json``, ``loss_curve.png``
        and, while the run is unfinished, ``resume_state.pt``.
    name: str
        The checkpoint's name (``<Arch>-<Data>-<version>-<Task>``).
    resume: bool
        Continue from ``out_dir``'s resume point when there is one (settings must match).
    corpus_info: dict, optional
        What the corpus is (description, subset, seed), recorded in ``model.json``.
    command: str, optional
        The command line that regenerates the checkpoint (recorded and shown in its README).
    shuffle_window: int
        For a sharded corpus: how many shards' rows are shuffled together each epoch (the shard
        order is shuffled too); memory holds about ``shuffle_window + 1`` shards. Resume with
        the same value to see the same batches.

    Returns
    -------
    Path of the checkpoint folder; load it with ``DynamicFusionModel(..., pretrained=path)``.

    Examples
    --------
    >>> from deepfuse_plugin.data import featurize_corpus_to_disk
    >>> corpus = featurize_corpus_to_disk("moses", feat, "moses_shards", n_jobs=2)  # doctest: +SKIP
    >>> pretrain_encoders(corpus, feat.modalities[:3], feat.modalities[3:],
    ...                   "ckpt")  # doctest: +SKIP
    """
    config = config or PretrainingConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = _samples(corpus, shuffle_window)
    if isinstance(samples, ShardedCorpus):
        corpus_info = {**(corpus_info or {}), **samples.info()}
    run = _Run(samples, list(inputs), list(targets), config)
    history, start_epoch, elapsed = _resume(run, out) if resume else ([], 0, 0.0)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        row = {
            "epoch": epoch + 1,
            **{f"train_{k}": v for k, v in run.train_epoch(epoch, progress).items()},
        }
        row.update({f"valid_{k}": v for k, v in run.validate().items()})
        history.append(row)
        logger.info("pretraining %s", row)
        torch.save(
            {
                "network": run.network.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "schedule": run.schedule.state_dict(),
                "epoch": epoch + 1,
                "history": json.dumps(history),
                "config": json.dumps(_resume_settings(run)),
                "elapsed": elapsed + time.perf_counter() - started,
            },
            out / RESUME_FILE,
        )
    seconds = elapsed + time.perf_counter() - started
    info = _run_info(run, config, history, seconds, len(samples), corpus_info)
    if command:
        info["command"] = command
    save_encoders(
        out,
        name,
        list(inputs),
        run.network.encoder_state(),
        config.encoder_dim,
        config.encoder_options or {},
        info,
    )
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    plot_loss_curve(history, out / "loss_curve.png", title=name)
    (out / "README.md").write_text(render_readme(out))
    (out / RESUME_FILE).unlink(missing_ok=True)
    return out


def _config_dict(config: PretrainingConfig) -> dict[str, Any]:
    # the device is where it ran, not what it learned: a run may resume on another device
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(config).items()
        if k != "device"
    }


def _resume_settings(run: _Run) -> dict[str, Any]:
    """What a resume point must share with the run continuing it: the settings and, for a
    streamed corpus, how it is shuffled."""
    return {**_config_dict(run.config), **run.corpus_order}


def _resume(run: _Run, out: Path) -> tuple[list, int, float]:
    path = out / RESUME_FILE
    if not path.is_file():
        return [], 0, 0.0
    state = torch.load(path, weights_only=True, map_location=run.device)
    saved, now = json.loads(state["config"]), _resume_settings(run)
    if saved != now:
        diffs = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
        raise InvalidSettingError(
            f"{path} was written with other settings ({diffs}); use the same "
            "settings, another out_dir, or resume=False"
        )
    run.network.load_state_dict(state["network"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    logger.info("Resuming pretraining after epoch %d from %s", int(state["epoch"]), path)
    return json.loads(state["history"]), int(state["epoch"]), float(state["elapsed"])


def _run_info(
    run: _Run,
    config: PretrainingConfig,
    history: list,
    seconds: float,
    n: int,
    corpus_info: dict[str, Any] | None,
) -> dict[str, Any]:
    from deepfuse_plugin._version import __version__

    terms = sorted(
        {
            k[len("train_") :]
            for row in history
            for k in row
            if k.startswith("train_") and k != "train_loss"
        }
    )
    return {
        "objective": {
            "terms": terms,
            "loss_weights": run.network.loss_weights,
            "targets": [t.to_dict() | {"vocab": None} for t in run.targets],
        },
        "corpus": {
            "molecules": n,
            "train": len(run.train),
            "valid": len(run.valid),
            **(corpus_info or {}),
        },
        "training": _config_dict(config)
        | {
            "seconds": round(seconds, 1),
            "molecules_per_second": round(len(run.train) * config.epochs / seconds, 1),
        },
        "history": history,
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "device": str(run.device),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "deepfuse_version": __version__,
    }


def plot_loss_curve(
    history: list[dict[str, float]], path: str | os.PathLike, title: str = "pretraining"
) -> None:
    """Training (solid) and validation (dashed) loss terms per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    terms = sorted({k.split("_", 1)[1] for row in history for k in row if "_" in k})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, term in enumerate(terms):
        color = f"C{i}"
        for split, style in (("train", "-"), ("valid", "--")):
            values = [row.get(f"{split}_{term}") for row in history]
            if any(v is not None for v in values):
                # an epoch without this term is a gap in the line
                points = [np.nan if v is None else v for v in values]
                ax.plot(epochs, points, style, color=color, label=f"{split} {term}")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
