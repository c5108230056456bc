"""Hyper-parameter search: trials on validation only, resumable study, best settings written."""

import json

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from deepfuse_plugin import MultiModalDataset, MultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.train.hpopt import (  # noqa: E402
    load_best_params,
    read_best_params,
    run_hpopt,
    suggest_settings,
)

SMILES = [
    "CCO",
    "CCN",
    "c1ccccc1",
    "CC(=O)O",
    "CCCl",
    "c1ccncc1",
    "CCOC",
    "CC(C)O",
    "C1CCCCC1",
    "CC#N",
    "OCCO",
    "c1ccc(O)cc1",
    "CNC",
    "CCCC",
    "CC(=O)N",
    "c1ccsc1",
]


@pytest.fixture(scope="module")
def data():
    feat = MultiModalFeaturizer(["ecfp"], ecfp_size=64, progress=False)
    y = np.array([len(s) for s in SMILES], dtype=float)
    ds = MultiModalDataset.from_smiles(SMILES, feat, y=(y - y.mean()) / y.std())
    return feat, ds.select(range(12)), ds.select(range(12, 16))


def test_search_completes_trials_writes_results_and_resumes(data, tmp_path, monkeypatch):
    feat, train, valid = data
    from deepfuse_plugin.train import hpopt

    monkeypatch.setitem(hpopt.SEARCH_SPACES, "early", lambda trial: {})
    space = hpopt._common_space
    monkeypatch.setattr(hpopt, "_common_space", lambda trial: {**space(trial), "epochs": 2})
    first = run_hpopt(
        train,
        valid,
        [],
        "regression",
        feat.modalities,
        1,
        tmp_path,
        model="early",
        n_trials=2,
        progress=False,
    )
    assert first.n_trials == 2 and first.score_name == "rmse"
    for name in ("study.db", "trials.csv", "trials.md", "best_params.json", "history.png"):
        assert (tmp_path / name).is_file()
    again = run_hpopt(
        train,
        valid,
        [],
        "regression",
        feat.modalities,
        1,
        tmp_path,
        model="early",
        n_trials=3,
        progress=False,
    )
    assert again.n_trials == 3  # continued the stored study: one more trial, not three
    saved = json.loads((tmp_path / "best_params.json").read_text())
    assert saved["validation_score"] == pytest.approx(again.best_score)
    assert load_best_params(tmp_path / "best_params.json") == again.best_params
    assert read_best_params(tmp_path / "best_params.json")["eval_every"] == 1


def test_dynamic_space_keeps_mask_end_within_range():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        settings = suggest_settings(study.ask(), "dynamic")
        assert 0 <= settings["mask_start"] <= settings["mask_end"] < 1


def test_best_params_file_must_hold_params(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="best_params"):
        load_best_params(path)


@pytest.mark.parametrize("interval", [0, True, 2.5, "2"])
def test_best_params_eval_every_must_be_a_positive_whole_number(tmp_path, interval):
    path = tmp_path / "best_params.json"
    path.write_text(json.dumps({"params": {"epochs": 3}, "eval_every": interval}))
    with pytest.raises(
        ValueError, match=f"{path.name}: eval_every must be >= 1 \\(a whole number\\)"
    ):
        read_best_params(path)
