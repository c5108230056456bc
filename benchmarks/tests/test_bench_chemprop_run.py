"""chemprop v2 really installed and run: ``run_chemprop`` on a tiny split, and the chemprop peer
in ``deepfuse-bench moleculenet`` next to a DeepChem baseline.

The session fixture creates ``<repo>/.venv-chemprop`` (or ``$DEEPFUSE_CHEMPROP_VENV``) when it is
missing: torch 2.13.0 (CPU) then chemprop 2.3.1, measured at 1-2 minutes from the local package
mirror, within CI's budget. If that fails the tests are skipped locally, with pip's output as the
reason, and fail under ``CI=true`` (like the shared-data tests), so CI cannot pass without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bench_moleculenet import RUN_KEYS

from deepfuse_bench import chemprop as cp
from deepfuse_bench import chemprop_env as cpenv
from deepfuse_bench import moleculenet as mn
from tests.cli.conftest import CLI_SMILES

REPO_ROOT = Path(__file__).resolve().parents[2]
TOX_TASKS = ["NR-AR", "SR-p53"]


@pytest.fixture(scope="session")
def chemprop_venv() -> Path:
    venv = Path(os.environ.get(cpenv.VENV_ENV) or REPO_ROOT / cpenv.DEFAULT_VENV)
    try:
        cp.ensure_chemprop_env(venv)
    except cpenv.ChempropEnvError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"chemprop's environment could not be created: {err}")
        pytest.skip(f"chemprop's environment could not be created: {err}")
    return venv


def _tiny_split(folder: Path) -> list[Path]:
    """60 molecules (the 40 CLI ones + 20 repeated), two classification tasks with missing
    labels, split 40/10/10."""
    smiles = CLI_SMILES + CLI_SMILES[:20]
    frame = pd.DataFrame({"smiles": smiles})
    frame[TOX_TASKS[0]] = [float(("N" in s) or ("O" in s)) for s in smiles]
    frame[TOX_TASKS[1]] = [float(len(s) > 8) if i % 4 else np.nan for i, s in enumerate(smiles)]
    paths = []
    for part, rows in (("train", slice(0, 40)), ("valid", slice(40, 50)), ("test", slice(50, 60))):
        paths.append(folder / f"{part}.csv")
        frame.iloc[rows].to_csv(paths[-1], index=False)
    return paths


def test_run_chemprop_on_a_tiny_multitask_split(chemprop_venv, tmp_path):
    train, valid, test = _tiny_split(tmp_path)
    result = cp.run_chemprop(
        train,
        valid,
        test,
        TOX_TASKS,
        "classification",
        epochs=2,
        seed=0,
        workdir=tmp_path / "work",
        executable=chemprop_venv / "bin" / "chemprop",
    )
    assert result.valid_pred.shape == (10, 2) and result.test_pred.shape == (10, 2)
    assert ((result.test_pred > 0) & (result.test_pred < 1)).all()
    assert result.test_smiles == pd.read_csv(test)["smiles"].tolist()
    assert (result.n_train, result.epochs, result.epochs_run) == (40, 2, 2)
    assert len(result.epoch_times_s) == 2 and 0 < sum(result.epoch_times_s) <= result.train_time_s
    assert result.train_time_s < result.train_process_s
    assert result.seconds_per_epoch > 0 and result.train_molecules_per_s > 0
    assert result.best_epoch in (1, 2) and len(result.history) == 2
    assert result.peak_rss_mib and result.peak_rss_mib > 50
    assert result.hyperparameters["message-hidden-dim"] == [300]  # chemprop's default
    assert result.hyperparameters["epochs"] == 2
    assert result.commands[0][2] == "train" and result.commands[1][1] == "predict"
    # kept by the best validation ROC-AUC, logged by chemprop per epoch
    assert result.hyperparameters["tracking-metric"] == "roc"
    assert all(h["score"] is None or 0 <= h["score"] <= 1 for h in result.history)
    assert result.model_path.exists()


def test_bench_runs_chemprop_next_to_a_deepchem_baseline(
    chemprop_venv, tiny_molnet_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv(cpenv.VENV_ENV, str(chemprop_venv))
    payload = mn.run_moleculenet_bench(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=2,
        models=["dc_rf", "chemprop"],
        out=str(tmp_path),
        progress=False,
        echo=lambda _: None,
    )
    runs = {r["model"]: r for r in payload["runs"]}
    chemprop = runs["chemprop"]
    assert RUN_KEYS <= set(chemprop) and "skipped" not in chemprop
    assert chemprop["kind"] == "chemprop" and chemprop["epochs"] == 2
    # the same rows, scored by the same code, in original units
    assert (
        chemprop["test"]["n"]
        == runs["dc_rf"]["test"]["n"]
        == payload["datasets"]["delaney"]["n_test"]
    )
    assert (
        np.isfinite(chemprop["test_metric"]) and chemprop["test_metric"] == chemprop["test"]["rmse"]
    )
    assert chemprop["hyperparameters"]["chemprop"] == cpenv.CHEMPROP_VERSION
    assert chemprop["train_time_s"] > 0 and chemprop["peak_rss_delta_mib"] > 0
    assert chemprop["chemprop"]["commands"][0].split()[2] == "train"
    assert "--tracking-metric rmse" in chemprop["chemprop"]["commands"][0]
    assert chemprop["selection"].startswith("best validation RMSE (chemprop")
    assert payload["environment"]["chemprop"]["rdkit"]
    text = (tmp_path / "moleculenet.md").read_text()
    assert "and chemprop v2" in text and "- chemprop v2 (`chemprop`)" in text
    assert "| dc_rf | chemprop |" in text
