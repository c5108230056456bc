"""``deepfuse hpopt``: a search on validation data only, resumable, whose best settings feed
``deepfuse train --params`` (tiny CSV, 2-3 trials of 1 epoch)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from deepfuse_plugin.cli import main  # noqa: E402
from deepfuse_plugin.workflows import RUN_FILE, load_run, prepare_training_data  # noqa: E402
from tests.cli.conftest import write_regression_csv  # noqa: E402

SEARCH = ["--smiles-column", "smi", "--target-columns", "T1,T2", "--modalities", "ecfp,graph"]
BUDGET = ["--epochs", "1", "--batch-size", "16", "--split", "random"]


def _hpopt(csv: Path, out: Path, *extra: str) -> int:
    return main(["--no-progress", "hpopt", str(csv), *SEARCH, *BUDGET, "--out", str(out), *extra])


def _trials(out: Path) -> list[dict]:
    import optuna

    study = optuna.load_study(
        study_name="deepfuse-dynamic", storage=f"sqlite:///{out / 'study.db'}"
    )
    return [t.params for t in study.trials if t.state.name == "COMPLETE"]


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 2-trial search: ``(csv, out, printed output)``."""
    folder = tmp_path_factory.mktemp("hpopt")
    csv, out = write_regression_csv(folder / "train.csv"), folder / "search"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        assert _hpopt(csv, out, "--trials", "2") == 0
    finally:
        capture.undo()
    return csv, out, buffer.getvalue()


def test_search_writes_its_results_and_prints_table_and_train_command(search):
    csv, out, printed = search
    for name in ("study.db", "trials.csv", "trials.md", "best_params.json", "history.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "best_params.json").read_text())
    assert saved["trials_complete"] == 2 and saved["score_name"] == "rmse"
    # --epochs is pinned: every trial, and the saved settings, use 1 epoch (not the 10-60 range)
    assert saved["params"]["epochs"] == 1 and all(p["epochs"] == 1 for p in _trials(out))
    assert {"learning_rate", "encoder_dim", "mask_end"} <= set(saved["params"])
    assert "mask_span" not in saved["params"]
    header = next(line for line in printed.splitlines() if line.startswith("|"))
    assert "trial" in header and "validation rmse" in header and "mask_end" in header
    assert "test split was not used" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line != header]
    scores = [float(r.split("|")[2]) for r in rows]
    assert len(scores) == 2 and scores == sorted(scores)  # best first
    assert f"--params {out / 'best_params.json'}" in printed


def test_trials_score_the_validation_split_only(tmp_path, monkeypatch):
    """Every trial trains on the training split and is scored on the validation split of the
    data ``deepfuse train`` prepares; no test row reaches a trial."""
    from deepfuse_plugin.train import loop

    seen: list[tuple[set, set]] = []
    real = loop.train_with_validation

    def spy(model, train, valid, *args, **kwargs):
        seen.append((set(train.ids), set(valid.ids)))
        return real(model, train, valid, *args, **kwargs)

    monkeypatch.setattr(loop, "train_with_validation", spy)
    csv = write_regression_csv(tmp_path / "train.csv")
    assert _hpopt(csv, tmp_path / "search", "--trials", "1") == 0
    data = prepare_training_data(
        str(csv), "smi", ["T1", "T2"], split="random", modalities=["ecfp", "graph"], progress=False
    )
    assert seen == [(set(data.train.ids), set(data.valid.ids))]
    assert not set(data.test.ids) & (seen[0][0] | seen[0][1])


def test_the_same_command_continues_the_search(search, tmp_path):
    csv, out, _ = search
    copy = tmp_path / "search"
    copy.mkdir()
    for name in ("study.db",):
        (copy / name).write_bytes((out / name).read_bytes())
    first = _trials(copy)
    assert _hpopt(csv, copy, "--trials", "3") == 0
    after = _trials(copy)
    assert len(after) == 3 and after[:2] == first  # one trial added, the earlier ones kept
    # the continued search draws new settings, not a replay of the first session's first trial
    assert after[2]["learning_rate"] != first[0]["learning_rate"]
    assert _hpopt(csv, copy, "--trials", "3") == 0  # complete: nothing to add
    assert len(_trials(copy)) == 3


def test_a_search_of_other_data_or_model_is_refused(search, tmp_path, capsys):
    csv, out, _ = search
    before = (out / "study.db").read_bytes()
    assert main(["hpopt", str(csv), *SEARCH, *BUDGET, "--model", "late", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'dynamic'" in err and "'late'" in err and "--overwrite" in err
    other = tmp_path / "other.csv"
    other.write_text(csv.read_text().replace("mol1,", "molX,"))
    assert _hpopt(other, out, "--trials", "2") == 2
    assert "csv_sha256" in capsys.readouterr().err
    assert _hpopt(csv, out, "--trials", "2", "--seed", "1") == 2
    assert "seed: 0 there, 1 now" in capsys.readouterr().err
    assert (out / "study.db").read_bytes() == before  # nothing was changed


def test_overwrite_starts_over_and_keeps_the_users_files(tmp_path):
    csv = write_regression_csv(tmp_path / "train.csv")
    out = tmp_path / "search"
    assert _hpopt(csv, out, "--trials", "1", "--model", "late") == 0
    (out / "notes.txt").write_text("mine")
    assert _hpopt(csv, out, "--trials", "1", "--overwrite") == 0
    assert json.loads((out / "best_params.json").read_text())["model"] == "dynamic"
    assert (out / "notes.txt").read_text() == "mine"
    assert len(_trials(out)) == 1


def test_best_params_feed_deepfuse_train(search, tmp_path):
    csv, out, printed = search
    command = next(line for line in printed.splitlines() if "deepfuse train" in line)
    argv = shlex.split(command)
    assert argv[:2] == ["deepfuse", "train"]
    run = tmp_path / "run"
    argv[argv.index("--out") + 1] = str(run)
    assert main(["--no-progress", *argv[1:]]) == 0
    saved = json.loads((out / "best_params.json").read_text())
    params = saved["params"]
    record = json.loads((run / RUN_FILE).read_text())
    assert record["training"]["epochs"] == params["epochs"] == 1
    # the checkpoint is kept by the rule the search scored with, not train's own default (2)
    assert record["training"]["eval_every"] == saved["eval_every"] == 1
    assert record["training"]["learning_rate"] == pytest.approx(params["learning_rate"])
    model, _ = load_run(str(run))
    assert model.encoder_dim == params["encoder_dim"]
    assert model.dropout == pytest.approx(params["dropout"])
    assert record["modalities"] == ["ecfp", "graph"]
    # an explicit option wins over the file's value
    again = tmp_path / "run2"
    argv[argv.index("--out") + 1] = str(again)
    assert main(["--no-progress", *argv[1:], "--epochs", "2", "--learning-rate", "0.002"]) == 0
    training = json.loads((again / RUN_FILE).read_text())["training"]
    assert training["epochs"] == 2 and training["learning_rate"] == 0.002
    assert training["eval_every"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smiles-column", "nope", "--target-columns", "T1"], "nope"),
        (["--smiles-column", "smi", "--target-columns", "T9"], "T9"),
        (
            ["--smiles-column", "smi", "--target-columns", "T1", "--mode", "classification"],
            "0 or 1",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, argv, message):
    csv = write_regression_csv(tmp_path / "train.csv")
    out = tmp_path / "search"
    assert main(["hpopt", str(csv), *argv, *BUDGET, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepfuse hpopt: error:") and message in err
    assert "Traceback" not in err and not (out / "study.db").exists()


def test_input_file_options(tmp_path, capsys):
    csv = write_regression_csv(tmp_path / "train.csv")
    out = str(tmp_path / "search")
    assert main(["hpopt", *SEARCH, "--out", out]) == 2
    assert "Give the input" in capsys.readouterr().err
    assert main(["hpopt", str(csv), "--csv", str(tmp_path / "x.csv"), *SEARCH, "--out", out]) == 2
    assert "Two input files" in capsys.readouterr().err
    assert main(["hpopt", str(tmp_path / "missing.csv"), *SEARCH, "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["hpopt", str(csv), *SEARCH, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_train_params_file_errors(tmp_path, capsys):
    csv = write_regression_csv(tmp_path / "train.csv")
    base = ["train", "--csv", str(csv), "--smiles-column", "smi", "--tasks", "T1"]
    assert main([*base, "--out", str(tmp_path / "r"), "--params", str(tmp_path / "no.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([*base, "--out", str(tmp_path / "r"), "--params", str(bad)]) == 2
    assert "not a deepfuse best_params.json" in capsys.readouterr().err
    bad.write_text(json.dumps({"params": {"epochs": "many"}}))
    assert main([*base, "--out", str(tmp_path / "r"), "--params", str(bad)]) == 2
    assert "'many'" in capsys.readouterr().err
