"""Pieces shared by deepfuse's multimodal featurizers (molecules, crystals).

A featurizer here is any object with ``featurize_one(point) -> MultiModalSample | None`` (``None`` =
the input could not be parsed). This module runs it over many inputs (in-process or with a fork
pool, with a tqdm bar), turns the results into DeepChem's object array convention (an empty array
for an unparsable input, which DeepChem loaders drop) and logs failures and missing modalities.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from deepfuse_plugin.modalities import MultiModalSample

logger = logging.getLogger(__name__)


def featurize_serial(featurizer: Any, points: Sequence[Any], progress: bool,
                     unit: str) -> list[MultiModalSample | None]:
    """``featurizer.featurize_one`` over ``points`` in this process, with a progress bar."""
    iterator = tqdm(points, desc="featurize", disable=not progress, unit=unit)
    return [featurizer.featurize_one(p) for p in iterator]


def featurize_parallel(featurizer: Any, points: Sequence[Any], n_jobs: int, progress: bool,
                       unit: str) -> list[MultiModalSample | None]:
    """``featurizer.featurize_one`` over ``points`` with ``n_jobs`` forked workers, order kept.

    The featurizer reaches the workers by fork inheritance (pool initializer), not by pickling per
    task; only the chunks of inputs and the results are pickled, so inputs should pickle cheaply.
    """
    points = list(points)
    chunks = chunked(points, n_jobs)
    ctx = mp.get_context("fork")
    results: list[MultiModalSample | None] = []
    with ctx.Pool(n_jobs, initializer=_init_worker, initargs=(featurizer,)) as pool, \
            tqdm(total=len(points), desc="featurize", disable=not progress, unit=unit) as bar:
        for part in pool.imap(_featurize_chunk, chunks):
            results.extend(part)
            bar.update(len(part))
    return results


def chunked(points: Sequence[Any], n_jobs: int) -> list[Sequence[Any]]:
    """Consecutive chunks for ``n_jobs`` workers: about 8 per worker (load balance), 16 to 512
    items each (per-task overhead vs. memory held per task)."""
    size = max(16, min(512, len(points) // (n_jobs * 8) or 1))
    return [points[i:i + size] for i in range(0, len(points), size)]


def to_object_array(results: Sequence[MultiModalSample | None], points: Sequence[Any],
                    owner: str, show: Callable[[Any], str] = repr,
                    log: logging.Logger = logger) -> np.ndarray:
    """One sample per input, an empty array where the input could not be parsed (logged once with
    the indices on ``log``, the calling featurizer's logger; ``show`` renders an input)."""
    out = np.empty(len(results), dtype=object)
    failed = []
    for i, result in enumerate(results):
        if result is None:
            failed.append(i)
            out[i] = np.array([])
        else:
            out[i] = result
    if failed:
        shown = ", ".join(f"{i}:{show(points[i])}" for i in failed[:20])
        log.warning("%s: %d of %d inputs could not be parsed and are dropped "
                       "by DeepChem loaders (index:input): %s%s", owner, len(failed), len(points),
                       shown, " ..." if len(failed) > 20 else "")
    return out


def log_missing(results: Sequence[MultiModalSample | None], owner: str, unit: str,
                log: logging.Logger = logger) -> None:
    """Log, per modality, how many items have it missing (``unit``: "molecule(s)", ...)."""
    counts: dict[str, int] = {}
    for sample in results:
        if sample is not None:
            for name in sample.missing_reasons:
                counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        log.info("%s: modality %r missing for %d %s", owner, name, count, unit)


_WORKER_FEATURIZER: Any = None


def _init_worker(featurizer: Any) -> None:
    global _WORKER_FEATURIZER
    _WORKER_FEATURIZER = featurizer


def _featurize_chunk(points: list[Any]) -> list[MultiModalSample | None]:
    assert _WORKER_FEATURIZER is not None
    return [_WORKER_FEATURIZER.featurize_one(p) for p in points]
