"""The chemprop runner without chemprop: command lines, reading its files, input checks, the
environment's stamp and failure report, and scoring its predictions with deepfuse's metric code.

The real runs (chemprop installed in ``.venv-chemprop``) are in
``tests/cli/test_bench_chemprop_run.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfuse_bench import chemprop as cp
from deepfuse_bench import chemprop_env as cpenv
from deepfuse_bench import chemprop_peer, report
from deepfuse_plugin import workflows as wf

TASKS = ["logS", "log P"]  # a space, as in "measured log solubility in mols per litre"
SMILES = ["CCO", "c1ccccc1 ", "CC(=O)O", "CCN"]
NO_CHEMPROP = "/nonexistent/.venv-chemprop/bin/chemprop"  # never run: the checks come first


def _option(cmd: list[str], flag: str, n: int = 1) -> list[str]:
    i = cmd.index(flag)
    return cmd[i + 1 : i + 1 + n]


def test_train_command_gives_the_split_as_three_files_and_the_budget():
    cmd = cp.train_command(
        ["py", "clock.py"],
        "tr.csv",
        "va.csv",
        "te.csv",
        TASKS,
        "classification",
        epochs=30,
        seed=7,
        output_dir="out",
        batch_size=32,
    )
    assert cmd[:3] == ["py", "clock.py", "train"]
    assert _option(cmd, "--data-path", 3) == ["tr.csv", "va.csv", "te.csv"]
    assert _option(cmd, "--target-columns", 2) == TASKS
    assert _option(cmd, "--task-type") == ["classification"]
    assert _option(cmd, "--epochs") == ["30"] and _option(cmd, "--batch-size") == ["32"]
    assert _option(cmd, "--pytorch-seed") == ["7"] and _option(cmd, "--data-seed") == ["7"]
    assert _option(cmd, "--num-workers") == ["0"] and _option(cmd, "--accelerator") == ["cpu"]
    assert _option(cmd, "--output-dir") == ["out"] and _option(cmd, "--smiles-columns") == [
        "smiles"
    ]
    # selected like every other model: best validation ROC-AUC (a tracking metric must be
    # one of chemprop's --metrics, hence both options)
    assert _option(cmd, "--metrics") == ["roc"] and _option(cmd, "--tracking-metric") == ["roc"]
    # chemprop's defaults otherwise: no architecture, learning-rate or split options
    for flag in ("--warmup-epochs", "--split", "--splits-file", "--max-lr", "--depth"):
        assert flag not in cmd


def test_train_command_tracks_rmse_for_regression_and_can_keep_chemprops_own_rule():
    cmd = cp.train_command(["chemprop"], "a", "b", "c", ["y"], "regression", 30, 0, "o")
    assert _option(cmd, "--metrics") == ["rmse"] and _option(cmd, "--tracking-metric") == ["rmse"]
    old = cp.train_command(
        ["chemprop"], "a", "b", "c", ["y"], "regression", 30, 0, "o", tracking_metric="val_loss"
    )
    assert "--tracking-metric" not in old and "--metrics" not in old


@pytest.mark.parametrize("epochs, warmup", [(1, "0"), (2, "1")])
def test_train_command_shortens_warmup_only_below_chemprops_minimum(epochs, warmup):
    cmd = cp.train_command(["chemprop"], "a", "b", "c", ["y"], "regression", epochs, 0, "o")
    assert _option(cmd, "--warmup-epochs") == [warmup]


def test_predict_command():
    cmd = cp.predict_command("/v/bin/chemprop", "in.csv", "out.csv", "m/best.pt", 16)
    assert cmd[:2] == ["/v/bin/chemprop", "predict"]
    assert _option(cmd, "--test-path") == ["in.csv"] and _option(cmd, "--preds-path") == ["out.csv"]
    assert _option(cmd, "--model-paths") == ["m/best.pt"]
    assert _option(cmd, "--batch-size") == ["16"] and _option(cmd, "--num-workers") == ["0"]


def _predictions(path: Path, smiles: list[str], columns: dict[str, list[float]]) -> Path:
    pd.DataFrame({"smiles": smiles, **columns}).to_csv(path, index=False)
    return path


def test_read_predictions_follows_the_task_order_and_checks_rows(tmp_path):
    # chemprop writes the input columns then the targets; the column order here differs
    path = _predictions(
        tmp_path / "p.csv", SMILES, {"log P": [1, 2, 3, 4], "logS": [0.1, 0.2, 0.3, 0.4]}
    )
    pred = cp.read_predictions(path, SMILES, TASKS, "regression")
    np.testing.assert_allclose(pred, [[0.1, 1], [0.2, 2], [0.3, 3], [0.4, 4]])
    with pytest.raises(cp.ChempropError, match="4 rows for 3 input"):
        cp.read_predictions(path, SMILES[:3], TASKS, "regression")
    with pytest.raises(cp.ChempropError, match="not in the input's order: row 0"):
        cp.read_predictions(path, SMILES[::-1], TASKS, "regression")
    with pytest.raises(cp.ChempropError, match="lack column"):
        cp.read_predictions(path, SMILES, ["logS", "other"], "regression")
    with pytest.raises(cp.ChempropError, match="not a probability"):
        cp.read_predictions(path, SMILES, TASKS, "classification")


def test_read_predictions_rejects_nan(tmp_path):
    path = _predictions(
        tmp_path / "p.csv", SMILES, {"logS": [0.1, None, 0.3, 0.4], "log P": [0.5] * 4}
    )
    with pytest.raises(cp.ChempropError, match="NaN for 1 row"):
        cp.read_predictions(path, SMILES, TASKS, "classification")


def _write_metrics(train_dir: Path, text: str) -> None:
    """Lightning's CSVLogger file: per epoch one validation row, then one training row."""
    folder = train_dir / "model_0" / "trainer_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text)


def test_read_history_picks_the_first_lowest_validation_loss(tmp_path):
    _write_metrics(
        tmp_path,
        "epoch,step,train_loss_epoch,val/mse,val_loss\n"
        "0,0,,1.3,1.3\n0,0,1.0,,\n1,1,,0.9,0.9\n1,1,0.8,,\n2,2,,0.9,0.9\n2,2,0.7,,\n",
    )
    history, best = cp.read_history(tmp_path)
    assert best == 2
    assert history == [
        {"epoch": 1, "val_loss": 1.3, "train_loss": 1.0, "score": 1.3},
        {"epoch": 2, "val_loss": 0.9, "train_loss": 0.8, "score": 0.9},
        {"epoch": 3, "val_loss": 0.9, "train_loss": 0.7, "score": 0.9},
    ]
    assert cp.read_history(tmp_path / "nothing") == ([], None)


def test_read_history_picks_the_epoch_of_the_best_tracked_metric(tmp_path):
    # the case of issue 20 item 6: the loss is lowest at epoch 1, the ROC-AUC best at epoch 3
    _write_metrics(
        tmp_path,
        "epoch,step,train_loss_epoch,val/roc,val_loss\n0,0,,0.54,0.60\n"
        "0,0,0.7,,\n1,1,,0.70,0.65\n1,1,0.6,,\n2,2,,0.78,0.70\n2,2,0.5,,\n",
    )
    history, best = cp.read_history(tmp_path, "roc")
    assert best == 3 and [h["score"] for h in history] == [0.54, 0.70, 0.78]
    assert cp.read_history(tmp_path, "val_loss")[1] == 1
    with pytest.raises(cp.ChempropError, match="tracking_metric must be one of"):
        cp.run_chemprop(
            "a.csv",
            "b.csv",
            "c.csv",
            ["y"],
            "regression",
            2,
            0,
            tmp_path,
            executable=NO_CHEMPROP,
            tracking_metric="mae",
        )


def test_read_settings_parses_chemprops_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        "data-path = [a.csv, b.csv, c.csv]\nepochs = 30\nbatch-size = 64\n"
        "message-hidden-dim = [300]\ndropout = 0.0\naggregation = norm\n"
        "atom-ffn-num-layers = 1\nsplit = RANDOM\nbatch-norm = false\n"
        "max-lr = 0.001\n"
    )
    assert cp.read_settings(config) == {
        "epochs": 30,
        "batch-size": 64,
        "message-hidden-dim": [300],
        "dropout": 0.0,
        "aggregation": "norm",
        "batch-norm": False,
        "max-lr": 0.001,
    }


def _split_csvs(tmp_path: Path, valid_rows: int = 2) -> list[Path]:
    paths = []
    for part, n in (("train", 4), ("valid", valid_rows), ("test", 2)):
        frame = pd.DataFrame({"smiles": SMILES[:n], "logS": np.arange(n, dtype=float)})
        paths.append(tmp_path / f"{part}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mode="multiclass"), "mode must be one of"),
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(tasks=[]), "at least one task"),
        (dict(tasks=["-x"]), "starting with '-'"),
        (dict(tasks=["logS", "missing"]), r"lacks task column\(s\) \['missing'\]"),
        (dict(smiles_column="smi"), "has no 'smi' column"),
    ],
)
def test_run_chemprop_rejects_bad_input_before_running_anything(tmp_path, change, message):
    train, valid, test = _split_csvs(tmp_path)
    kwargs = dict(
        tasks=["logS"],
        mode="regression",
        epochs=2,
        seed=0,
        workdir=tmp_path / "w",
        executable=NO_CHEMPROP,
    )
    kwargs.update(change)
    with pytest.raises(cp.ChempropError, match=message):
        cp.run_chemprop(train, valid, test, **kwargs)
    assert not (tmp_path / "w").exists()


def test_run_chemprop_reports_missing_files_and_empty_parts(tmp_path):
    train, valid, test = _split_csvs(tmp_path, valid_rows=0)
    with pytest.raises(cp.ChempropError, match=r"empty: \['valid'\]"):
        cp.run_chemprop(
            train, valid, test, ["logS"], "regression", 2, 0, tmp_path / "w", executable=NO_CHEMPROP
        )
    with pytest.raises(cp.ChempropError, match="test CSV .* does not exist"):
        cp.run_chemprop(
            train,
            valid,
            tmp_path / "nope.csv",
            ["logS"],
            "regression",
            2,
            0,
            tmp_path / "w",
            executable=NO_CHEMPROP,
        )


def test_a_chemprop_that_cannot_start_is_a_clear_error(tmp_path):
    train, valid, test = _split_csvs(tmp_path)
    with pytest.raises(cp.ChempropError, match="Cannot start `/nonexistent/"):
        cp.run_chemprop(
            train, valid, test, ["logS"], "regression", 2, 0, tmp_path / "w", executable=NO_CHEMPROP
        )


def test_ensure_env_is_idempotent_with_a_stamp(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "chemprop").write_text("")
    (venv / cpenv.STAMP).write_text(json.dumps({"requirements": list(cpenv.REQUIREMENTS)}))
    # /bin/false would fail every install step: the stamp means none runs
    assert cp.ensure_chemprop_env(venv, python="/bin/false") == venv / "bin" / "chemprop"
    assert cpenv.env_ready(venv)
    (venv / cpenv.STAMP).write_text(json.dumps({"requirements": ["chemprop==0.1"]}))
    assert not cpenv.env_ready(venv)  # other requirements: reinstall


def test_ensure_env_failure_names_the_command_and_shows_its_output(tmp_path):
    with pytest.raises(cpenv.ChempropEnvError) as err:
        cp.ensure_chemprop_env(tmp_path / "venv", python="/bin/false")
    text = str(err.value)
    assert "`/bin/false -m venv" in text and "exited with code 1" in text
    assert cpenv.INSTALL_LOG in text and "$ /bin/false -m venv" in text  # the log's tail
    assert not cpenv.env_ready(tmp_path / "venv")
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(cpenv.ChempropEnvError, match="Cannot create chemprop's environment folder"):
        cp.ensure_chemprop_env(blocked / "venv")


def test_install_puts_cpu_torch_first():
    cmds = cpenv.install_commands(Path("/v"), "python3")
    assert cmds[0] == ["python3", "-m", "venv", "/v"]
    assert [c[-1] for c in cmds[1:]] == ["torch==2.13.0", "chemprop==2.3.1"]


def test_child_env_isolates_chemprops_interpreter(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = cpenv.child_env(threads=1)
    assert "PYTHONPATH" not in env and env["PYTHONNOUSERSITE"] == "1"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"


def test_chemprop_predictions_are_scored_by_the_same_metric_code():
    import deepchem as dc

    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, size=(6, 2))
    w = np.ones_like(y)
    w[1, 0] = 0  # a missing label
    dataset = dc.data.NumpyDataset(np.zeros((6, 1)), y, w, ids=np.array(SMILES + ["C", "CC"]))
    normalizer = dc.trans.NormalizationTransformer(transform_y=True, dataset=dataset)
    normalized = normalizer.transform(dataset)
    pred = y + rng.normal(0, 0.5, size=y.shape)  # original units, as chemprop predicts
    got = wf.evaluate(
        chemprop_peer.Precomputed(pred, SMILES + ["C", "CC"]),
        normalized,
        [normalizer],
        "regression",
    )[0]
    assert got == pytest.approx(wf.regression_metrics(y, pred, w))
    with pytest.raises(wf.WorkflowError, match="do not match"):
        chemprop_peer.Precomputed(pred, SMILES[::-1] + ["C", "CC"]).predict(normalized)


def test_skipped_runs_are_listed_in_the_notes():
    runs = [
        {"dataset": d, "model": "chemprop", "seed": 0, "skipped": "no mirror"}
        for d in ("bbbp", "delaney")
    ]
    (note,) = report.skipped_notes(runs)
    assert note.startswith("Skipped") and "chemprop on bbbp seed 0, chemprop on delaney" in note
    assert note.endswith("Reason: no mirror")
    assert math.isnan(
        report.summarize(runs + [{**runs[0], "test_metric": None}])[("bbbp", "chemprop")]["mean"]
    )
