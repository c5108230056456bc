"""Resumable training: a run interrupted after an epoch and continued from its resume point trains
the same epochs as a run trained in one go (weights, validation history, selected epoch)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from deepfuse_plugin import workflows as wf
from deepfuse_plugin.train import resume
from tests.conftest import killed_after_epoch

EPOCHS = 4


def _train(model, dataset, save_dir: str, resumable: bool, epochs: int = EPOCHS):
    train, valid = dataset.select(list(range(16))), dataset.select(list(range(16, 24)))
    return wf.train_with_validation(
        model,
        train,
        valid,
        epochs,
        1,
        [],
        "regression",
        save_dir,
        progress=False,
        resumable=resumable,
    )


def _whole_and_resumed(build: Callable[[str], Any], dataset, tmp_path, stop_after: int):
    """Train ``build(folder)`` in one go, and once more killed after epoch ``stop_after`` and
    continued by a new model object: ``(whole_model, whole_result, resumed_model, result)``."""
    np.random.seed(1)
    whole = build(str(tmp_path / "whole"))
    expected = _train(whole, dataset, str(tmp_path / "whole"), resumable=False)

    folder = str(tmp_path / "resumed")
    np.random.seed(1)
    with killed_after_epoch(stop_after):
        _train(build(folder), dataset, folder, resumable=True)
    state = resume.read_state(folder)
    assert state is not None and state.epochs_done == stop_after
    fresh = build(folder)
    np.random.seed(123), torch.manual_seed(123)  # the resume point brings back its own states
    return whole, expected, fresh, _train(fresh, dataset, folder, resumable=True)


def _scores(result) -> list[float]:
    return [h["score"] for h in result.history]


@pytest.fixture
def dynamic(small_featurizer, tiny_model_kwargs):
    """``dynamic(model_dir, **overrides)``: a tiny DynamicFusionModel, the same initial weights."""
    import deepfuse_plugin as dfp

    def build(model_dir: str, **overrides):
        torch.manual_seed(0)
        return dfp.DynamicFusionModel(
            n_tasks=1,
            modalities=small_featurizer.modalities,
            model_dir=model_dir,
            **{**tiny_model_kwargs, **overrides},
        )

    return build


def test_resumed_dynamic_fusion_run_matches_one_uninterrupted_run(tiny_dataset, dynamic, tmp_path):
    whole, expected, fresh, result = _whole_and_resumed(dynamic, tiny_dataset, tmp_path, 2)

    assert result.resumed_at == [2]
    assert result.best_epoch == expected.best_epoch
    assert fresh.epochs_started == result.best_epoch  # the kept checkpoint is that epoch's
    np.testing.assert_allclose(_scores(result), _scores(expected), rtol=1e-5)
    want = whole.model.state_dict()
    for name, value in fresh.model.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=1e-5, atol=1e-6, msg=name)
    assert result.train_time_s > 0
    leftovers = {resume.STATE_FILE, *resume.SLOTS} & set(os.listdir(tmp_path / "resumed"))
    assert not leftovers  # a finished run leaves only its best checkpoint


def test_deepchem_baseline_resumes_too(tmp_path):
    """The DeepChem peers of the benchmark go through the same resumable training."""
    import deepchem as dc

    rng = np.random.default_rng(0)
    dataset = dc.data.NumpyDataset(
        rng.normal(size=(24, 16)),
        rng.normal(size=(24, 1)),
        ids=np.array([f"m{i}" for i in range(24)]),
    )

    def mlp(folder: str):
        torch.manual_seed(0)
        return dc.models.MultitaskRegressor(
            1, 16, layer_sizes=[32], dropouts=0.5, batch_size=8, model_dir=folder
        )

    whole, expected, fresh, result = _whole_and_resumed(mlp, dataset, tmp_path, 3)
    assert result.resumed_at == [3]
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(_scores(result), _scores(expected), rtol=1e-5)
    np.testing.assert_allclose(fresh.predict(dataset), whole.predict(dataset), rtol=1e-5)


def test_resume_point_of_another_plan_is_refused(tiny_dataset, dynamic, tmp_path):
    folder = str(tmp_path / "run")
    with killed_after_epoch(1):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True)
    with pytest.raises(resume.ResumeMismatchError, match="epochs"):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True, epochs=EPOCHS + 1)
    with pytest.raises(resume.ResumeMismatchError, match=r"dropout: 0\.1 -> 0\.3"):
        _train(dynamic(folder, dropout=0.3), tiny_dataset, folder, resumable=True)
    other_rows = tiny_dataset.select(list(range(1, 24)) + [0])
    with pytest.raises(resume.ResumeMismatchError, match="train_ids"):
        _train(dynamic(folder), other_rows, folder, resumable=True)


def test_fresh_model_dir_clears_an_unfinished_run(tiny_dataset, dynamic, tmp_path):
    folder = str(tmp_path / "run")
    with killed_after_epoch(1):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True)
    wf.fresh_model_dir(folder)
    assert os.listdir(folder) == []


def test_a_resume_point_that_cannot_be_written_does_not_stop_training(
    tiny_dataset, dynamic, tmp_path, monkeypatch, caplog
):
    """A full disk while writing epoch 2's point: training finishes, the older point stays valid."""
    real_states, calls = resume._random_states, []

    def disk_full_at_epoch_2(model):
        calls.append(1)
        if len(calls) == 2:  # after the slot's checkpoint, before its random states
            raise OSError(28, "No space left on device")
        return real_states(model)

    monkeypatch.setattr(resume, "_random_states", disk_full_at_epoch_2)
    folder = str(tmp_path / "run")
    with killed_after_epoch(3):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True)
    assert "could not write the resume point of epoch 2" in caplog.text
    assert "continues from epoch 1" in caplog.text
    assert resume.read_state(folder).epochs_done == 3  # epoch 3's point was written again
    assert oct(os.stat(os.path.join(folder, resume.STATE_FILE)).st_mode & 0o777) == "0o644"


class _Planted:
    """Unpickling this creates ``marker``: a stand-in for code planted in a resume point."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("planted", ["legacy_pkl", "tensor_file"])
def test_planted_pickles_in_a_resume_point_are_refused_not_run(
    tiny_dataset, dynamic, tmp_path, planted
):
    import pickle

    from deepfuse_plugin.errors import CorruptCheckpointError

    folder = str(tmp_path / "run")
    with killed_after_epoch(1):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True)
    slot = os.path.join(folder, resume.read_state(folder).slot)
    assert sorted(f for f in os.listdir(slot) if f.startswith("random_state")) == [
        resume.RNG_JSON,
        resume.RNG_TENSORS,
    ]
    marker = str(tmp_path / "pwned")
    if planted == "legacy_pkl":  # what older versions wrote, with a payload
        for name in (resume.RNG_JSON, resume.RNG_TENSORS):
            os.remove(os.path.join(slot, name))
        with open(os.path.join(slot, resume.LEGACY_RNG_FILE), "wb") as fh:
            pickle.dump(_Planted(marker), fh)
        match = "predates safe resume state.*without --resume"
    else:
        torch.save({"torch": _Planted(marker)}, os.path.join(slot, resume.RNG_TENSORS))
        match = "cannot be read safely"
    with pytest.raises(CorruptCheckpointError, match=match):
        _train(dynamic(folder), tiny_dataset, folder, resumable=True)
    assert not os.path.exists(marker)


def test_random_states_round_trip_through_safe_files(tmp_path):
    import random

    class Plain:  # a model without a learning-rate schedule
        _lr_schedule = None

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.normal()  # a cached Gaussian in NumPy's state
    resume._write_random_states(Plain(), str(tmp_path))
    expected = (random.random(), np.random.normal(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    resume._set_random_states(Plain(), *resume._read_random_states(str(tmp_path)))
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
