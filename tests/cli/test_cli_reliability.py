"""Reliability of ``deepfuse train``/``predict`` (issue 21): nothing a user owns is lost, nothing is
silent, every mistake is one sentence and exit code 2.

One small run (ECFP only, one epoch) is trained per module; tests that damage a run work on a copy.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfuse_plugin import workflows as wf
from deepfuse_plugin.cli import main
from deepfuse_plugin.errors import (
    CorruptCheckpointError,
    DeepfuseError,
    InvalidSettingError,
    RunFolderError,
)
from deepfuse_plugin.run_folder import STAGING_SUFFIX
from tests.cli.conftest import CLI_SMILES, _labels
from tests.conftest import killed_after_epoch

FAST = [
    "--modalities",
    "ecfp",
    "--split",
    "random",
    "--epochs",
    "1",
    "--eval-every",
    "1",
    "--batch-size",
    "16",
]


def _write_train_csv(path: Path) -> Path:
    t1, _ = _labels(CLI_SMILES)
    pd.DataFrame({"smiles": CLI_SMILES, "y": t1}).to_csv(path, index=False)
    return path


def _train(csv: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--no-progress",
            "train",
            "--csv",
            str(csv),
            "--smiles-column",
            "smiles",
            "--tasks",
            "y",
            *FAST,
            "--out",
            str(out),
            *extra,
        ]
    )


def _predict(run: Path, csv: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--no-progress",
            "predict",
            "--model-dir",
            str(run),
            "--csv",
            str(csv),
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def module_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability")
    assert _train(_write_train_csv(folder / "train.csv"), folder / "run") == 0
    return folder / "run"


@pytest.fixture
def run(module_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run."""
    return Path(shutil.copytree(module_run, tmp_path / "run"))


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    return _write_train_csv(tmp_path / "train.csv")


@pytest.fixture
def query(tmp_path: Path) -> Path:
    path = tmp_path / "query.csv"
    path.write_text("smiles,id\nCCO,a\nc1ccccc1,b\n")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- nothing lost --------------------------------------------------------------------------------
def test_a_failed_retrain_leaves_the_previous_model_usable(
    run, train_csv, query, tmp_path, monkeypatch
):
    before = _snapshot(run)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr(wf, "train_with_validation", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(train_csv, run, "--overwrite")
    assert _snapshot(run) == before
    assert not Path(str(run) + STAGING_SUFFIX).exists()  # no resume point: nothing kept
    monkeypatch.undo()
    assert _predict(run, query, tmp_path / "p.csv") == 0


def test_an_interrupted_retrain_keeps_the_old_run_and_resumes(run, train_csv, query, tmp_path):
    before = _snapshot(run)
    with killed_after_epoch(1):
        _train(train_csv, run, "--overwrite", "--epochs", "2")
    assert _snapshot(run) == before
    staging = Path(str(run) + STAGING_SUFFIX)
    assert (staging / "model" / "training_state.json").exists()
    assert _train(train_csv, run, "--overwrite", "--epochs", "2", "--resume") == 0
    assert not staging.exists()
    record = json.loads((run / wf.RUN_FILE).read_text())
    assert record["training"]["resumed_at_epochs"] == [1]
    assert _predict(run, query, tmp_path / "p.csv") == 0


def test_overwrite_replaces_only_deepfuse_files(run, train_csv, capsys):
    (run / "model" / "notes.txt").write_text("mine")
    (run / "README.md").write_text("my notes")
    old_record = (run / wf.RUN_FILE).read_bytes()
    assert _train(train_csv, run) == 2
    err = capsys.readouterr().err
    assert "already holds a deepfuse run" in err and "--overwrite" in err
    assert (run / wf.RUN_FILE).read_bytes() == old_record
    assert _train(train_csv, run, "--overwrite", "--seed", "1") == 0
    assert (run / "model" / "notes.txt").read_text() == "mine"
    assert (run / "README.md").read_text() == "my notes"
    assert json.loads((run / wf.RUN_FILE).read_text())["training"]["seed"] == 1
    assert len(list((run / "model").glob("checkpoint*.pt"))) == 1


def test_a_users_metrics_file_is_not_overwritten(train_csv, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    assert _train(train_csv, out) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == '{"mine": 1}'


def test_predict_out_is_never_overwritten_silently(run, query, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("precious\n")
    assert _predict(run, query, out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert _predict(run, query, out, "--overwrite") == 0
    assert "deepfuse_status" in out.read_text()
    original = query.read_bytes()
    same_file = tmp_path / "sub" / ".." / "query.csv"
    (tmp_path / "sub").mkdir()
    assert _predict(run, query, same_file, "--overwrite") == 2
    assert "is the input file" in capsys.readouterr().err and query.read_bytes() == original
    assert _predict(run, query, run / wf.RUN_FILE, "--overwrite") == 2
    assert "inside the run folder" in capsys.readouterr().err


def test_pass_through_columns_are_copied_as_written(run, tmp_path):
    query = tmp_path / "ids.csv"
    query.write_text("id,smiles,flag,note\n007,CCO,TRUE,NA\n0123,CCN,False,None\n1e5,CCC,null,\n")
    out = tmp_path / "preds.csv"
    assert _predict(run, query, out) == 0
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["id"].tolist() == ["007", "0123", "1e5"]
    assert written["flag"].tolist() == ["TRUE", "False", "null"]
    assert written["note"].tolist() == ["NA", "None", ""]
    assert out.read_text().splitlines()[1].startswith("007,CCO,TRUE,NA,")


def test_output_columns_must_not_replace_input_columns(run, tmp_path, capsys):
    query = tmp_path / "clash.csv"
    query.write_text("smiles,y_pred,status\nCCO,my own,x\n")
    assert _predict(run, query, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert "'y_pred'" in err and "'status'" not in err
    assert not (tmp_path / "p.csv").exists()


# -- nothing silent ------------------------------------------------------------------------------
def _set_weights(model_dir: Path, value: float) -> None:
    import torch

    path = sorted(model_dir.glob("checkpoint*.pt"))[0]
    data = torch.load(path, weights_only=True)
    for tensor in data["model_state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(value)
    torch.save(data, path)


def test_non_finite_weights_are_reported_as_a_corrupt_checkpoint(run, query):
    """A bare model folder (no record, so no checksum to stop it first) with NaN weights."""
    _set_weights(run / "model", float("nan"))
    with pytest.raises(CorruptCheckpointError, match="checkpoint1.pt' holds NaN/inf weights"):
        wf.predict_from_csv(str(run / "model"), str(query), smiles_column="smiles")


def _non_finite_rows_from_the_model(monkeypatch, rows: list[int]) -> None:
    """Make ``predict_checked`` report ``rows`` as non-finite model outputs (NaN)."""
    from deepfuse_plugin import MultiModalTorchModel
    from deepfuse_plugin.models.predictions import NON_FINITE, CheckedPredictions

    real = MultiModalTorchModel.predict_checked

    def with_nan_rows(self, *args, **kwargs):
        checked = real(self, *args, **kwargs)
        values, reasons = checked.values.copy(), checked.reasons.copy()
        values[rows], reasons[rows] = np.nan, NON_FINITE
        return CheckedPredictions(values, reasons, checked.ids)

    monkeypatch.setattr(MultiModalTorchModel, "predict_checked", with_nan_rows)


def test_a_non_finite_row_is_a_row_failure(run, tmp_path, monkeypatch):
    """The status column takes the model's own row check (``predict_checked``)."""
    query = tmp_path / "q.csv"
    query.write_text("smiles\nCCO\nCCN\nCCC\n")
    _non_finite_rows_from_the_model(monkeypatch, [1])
    frame = wf.predict_from_csv(str(run), str(query))
    assert frame["deepfuse_status"].tolist()[1] == "non-finite model output"
    assert frame["deepfuse_status"].tolist()[::2] == ["ok", "ok"]
    assert np.isnan(frame.loc[1, "y_pred"]) and np.isfinite(frame.loc[[0, 2], "y_pred"]).all()


def test_mostly_non_finite_outputs_are_a_corrupt_checkpoint(run, tmp_path, monkeypatch):
    query = tmp_path / "q.csv"
    query.write_text("smiles\nCCO\nCCN\nCCC\n")
    _non_finite_rows_from_the_model(monkeypatch, [0, 1])
    with pytest.raises(CorruptCheckpointError, match="non-finite .* for 2 of 3 rows"):
        wf.predict_from_csv(str(run), str(query), out=str(tmp_path / "p.csv"))
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("damage", ["bit flip", "truncate", "replace"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(run, query, tmp_path, capsys, damage):
    checkpoint = sorted((run / "model").glob("checkpoint*.pt"))[0]
    data = bytearray(checkpoint.read_bytes())
    if damage == "bit flip":
        data[len(data) // 2] ^= 0x10
        checkpoint.write_bytes(bytes(data))
    elif damage == "truncate":
        checkpoint.write_bytes(bytes(data[: len(data) // 3]))
    else:
        _set_weights(run / "model", 0.5)
    assert _predict(run, query, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert checkpoint.name in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_a_truncated_checkpoint_in_a_bare_folder_is_a_clear_error(run, query):
    checkpoint = sorted((run / "model").glob("checkpoint*.pt"))[0]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=f"{checkpoint.name}' cannot be read safely"):
        wf.predict_from_csv(str(run / "model"), str(query), smiles_column="smiles")


def test_a_planted_checkpoint_or_an_edited_config_is_refused(run, query, tmp_path, capsys):
    """The record's digest covers the checkpoint the model would load and its configuration."""
    planted = run / "model" / "checkpoint0.pt"  # sorts first: the one the model would load
    shutil.copy(run / "model" / "checkpoint1.pt", planted)
    _set_weights(run / "model", 0.5)  # other (finite) weights in the planted file
    assert _predict(run, query, tmp_path / "p.csv") == 2
    assert "checkpoint0.pt" in capsys.readouterr().err
    planted.unlink()
    config = run / "model" / "deepfuse_config.json"
    payload = json.loads(config.read_text())
    payload["config"]["mode"] = "classification"
    config.write_text(json.dumps(payload))
    assert _predict(run, query, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert "deepfuse_config.json" in err and "SHA-256 mismatch" in err
    assert not (tmp_path / "p.csv").exists()


def test_an_edited_run_record_is_refused(run, query, tmp_path, capsys):
    record = json.loads((run / wf.RUN_FILE).read_text())
    record["mode"] = "classification"
    (run / wf.RUN_FILE).write_text(json.dumps(record))
    assert _predict(run, query, tmp_path / "p.csv") == 2
    assert "deepfuse_run.json was changed after training" in capsys.readouterr().err
    # without its checksums (a record by hand or an older deepfuse) the model itself disagrees
    del record["integrity"]
    (run / wf.RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(
        CorruptCheckpointError, match="mode 'classification', the model's is 'regression'"
    ):
        wf.load_run(str(run))
    record["mode"], record["model_dir"] = "regression", "../elsewhere"
    (run / wf.RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(CorruptCheckpointError, match="outside the run folder"):
        wf.load_run(str(run))


@pytest.mark.parametrize("state", ["missing", "empty", "no folder"])
def test_an_incomplete_run_folder_is_a_clear_error(run, query, tmp_path, capsys, state):
    if state == "no folder":
        target = tmp_path / "nowhere"
    else:
        shutil.rmtree(run / "model")
        if state == "empty":
            (run / "model").mkdir()
        target = run
    assert _predict(target, query, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert ("does not exist" if state == "no folder" else state) in err
    assert "Traceback" not in err


def test_a_task_without_labels_is_refused_before_training(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"smiles": CLI_SMILES, "y": _labels(CLI_SMILES)[0], "z": ""}).to_csv(
        csv, index=False
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(csv),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y,z",
                *FAST,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "No labelled rows for task(s) ['z']" in capsys.readouterr().err
    assert not out.exists() and not Path(str(out) + STAGING_SUFFIX).exists()


def test_a_long_smiles_is_a_row_failure_not_a_crash(run, tmp_path):
    query = tmp_path / "q.csv"
    query.write_text("smiles\nCCO\n" + "C" * 20000 + "\n")
    frame = wf.predict_from_csv(str(run), str(query))
    assert frame.loc[0, "deepfuse_status"] == "ok"
    assert "20000 characters" in frame.loc[1, "deepfuse_status"]
    assert np.isnan(frame.loc[1, "y_pred"])


# -- clear errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, expected",
    [
        (gzip.compress(b"smiles,y\nCCO,1\n"), "gzip-compressed"),
        (b"\x00\x01\x02binary\x00", "binary file"),
        (b"smiles,y\n\xff\xfeCCO,1\n", "not UTF-8"),
        (b"", "empty"),
        (b"smiles,y\n", "no rows"),
    ],
)
def test_unreadable_csv_files(tmp_path, capsys, content, expected):
    csv = tmp_path / "data.csv"
    csv.write_bytes(content)
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(csv),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert expected in err and str(csv) in err and "Traceback" not in err


def test_a_compressed_csv_with_its_suffix_is_read(tmp_path):
    csv = tmp_path / "data.csv.gz"
    csv.write_bytes(gzip.compress(b"smiles,y\nCCO,1\n"))
    assert wf.read_csv_checked(str(csv), "smiles", ["y"])["y"].tolist() == ["1"]


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["yes", "no"], ["not numeric", "'yes'", "'no'", "1/0"]),
        (["1e300", "1"], ["beyond", "1e+300", "CCO"]),
        (["inf", "2"], ["infinite", "CCO"]),
    ],
)
def test_bad_labels_name_rows_and_values(tmp_path, capsys, labels, expected):
    csv = tmp_path / "labels.csv"
    smiles = ["CCO", "CCN"] * 5
    pd.DataFrame({"smiles": smiles, "y": labels * 5}).to_csv(csv, index=False)
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(csv),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err


def test_missing_labels_are_not_errors(tmp_path):
    frame = pd.DataFrame({"y": ["1.5", "NA", "", "nan", " 2 "]})
    y, w = wf.labels_and_weights(frame, ["y"], list("abcde"))
    assert y[:, 0].tolist() == [1.5, 0.0, 0.0, 0.0, 2.0]
    assert w[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "option, value",
    [
        ("--learning-rate", "nan"),
        ("--learning-rate", "0"),
        ("--batch-size", "0"),
        ("--epochs", "0"),
        ("--epochs", "two"),
    ],
)
def test_bad_settings_name_the_value(train_csv, tmp_path, capsys, option, value):
    assert (
        main(
            [
                "train",
                "--csv",
                str(train_csv),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "out"),
                option,
                value,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert option in err and value in err and "Traceback" not in err


@pytest.mark.parametrize(
    "setting, value",
    [
        ("batch_size", 0),
        ("epochs", 0),
        ("eval_every", -1),
        ("learning_rate", float("nan")),
        ("batch_size", 2.5),
    ],
)
def test_bad_settings_through_the_api(train_csv, tmp_path, setting, value):
    with pytest.raises(InvalidSettingError, match=f"{setting} must be .* got {value!r}"):
        wf.train_from_csv(
            str(train_csv), "smiles", ["y"], str(tmp_path / "out"), **{setting: value}
        )
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(DeepfuseError, match="not found"):
        main(
            [
                "--debug",
                "train",
                "--csv",
                str(tmp_path / "none.csv"),
                "--smiles-column",
                "s",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "out"),
            ]
        )


def test_errors_are_of_the_deepfuse_family(run, query, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("x")
    with pytest.raises(RunFolderError):
        wf.predict_from_csv(str(run), str(query), out=str(out))
    assert issubclass(wf.WorkflowError, DeepfuseError)
