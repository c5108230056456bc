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
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepfuse_bench import featurize as fb
from deepfuse_bench.environment import cpu_model
from deepfuse_plugin import workflows as wf

logger = logging.getLogger(__name__)

FORMAT = 1
STEM = "speed"
LABEL = "HIV_active"
MODE = "classification"
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
SEED = 0
INFERENCE_BATCHES = (1, 256)
#: ``length_bucket_pool`` of the length-bucketed DynamicFusionModel timed beside the default one.
BUCKET_POOL = 32
#: Calls timed for the batch-256 latency (at least; ``repeats`` if larger).
LARGE_BATCH_CALLS = 5
#: Rows of the training molecules chemprop validates on after each epoch (it needs a validation
#: part; kept small so that its epoch time is mostly training).
CHEMPROP_VALID_ROWS = 64
#: The chemprop runner: a module with ``ensure_chemprop_env`` and ``run_chemprop``.
CHEMPROP_MODULE = "deepfuse_bench.chemprop"
#: Imported once by the memory children's forkserver, so every child starts from one baseline.
PRELOAD = (
    "torch",
    "deepchem",
    "rdkit.Chem",
    "torch_geometric",
    "deepfuse_plugin.feat.molecule",
    "deepfuse_plugin.models.dynamic",
    "deepfuse_bench.speed",
)
MEMORY_TASKS = (
    ("featurize", "deepfuse"),
    ("featurize", "deepchem"),
    ("train", "dynamic"),
    ("train", "dmpnn"),
)
MEMORY_METHOD = (
    "peak resident set size of a child process doing only this (VmHWM from "
    "/proc/self/status; ru_maxrss where there is no /proc); the child is forked "
    "from a forkserver that has imported torch, DeepChem, RDKit and deepfuse, so the "
    "figure includes that baseline (reported separately)"
)
LABELS = {
    "deepfuse": "MultiModalFeaturizer (ecfp, graph, smiles)",
    "deepchem": "DeepChem CircularFingerprint + MolGraphConvFeaturizer",
    "dynamic": "DynamicFusionModel",
    "dynamic_bucketed": f"DynamicFusionModel, length_bucket_pool={BUCKET_POOL}",
    "dmpnn": "DeepChem DMPNNModel",
    "chemprop": "chemprop v2",
}


# -- measurements ---------------------------------------------------------------------------------
def throughput(n: int, times: fb.Repeats) -> dict[str, Any]:
    """Record of repeated runs over ``n`` molecules: best wall time and molecules/s, CPU time."""
    best = min(times.wall)
    record = {
        "n_molecules": n,
        "wall_s": times.wall,
        "best_wall_s": best,
        "median_wall_s": statistics.median(times.wall),
        "mol_per_s": n / best,
    }
    if times.cpu:
        record.update(
            cpu_s=times.cpu, best_cpu_s=min(times.cpu), mol_per_cpu_s=n / max(min(times.cpu), 1e-9)
        )
    return record


def latency(batch: int, times: fb.Repeats) -> dict[str, Any]:
    """Record of repeated ``predict`` calls on ``batch`` molecules."""
    median = statistics.median(times.wall)
    return {
        "batch_size": batch,
        "calls": len(times.wall),
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * float(np.percentile(times.wall, 90)),
        "mean_ms": 1e3 * statistics.fmean(times.wall),
        "mol_per_s": batch / median,
        "median_cpu_ms": 1e3 * statistics.median(times.cpu),
    }


def proc_status_mib(key: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None without /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``VmHWM``, else ``ru_maxrss``)."""
    peak = proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS


# -- data and models ------------------------------------------------------------------------------
def featurize_for(side: str, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features for a model side (``dynamic``: multimodal samples, ``dmpnn``: DMPNNFeaturizer
    graphs) and the boolean mask of the molecules the featurizer accepted."""
    import deepchem as dc

    from deepfuse_plugin.modalities import MultiModalSample

    with fb.QuietLogs():
        if side == "dynamic":
            X = fb.deepfuse_featurizer(1)(smiles)
            ok = np.array([isinstance(x, MultiModalSample) for x in X], dtype=bool)
        else:
            X = dc.feat.DMPNNFeaturizer().featurize(smiles)
            ok = np.array([isinstance(x, dc.feat.GraphData) for x in X], dtype=bool)
    return X, ok


def build_model(side: str, model_dir: str) -> Any:
    """DynamicFusionModel (``dynamic``: deepfuse defaults; ``dynamic_bucketed``: with
    length-bucketed training batches) or DeepChem's DMPNNModel (``dmpnn``: DeepChem defaults, the
    ``dc_dmpnn`` peer of the accuracy benchmark) for HIV, one task, with the shared budget."""
    from deepfuse_bench.datasets import SUITES
    from deepfuse_bench.peers import PEERS
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    wf.set_seed(SEED)
    if side.startswith("dynamic"):
        specs = MultiModalFeaturizer(list(fb.MODALITIES), progress=False).modalities
        # the timed epochs are one-epoch fit calls: count the masking curriculum across them,
        # over the accuracy benchmark's epoch budget
        return DynamicFusionModel(
            n_tasks=1,
            modalities=specs,
            mode=MODE,
            batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE,
            model_dir=model_dir,
            progress=False,
            curriculum_epochs=SUITES["full"]["epochs"],
            length_bucket_pool=BUCKET_POOL if side.endswith("bucketed") else 0,
        )
    budget = {"batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE}
    return PEERS["dc_dmpnn"].build(1, MODE, model_dir, SEED, budget)


def training_data(data_dir: str, n: int) -> tuple[Any, dict[str, Any]]:
    """The first ``n`` HIV molecules accepted by both featurizers: ``(frame, {side: dataset})``."""
    import deepchem as dc

    frame = fb.load_hiv_frame(data_dir, n, ("smiles", LABEL))
    smiles = frame["smiles"].tolist()
    features = {side: featurize_for(side, smiles) for side in ("dynamic", "dmpnn")}
    keep = features["dynamic"][1] & features["dmpnn"][1]
    frame = frame[keep].reset_index(drop=True)
    y = frame[LABEL].to_numpy(dtype=np.float64).reshape(-1, 1)
    datasets = {
        side: dc.data.NumpyDataset(X[keep], y, ids=np.asarray(frame["smiles"]))
        for side, (X, _) in features.items()
    }
    return frame, datasets


def take(dataset: Any, start: int, size: int) -> Any:
    """``size`` rows of ``dataset`` from ``start``, wrapping around (features only)."""
    import deepchem as dc

    rows = (start + np.arange(size)) % len(dataset)
    return dc.data.NumpyDataset(dataset.X[rows])


@contextmanager
def batch_size(models: dict[str, Any], size: int) -> Iterator[None]:
    """Set every model's ``batch_size`` (what DeepChem's ``predict`` batches by) for a while."""
    previous = {name: m.batch_size for name, m in models.items()}
    for model in models.values():
        model.batch_size = size
    try:
        yield
    finally:
        for name, model in models.items():
            model.batch_size = previous[name]


# -- sections -------------------------------------------------------------------------------------
def bench_featurization(
    smiles: Sequence[str], repeats: int, n_jobs: Sequence[int] = (1, 2)
) -> dict[str, Any]:
    """Molecules/s of deepfuse's and DeepChem's featurizers, per ``n_jobs``, interleaved."""
    sides: dict[str, Callable[[Sequence[str]], Any]] = {}
    for jobs in n_jobs:
        sides[f"deepfuse_{jobs}"] = fb.deepfuse_featurizer(jobs)
        sides[f"deepchem_{jobs}"] = (
            fb.deepchem_featurizers() if jobs == 1 else fb.deepchem_parallel(jobs)
        )
    with fb.QuietLogs():
        fb.warm_up(sides, smiles)
        timings = fb.time_interleaved({k: partial(f, smiles) for k, f in sides.items()}, repeats)
    out: dict[str, Any] = {"n_molecules": len(smiles), "repeats": repeats}
    for jobs in n_jobs:
        records = {}
        for side in ("deepfuse", "deepchem"):
            times = timings[f"{side}_{jobs}"]
            if jobs > 1:  # this process's CPU time leaves the worker processes out
                times.cpu.clear()
            records[side] = throughput(len(smiles), times)
        out[f"n_jobs_{jobs}"] = records
    return out


def bench_training(
    datasets: dict[str, Any], epochs: int, scratch: str, progress: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Epoch throughput of DynamicFusionModel (default and length-bucketed batches) and
    DMPNNModel; returns the records and the trained models of ``datasets``' sides (used for
    inference)."""
    models = {side: build_model(side, os.path.join(scratch, side)) for side in datasets}
    bucketed = build_model("dynamic_bucketed", os.path.join(scratch, "dynamic_bucketed"))
    fits = {
        side: partial(model.fit, datasets[side], nb_epoch=1, checkpoint_interval=0)
        for side, model in models.items()
    }
    fits["dynamic_bucketed"] = partial(
        bucketed.fit, datasets["dynamic"], nb_epoch=1, checkpoint_interval=0
    )
    for fit in tqdm(fits.values(), desc="training warm-up epoch", disable=not progress):
        fit()
    timings = fb.time_interleaved(fits, epochs)
    n = len(next(iter(datasets.values())))
    records = {side: throughput(n, t) for side, t in timings.items()}
    devices = {side: str(m.device) for side, m in {**models, "dynamic_bucketed": bucketed}.items()}
    return {
        "n_molecules": n,
        "epochs_timed": epochs,
        "warmup_epochs": 1,
        "devices": devices,
        **records,
    }, models


def bench_inference(
    models: dict[str, Any],
    datasets: dict[str, Any],
    latency_calls: int,
    repeats: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Latency and molecules/s of ``predict`` on 1 and on 256 molecules (featurized input)."""
    n = len(next(iter(datasets.values())))
    out: dict[str, Any] = {"input": "featurized datasets (featurization excluded)"}
    for batch in INFERENCE_BATCHES:
        size = min(batch, n)  # tiny test runs have fewer molecules than a batch
        calls = latency_calls if batch == 1 else max(LARGE_BATCH_CALLS, repeats)
        inputs = {
            side: [take(ds, i * size, size) for i in range(calls)] for side, ds in datasets.items()
        }
        times = {side: fb.Repeats() for side in models}
        with batch_size(models, size):
            for side, model in models.items():
                model.predict(inputs[side][0])  # warm-up
            for i in tqdm(range(calls), desc=f"inference, batch {size}", disable=not progress):
                for side, model in models.items():
                    _time_call(times[side], partial(model.predict, inputs[side][i]))
        out[f"batch_{batch}"] = {side: latency(size, t) for side, t in times.items()}
    return out


def _time_call(times: fb.Repeats, fn: Callable[[], Any]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    times.cpu.append(time.process_time() - cpu)
    times.wall.append(time.perf_counter() - wall)


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


def bench_memory(
    data_dir: str, n: int | None, epochs: int, threads: int, scratch: str, progress: bool = False
) -> dict[str, Any]:
    """Peak RSS of featurizing and training, each in its own child process."""
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(PRELOAD))
    out: dict[str, Any] = {"method": MEMORY_METHOD, "start_method": method, "epochs": epochs}
    for task, side in tqdm(MEMORY_TASKS, desc="memory (child processes)", disable=not progress):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            out[f"{task}_{side}"] = pool.submit(
                memory_child, task, side, data_dir, n, epochs, threads, scratch
            ).result()
    out["n_molecules"] = out["featurize_deepfuse"]["n_molecules"]
    return out


def memory_child(
    task: str, side: str, data_dir: str, n: int | None, epochs: int, threads: int, scratch: str
) -> dict[str, Any]:
    """Run one memory measurement in this (fresh) process; return its record."""
    import torch

    torch.set_num_threads(threads)
    baseline = proc_status_mib("VmRSS")
    frame = fb.load_hiv_frame(data_dir, n, ("smiles", LABEL))
    smiles = frame["smiles"].tolist()
    record: dict[str, Any] = {
        "task": task,
        "side": side,
        "n_molecules": len(smiles),
        "baseline_rss_mib": baseline,
    }
    start = time.perf_counter()
    if task == "featurize":
        featurize = fb.deepfuse_featurizer(1) if side == "deepfuse" else fb.deepchem_featurizers()
        with fb.QuietLogs():
            features = featurize(smiles)
    else:
        features = _train_in_child(side, frame, epochs, scratch, record)
    record["seconds"] = time.perf_counter() - start
    record["peak_rss_mib"] = peak_rss_mib()
    if baseline is not None:
        record["increment_mib"] = record["peak_rss_mib"] - baseline
    del features
    return record


def _train_in_child(
    side: str, frame: Any, epochs: int, scratch: str, record: dict[str, Any]
) -> Any:
    """Featurize for ``side`` and train ``epochs`` epochs; featurize/fit times go to ``record``."""
    import deepchem as dc

    start = time.perf_counter()
    X, ok = featurize_for(side, frame["smiles"].tolist())
    y = frame[LABEL].to_numpy(dtype=np.float64)[ok].reshape(-1, 1)
    dataset = dc.data.NumpyDataset(X[ok], y)
    model = build_model(side, os.path.join(scratch, f"memory_{side}"))
    fit_start = time.perf_counter()
    model.fit(dataset, nb_epoch=epochs, checkpoint_interval=0)
    record.update(
        featurize_s=fit_start - start, fit_s=time.perf_counter() - fit_start, n_trained=len(dataset)
    )
    return dataset


# -- profiling ------------------------------------------------------------------------------------
def profiler_class() -> type:
    """pyinstrument's ``Profiler`` (an optional dependency).

    Raises
    ------
    WorkflowError
        pyinstrument is not installed.
    """
    try:
        from pyinstrument import Profiler
    except ImportError as err:
        raise wf.WorkflowError(
            "--profile needs pyinstrument: pip install pyinstrument "
            "(or the harness's extra: pip install -e 'benchmarks[profile]')"
        ) from err
    return Profiler


def write_profiles(
    smiles: Sequence[str], datasets: dict[str, Any], folder: str, scratch: str
) -> list[str]:
    """pyinstrument text reports of featurization, collate and one training epoch of
    DynamicFusionModel (after a warm-up epoch) in ``folder``; returns the paths."""
    from deepfuse_plugin.data.collate import collate_samples

    Profiler = profiler_class()

    model = build_model("dynamic", os.path.join(scratch, "profile"))
    dataset = datasets["dynamic"]
    samples = list(dataset.X)
    model.fit(dataset, nb_epoch=1, checkpoint_interval=0)
    featurize = fb.deepfuse_featurizer(1)
    featurize(smiles[: fb.WARMUP_MOLECULES])
    stages = {
        "featurize": partial(featurize, smiles),
        "collate": lambda: [
            collate_samples(samples[i : i + BATCH_SIZE], model.modalities)
            for i in range(0, len(samples), BATCH_SIZE)
        ],
        "train_epoch": partial(model.fit, dataset, nb_epoch=1, checkpoint_interval=0),
    }
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fn in stages.items():
        profiler = Profiler(interval=0.0005)
        with fb.QuietLogs():
            profiler.start()
            fn()
            profiler.stop()
        paths.append(os.path.join(folder, f"{name}.txt"))
        with open(paths[-1], "w") as fh:
            fh.write(profiler.output_text(unicode=False, color=False))
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


# -- table ----------------------------------------------------------------------------------------
def _row(
    measurement: str,
    unit: str,
    ours: str,
    peer: str,
    ours_value: float | None,
    peer_value: float | None,
    kind: str,
    status: str = "measured",
    cpu_ratio: float | None = None,
) -> dict[str, Any]:
    """One comparison. ``kind``: ``throughput`` (ratio ours / peer), ``latency`` (peer / ours),
    ``memory`` (ours / peer)."""
    ratio = None
    if ours_value and peer_value:
        ratio = peer_value / ours_value if kind == "latency" else ours_value / peer_value
    return {
        "measurement": measurement,
        "unit": unit,
        "deepfuse": ours,
        "peer": peer,
        "deepfuse_value": ours_value,
        "peer_value": peer_value,
        "ratio": ratio,
        "ratio_kind": kind,
        "cpu_ratio": cpu_ratio,
        "status": status,
    }


def _cpu_ratio(ours: dict[str, Any], peer: dict[str, Any], key: str) -> float | None:
    if key in ours and key in peer and ours[key] and peer[key]:
        return ours[key] / peer[key] if key.startswith("mol_per") else peer[key] / ours[key]
    return None


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison table (``rows`` of the JSON) from the section records."""
    rows = _featurization_rows(result["featurization"])
    rows += _training_rows(result["training"])
    rows += _inference_rows(result["inference"])
    if "status" not in result["memory"]:
        rows += _memory_rows(result["memory"])
    return rows


def _featurization_rows(feat: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in (k for k in feat if k.startswith("n_jobs_")):
        ours, peer = feat[key]["deepfuse"], feat[key]["deepchem"]
        jobs = key.rsplit("_", 1)[1]
        rows.append(
            _row(
                f"featurization, n_jobs={jobs}",
                "molecules/s",
                LABELS["deepfuse"],
                LABELS["deepchem"] + ("" if jobs == "1" else f", {jobs} processes"),
                ours["mol_per_s"],
                peer["mol_per_s"],
                "throughput",
                cpu_ratio=_cpu_ratio(ours, peer, "mol_per_cpu_s"),
            )
        )
    return rows


def _training_rows(train: dict[str, Any]) -> list[dict[str, Any]]:
    ours = train["dynamic"]
    rows = [
        _row(
            "training",
            "molecules/s per epoch",
            LABELS["dynamic"],
            LABELS["dmpnn"],
            ours["mol_per_s"],
            train["dmpnn"]["mol_per_s"],
            "throughput",
            cpu_ratio=_cpu_ratio(ours, train["dmpnn"], "mol_per_cpu_s"),
        )
    ]
    chemprop = train["chemprop"]
    measured = chemprop.get("status") == "measured"
    rows.append(
        _row(
            "training",
            "molecules/s per epoch",
            LABELS["dynamic"],
            LABELS["chemprop"],
            ours["mol_per_s"],
            chemprop["mol_per_s"] if measured else None,
            "throughput",
            status=chemprop["status"],
        )
    )
    bucketed = train.get("dynamic_bucketed")
    if bucketed:  # JSON from before length bucketing has none
        for peer in ("dynamic", "dmpnn"):
            rows.append(
                _row(
                    "training, length-bucketed batches",
                    "molecules/s per epoch",
                    LABELS["dynamic_bucketed"],
                    LABELS[peer],
                    bucketed["mol_per_s"],
                    train[peer]["mol_per_s"],
                    "throughput",
                    cpu_ratio=_cpu_ratio(bucketed, train[peer], "mol_per_cpu_s"),
                )
            )
    return rows


def _inference_rows(inference: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in (k for k in inference if k.startswith("batch_")):
        ours, peer = inference[key]["dynamic"], inference[key]["dmpnn"]
        what = f"inference, batch of {ours['batch_size']}"
        rows.append(
            _row(
                what,
                "molecules/s",
                LABELS["dynamic"],
                LABELS["dmpnn"],
                ours["mol_per_s"],
                peer["mol_per_s"],
                "throughput",
            )
        )
        for stat in ("median_ms", "p90_ms"):
            rows.append(
                _row(
                    what,
                    f"latency {stat.split('_')[0]} (ms)",
                    LABELS["dynamic"],
                    LABELS["dmpnn"],
                    ours[stat],
                    peer[stat],
                    "latency",
                    cpu_ratio=(
                        _cpu_ratio(ours, peer, "median_cpu_ms") if stat == "median_ms" else None
                    ),
                )
            )
    return rows


def _memory_rows(memory: dict[str, Any]) -> list[dict[str, Any]]:
    n = memory["n_molecules"]
    pairs = {
        "featurize": ("deepfuse", "deepchem", "featurizing"),
        "train": (
            "dynamic",
            "dmpnn",
            f"training ({memory['epochs']} epoch(s), featurization included)",
        ),
    }
    rows = []
    for task, (ours, peer, what) in pairs.items():
        rows.append(
            _row(
                f"peak memory, {what} {n:,} HIV molecules",
                "MiB (peak RSS)",
                LABELS[ours],
                LABELS[peer],
                memory[f"{task}_{ours}"]["peak_rss_mib"],
                memory[f"{task}_{peer}"]["peak_rss_mib"],
                "memory",
            )
        )
    return rows


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ratio_text(row: dict[str, Any]) -> str:
    ratio = row["ratio"]
    if ratio is None:
        return row["status"] if row["status"] != "measured" else "n/a"
    if row["ratio_kind"] == "memory":
        return f"{ratio:.2f}x the memory"
    return f"**{ratio:.2f}x** ({'faster' if ratio >= 1 else 'slower'})"


def _device_text(machine_info: dict[str, Any], devices: dict[str, str]) -> str:
    """Which device trained and ran the models (host RSS only in the memory rows)."""
    used = sorted({d for d in devices.values() if d.startswith("cuda")})
    if used:
        return (
            f", GPU {machine_info.get('gpu') or 'CUDA'}: training and inference ran on "
            f"{', '.join(used)} (featurization on CPU; the memory rows are host RSS, not GPU "
            "memory)"
        )
    return ", CUDA available (not used)" if machine_info.get("cuda") else ", no GPU"


def format_markdown(result: dict[str, Any], out_dir: str | None = None) -> str:
    """The table and the method notes (plus ``<out_dir>/profiles/SUMMARY.md`` when present)."""
    m = result["machine"]
    loads = result["load_average"]
    lines = [
        "# Speed and memory: deepfuse vs peers",
        "",
        f"One run on one machine: {m['cpu']}, {m['cpu_count']} CPU cores"
        + (f", {m['memory_gib']} GiB RAM" if "memory_gib" in m else "")
        + f", {m['platform']}, torch threads {m['torch_threads']}"
        + _device_text(m, result.get("training", {}).get("devices", {}))
        + ".",
        "Load average (1/5/15 min) before each section: "
        + "; ".join(f"{k} {'/'.join(f'{x:.2f}' for x in v)}" for k, v in loads.items() if v)
        + ". The machine is shared with other jobs: treat the figures as noisy.",
        "",
        "| measurement | unit | deepfuse | peer | deepfuse value | peer value | ratio |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['measurement']} | {row['unit']} | {row['deepfuse']} | {row['peer']}"
            f" | {_fmt(row['deepfuse_value'])} | {_fmt(row['peer_value'])} | "
            f"{_ratio_text(row)} |"
        )
    lines += ["", *_method_notes(result), ""]
    summary = os.path.join(out_dir or "", "profiles", "SUMMARY.md")
    if out_dir and os.path.exists(summary):
        with open(summary) as fh:
            lines += [fh.read().strip(), ""]
    return "\n".join(lines)


def _method_notes(result: dict[str, Any]) -> list[str]:
    s, train = result["settings"], result["training"]
    cpu = [
        f"{r['measurement']} {r['unit']} {r['cpu_ratio']:.2f}x"
        for r in result["rows"]
        if r.get("cpu_ratio")
    ]
    notes = [
        "Ratios: throughput deepfuse / peer, latency peer / deepfuse (both > 1 when deepfuse is "
        "faster); memory deepfuse / peer.",
        f"- Featurization: first {result['featurization']['n_molecules']:,} molecules of "
        "HIV.csv; DeepChem side CircularFingerprint(size=1024) then "
        "MolGraphConvFeaturizer(use_edges=True); one warm-up call, best of "
        f"{s['repeats']} interleaved repeats; n_jobs=2 includes starting the worker processes "
        "(both sides; DeepChem's pair in a fork pool, chunked like deepfuse's).",
        f"- Training: first {train['n_molecules']:,} HIV molecules accepted by both featurizers "
        f"(HIV_active, classification), batch {s['batch_size']}, learning rate "
        f"{s['learning_rate']}, featurized input (DynamicFusionModel: MultiModalFeaturizer; "
        "DMPNNModel: DMPNNFeaturizer; both with their libraries' default sizes); one warm-up "
        f"epoch excluded, best of {train['epochs_timed']} interleaved epochs, no checkpoints "
        "written. The length-bucketed DynamicFusionModel pools every "
        f"{BUCKET_POOL} shuffled batches, sorts them by SMILES token count and re-cuts them "
        "(less padding for the SMILES Transformer; an opt-in training setting, not the default "
        "of the accuracy tables).",
        "- Inference: `model.predict` on featurized datasets of 1 and of 256 molecules "
        "(featurization excluded), calls interleaved between the models; molecules/s = batch "
        "size / median latency.",
    ]
    if "status" not in result["memory"]:
        notes.append(
            f"- Memory: {result['memory']['method']}. " + _memory_details(result["memory"])
        )
    start, cores = result["load_average"].get("start"), result["machine"]["cpu_count"]
    if start and cores and start[0] >= cores:
        notes.append(
            f"- The 1-minute load average ({start[0]:.1f}) was at or above the "
            f"{cores} CPU cores: other jobs kept every core busy, so worker processes "
            "(n_jobs=2) could not run in parallel and wall times are inflated."
        )
    if cpu:
        notes.append(
            "- Same ratios by CPU time of this process (less disturbed by other jobs): "
            + "; ".join(cpu)
            + "."
        )
    chemprop = train["chemprop"]
    if chemprop.get("status") == "measured":
        notes.append(f"- chemprop: {chemprop['note']}.")
    return notes


def _memory_details(memory: dict[str, Any]) -> str:
    parts = []
    for task, side in MEMORY_TASKS:
        rec = memory[f"{task}_{side}"]
        extra = (
            f", fit {rec['fit_s']:.0f} s for {rec['n_trained']:,} molecules"
            if "fit_s" in rec
            else ""
        )
        parts.append(
            f"{task} {side}: peak {rec['peak_rss_mib']:,.0f} MiB (baseline "
            f"{_fmt(rec.get('baseline_rss_mib'))} MiB), {rec['seconds']:.0f} s{extra}"
        )
    return "; ".join(parts) + "."
