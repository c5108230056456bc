"""Featurization timing of the crystal benchmark (cold caches): the fast describer, robocrys, the
MiniLM embedding and the whole featurizer per structure; see :mod:`deepfuse_bench.crystals`,
step 4.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any


def _warmup_structure() -> Any:
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_describer(
    describer: Any, structures: Sequence[Any], desc: str, progress: bool
) -> dict[str, Any]:
    """Per-structure wall times (ms) of ``describer.describe``, cold (no description cache);
    a structure it fails on gets ``None`` and its error is counted."""
    from tqdm.auto import tqdm

    times: list[float | None] = []
    errors: dict[str, int] = {}
    with warnings.catch_warnings():  # robocrys/pymatgen warn several times per structure
        warnings.simplefilter("ignore")
        describer.describe(_warmup_structure())  # imports, robocrys' condenser set-up
        for s in tqdm(structures, desc=desc, unit="structure", disable=not progress):
            try:
                times.append(_timed(partial(describer.describe, s))[0] * 1e3)
            except Exception as err:  # robocrys fails on some structures: count, do not abort
                times.append(None)
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
    ok = [t for t in times if t is not None]
    return {
        "n": len(structures),
        "n_ok": len(ok),
        "errors": errors,
        "times_ms": times,
        "median_ms": statistics.median(ok) if ok else None,
        "mean_ms": statistics.fmean(ok) if ok else None,
    }


def describer_speedup(fast: dict[str, Any], robocrys: dict[str, Any]) -> float | None:
    """Median robocrys time over the median fast time, on the structures both described."""
    pairs = [
        (f, r)
        for f, r in zip(fast["times_ms"], robocrys["times_ms"])
        if f is not None and r is not None
    ]
    if not pairs:
        return None
    return statistics.median(r for _, r in pairs) / statistics.median(f for f, _ in pairs)


def time_featurization(
    structures: Sequence[Any],
    modalities: Sequence[str],
    robocrys_sample: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Cold-cache featurization timings on ``structures`` (see the module docstring, step 4)."""
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.feat.text import FastDescriber, RobocrysDescriber, TextEmbedder

    structures = list(structures)
    n = len(structures)
    out: dict[str, Any] = {
        "n": n,
        "method": "time.perf_counter per structure, cold caches, warm-up call on NaCl excluded",
    }
    out["fast"] = time_describer(FastDescriber(), structures, "time fast describer", progress)
    out["robocrys"] = _time_robocrys(RobocrysDescriber(), structures[:robocrys_sample], progress)
    out["speedup_median"] = (
        describer_speedup(out["fast"], out["robocrys"]) if out["robocrys"].get("times_ms") else None
    )
    fast = FastDescriber()
    texts = [fast.describe(s) for s in structures]
    embedder = TextEmbedder(cache_dir=False)
    embedder.embed([fast.describe(_warmup_structure())])  # loads MiniLM
    seconds, _ = _timed(lambda: embedder.embed(texts))
    out["embedding_ms_per_structure"] = seconds * 1e3 / max(n, 1)
    featurizer = CrystalMultiModalFeaturizer(list(modalities), cache_dir=False, progress=False)
    featurizer.featurize([_warmup_structure()])
    seconds, _ = _timed(lambda: featurizer.featurize(structures))
    out["featurizer_ms_per_structure"] = seconds * 1e3 / max(n, 1)
    out["featurizer_modalities"] = list(modalities)
    return out


def _time_robocrys(describer: Any, structures: Sequence[Any], progress: bool) -> dict[str, Any]:
    if not structures:
        return {"n": 0, "skipped": "robocrys_sample = 0"}
    try:
        import robocrys  # noqa: F401
    except ImportError:
        return {"n": 0, "skipped": "robocrys is not installed (pip install robocrys)"}
    return time_describer(describer, structures, "time robocrys describer", progress)
