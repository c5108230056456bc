"""``deepfuse-bench train-scaling`` (deepfuse_bench.scaling_train): a tiny run times DeepChem's
fit, one Lightning process and 2 DDP processes on the same data and writes its record; the CLI
reaches it."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from deepfuse_bench.cli import build_parser
from deepfuse_bench.scaling_train import configurations, format_markdown, ratios


@pytest.mark.ddp
@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork-started processes"
)
def test_tiny_run_writes_json_and_markdown(tiny_molnet_dir: Path, tmp_path: Path):
    from deepfuse_bench.cli import main

    out = tmp_path / "out"
    argv = ["--no-progress", "train-scaling", "--data-dir", str(tiny_molnet_dir)]
    argv += ["--n", "24", "--epochs", "1", "--batch-size", "8", "--no-gpu", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "train_scaling.json").read_text())
    assert [r["run"] for r in record["runs"]] == ["fit", "lightning_cpu_1", "ddp_cpu_2"]
    assert record["n_train"] == 23  # the tiny file's unparseable SMILES is left out
    for run in record["runs"]:
        assert run["mol_per_s"] == pytest.approx(23 / run["seconds"])
    (ratio,) = record["ratios"]
    speed = {r["run"]: r["mol_per_s"] for r in record["runs"]}
    assert ratio["vs_fit"] == pytest.approx(speed["ddp_cpu_2"] / speed["fit"])
    markdown = (out / "train_scaling.md").read_text()
    assert "| ddp_cpu_2 | fit_distributed | cpu | 2 |" in markdown and "vs fit" in markdown


def test_ratios_compare_with_the_same_accelerator():
    runs = [
        {"run": "fit", "accelerator": "cpu", "processes": 1, "mol_per_s": 100.0},
        {"run": "lightning_cpu_1", "accelerator": "cpu", "processes": 1, "mol_per_s": 80.0},
        {"run": "ddp_cpu_2", "accelerator": "cpu", "processes": 2, "mol_per_s": 160.0},
        {"run": "ddp_gpu_4", "accelerator": "gpu", "processes": 4, "mol_per_s": 900.0},
    ]
    assert ratios(runs) == [
        {"run": "ddp_cpu_2", "vs_fit": 1.6, "vs_lightning_1": 2.0},
        {"run": "ddp_gpu_4", "vs_fit": None, "vs_lightning_1": None},  # no one-GPU run
    ]
    record = {"dataset": "delaney", "n_train": 10, "epochs": 1, "batch_size": 8}
    markdown = format_markdown(
        {**record, "runs": [], "ratios": ratios(runs), "environment": {"cpu_count": 2}}
    )
    assert "| ddp_gpu_4 | n/a | n/a |" in markdown


def test_configurations_and_cli_options():
    assert configurations([1, 2, 4], cuda=False) == [
        ("fit", "cpu", 0),
        ("lightning_cpu_1", "cpu", 1),
        ("ddp_cpu_2", "cpu", 2),
        ("ddp_cpu_4", "cpu", 4),
    ]
    args = build_parser().parse_args(["train-scaling", "--data-dir", "d", "--processes", "2,3"])
    assert args.processes == [2, 3] and args.epochs == 5 and not args.no_gpu
