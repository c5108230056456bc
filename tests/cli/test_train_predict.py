"""``deepfuse train`` and ``deepfuse predict`` on tiny CSV files (direct ``main([...])`` calls)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfuse_plugin.cli import main
from deepfuse_plugin.workflows import (
    METRICS_FILE,
    RUN_FILE,
    WorkflowError,
    predict_from_csv,
    read_csv_checked,
    resolve_model_class,
)
from tests.cli.conftest import BAD_SMILES
from tests.conftest import killed_after_epoch

TRAIN_ARGS = ["--epochs", "2", "--eval-every", "1", "--batch-size", "16"]


def _train(csv: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--no-progress",
            "train",
            "--csv",
            str(csv),
            "--smiles-column",
            "smi",
            "--tasks",
            "T1,T2",
            "--mode",
            "regression",
            "--model",
            "dynamic",
            "--split",
            "scaffold",
            "--modalities",
            "ecfp,graph,smiles",
            *TRAIN_ARGS,
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture
def trained_run(regression_csv: Path, tmp_path: Path, caplog) -> Path:
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert _train(regression_csv, out) == 0
    # the bad SMILES row and the missing label are reported, not silently dropped
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot be parsed" in messages and "not a smiles" in messages
    assert "weight 0" in messages
    return out


def test_train_writes_a_complete_run_folder(trained_run: Path):
    from deepfuse_plugin import MultiModalTorchModel

    record = json.loads((trained_run / RUN_FILE).read_text())
    assert record["tasks"] == ["T1", "T2"] and record["mode"] == "regression"
    assert record["modalities"] == ["ecfp", "graph", "smiles"]
    assert record["smiles_column"] == "smi"
    assert len(record["data"]["invalid_smiles"]) == 1
    assert record["data"]["n_train"] + record["data"]["n_valid"] + record["data"]["n_test"] == 40
    assert 1 <= record["training"]["best_epoch"] <= 2
    assert len(record["normalization"]["y_means"]) == 2
    # statistics over labelled entries only (T2 has one NaN, it must not count as 0)
    assert record["normalization"]["y_means"][1] > 1.0
    metrics = json.loads((trained_run / METRICS_FILE).read_text())
    assert set(metrics) == {"valid", "test"}
    assert {"rmse", "mae", "r2"} <= set(metrics["test"])
    model = MultiModalTorchModel.load(str(trained_run / "model"))
    assert model.n_tasks == 2 and model.modality_names == ["ecfp", "graph", "smiles"]


def test_predict_keeps_every_row_and_undoes_normalization(
    trained_run: Path, query_csv: Path, tmp_path: Path, capsys
):
    out = tmp_path / "preds.csv"
    code = main(
        [
            "--no-progress",
            "predict",
            "--model-dir",
            str(trained_run),
            "--csv",
            str(query_csv),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "2 left empty: invalid SMILES or no modality" in capsys.readouterr().out
    preds = pd.read_csv(out)
    assert list(preds["id"]) == ["a", "b", "c", "d"]  # input rows kept, in order
    assert {"T1_pred", "T2_pred", "deepfuse_status"} <= set(preds.columns)
    ok = preds["deepfuse_status"] == "ok"
    assert list(ok) == [True, False, True, False]
    assert preds.loc[~ok, ["T1_pred", "T2_pred"]].isna().all().all()
    assert np.isfinite(preds.loc[ok, ["T1_pred", "T2_pred"]].to_numpy()).all()
    # labels are ~10-18 (T1): predictions of a 2-epoch model must be in original units, not ~0
    assert preds.loc[ok, "T1_pred"].between(5, 25).all()


def test_predict_function_matches_model_predictions(trained_run: Path, query_csv: Path):
    import deepchem as dc

    from deepfuse_plugin import MultiModalFeaturizer, MultiModalTorchModel

    frame = predict_from_csv(str(trained_run), str(query_csv))
    record = json.loads((trained_run / RUN_FILE).read_text())
    model = MultiModalTorchModel.load(str(trained_run / "model"))
    X = MultiModalFeaturizer(model.modalities, progress=False).featurize(["CCOCC"])
    raw = model.predict(dc.data.NumpyDataset(X))
    expected = raw * np.array(record["normalization"]["y_stds"]) + np.array(
        record["normalization"]["y_means"]
    )
    np.testing.assert_allclose(
        frame.loc[0, ["T1_pred", "T2_pred"]].to_numpy(float), expected[0], rtol=1e-5
    )


def test_retrain_into_the_same_folder(trained_run: Path, regression_csv: Path, capsys):
    before = (trained_run / RUN_FILE).read_bytes()
    assert _train(regression_csv, trained_run, "--modalities", "ecfp") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (trained_run / RUN_FILE).read_bytes() == before  # refused before any change
    assert _train(regression_csv, trained_run, "--modalities", "ecfp", "--overwrite") == 0
    record = json.loads((trained_run / RUN_FILE).read_text())
    assert record["modalities"] == ["ecfp"]
    checkpoints = [p.name for p in (trained_run / "model").iterdir() if p.suffix == ".pt"]
    assert len(checkpoints) == 1


def test_predict_other_smiles_column(trained_run: Path, tmp_path: Path):
    csv = tmp_path / "other.csv"
    pd.DataFrame({"SMILES": ["CCO", "CCCN"]}).to_csv(csv, index=False)
    frame = predict_from_csv(str(trained_run), str(csv), smiles_column="SMILES")
    assert frame["deepfuse_status"].tolist() == ["ok", "ok"]


def test_predict_with_a_bare_model_folder(trained_run: Path, query_csv: Path, caplog):
    with caplog.at_level(logging.WARNING):
        frame = predict_from_csv(str(trained_run / "model"), str(query_csv), smiles_column="smi")
    assert "no y de-normalization" in caplog.text
    assert list(frame.columns[-3:]) == ["task0_pred", "task1_pred", "deepfuse_status"]
    with pytest.raises(WorkflowError, match="--smiles-column"):
        predict_from_csv(str(trained_run / "model"), str(query_csv))


@pytest.mark.parametrize("uncertainty", [None, "evidential"])
def test_classification_train_and_predict(classification_csv: Path, tmp_path: Path, uncertainty):
    out = tmp_path / "clf"
    code = main(
        [
            "--no-progress",
            "train",
            "--csv",
            str(classification_csv),
            "--smiles-column",
            "smiles",
            "--tasks",
            "active",
            "--mode",
            "classification",
            "--split",
            "random",
            "--modalities",
            "ecfp,graph",
            *TRAIN_ARGS,
            "--out",
            str(out),
            *(["--uncertainty", uncertainty] if uncertainty else []),
        ]
    )
    assert code == 0
    record = json.loads((out / RUN_FILE).read_text())
    assert record["normalization"] is None and "roc_auc" in record["metrics"]["test"]
    frame = predict_from_csv(str(out), str(classification_csv))
    assert frame["active_pred"].between(0, 1).all()
    if uncertainty:  # the Dirichlet std of P(active): a probability's std is at most 0.5
        assert record["uncertainty"] == {"kind": "evidential", "std_scales": None}
        assert frame["active_std"].between(0, 0.5, inclusive="neither").all()
    else:
        assert "active_std" not in frame and "uncertainty" not in record


def test_missing_column_is_a_clear_error(regression_csv: Path, tmp_path: Path, capsys):
    code = main(
        [
            "--no-progress",
            "train",
            "--csv",
            str(regression_csv),
            "--smiles-column",
            "SMILES",
            "--tasks",
            "T1",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'SMILES' not found" in err and "Available columns: ['name', 'smi', 'T1', 'T2']" in err
    code = main(
        [
            "--no-progress",
            "train",
            "--csv",
            str(regression_csv),
            "--smiles-column",
            "smi",
            "--tasks",
            "T1,T9",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2 and "'T9' not found" in capsys.readouterr().err


def test_predict_missing_column(trained_run: Path, tmp_path: Path, capsys):
    csv = tmp_path / "nosmiles.csv"
    pd.DataFrame({"structure": ["CCO"]}).to_csv(csv, index=False)
    code = main(["--no-progress", "predict", "--model-dir", str(trained_run), "--csv", str(csv)])
    assert code == 2
    err = capsys.readouterr().err
    assert "'smi' not found" in err and "['structure']" in err


def test_empty_csv(tmp_path: Path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(WorkflowError, match="empty"):
        read_csv_checked(str(empty), "smiles")
    header_only = tmp_path / "header.csv"
    header_only.write_text("smiles,y\n")
    with pytest.raises(WorkflowError, match="no rows"):
        read_csv_checked(str(header_only), "smiles", ["y"])
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(empty),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_bad_inputs(tmp_path: Path, capsys):
    csv = tmp_path / "nolabels.csv"
    pd.DataFrame({"smiles": ["CCO", "CCN"], "y": [np.nan, np.nan]}).to_csv(csv, index=False)
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
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "No labelled rows" in capsys.readouterr().err
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
                "--modalities",
                "ecfp,nope",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "Unknown modality 'nope'" in capsys.readouterr().err
    (tmp_path / "user" / "model").mkdir(parents=True)
    (tmp_path / "user" / "model" / "notes.txt").write_text("precious")
    good = tmp_path / "good.csv"
    pd.DataFrame({"smiles": ["CCO", "CCN", "CCC"], "y": [1.0, 2.0, 3.0]}).to_csv(good, index=False)
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(good),
                "--smiles-column",
                "smiles",
                "--tasks",
                "y",
                "--out",
                str(tmp_path / "user"),
            ]
        )
        == 2
    )
    assert "not a deepfuse model folder" in capsys.readouterr().err
    assert (tmp_path / "user" / "model" / "notes.txt").exists()
    assert main(["--no-progress", "predict", "--model-dir", str(tmp_path), "--csv", str(csv)]) == 2
    assert "not a deepfuse run folder" in capsys.readouterr().err
    assert main(["train"]) == 2  # argparse usage error -> exit code, no raise
    assert main(["--help"]) == 0


def test_model_names_resolve():
    from deepfuse_plugin import DynamicFusionModel

    assert resolve_model_class("dynamic") is DynamicFusionModel
    with pytest.raises(WorkflowError, match="Unknown model"):
        resolve_model_class("nonexistent")


def test_resume_continues_an_interrupted_training(regression_csv: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    with killed_after_epoch(1):
        _train(regression_csv, out)
    assert not (out / RUN_FILE).exists()
    # other settings: a clear error, and the resume point stays for the right command
    assert _train(regression_csv, out, "--resume", "--learning-rate", "0.01") == 2
    assert "learning_rate: 0.001 -> 0.01" in capsys.readouterr().err
    assert _train(regression_csv, out, "--resume") == 0
    training = json.loads((out / RUN_FILE).read_text())["training"]
    assert training["resumed_at_epochs"] == [1]
    assert [h["epoch"] for h in training["history"]] == [1, 2]


@pytest.fixture
def larger_regression_csv(tmp_path: Path) -> Path:
    """The 40 molecules three times (120 rows): a random split leaves 12 for validation."""
    from tests.cli.conftest import CLI_SMILES, _labels

    smiles = CLI_SMILES * 3
    t1, t2 = _labels(smiles)
    path = tmp_path / "larger.csv"
    pd.DataFrame({"smi": smiles, "T1": t1, "T2": t2}).to_csv(path, index=False)
    return path


def _std_by_hand(run: Path, smiles: list[str], factors: list[float]) -> np.ndarray:
    """The model's std (normalized units) x the label std x each row's factor."""
    import deepchem as dc

    from deepfuse_plugin import MultiModalFeaturizer, MultiModalTorchModel

    record = json.loads((run / RUN_FILE).read_text())
    model = MultiModalTorchModel.load(str(run / "model"), progress=False)
    dataset = dc.data.NumpyDataset(
        MultiModalFeaturizer(modalities=model.modalities, progress=False).featurize(smiles)
    )
    _, std = model.predict_uncertainty(dataset)
    return (
        std.reshape(len(smiles), -1)
        * np.asarray(record["normalization"]["y_stds"])
        * np.asarray(factors).reshape(-1, 1)
    )


def test_evidential_run_predicts_a_std_rescaled_per_input(
    larger_regression_csv: Path, tmp_path: Path, capsys
):
    from deepfuse_plugin import StdScales

    run = tmp_path / "run"
    assert (
        _train(
            larger_regression_csv,
            run,
            "--split",
            "random",
            "--modalities",
            "ecfp,selfies",
            "--uncertainty",
            "evidential",
        )
        == 0
    )
    assert "test errors within 1 std" in capsys.readouterr().out
    record = json.loads((run / RUN_FILE).read_text())
    entry = record["uncertainty"]
    assert entry["kind"] == "evidential" and entry["std_scales"] == "std_scales.json"
    assert set(entry["test_calibration"]) == {"as_predicted", "rescaled"}
    scales = StdScales.from_dict(json.loads((run / "std_scales.json").read_text()))
    assert list(scales.scales) == [("ecfp", "selfies"), ("ecfp",), ("selfies",)]
    # SELFIES cannot encode the dummy atom of "*CC": that row is predicted from ECFP alone,
    # and its std gets ECFP's factor
    query = tmp_path / "query.csv"
    pd.DataFrame({"smi": ["CCOCC", "*CC", BAD_SMILES]}).to_csv(query, index=False)
    preds = predict_from_csv(str(run), str(query))
    assert list(preds["deepfuse_status"]) == [
        "ok",
        "ok",
        "invalid SMILES: RDKit cannot parse this SMILES",
    ]
    assert preds.loc[2, ["T1_std", "T2_std"]].isna().all()
    expected = _std_by_hand(
        run, ["CCOCC", "*CC"], [scales.scales[("ecfp", "selfies")], scales.scales[("ecfp",)]]
    )
    np.testing.assert_allclose(preds.loc[:1, ["T1_std", "T2_std"]].to_numpy(), expected, rtol=1e-5)


def test_a_row_without_any_modality_gets_a_status_not_a_prediction(
    larger_regression_csv: Path, tmp_path: Path, caplog
):
    run = tmp_path / "run"
    assert (
        _train(
            larger_regression_csv,
            run,
            "--split",
            "random",
            "--modalities",
            "selfies",
            "--uncertainty",
            "evidential",
        )
        == 0
    )
    query = tmp_path / "query.csv"
    pd.DataFrame({"smi": ["CCOCC", "*CC"]}).to_csv(query, index=False)
    with caplog.at_level(logging.WARNING):
        preds = predict_from_csv(str(run), str(query))
    assert preds.loc[0, "deepfuse_status"] == "ok"
    assert preds.loc[1, "deepfuse_status"].startswith("no modality could be computed: selfies:")
    assert preds.loc[1, ["T1_pred", "T2_pred", "T1_std", "T2_std"]].isna().all()
    assert "none of the model's modalities could be computed (rows [1]" in caplog.text


def test_evidential_run_without_enough_validation_keeps_the_std_as_predicted(
    regression_csv: Path, query_csv: Path, tmp_path: Path, caplog
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "std_scales.json").write_text("{}")  # an earlier run's factors must not survive
    with caplog.at_level(logging.WARNING):
        assert _train(regression_csv, run, "--uncertainty", "evidential", "--overwrite") == 0
    assert "No std factors fitted" in caplog.text and "Too few labelled entries" in caplog.text
    assert not (run / "std_scales.json").exists()
    assert json.loads((run / RUN_FILE).read_text())["uncertainty"]["std_scales"] is None
    preds = predict_from_csv(str(run), str(query_csv))
    ok = (preds["deepfuse_status"] == "ok").to_numpy()
    expected = _std_by_hand(run, list(preds.loc[ok, "smi"]), [1.0] * int(ok.sum()))
    np.testing.assert_allclose(preds.loc[ok, ["T1_std", "T2_std"]].to_numpy(), expected, rtol=1e-5)


def test_predict_uses_the_input_limits_the_run_was_trained_with(
    regression_csv: Path, tmp_path: Path
):
    from deepfuse_plugin.limits import InputLimits
    from deepfuse_plugin.workflows import train_from_csv

    limits = InputLimits(max_smiles_length=12)
    record = train_from_csv(
        str(regression_csv),
        "smi",
        ["T1", "T2"],
        str(tmp_path / "run"),
        split="random",
        modalities=["ecfp"],
        epochs=1,
        eval_every=1,
        batch_size=16,
        featurizer_kwargs={"limits": limits},
        progress=False,
    )
    assert record["featurizer"]["limits"]["max_smiles_length"] == 12
    # training skips what its featurizer refuses (a row over the limit is reported, not a crash)
    assert any("max_smiles_length" in row for row in record["data"]["invalid_smiles"])
    query = tmp_path / "query.csv"
    pd.DataFrame({"smi": ["CCOCC", "CC(=O)Oc1ccccc1C(=O)O"]}).to_csv(query, index=False)
    preds = predict_from_csv(str(tmp_path / "run"), str(query))
    assert preds.loc[0, "deepfuse_status"] == "ok"
    assert preds.loc[1, "deepfuse_status"].startswith("invalid SMILES: ")
    assert "max_smiles_length" in preds.loc[1, "deepfuse_status"]
    # a record without limits (an older deepfuse, no checksums) predicts with the defaults
    path = tmp_path / "run" / RUN_FILE
    old = json.loads(path.read_text())
    del old["featurizer"]["limits"], old["integrity"]
    path.write_text(json.dumps(old))
    assert (predict_from_csv(str(tmp_path / "run"), str(query))["deepfuse_status"] == "ok").all()


def test_schedule_options_reach_the_model_and_win_over_params(regression_csv: Path, tmp_path: Path):
    from deepfuse_plugin import MultiModalTorchModel

    params = tmp_path / "best_params.json"
    params.write_text(json.dumps({"params": {"lr_schedule": "cosine", "grad_clip": 5.0}}))
    out = tmp_path / "run"
    extra = ["--lr-schedule", "onecycle", "--early-stopping", "1", "--params", str(params)]
    assert _train(regression_csv, out, *extra) == 0
    model = MultiModalTorchModel.load(str(out / "model"))
    assert (model.lr_schedule, model.grad_clip, model.early_stopping) == ("onecycle", 5.0, 1)
    training = json.loads((out / RUN_FILE).read_text())["training"]
    assert training["best_epoch"] in (1, 2)
