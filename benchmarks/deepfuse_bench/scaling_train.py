"""Training throughput on one and two processes: ``deepfuse-bench train-scaling``.

ESOL (``delaney-processed.csv`` under ``--data-dir``, all 1,128 molecules or the first ``--n``)
is featurized once, untimed (``ecfp``, ``graph``, ``smiles``). The same DynamicFusionModel
(deepfuse defaults, seeded, the same global ``batch_size``) is then trained for the same epochs,
without validation, in each configuration:

* ``fit``: DeepChem's ``fit`` in this process, on the CPU (no checkpoints);
* ``lightning_cpu_1``: :func:`~deepfuse_plugin.train.lightning.fit_distributed` on one CPU
  process: Lightning's overhead alone;
* ``ddp_cpu_N`` for each ``--processes`` N > 1: ``fit_distributed(devices=N,
  strategy="ddp_fork")`` on the CPU (gloo), each process taking ``batch_size / N`` rows of every
  batch;
* with CUDA: ``fit_gpu`` (``fit`` with the model on the GPU) and ``lightning_gpu_1``; with more
  than one GPU also ``ddp_gpu_N`` (``ddp_fork``) on all of them.

Molecules/s is ``training molecules x epochs / wall seconds`` of the whole call: process start-up,
the gloo rendezvous and ``fit_distributed``'s end-of-run checkpoint included (what a user waits
for; give enough epochs to amortize them). Every process trains with the harness's ``--threads``
(1 by default). The ratio of each multi-process run to ``fit`` and to ``lightning_cpu_1`` is
reported; it means something only on otherwise idle cores (the load average before each run is
recorded).

Examples
--------
>>> from deepfuse_bench.scaling_train import format_markdown
>>> print(format_markdown({"dataset": "delaney", "n_train": 0, "epochs": 1, "batch_size": 64,
...     "runs": [], "ratios": [], "environment": {"cpu_count": 2}}).splitlines()[0])
# Training throughput, 1 vs several processes (ESOL)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from deepfuse_bench.datasets import FUSION_MODALITIES, moleculenet_dir
from deepfuse_bench.environment import environment

logger = logging.getLogger(__name__)

DATA_FILE = "delaney-processed.csv"
LABEL = "measured log solubility in mols per litre"
DEFAULT_PROCESSES = (2,)
STEM = "train_scaling"


def run_train_scaling_bench(
    data_dir: str,
    n: int | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    processes: Sequence[int] = DEFAULT_PROCESSES,
    seed: int = 0,
    gpu: bool = True,
    out: str | None = "benchmarks",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every configuration (module docstring); write ``train_scaling.{json,md}`` to ``out``.

    Parameters
    ----------
    data_dir: folder holding ``delaney-processed.csv`` (or its ``moleculenet/`` subfolder).
    n: the first ``n`` molecules (default: all).
    epochs, batch_size: the same for every run (``batch_size`` is the global batch).
    processes: CPU process counts above 1 to run under DDP.
    seed: seed of the model's initial weights and of the batch order.
    gpu: also time the GPU runs when CUDA is present.
    out: folder for the record (None: not written).
    """
    import torch

    train = esol_dataset(data_dir, n)
    scratch = tempfile.mkdtemp(prefix="train-scaling-")
    runs: list[dict[str, Any]] = []
    try:
        for name, device, count in configurations(processes, gpu and torch.cuda.is_available()):
            runs.append(time_run(name, device, count, train, epochs, batch_size, seed, scratch))
            echo(run_line(runs[-1]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "benchmark": "training throughput, fit vs fit_distributed (Lightning DDP)",
        "dataset": "delaney",
        "modalities": list(FUSION_MODALITIES),
        "model": "DynamicFusionModel",
        "n_train": len(train),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "threads_per_process": torch.get_num_threads(),
        "runs": runs,
        "ratios": ratios(runs),
        "environment": {**environment(), "nice": os.nice(0)},
    }
    markdown = format_markdown(result)
    if out:
        from deepfuse_plugin import workflows as wf

        os.makedirs(out, exist_ok=True)
        wf.write_json(os.path.join(out, f"{STEM}.json"), result)
        with open(os.path.join(out, f"{STEM}.md"), "w") as fh:
            fh.write(markdown)
    echo(markdown)
    return result


def esol_dataset(data_dir: str, n: int | None = None) -> Any:
    """ESOL's molecules (the first ``n``) that featurize, with their labels, as a dataset."""
    import deepchem as dc
    import pandas as pd

    from deepfuse_plugin import workflows as wf
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.modalities import MultiModalSample

    path = os.path.join(moleculenet_dir(data_dir), DATA_FILE)
    if not os.path.isfile(path):
        raise wf.WorkflowError(f"No {DATA_FILE} in {data_dir} (--data-dir)")
    frame = pd.read_csv(path, nrows=n)
    with wf.rdkit_log_disabled():
        X = MultiModalFeaturizer(list(FUSION_MODALITIES), progress=False).featurize(
            frame["smiles"].tolist()
        )
    keep = np.array([isinstance(x, MultiModalSample) for x in X], dtype=bool)
    y = frame[LABEL].to_numpy(dtype=np.float64).reshape(-1, 1)
    return dc.data.NumpyDataset(X[keep], y[keep], ids=frame["smiles"].to_numpy()[keep])


def configurations(processes: Sequence[int], cuda: bool) -> list[tuple[str, str, int]]:
    """``(name, accelerator, processes)`` of every run; ``processes`` 0 is DeepChem's ``fit``."""
    runs = [("fit", "cpu", 0), ("lightning_cpu_1", "cpu", 1)]
    runs += [(f"ddp_cpu_{p}", "cpu", p) for p in processes if p > 1]
    if cuda:
        import torch

        count = torch.cuda.device_count()
        # the forked DDP run first: a fork must not inherit an initialized CUDA context
        runs += [(f"ddp_gpu_{count}", "gpu", count)] if count > 1 else []
        runs += [("fit_gpu", "gpu", 0), ("lightning_gpu_1", "gpu", 1)]
    return runs


def time_run(
    name: str,
    accelerator: str,
    processes: int,
    train: Any,
    epochs: int,
    batch_size: int,
    seed: int,
    scratch: str,
) -> dict[str, Any]:
    """One timed training run of a freshly seeded model."""
    import torch

    from deepfuse_plugin import workflows as wf
    from deepfuse_plugin.models.dynamic import DynamicFusionModel
    from deepfuse_plugin.train.lightning import fit_distributed

    wf.set_seed(seed)
    # fit_distributed moves the network to each process's device itself
    device = torch.device("cuda" if accelerator == "gpu" and processes == 0 else "cpu")
    model = DynamicFusionModel(
        n_tasks=1,
        modalities=_modalities(),
        batch_size=batch_size,
        model_dir=os.path.join(scratch, name),
        progress=False,
        device=device,
    )
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    if processes == 0:
        model.fit(train, nb_epoch=epochs, checkpoint_interval=0)
    else:
        fit_distributed(
            model,
            train,
            epochs=epochs,
            accelerator=accelerator,
            devices=processes,
            strategy="auto" if processes == 1 else "ddp_fork",
            seed=seed,
            progress=False,
        )
    seconds = time.perf_counter() - start
    return {
        "run": name,
        "accelerator": accelerator,
        "processes": max(1, processes),
        "trainer": "DeepChem fit" if processes == 0 else "fit_distributed",
        "seconds": seconds,
        "mol_per_s": len(train) * epochs / seconds,
        "load_average_before": load,
    }


def _modalities() -> list[Any]:
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    return MultiModalFeaturizer(list(FUSION_MODALITIES), progress=False).modalities


def ratios(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each multi-process run's throughput over ``fit``'s and over one Lightning process's on
    the same accelerator."""
    speed = {r["run"]: r["mol_per_s"] for r in runs}
    out = []
    for r in runs:
        if r["processes"] > 1:
            kind = r["accelerator"]
            base = speed.get("fit" if kind == "cpu" else "fit_gpu")
            single = speed.get(f"lightning_{kind}_1")
            out.append(
                {
                    "run": r["run"],
                    "vs_fit": r["mol_per_s"] / base if base else None,
                    "vs_lightning_1": r["mol_per_s"] / single if single else None,
                }
            )
    return out


def run_line(run: dict[str, Any]) -> str:
    return (
        f"{run['run']}: {run['mol_per_s']:.0f} molecules/s ({run['seconds']:.1f} s), "
        f"load {run['load_average_before']}"
    )


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a ``train-scaling`` record."""
    lines = [
        "# Training throughput, 1 vs several processes (ESOL)",
        "",
        f"DynamicFusionModel, {result['n_train']} training molecules, {result['epochs']} "
        f"epochs, global batch {result['batch_size']}, no validation. Molecules/s = molecules "
        "x epochs / wall seconds of the whole call (process start-up included).",
        "",
        "| run | trainer | accelerator | processes | seconds | molecules/s | load avg before |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['run']} | {r['trainer']} | {r['accelerator']} | {r['processes']} | "
            f"{r['seconds']:.1f} | {r['mol_per_s']:.0f} | {r['load_average_before']} |"
        )
    if result["ratios"]:
        lines += ["", "| run | vs fit | vs 1 Lightning process |", "|---|---:|---:|"]
        lines += [
            f"| {r['run']} | {_ratio(r['vs_fit'])} | {_ratio(r['vs_lightning_1'])} |"
            for r in result["ratios"]
        ]
    env = result["environment"]
    lines += [
        "",
        f"{env.get('cpu_count')} CPU cores; GPU: {env.get('gpu')}; nice {env.get('nice')}. "
        "Ratios mean something only on otherwise idle cores: compare the load average with "
        "the core count.",
        "",
    ]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """``deepfuse-bench train-scaling`` on the harness's subcommand parser."""
    from deepfuse_plugin.cli import _csv_list, _positive_int

    parser = sub.add_parser(
        "train-scaling",
        help="training molecules/s: DeepChem fit in one process vs fit_distributed (Lightning "
        "DDP) on 2 CPU processes, and on the GPU when there is one",
    )
    parser.add_argument("--data-dir", required=True, help=f"folder holding {DATA_FILE}")
    parser.add_argument("--n", type=_positive_int, default=None, help="first N molecules")
    parser.add_argument("--epochs", type=_positive_int, default=5)
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="global batch")
    parser.add_argument(
        "--processes",
        type=lambda t: [_positive_int(x) for x in _csv_list(t)],
        default=list(DEFAULT_PROCESSES),
        help="CPU process counts under DDP (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU runs")
    parser.add_argument(
        "--out", default="benchmarks", help=f"writes {STEM}.{{json,md}} (default: %(default)s)"
    )


def run_from_args(args: Any) -> None:
    run_train_scaling_bench(
        args.data_dir,
        n=args.n,
        epochs=args.epochs,
        batch_size=args.batch_size,
        processes=args.processes,
        seed=args.seed,
        gpu=not args.no_gpu,
        out=args.out,
    )
