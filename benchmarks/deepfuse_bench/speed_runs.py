"""The measurements of ``deepfuse-bench speed``: settings, records, data and models, and the timed
sections (featurization, training, inference, peak memory in child processes).

:mod:`deepfuse_bench.speed` runs them (and chemprop) and describes the method; the table and the
markdown are :mod:`deepfuse_bench.speed_report`'s.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepfuse_bench import featurize as fb
from deepfuse_plugin import workflows as wf

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
    return PEERS["dc_dmpnn"].model(1, MODE, model_dir, SEED, budget)


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
