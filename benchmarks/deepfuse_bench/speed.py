"""Speed and memory against the peers: ``deepfuse-bench speed`` (also ``make bench-speed``).

One run, one machine, the same HIV molecules (``<data-dir>/moleculenet/HIV.csv``) for every side;
every figure is printed next to the peer's and as a ratio:

1. **Featurization**, molecules/s: ``MultiModalFeaturizer(["ecfp", "graph", "smiles"])`` vs
   DeepChem's ``CircularFingerprint`` + ``MolGraphConvFeaturizer`` for the same modalities
   (:mod:`deepfuse_bench.featurize`), with ``n_jobs=1`` and ``n_jobs=2`` (DeepChem's
   featurizers have no ``n_jobs``: they run in two forked worker processes, chunked like
   deepfuse's). First ``n_featurize`` molecules, one warm-up call, best of ``repeats``
   interleaved repeats.
2. **Training throughput**, molecules/s per epoch: DynamicFusionModel vs DeepChem ``DMPNNModel``
   (DeepChem defaults) vs chemprop v2 (:mod:`deepfuse_bench.chemprop`, its own virtual
   environment and CLI), on the first ``n_train`` molecules that both in-process featurizers
   accept, batch size 64, learning rate 1e-3. Featurized input (featurization is timed
   separately). One warm-up epoch is excluded, then ``epochs`` epochs are timed, interleaved
   between the two in-process models, with no checkpoint written; the best epoch is reported.
   chemprop runs ``1 + epochs`` epochs; its per-epoch wall times (Lightning callback, each
   including a validation pass over 64 of the molecules) exclude its first epoch.
3. **Inference**, featurized input: ``model.predict`` on a dataset of 1 and of 256 molecules
   (``batch_size`` set to match), DynamicFusionModel vs DMPNNModel, calls interleaved; latency
   median and 90th percentile; molecules/s = batch size / median latency.
4. **Peak resident memory** of featurizing and of training (``memory_epochs`` epochs) on HIV, all
   41,127 molecules unless ``n_memory``: each figure comes from its own child process, forked from
   a forkserver that has imported torch, DeepChem, RDKit and deepfuse (so every child starts from
   the same baseline, which is reported); the figure is the kernel's high-water mark of the
   child's resident set (``VmHWM`` in ``/proc/self/status``; ``ru_maxrss`` elsewhere).

Ratios: throughput deepfuse / peer and latency peer / deepfuse (both > 1 when deepfuse is
faster); memory deepfuse / peer (> 1 when deepfuse needs more). Wall-clock figures are the
primary ones. This process's CPU time is recorded too: on a machine shared with other jobs it is
less disturbed by them than wall time. The load average is recorded before every section.

``profile=True`` (``--profile``) also profiles featurization, collate and a training epoch of
DynamicFusionModel with pyinstrument (optional dependency, ``pip install pyinstrument``) and
writes the text reports to ``<out_dir>/profiles/``.

The measurements are :mod:`deepfuse_bench.speed_runs`, the profiles
:mod:`deepfuse_bench.speed_profile` and the table :mod:`deepfuse_bench.speed_report`; every name
they define is importable from here too.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from deepfuse_bench import featurize as fb
from deepfuse_bench.environment import cpu_model
from deepfuse_bench.speed_profile import profiler_class, write_profiles
from deepfuse_bench.speed_report import (  # noqa: F401  (re-exported: their old home)
    _cpu_ratio,
    _device_text,
    _featurization_rows,
    _fmt,
    _inference_rows,
    _memory_details,
    _memory_rows,
    _method_notes,
    _ratio_text,
    _row,
    _training_rows,
    format_markdown,
    table_rows,
)
from deepfuse_bench.speed_runs import (  # noqa: F401  (re-exported: their old home)
    BATCH_SIZE,
    BUCKET_POOL,
    FORMAT,
    INFERENCE_BATCHES,
    LABEL,
    LABELS,
    LARGE_BATCH_CALLS,
    LEARNING_RATE,
    MEMORY_METHOD,
    MEMORY_TASKS,
    MODE,
    PRELOAD,
    SEED,
    STEM,
    _time_call,
    _train_in_child,
    batch_size,
    bench_featurization,
    bench_inference,
    bench_memory,
    bench_training,
    build_model,
    featurize_for,
    latency,
    memory_child,
    peak_rss_mib,
    proc_status_mib,
    take,
    throughput,
    training_data,
)
from deepfuse_plugin import workflows as wf

logger = logging.getLogger(__name__)

#: Rows of the training molecules chemprop validates on after each epoch (it needs a validation
#: part; kept small so that its epoch time is mostly training).
CHEMPROP_VALID_ROWS = 64
#: The chemprop runner: a module with ``ensure_chemprop_env`` and ``run_chemprop``.
CHEMPROP_MODULE = "deepfuse_bench.chemprop"


def bench_chemprop(
    frame: Any,
    epochs: int,
    scratch: str,
    threads: int,
    enabled: bool = True,
    venv: str | None = None,
) -> dict[str, Any]:
    """chemprop v2's epoch throughput on the same molecules, or ``{"status": "not measured:
    <reason>"}`` when it is skipped, missing or fails."""
    if not enabled:
        return {"status": "not measured: skipped (--no-chemprop)"}
    try:
        runner = importlib.import_module(CHEMPROP_MODULE)
        executable = runner.ensure_chemprop_env(venv_dir=venv)
        paths = _chemprop_csvs(frame, scratch)
        result = runner.run_chemprop(
            *paths,
            [LABEL],
            MODE,
            epochs=1 + epochs,
            seed=SEED,
            workdir=os.path.join(scratch, "chemprop"),
            batch_size=BATCH_SIZE,
            threads=threads,
            executable=executable,
            predict=False,
        )
    except (ImportError, AttributeError, OSError, wf.WorkflowError) as err:
        reason = f"{type(err).__name__}: {_short_reason(err)}"
        logger.warning("chemprop not measured: %s", reason)
        return {"status": f"not measured: {reason}"}
    times = list(result.epoch_times_s[1:]) or [result.train_time_s / max(1, result.epochs_run)]
    record = throughput(result.n_train, fb.Repeats(wall=times))
    record.update(
        status="measured",
        epochs_run=result.epochs_run,
        epoch_times_s=list(result.epoch_times_s),
        train_time_s=result.train_time_s,
        valid_rows=result.n_valid,
        peak_rss_mib=result.peak_rss_mib,
        note=f"epoch wall times from a Lightning callback, first epoch excluded; each "
        f"includes validating {result.n_valid} molecules",
    )
    return record


def _short_reason(err: BaseException, width: int = 300) -> str:
    """First line of an error message and, for a long one (a failed command with the tail of its
    log), its last line, which says what went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0][:width]} [...] {lines[-1]}"
    return text


def _chemprop_csvs(frame: Any, scratch: str) -> list[str]:
    """Train CSV = the training molecules; valid and test = the first of them (chemprop needs
    both parts; only the epoch time is used)."""
    folder = os.path.join(scratch, "chemprop_data")
    os.makedirs(folder, exist_ok=True)
    parts = {
        "train": frame,
        "valid": frame.iloc[:CHEMPROP_VALID_ROWS],
        "test": frame.iloc[:CHEMPROP_VALID_ROWS],
    }
    paths = []
    for name, part in parts.items():
        paths.append(os.path.join(folder, f"{name}.csv"))
        part[["smiles", LABEL]].to_csv(paths[-1], index=False)
    return paths


# -- the command ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU, memory, OS and the versions that matter for the figures."""
    import deepchem as dc
    import rdkit
    import torch
    import torch_geometric

    from deepfuse_plugin._version import __version__

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil comes with the test extra
        pass
    versions = {
        "deepfuse": __version__,
        "deepchem": dc.__version__,
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "rdkit": rdkit.__version__,
    }
    return {**info, "versions": versions}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_speed_bench(
    data_dir: str,
    n_featurize: int = 3000,
    n_train: int = 2000,
    epochs: int = 2,
    repeats: int = 3,
    latency_calls: int = 200,
    n_memory: int | None = None,
    memory: bool = True,
    memory_epochs: int = 1,
    chemprop: bool = True,
    chemprop_venv: str | None = None,
    out_dir: str | None = "benchmarks",
    profile: bool = False,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the speed and memory benchmark, print the table and write ``out_dir/speed.{json,md}``.

    Parameters
    ----------
    data_dir: str
        Folder containing ``moleculenet/HIV.csv``.
    n_featurize: int
        Molecules for the featurization timings (the first rows of HIV.csv).
    n_train: int
        Molecules for training throughput and inference (the first rows both featurizers accept).
    epochs: int
        Timed epochs per model, after one warm-up epoch.
    repeats: int
        Timed featurization repeats (best reported); at least as many batch-256 predictions.
    latency_calls: int
        Timed one-molecule predictions per model.
    n_memory: int, optional
        Molecules for the peak-memory children (default: all of HIV.csv).
    memory: bool
        Measure peak memory (child processes).
    memory_epochs: int
        Training epochs in the memory children.
    chemprop: bool
        Time chemprop v2 (creates its virtual environment on first use).
    chemprop_venv: str, optional
        chemprop's environment (default: the runner's, ``.venv-chemprop``).
    out_dir: str, optional
        Where ``speed.json``/``speed.md`` (and ``profiles/``) go; None: write nothing.
    profile: bool
        Also write pyinstrument profiles to ``out_dir/profiles`` (needs pyinstrument).
    progress: bool
        Show progress bars.
    command: str, optional
        The command line, recorded in the JSON.
    echo: callable
        Where the table is printed.

    Returns
    -------
    dict
        The JSON record (``rows`` holds the table).
    """
    settings = {
        "data_dir": data_dir,
        "n_featurize": n_featurize,
        "n_train": n_train,
        "epochs": epochs,
        "repeats": repeats,
        "latency_calls": latency_calls,
        "n_memory": n_memory,
        "memory": memory,
        "memory_epochs": memory_epochs,
        "chemprop": chemprop,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "seed": SEED,
        "label": LABEL,
    }
    if profile:
        profiler_class()  # fail now, not after the benchmark
    loads: dict[str, Any] = {"start": load_average()}
    result: dict[str, Any] = {
        "format": FORMAT,
        "benchmark": "speed and memory",
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": settings,
        "machine": machine(),
        "load_average": loads,
    }
    scratch = tempfile.mkdtemp(prefix="deepfuse-speed-")
    try:
        smiles = fb.load_hiv_smiles(data_dir, n_featurize)
        result["featurization"] = bench_featurization(smiles, repeats)
        loads["training"] = load_average()
        frame, datasets = training_data(data_dir, n_train)
        result["training"], models = bench_training(datasets, epochs, scratch, progress)
        loads["chemprop"] = load_average()
        result["training"]["chemprop"] = bench_chemprop(
            frame, epochs, scratch, _threads(), chemprop, chemprop_venv
        )
        loads["inference"] = load_average()
        result["inference"] = bench_inference(models, datasets, latency_calls, repeats, progress)
        loads["memory"] = load_average()
        result["memory"] = (
            bench_memory(data_dir, n_memory, memory_epochs, _threads(), scratch, progress)
            if memory
            else {"status": "skipped"}
        )
        loads["end"] = load_average()
        if profile and out_dir:
            result["profiles"] = write_profiles(
                smiles, datasets, os.path.join(out_dir, "profiles"), scratch
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["rows"] = table_rows(result)
    markdown = format_markdown(result, out_dir)
    if out_dir:
        wf.write_json(os.path.join(out_dir, f"{STEM}.json"), result)
        with open(os.path.join(out_dir, f"{STEM}.md"), "w") as fh:
            fh.write(markdown)
    echo(markdown)
    return result


def _threads() -> int:
    import torch

    return torch.get_num_threads()
