"""Out-of-core featurization at scale: ``deepfuse-bench featurize-disk``.

For each size ``n`` (default 10k, 100k and 1M molecules: seeded random subsets of the MOSES train
split, written once to a CSV, untimed) and each process count (default 1 and 2), one
:func:`deepfuse_plugin.data.featurize_to_disk` run into a fresh folder, and per run:

* **peak memory**: the peak proportional set size (PSS: a page shared by k processes counts 1/k
  to each) of the process tree doing the run (the run's process and its featurization workers,
  which fork from it and share its imported libraries), sampled every 50 ms with psutil; and the
  run's own process peak RSS (``VmHWM``). Each run is its own child process forked from a
  forkserver that has imported torch, DeepChem, RDKit and deepfuse, so every run starts from the
  same baseline (reported). Out-of-core means that these stay flat as ``n`` grows;
* **throughput**: molecules per second of the whole call (reading the CSV, featurizing, writing
  the shards (``.npz`` + JSON) and the dataset's description), and the ratio of each process
  count to one process;
* the folder's size on disk per molecule, the shard count and the failed inputs.

The load average is recorded before each run: on a shared machine throughput is noisy, and the
process-count ratio only means something on otherwise idle cores.

Examples
--------
>>> from deepfuse_bench.scaling import format_markdown
>>> print(format_markdown({"modalities": ["ecfp"], "shard_size": 4096, "runs": [], "ratios": [],
...                        "environment": {"cpu_count": 2}}).splitlines()[0])
# Out-of-core featurization (MOSES subsets into pickle-free shards)
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepfuse_bench.environment import PeakRSS, environment

logger = logging.getLogger(__name__)

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_JOBS = (1, 2)
MODALITIES = ("ecfp", "graph", "smiles")
#: Imported once by the runs' forkserver, so every run starts from one baseline.
PRELOAD = ("torch", "deepchem", "rdkit.Chem", "deepfuse_plugin.data.sharded")


def run_scaling_bench(
    sizes: Sequence[int] = DEFAULT_SIZES,
    jobs: Sequence[int] = DEFAULT_JOBS,
    out: str | None = "benchmarks",
    shard_size: int = 4096,
    seed: int = 0,
    corpus: str | None = None,
    scratch: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every (size, process count) pair; write ``featurize_disk.{json,md}`` under ``out``.

    Parameters
    ----------
    sizes: molecules per run (each a seeded random subset of the corpus).
    jobs: process counts (``featurize_to_disk(n_jobs=...)``).
    out: folder for the record (None: not written).
    shard_size: molecules per shard.
    seed: seed of the subsets.
    corpus: a SMILES file instead of the MOSES train split of the ``molsets`` package.
    scratch: where the subsets and featurized folders go (default: a temporary folder); each
        featurized folder is removed after its run (1M molecules take about 10 GiB).
    """
    from deepfuse_plugin.data.corpora import moses_path

    source = corpus or str(moses_path("train"))
    work = tempfile.mkdtemp(prefix="featurize-disk-", dir=scratch)
    runs: list[dict[str, Any]] = []
    try:
        for n in sizes:
            csv = write_subset(source, n, seed, os.path.join(work, f"subset-{n}.csv"))
            for n_jobs in jobs:
                runs.append(measure_run(csv, n, n_jobs, shard_size, os.path.join(work, "ds")))
                echo(run_line(runs[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "out-of-core featurization (featurize_to_disk)",
        "corpus": source,
        "subset_seed": seed,
        "modalities": list(MODALITIES),
        "shard_size": shard_size,
        "memory_method": PeakPSS.method,
        "runs": runs,
        "ratios": ratios(runs),
        "environment": {**environment(), "nice": os.nice(0)},
    }
    markdown = format_markdown(result)
    if out:
        from deepfuse_plugin import workflows as wf

        os.makedirs(out, exist_ok=True)
        wf.write_json(os.path.join(out, "featurize_disk.json"), result)
        with open(os.path.join(out, "featurize_disk.md"), "w") as fh:
            fh.write(markdown)
    echo(markdown)
    return result


def write_subset(source: str, n: int, seed: int, path: str) -> str:
    """The seeded ``n``-molecule subset of ``source`` as a one-column CSV (streamed)."""
    from deepfuse_plugin.data.corpora import iter_smiles_chunks

    with open(path, "w") as fh:
        fh.write("smiles\n")
        for chunk in iter_smiles_chunks(source, n=n, seed=seed):
            fh.write("\n".join(chunk) + "\n")
    return path


def measure_run(csv: str, n: int, n_jobs: int, shard_size: int, folder: str) -> dict[str, Any]:
    """One featurization in a fresh child process; the featurized folder is removed after."""
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(PRELOAD))
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            record = pool.submit(run_child, csv, n_jobs, shard_size, folder).result()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"n": n, "n_jobs": n_jobs, "load_average_before": load, **record}


def run_child(csv: str, n_jobs: int, shard_size: int, folder: str) -> dict[str, Any]:
    """Featurize ``csv`` into ``folder`` in this process (and its workers); return the figures."""
    import torch

    import deepfuse_plugin as dfp
    from deepfuse_plugin.data import featurize_to_disk

    torch.set_num_threads(1)
    featurizer = dfp.MultiModalFeaturizer(list(MODALITIES), progress=False)
    baseline = _status_mib("VmRSS")
    with PeakPSS(tree=True) as memory:
        start = time.perf_counter()
        dataset = featurize_to_disk(
            csv, featurizer, folder, shard_size=shard_size, n_jobs=n_jobs, progress=False
        )
        seconds = time.perf_counter() - start
    size = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    rows = len(dataset) + len(featurizer.last_failures)
    return {
        "seconds": seconds,
        "mol_per_s": rows / seconds,
        "kept": len(dataset),
        "failed": len(featurizer.last_failures),
        "shards": dataset.get_number_shards(),
        "baseline_rss_mib": baseline,
        "start_tree_pss_mib": memory.start_mib,
        "peak_tree_pss_mib": memory.peak_mib,
        "peak_process_rss_mib": _status_mib("VmHWM"),
        "disk_kib_per_molecule": size / 1024 / max(1, len(dataset)),
    }


class PeakPSS(PeakRSS):
    """:class:`~deepfuse_bench.environment.PeakRSS` counting PSS instead of RSS (RSS where the
    system gives no PSS): summing the RSS of forked workers would count the libraries they share
    with their parent once per process."""

    method = (
        "psutil PSS of the run's process tree (run + featurization workers) sampled every 50 ms, "
        "peak during the run; VmHWM: the run process's own peak RSS"
    )

    def _rss(self) -> float:
        total = 0
        if self._process is None:  # no psutil: nothing is sampled
            return 0.0
        try:
            processes = [self._process, *self._process.children(recursive=True)]
        except self._gone:
            return 0.0
        for process in processes:
            try:
                info = process.memory_full_info()
            except self._gone:
                continue
            total += getattr(info, "pss", info.rss)
        return total / 2**20


def _status_mib(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MiB (None without /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ratios(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size, each process count's throughput over one process's."""
    single = {r["n"]: r["mol_per_s"] for r in runs if r["n_jobs"] == 1}
    return [
        {"n": r["n"], "n_jobs": r["n_jobs"], "speedup": r["mol_per_s"] / single[r["n"]]}
        for r in runs
        if r["n_jobs"] > 1 and r["n"] in single
    ]


def run_line(run: dict[str, Any]) -> str:
    return (
        f"n={run['n']} n_jobs={run['n_jobs']}: {run['mol_per_s']:.0f} molecules/s, "
        f"peak PSS {_mib(run['peak_tree_pss_mib'])} MiB (tree), load {run['load_average_before']}"
    )


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a ``featurize-disk`` record."""
    lines = [
        "# Out-of-core featurization (MOSES subsets into pickle-free shards)",
        "",
        f"`featurize_to_disk`, modalities {', '.join(result['modalities'])}, "
        f"shard size {result['shard_size']}. Memory: {result.get('memory_method', '')}.",
        "",
        "| molecules | processes | seconds | molecules/s | peak PSS, tree (MiB) | "
        "peak RSS, run process (MiB) | baseline (MiB) | disk (KiB/molecule) | failed | "
        "load avg before |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['n']:,} | {r['n_jobs']} | {r['seconds']:.1f} | {r['mol_per_s']:.0f} | "
            f"{_mib(r['peak_tree_pss_mib'])} | {_mib(r['peak_process_rss_mib'])} | "
            f"{_mib(r['baseline_rss_mib'])} | {r['disk_kib_per_molecule']:.1f} | {r['failed']} | "
            f"{r['load_average_before']} |"
        )
    if result["ratios"]:
        lines += ["", "| molecules | processes | throughput vs 1 process |", "|---:|---:|---:|"]
        lines += [f"| {r['n']:,} | {r['n_jobs']} | {r['speedup']:.2f}x |" for r in result["ratios"]]
    env = result["environment"]
    lines += [
        "",
        f"{env.get('cpu_count')} CPU cores; nice {env.get('nice')}. Throughput ratios mean "
        "something only on otherwise idle cores: compare the load average with the core count.",
        "",
    ]
    return "\n".join(lines)
