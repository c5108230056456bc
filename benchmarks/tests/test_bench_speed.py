"""``deepfuse-bench speed`` on a tiny HIV.csv (the real run is ``make bench-speed``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from deepfuse_bench import speed
from deepfuse_bench.cli import main

SECTIONS = (
    "settings",
    "machine",
    "load_average",
    "featurization",
    "training",
    "inference",
    "memory",
    "rows",
)


def test_bench_speed_tiny_run_writes_json_and_markdown(
    tiny_hiv_data_dir: Path, tmp_path: Path, capsys, caplog
):
    out = tmp_path / "bench"
    with caplog.at_level("WARNING"):
        code = main(
            [
                "--no-progress",
                "speed",
                "--data-dir",
                str(tiny_hiv_data_dir),
                "--n-featurize",
                "40",
                "--n-train",
                "40",
                "--epochs",
                "1",
                "--repeats",
                "1",
                "--latency-calls",
                "3",
                "--n-memory",
                "40",
                "--no-chemprop",
                "--out-dir",
                str(out),
            ]
        )
    assert code == 0
    assert "curriculum" not in caplog.text  # the one-epoch fits count the curriculum across calls
    result = json.loads((out / "speed.json").read_text())
    assert result["format"] == speed.FORMAT and all(k in result for k in SECTIONS)
    assert result["machine"]["cpu_count"] >= 1 and "torch" in result["machine"]["versions"]
    assert result["load_average"]["start"] is not None and "end" in result["load_average"]
    for jobs in ("n_jobs_1", "n_jobs_2"):
        for side in ("deepfuse", "deepchem"):
            assert result["featurization"][jobs][side]["mol_per_s"] > 0
    training = result["training"]
    assert training["n_molecules"] == 40 and training["epochs_timed"] == 1
    assert training["chemprop"]["status"].startswith("not measured: skipped")
    assert training["dynamic_bucketed"]["mol_per_s"] > 0
    expected_device = "cuda" if result["machine"]["cuda"] else "cpu"
    assert {d.split(":")[0] for d in training["devices"].values()} == {expected_device}
    assert [r["peer"] for r in result["rows"] if "bucketed" in r["measurement"]] == [
        speed.LABELS["dynamic"],
        speed.LABELS["dmpnn"],
    ]
    assert result["inference"]["batch_1"]["dynamic"]["calls"] == 3
    assert result["inference"]["batch_256"]["dmpnn"]["batch_size"] == 40  # capped by the data
    for key in ("featurize_deepfuse", "featurize_deepchem", "train_dynamic", "train_dmpnn"):
        record = result["memory"][key]
        assert record["n_molecules"] == 40
        assert record["peak_rss_mib"] >= record["baseline_rss_mib"] > 0
    assert result["memory"]["train_dynamic"]["n_trained"] == 40

    measured = [r for r in result["rows"] if r["status"] == "measured"]
    assert len(measured) == len(result["rows"]) - 1  # all but chemprop
    assert {r["ratio_kind"] for r in measured} == {"throughput", "latency", "memory"}
    for row in measured:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    markdown = (out / "speed.md").read_text()
    assert "| measurement |" in markdown and "not measured: skipped" in markdown
    assert "Load average" in markdown
    assert "peak memory, featurizing 40 HIV molecules" in capsys.readouterr().out


def test_header_names_the_gpu_that_ran_the_models():
    gpu = {"cuda": True, "gpu": "NVIDIA H100 80GB HBM3"}
    text = speed._device_text(gpu, {"dynamic": "cuda", "dmpnn": "cuda"})
    assert text.startswith(", GPU NVIDIA H100 80GB HBM3: training and inference ran on cuda ")
    assert speed._device_text(gpu, {"dynamic": "cpu"}) == ", CUDA available (not used)"
    assert speed._device_text({"cuda": False}, {"dynamic": "cpu"}) == ", no GPU"


def test_chemprop_row_says_why_it_was_not_measured(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(speed, "CHEMPROP_MODULE", "deepfuse_plugin.bench.no_such_runner")
    frame = pd.DataFrame({"smiles": ["CCO", "CCN"], speed.LABEL: [0, 1]})
    record = speed.bench_chemprop(frame, epochs=1, scratch=str(tmp_path), threads=1)
    assert record["status"].startswith("not measured: ModuleNotFoundError")
    rows = speed._training_rows(
        {
            "dynamic": {"mol_per_s": 10.0, "mol_per_cpu_s": 12.0},
            "dmpnn": {"mol_per_s": 20.0, "mol_per_cpu_s": 20.0},
            "chemprop": record,
        }
    )
    assert rows[0]["ratio"] == 0.5 and rows[0]["cpu_ratio"] == 0.6
    assert rows[1]["ratio"] is None and rows[1]["status"] == record["status"]
    assert speed._ratio_text(rows[1]) == record["status"]


def test_training_loss_drops_its_graph_after_backward():
    """The fix behind the training-memory figure: DeepChem sums batch losses for 100 batches
    before converting them to float, which kept every batch's autograd graph alive."""
    import torch

    from deepfuse_plugin.data.collate import collate_samples
    from deepfuse_plugin.models.base import _released_after_backward
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    model = DynamicFusionModel(1, ["ecfp", "graph", "smiles"], progress=False)
    featurizer = speed.fb.deepfuse_featurizer(1)
    batch = collate_samples(list(featurizer(["CCO", "c1ccccc1", "CCN"])), model.modalities)
    outputs = model.model(batch)
    loss_fn = _released_after_backward(model._loss_fn)
    loss = loss_fn(
        [outputs.task_output, outputs.aux_loss, outputs.unimodal_output, outputs.unimodal_mask],
        [torch.zeros(3, 1)],
        [torch.ones(3, 1)],
    )
    value = float(loss.detach())
    loss.backward()
    assert loss.grad_fn is None and not loss.requires_grad and float(loss) == value
    assert all(p.grad is not None for p in model.model.head.parameters())
