"""Featurization speed: deepfuse's one-parse multimodal featurizer vs DeepChem's featurizers.

``deepfuse-bench featurize`` times, on the first ``n`` molecules of ``moleculenet/HIV.csv``:

* deepfuse: ``MultiModalFeaturizer(["ecfp", "graph", "smiles"])``, single process (and ``n_jobs=2``
  as an extra figure);
* DeepChem: ``CircularFingerprint(size=1024)`` then ``MolGraphConvFeaturizer(use_edges=True)``, one
  after the other (each parses the SMILES itself, as a user combining them would).

Method: ``time.perf_counter``, one warm-up call per side on 100 molecules, best of ``repeats``
timed runs, interleaved across sides so that background load on a shared machine hits both alike.
Peak memory is measured in a separate, untimed run per side with ``tracemalloc``
(peak of Python-heap allocations, NumPy buffers included, RDKit's C++ allocations not), because
tracing slows the code it measures.
"""

from __future__ import annotations

import logging
import os
import platform
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from deepfuse_plugin import workflows as wf

logger = logging.getLogger(__name__)

MODALITIES = ("ecfp", "graph", "smiles")
WARMUP_MOLECULES = 100


def load_hiv_frame(
    data_dir: str, n: int | None = 3000, columns: Sequence[str] = ("smiles",)
) -> Any:
    """First ``n`` rows (``None``: all) of ``<data_dir>/moleculenet/HIV.csv``, ``columns`` only.

    Raises
    ------
    FileNotFoundError
        The file is missing (the message says where it was looked for).
    """
    import pandas as pd

    path = os.path.join(data_dir, "moleculenet", "HIV.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"HIV.csv not found at {path}; pass --data-dir pointing at the "
            "folder that contains moleculenet/"
        )
    frame = pd.read_csv(path, usecols=list(columns), nrows=n)
    frame["smiles"] = frame["smiles"].astype(str)
    return frame


def load_hiv_smiles(data_dir: str, n: int | None = 3000) -> list[str]:
    """First ``n`` SMILES (``None``: all) of ``<data_dir>/moleculenet/HIV.csv``."""
    return load_hiv_frame(data_dir, n)["smiles"].tolist()


@dataclass
class Repeats:
    """Wall (``perf_counter``) and CPU (``process_time``, this process only) seconds per repeat."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def best(self) -> int:
        """Index of the fastest repeat (wall time)."""
        return int(np.argmin(self.wall))


def time_interleaved(sides: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, Repeats]:
    """Time every side ``repeats`` times, interleaved (A B C A B C ...) so that background load
    on a shared machine hits every side alike."""
    timings = {name: Repeats() for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            timings[name].cpu.append(time.process_time() - cpu)
            timings[name].wall.append(time.perf_counter() - wall)
    return timings


def tracemalloc_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak traced Python-heap memory (MiB) while ``fn`` runs (result kept alive until the end)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak / 2**20


def deepfuse_featurizer(n_jobs: int = 1) -> Callable[[Sequence[str]], Any]:
    """``MultiModalFeaturizer(["ecfp", "graph", "smiles"], n_jobs=n_jobs).featurize``."""
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    featurizer = MultiModalFeaturizer(list(MODALITIES), n_jobs=n_jobs, progress=False)
    return featurizer.featurize


def deepchem_featurizers(
    part_times: dict[str, list[float]] | None = None,
) -> Callable[[Sequence[str]], Any]:
    """DeepChem's two featurizers one after the other; appends each part's time to
    ``part_times`` (keys ``CircularFingerprint``, ``MolGraphConvFeaturizer``) when given."""
    import deepchem as dc

    ecfp = dc.feat.CircularFingerprint(size=1024)
    graph = dc.feat.MolGraphConvFeaturizer(use_edges=True)

    def run(smiles: Sequence[str]) -> tuple[Any, Any]:
        start = time.perf_counter()
        fingerprints = ecfp.featurize(smiles)
        middle = time.perf_counter()
        graphs = graph.featurize(smiles)
        if part_times is not None:
            part_times["CircularFingerprint"].append(middle - start)
            part_times["MolGraphConvFeaturizer"].append(time.perf_counter() - middle)
        return fingerprints, graphs

    return run


def deepchem_parallel(n_jobs: int) -> Callable[[Sequence[str]], Any]:
    """DeepChem's two featurizers in ``n_jobs`` forked worker processes, chunked like deepfuse's
    ``n_jobs`` path (DeepChem's featurizers have no ``n_jobs``: this is what a user would write).
    The pool is started per call, as deepfuse's is."""
    import multiprocessing as mp

    from deepfuse_plugin.feat._base import chunked

    def run(smiles: Sequence[str]) -> tuple[list[Any], list[Any]]:
        with mp.get_context("fork").Pool(n_jobs) as pool:
            parts = pool.map(_deepchem_chunk, chunked(list(smiles), n_jobs))
        # lists: a chunk with a failed molecule comes back 1-D (object), the others 2-D
        return [row for p in parts for row in p[0]], [g for p in parts for g in p[1]]

    return run


_WORKER_DEEPCHEM: Callable[[Sequence[str]], Any] | None = None


def _deepchem_chunk(smiles: Sequence[str]) -> tuple[Any, Any]:
    global _WORKER_DEEPCHEM
    if _WORKER_DEEPCHEM is None:  # once per worker process
        _WORKER_DEEPCHEM = deepchem_featurizers()
    return _WORKER_DEEPCHEM(smiles)


class QuietLogs:
    """Silence, while timing, RDKit's C++ log (DeepChem's CircularFingerprint prints a deprecation
    warning per molecule; that console I/O would slow DeepChem's side) and the per-call logs of
    both sides (failed molecules are counted once, outside the timed runs)."""

    names = ("deepchem", "deepfuse_plugin.feat.molecule")

    def __enter__(self) -> QuietLogs:
        from rdkit import rdBase

        self.block = rdBase.BlockLogs()
        self.levels = {n: logging.getLogger(n).level for n in self.names}
        for name in self.names:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.block  # restores RDKit's previous log state
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def run_featurize_bench(
    data_dir: str,
    n: int = 3000,
    repeats: int = 3,
    out_dir: str | None = "benchmarks",
    parallel: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark, print a summary and write ``out_dir/featurize.{json,md}``.

    Parameters
    ----------
    data_dir: str
        Folder containing ``moleculenet/HIV.csv``.
    n: int
        Number of molecules (the first ``n`` rows).
    repeats: int
        Timed repeats per side; the best is reported.
    out_dir: str, optional
        Where to write ``featurize.json`` and ``featurize.md`` (``None``: do not write).
    parallel: bool
        Also time deepfuse with ``n_jobs=2``.
    echo: callable
        Where the summary is printed.

    Returns
    -------
    dict
        The JSON record.
    """
    import deepchem as dc
    import rdkit
    import torch

    import deepfuse_plugin

    smiles = load_hiv_smiles(data_dir, n)
    n = len(smiles)
    parts: dict[str, list[float]] = {"CircularFingerprint": [], "MolGraphConvFeaturizer": []}
    sides: dict[str, Callable[[Sequence[str]], Any]] = {
        "deepfuse": deepfuse_featurizer(1),
        "deepchem": deepchem_featurizers(parts),
    }
    if parallel:
        sides["deepfuse_n_jobs_2"] = deepfuse_featurizer(2)
    record: dict[str, Any] = {}
    with QuietLogs():
        warm_up(sides, smiles)
        for times in parts.values():
            times.clear()
        timings = time_interleaved({k: partial(f, smiles) for k, f in sides.items()}, repeats)
        for name, repeats_of in timings.items():
            best = min(repeats_of.wall)
            record[name] = {"best_s": best, "times_s": repeats_of.wall, "mol_per_s": n / best}
        best_run = timings["deepchem"].best
        record["deepchem"]["parts_mol_per_s"] = {k: n / v[best_run] for k, v in parts.items()}
        for name in ("deepfuse", "deepchem"):  # untimed traced runs (workers are not traced)
            record[name]["tracemalloc_peak_mib"] = tracemalloc_peak_mb(partial(sides[name], smiles))
    samples = sides["deepfuse"](smiles)  # outside the quiet block: logs the unparseable inputs once
    record["deepfuse"]["unparseable"] = int(sum(not hasattr(s, "values") for s in samples))
    speedup = record["deepchem"]["best_s"] / record["deepfuse"]["best_s"]
    result = {
        "benchmark": "featurization speed, single process",
        "data": f"first {n} molecules of moleculenet/HIV.csv",
        "n_molecules": n,
        "deepfuse_featurizer": f"MultiModalFeaturizer({list(MODALITIES)})",
        "deepchem_featurizers": "CircularFingerprint(size=1024) then "
        "MolGraphConvFeaturizer(use_edges=True)",
        "method": f"time.perf_counter, warm-up on {WARMUP_MOLECULES} molecules, best of {repeats} "
        "interleaved repeats",
        "memory": "tracemalloc peak (Python heap incl. NumPy buffers, excludes RDKit C++ memory), "
        "separate untimed run",
        "results": record,
        "speedup": speedup,
        "environment": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "rdkit": rdkit.__version__,
            "deepchem": dc.__version__,
            "torch": torch.__version__,
            "deepfuse": deepfuse_plugin.__version__,
            "note": "shared machine: other jobs may run concurrently, timings are noisy",
        },
    }
    markdown = format_markdown(result)
    if out_dir:
        wf.write_json(os.path.join(out_dir, "featurize.json"), result)
        with open(os.path.join(out_dir, "featurize.md"), "w") as fh:
            fh.write(markdown)
    echo(markdown)
    return result


def warm_up(sides: dict[str, Callable[[Sequence[str]], Any]], smiles: Sequence[str]) -> None:
    """One call per side on the first molecules: lazy imports, fingerprint generators, caches."""
    for fn in sides.values():
        fn(smiles[:WARMUP_MOLECULES])


def env_note(result: dict[str, Any]) -> str:
    note = result["environment"].get("note", "")
    return note[:1].upper() + note[1:] + "." if note else ""


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown table of a featurization benchmark record."""
    r = result["results"]
    rows = [
        ("deepfuse " + result["deepfuse_featurizer"], r["deepfuse"]),
        ("DeepChem " + result["deepchem_featurizers"], r["deepchem"]),
    ]
    if "deepfuse_n_jobs_2" in r:
        rows.insert(1, ("deepfuse, n_jobs=2", r["deepfuse_n_jobs_2"]))
    lines = [
        f"# Featurization speed ({result['data']})",
        "",
        f"Method: {result['method']}. Memory: {result['memory']}.",
        "",
        "| featurizer | best time (s) | molecules/s | peak memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for label, entry in rows:
        peak = entry.get("tracemalloc_peak_mib")
        lines.append(
            f"| {label} | {entry['best_s']:.2f} | {entry['mol_per_s']:.0f} | "
            f"{'n/a' if peak is None else f'{peak:.1f}'} |"
        )
    parts = r["deepchem"].get("parts_mol_per_s", {})
    if parts:
        lines += [
            "",
            "DeepChem parts (same best run): "
            + ", ".join(f"{k} {v:.0f} molecules/s" for k, v in parts.items())
            + ".",
        ]
    lines += [
        "",
        f"Speedup, single process: **{result['speedup']:.1f}x**.",
        "",
        "The n_jobs=2 time includes starting the worker processes and sending the "
        "samples back to the parent process.",
        "",
        "Environment: "
        + ", ".join(f"{k} {v}" for k, v in result["environment"].items() if k != "note")
        + f". {env_note(result)}",
        "",
    ]
    return "\n".join(lines)
