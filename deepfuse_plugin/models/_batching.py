"""Batching of :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`: DeepChem-style
``([MultiModalBatch], [y], [w])`` batches, length buckets for sequence modalities, the move to
the model's device, and the mixed-precision rule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from deepchem.data import Dataset
from tqdm.auto import tqdm

from deepfuse_plugin.data.collate import PADDED_KINDS, MultiModalBatch, length_bucketed
from deepfuse_plugin.modalities import Modality


def autocast_dtype(mixed_precision: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision`` on ``device`` (see MultiModalTorchModel)."""
    if mixed_precision not in ("auto", True, False):
        raise ValueError(f"mixed_precision must be 'auto', True or False, got {mixed_precision!r}")
    if mixed_precision is False:
        return None
    if mixed_precision == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else None
    return torch.bfloat16


def multimodal_batches(
    dataset: Dataset,
    modalities: Sequence[Modality],
    batch_size: int,
    collate: Callable[[list], MultiModalBatch],
    on_epoch_start: Callable[[float], None],
    *,
    epochs: int,
    mode: str,
    deterministic: bool,
    bucket_pool: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[list, list, list]]:
    """Batches ``([MultiModalBatch], [y], [w])``; ``on_epoch_start(progress)`` once per fit epoch.

    Training batches are regrouped by length when ``bucket_pool > 1`` (and the order is not
    ``deterministic``); prediction keeps the dataset's order. ``collate`` turns a list of
    samples into a batch (it applies the model's dropped modalities).
    """
    n_batches = math.ceil(len(dataset) / batch_size) * epochs
    bucketed = (
        mode == "fit"
        and not deterministic
        and bucket_pool > 1
        and any(m.kind in PADDED_KINDS for m in modalities)
    )
    show = progress and mode == "fit"
    with tqdm(
        total=n_batches, desc=f"{desc} {mode}", disable=not show, unit="batch", leave=False
    ) as bar:
        for epoch in range(epochs):
            if mode == "fit":
                on_epoch_start(epoch / max(1, epochs - 1))
            batches = dataset.iterbatches(
                batch_size=batch_size, deterministic=deterministic, pad_batches=False
            )
            if bucketed:  # seeded from numpy's global state, like DeepChem's shuffling
                rng = np.random.default_rng(np.random.randint(2**31 - 1))
                batches = length_bucketed(batches, modalities, bucket_pool, rng)
            for X_b, y_b, w_b, _ in batches:
                batch = collate(list(X_b))
                bar.update(1)
                yield [batch], [y_b], [w_b]


def batch_to_device(batch: tuple[Any, Any, Any], device: torch.device) -> tuple[list, list, list]:
    """``(inputs, labels, weights)`` on ``device``: batches moved, labels and weights as
    float32 tensors (``None`` entries dropped)."""
    inputs, labels, weights = batch
    inputs = [x.to(device) if isinstance(x, MultiModalBatch) else x for x in inputs]

    def to_tensors(arrays: Any) -> list[torch.Tensor]:
        if arrays is None:
            return []
        return [
            torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)
            for a in arrays
            if a is not None
        ]

    return inputs, to_tensors(labels), to_tensors(weights)
