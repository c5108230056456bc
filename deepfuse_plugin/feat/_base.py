"""Pieces shared by deepfuse's multimodal featurizers (molecules, crystals).

A featurizer here is any object with ``featurize_row(point) -> result | RowFailure`` that never
raises (a :class:`RowFailure` = the input was refused or could not be read, with the reason). This
module runs it over many inputs (in-process, or in forked worker processes that may die without
costing the batch, with a tqdm bar), turns the results into DeepChem's object array convention (an
empty array for a failed input, which DeepChem loaders drop) and logs failures and missing
modalities.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepfuse_plugin.modalities import MultiModalSample

logger = logging.getLogger(__name__)

#: Reason given for an input whose featurization killed its worker process (a segfault in RDKit,
#: spglib, ...): the other inputs of the batch are featurized all the same.
CRASH_REASON = "featurizer process crashed on this input"


@dataclass(frozen=True)
class RowFailure:
    """An input that gives no sample, and why (shown to the user, e.g. in a status column)."""

    reason: str


def exception_reason(err: BaseException) -> str:
    """``"TypeName: message"``, the form every failure reason takes for an unexpected exception."""
    return f"{type(err).__name__}: {err}"


def featurize_serial(
    featurizer: Any, points: Sequence[Any], progress: bool, unit: str
) -> list[Any]:
    """``featurizer.featurize_row`` over ``points`` in this process, with a progress bar."""
    iterator = tqdm(points, desc="featurize", disable=not progress, unit=unit)
    return [featurizer.featurize_row(p) for p in iterator]


def featurize_parallel(
    featurizer: Any, points: Sequence[Any], n_jobs: int, progress: bool, unit: str
) -> list[Any]:
    """``featurizer.featurize_row`` over ``points`` with ``n_jobs`` forked workers, order kept.

    The featurizer reaches the workers by fork inheritance (pool initializer), not by pickling per
    task; only the chunks of inputs and the results are pickled, so inputs should pickle cheaply.

    A worker that dies (a segfault inside a chemistry library, the kernel's OOM killer) breaks the
    pool; the chunks it left unfinished are then re-run, each in a fresh single-use process, and a
    chunk whose process dies again is split in halves until the input that kills its process is
    alone: that input alone becomes ``RowFailure(CRASH_REASON)``.
    """
    points = list(points)
    chunks = chunked(points, n_jobs)
    parts: list[list[Any] | None] = [None] * len(chunks)
    ctx = mp.get_context("fork")
    with tqdm(total=len(points), desc="featurize", disable=not progress, unit=unit) as bar:
        with ProcessPoolExecutor(
            n_jobs, mp_context=ctx, initializer=_init_worker, initargs=(featurizer,)
        ) as pool:
            futures = [pool.submit(_featurize_chunk, chunk) for chunk in chunks]
            for index, future in enumerate(futures):
                try:
                    parts[index] = future.result()
                except BrokenProcessPool:
                    continue  # every unfinished chunk fails the same way: re-run below
                bar.update(len(chunks[index]))
        # after the pool is shut down: no executor threads left when the next processes fork
        unfinished = [i for i, part in enumerate(parts) if part is None]
        if unfinished:
            logger.warning(
                "a featurizer worker process died; re-running %d chunk(s) in fresh "
                "processes to find the input(s) responsible",
                len(unfinished),
            )
            redone = run_isolated(featurizer, [chunks[i] for i in unfinished], n_jobs)
            for i, part in zip(unfinished, redone):
                parts[i] = part
                bar.update(len(part))
    return [result for part in parts for result in part]  # type: ignore[union-attr]


def run_isolated(featurizer: Any, tasks: Sequence[Sequence[Any]], n_jobs: int) -> list[list[Any]]:
    """Each task (a list of inputs) in its own fresh forked process, ``n_jobs`` at a time.

    A task whose process dies is split in halves and re-run the same way; a single input whose
    process dies gives ``RowFailure(CRASH_REASON)``. Returns one result list per task, in order.
    """
    results: dict[tuple[int, int], list[Any]] = {}
    queue = [(t, 0, list(task)) for t, task in enumerate(tasks) if len(task)]
    for t, task in enumerate(tasks):
        if not len(task):
            results[(t, 0)] = []
    running: dict[Any, tuple[Any, tuple[int, int, list[Any]]]] = {}  # connection -> (process, job)
    ctx = mp.get_context("fork")
    while queue or running:
        while queue and len(running) < max(1, n_jobs):
            job = queue.pop(0)
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_isolated_main, args=(featurizer, job[2], send), daemon=True
            )
            process.start()
            send.close()  # the child holds the only writer: EOF on our side once it dies
            running[receive] = (process, job)
        for connection in wait(list(running)):
            process, (t, offset, items) = running.pop(connection)
            outcome = _receive(connection)
            process.join()
            if outcome is not None:
                results[(t, offset)] = outcome
            elif len(items) == 1:
                results[(t, offset)] = [RowFailure(CRASH_REASON)]
            else:
                half = len(items) // 2
                queue += [(t, offset, items[:half]), (t, offset + half, items[half:])]
    return [
        [r for (task, _), part in sorted(results.items()) if task == t for r in part]
        for t in range(len(tasks))
    ]


def _receive(connection: Any) -> list[Any] | None:
    """The child's results, or ``None`` when it died before sending them."""
    try:
        return connection.recv()
    except (EOFError, OSError):
        return None
    finally:
        connection.close()


def _isolated_main(featurizer: Any, items: list[Any], connection: Any) -> None:
    try:
        results = [featurizer.featurize_row(p) for p in items]
    except Exception as err:  # featurize_row should not raise; if it does, only these items fail
        results = [RowFailure(exception_reason(err))] * len(items)
    try:
        connection.send(results)
    except Exception as err:  # e.g. a result that cannot be pickled
        connection.send(
            [
                RowFailure(
                    f"result could not be returned from the worker process: {exception_reason(err)}"
                )
            ]
            * len(items)
        )


def chunked(points: Sequence[Any], n_jobs: int) -> list[Sequence[Any]]:
    """Consecutive chunks for ``n_jobs`` workers: about 8 per worker (load balance), 16 to 512
    items each (per-task overhead vs. memory held per task)."""
    size = max(16, min(512, len(points) // (n_jobs * 8) or 1))
    return [points[i : i + size] for i in range(0, len(points), size)]


def to_object_array(
    results: Sequence[MultiModalSample | RowFailure],
    points: Sequence[Any],
    owner: str,
    show: Callable[[Any], str] = repr,
    log: logging.Logger = logger,
) -> tuple[np.ndarray, dict[int, str]]:
    """One sample per input, an empty array where the input failed, and ``{index: reason}`` of
    the failed inputs (logged once with index, input and reason on ``log``, the calling
    featurizer's logger; ``show`` renders an input)."""
    out = np.empty(len(results), dtype=object)
    failures: dict[int, str] = {}
    for i, result in enumerate(results):
        if isinstance(result, RowFailure):
            failures[i] = result.reason
            out[i] = np.array([])
        else:
            out[i] = result
    if failures:
        shown = ", ".join(
            f"{i}:{_safe_show(show, points[i])} ({reason})"
            for i, reason in list(failures.items())[:20]
        )
        log.warning(
            "%s: %d of %d inputs could not be parsed or were refused, and are dropped "
            "by DeepChem loaders (index:input (reason)): %s%s",
            owner,
            len(failures),
            len(points),
            shown,
            " ..." if len(failures) > 20 else "",
        )
    return out, failures


def _safe_show(show: Callable[[Any], str], point: Any, limit: int = 80) -> str:
    """``show(point)``, cut to ``limit`` characters, with characters a log handler cannot encode
    (lone surrogates) escaped: logging a hostile input must not raise either."""
    try:
        text = show(point)
    except Exception:
        text = f"<{type(point).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def log_missing(
    results: Sequence[Any], owner: str, unit: str, log: logging.Logger = logger
) -> None:
    """Log, per modality, how many items have it missing (``unit``: "molecule(s)", ...)."""
    counts: dict[str, int] = {}
    for sample in results:
        if isinstance(sample, MultiModalSample):
            for name in sample.missing_reasons:
                counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        log.info("%s: modality %r missing for %d %s", owner, name, count, unit)


_WORKER_FEATURIZER: Any = None


def _init_worker(featurizer: Any) -> None:
    global _WORKER_FEATURIZER
    _WORKER_FEATURIZER = featurizer


def _featurize_chunk(points: Sequence[Any]) -> list[Any]:
    assert _WORKER_FEATURIZER is not None
    return [_WORKER_FEATURIZER.featurize_row(p) for p in points]
