"""Distributed training on Lightning (deepfuse_plugin.train.lightning): the Lightning path is the
model's own training math, DDP on 2 CPU processes (gloo) equals one process on the same global
batch, and what DDP keeps restores into the ordinary model."""

from __future__ import annotations

import json
import os
import shutil

import deepchem as dc
import numpy as np
import pytest
import torch

import deepfuse_plugin as dfp
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.train import resume
from deepfuse_plugin.train.lightning import RESULT_FILE, fit_distributed, lightning_strategy
from tests.conftest import killed_after_epoch

pytestmark = pytest.mark.ddp

N_ROWS = 16


def _datasets(featurized):
    y = np.random.default_rng(3).normal(size=(len(featurized), 1))
    train = dc.data.NumpyDataset(featurized[:N_ROWS], y[:N_ROWS])
    valid = dc.data.NumpyDataset(featurized[N_ROWS:], y[N_ROWS:])
    return train, valid


def _model(modalities, model_dir, kwargs, **overrides):
    """An early-fusion model without dropout anywhere (the encoders have their own) and plain
    gradient descent: nothing random in training, and nothing that turns the rounding of a
    batch summed in another order into a visible difference (Adam's first step moves every
    weight by about the learning rate, whatever the size of its gradient)."""
    torch.manual_seed(0)
    encoders = {
        kind: dict(kwargs["encoder_options"].get(kind, {}), dropout=0.0)
        for kind in ("vector", "graph", "sequence")
    }
    settings = dict(
        kwargs,
        dropout=0.0,
        encoder_options=encoders,
        optimizer=dc.models.optimizers.GradientDescent(learning_rate=0.05),
        model_dir=str(model_dir),
        **overrides,
    )
    return dfp.EarlyFusionModel(1, modalities, fusion_hidden=32, **settings)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def _assert_same_weights(a, b, atol=1e-5):
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=atol, rtol=1e-4, msg=name)


def test_lightning_path_is_the_models_own_training(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    """One process, one batch per epoch: the same steps as the model's own ``fit`` (batch order
    within the batch does not change a mean loss), with its learning-rate schedule and
    gradient clipping; and the curriculum counter advances per epoch."""
    train, _ = _datasets(featurized)
    settings = dict(batch_size=N_ROWS, lr_schedule="cosine", grad_clip=0.5)
    reference = _model(small_featurizer.modalities, tmp_path / "fit", tiny_model_kwargs, **settings)
    reference.fit(train, nb_epoch=3)
    model = _model(small_featurizer.modalities, tmp_path / "pl", tiny_model_kwargs, **settings)
    result = fit_distributed(model, train, epochs=3, accelerator="cpu", devices=1, strategy="auto")
    assert result.best_epoch == 3  # no validation split: the last epoch is kept
    assert model.epochs_started == reference.epochs_started == 3
    assert model._global_step == reference._global_step == 3
    _assert_same_weights(_weights(reference), _weights(model))
    # the schedule ran: the rate ends where DeepChem's fit left it
    assert model._pytorch_optimizer.param_groups[0]["lr"] == pytest.approx(
        reference._pytorch_optimizer.param_groups[0]["lr"]
    )


def test_ddp_on_two_processes_equals_one_process_and_restores(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    """2 CPU processes (gloo, 4 rows each of a global batch of 8) against one process (8 rows):
    the same weights, the same validation history and kept epoch; the DDP checkpoint loads into
    the ordinary model and predicts the same."""
    train, valid = _datasets(featurized)
    modalities = small_featurizer.modalities
    one = _model(modalities, tmp_path / "one", tiny_model_kwargs, batch_size=8)
    two = _model(modalities, tmp_path / "two", tiny_model_kwargs, batch_size=8)
    _assert_same_weights(_weights(one), _weights(two), atol=0)
    run = dict(epochs=2, eval_every=1, accelerator="cpu", seed=5)
    single = fit_distributed(one, train, valid, devices=1, strategy="auto", **run)
    ddp = fit_distributed(two, train, valid, devices=2, strategy="ddp_fork", **run)

    assert ddp.best_epoch == single.best_epoch
    assert [h["epoch"] for h in ddp.history] == [1, 2]
    np.testing.assert_allclose(
        [h["score"] for h in ddp.history], [h["score"] for h in single.history], rtol=1e-4
    )
    _assert_same_weights(_weights(one), _weights(two))
    assert two.epochs_started == ddp.best_epoch  # the kept checkpoint's epoch counter
    np.testing.assert_allclose(two.predict(valid), one.predict(valid), rtol=1e-4, atol=1e-5)

    loaded = dfp.MultiModalTorchModel.load(str(tmp_path / "two"), progress=False)
    np.testing.assert_allclose(loaded.predict(valid), two.predict(valid), rtol=1e-6)
    assert not (tmp_path / "two" / RESULT_FILE).exists()  # the hand-over file is removed


def _stopped_after_epoch(epoch):
    """The run inside the block dies (rank 0 raises) right after writing the resume point of
    ``epoch``; forked processes inherit the patch, and the launcher sees them fail."""
    return killed_after_epoch(epoch, RuntimeError("killed"), Exception, "killed|exit")


def test_interrupted_ddp_run_resumes_to_the_uninterrupted_weights(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    """4 epochs on 2 processes, killed after epoch 2 and resumed on 2: the uninterrupted run's
    weights, history and kept epoch; resumed again in one process it finishes there too."""
    train, valid = _datasets(featurized)
    modalities = small_featurizer.modalities
    run = dict(epochs=4, eval_every=1, accelerator="cpu", seed=5, resumable=True)
    ddp = dict(run, devices=2, strategy="ddp_fork")

    def model(folder):
        return _model(modalities, tmp_path / folder, tiny_model_kwargs, batch_size=8)

    whole = model("whole")
    full = fit_distributed(whole, train, valid, **ddp)
    assert resume.read_state(str(tmp_path / "whole")) is None  # cleared when the run ends
    with _stopped_after_epoch(2):
        fit_distributed(model("cut"), train, valid, **ddp)
    saved = resume.read_state(str(tmp_path / "cut"))
    assert saved is not None and saved.epochs_done == 2
    with pytest.raises(resume.ResumeMismatchError, match="epochs"):  # another plan
        fit_distributed(model("cut"), train, valid, **dict(ddp, epochs=5))
    shutil.copytree(tmp_path / "cut", tmp_path / "cut_one")  # the same point, for one process

    resumed_model = model("cut")
    resumed = fit_distributed(resumed_model, train, valid, **ddp)
    assert resumed.resumed_at == [2]
    assert resumed.best_epoch == full.best_epoch
    np.testing.assert_allclose(
        [h["score"] for h in resumed.history], [h["score"] for h in full.history], rtol=1e-4
    )
    _assert_same_weights(_weights(whole), _weights(resumed_model))
    assert resume.read_state(str(tmp_path / "cut")) is None

    one = fit_distributed(model("cut_one"), train, valid, devices=1, strategy="auto", **run)
    assert one.resumed_at == [2]
    assert [h["epoch"] for h in one.history] == [1, 2, 3, 4]
    assert one.history[:2] == resumed.history[:2]  # the epochs trained on 2 processes


def test_a_run_stopped_after_its_last_epoch_trains_nothing_more(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    """Killed between the last resume point and the end: resuming keeps the kept epoch, trains
    nothing and removes the resume point."""
    train, valid = _datasets(featurized)
    run = dict(epochs=2, eval_every=1, accelerator="cpu", devices=1, strategy="auto")
    folder = tmp_path / "m"

    def model():
        return _model(small_featurizer.modalities, folder, tiny_model_kwargs, batch_size=8)

    with _stopped_after_epoch(2):
        fit_distributed(model(), train, valid, resumable=True, **run)
    saved = resume.read_state(str(folder))
    assert saved is not None and saved.epochs_done == 2
    resumed = model()
    result = fit_distributed(resumed, train, valid, resumable=True, **run)
    assert result.resumed_at == [2] and result.history == saved.result.history
    assert result.best_epoch == saved.result.best_epoch
    assert resume.read_state(str(folder)) is None
    kept = dfp.MultiModalTorchModel.load(str(folder), progress=False)
    np.testing.assert_allclose(resumed.predict(valid), kept.predict(valid), rtol=1e-6)


def test_settings_are_checked_and_ddp_tolerates_unused_parameters(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    train, _ = _datasets(featurized)
    model = _model(small_featurizer.modalities, tmp_path / "m", tiny_model_kwargs)
    with pytest.raises(InvalidSettingError, match="epochs"):
        fit_distributed(model, train, epochs=0)
    with pytest.raises(InvalidSettingError, match="devices"):
        fit_distributed(model, train, epochs=1, devices=0)
    assert lightning_strategy("ddp") == "ddp_find_unused_parameters_true"
    assert lightning_strategy("fsdp") == "fsdp"


def test_every_process_trains_with_the_callers_thread_count(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path, monkeypatch
):
    """Lightning's launchers would give each process cores / processes threads (2 for one
    process on 2 cores); deepfuse keeps the caller's (``--threads``, 1 by default)."""
    from deepfuse_plugin.train.lightning import MultiModalLightningModule

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = tmp_path / "threads"

    def record_threads(module):
        seen.write_text(str(torch.get_num_threads()))  # in the forked training process

    monkeypatch.setattr(MultiModalLightningModule, "on_train_start", record_threads, raising=False)
    train, _ = _datasets(featurized)
    model = _model(small_featurizer.modalities, tmp_path / "m", tiny_model_kwargs, batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit_distributed(model, train, epochs=1, devices=1, strategy="ddp_fork")
    finally:
        torch.set_num_threads(threads)
    assert seen.read_text() == "1"
    assert "OMP_NUM_THREADS" not in os.environ


def _csv(path, smiles):
    y = np.random.default_rng(0).normal(size=len(smiles))
    path.write_text("smi,T1\n" + "".join(f"{s},{v:.4f}\n" for s, v in zip(smiles, y)))
    return str(path)


def _train_args(csv, out, *extra):
    return [
        "--no-progress",
        "train",
        "--csv",
        csv,
        "--smiles-column",
        "smi",
        "--tasks",
        "T1",
        "--model",
        "early",
        "--split",
        "random",
        "--modalities",
        "ecfp",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--batch-size",
        "8",
        "--out",
        out,
        *extra,
    ]


def test_deepfuse_train_devices_2_writes_an_ordinary_run(smiles, tmp_path, capsys):
    from deepfuse_plugin.cli import main
    from deepfuse_plugin.workflows import predict_from_csv

    csv = _csv(tmp_path / "data.csv", smiles)
    out = str(tmp_path / "run")
    assert main(_train_args(csv, out, "--devices", "2")) == 0
    record = json.loads((tmp_path / "run" / "deepfuse_run.json").read_text())
    assert record["training"]["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in record["training"]["history"]] == [1, 2]
    assert not list((tmp_path / "run" / "model").glob(RESULT_FILE))
    predictions = predict_from_csv(out, csv, smiles_column="smi", progress=False)
    assert np.isfinite(predictions["T1_pred"].to_numpy()).all()
    # more than one node starts the command on every node: only --strategy ddp joins them
    nodes = str(tmp_path / "nodes")
    assert main(_train_args(csv, nodes, "--devices", "2", "--num-nodes", "2")) == 2
    assert "--num-nodes 2 needs --strategy ddp" in capsys.readouterr().err
    assert not (tmp_path / "nodes").exists()


def test_deepfuse_train_devices_2_resumes_an_interrupted_run(smiles, tmp_path):
    from deepfuse_plugin.cli import main

    csv = _csv(tmp_path / "data.csv", smiles)
    out = tmp_path / "run"
    args = _train_args(csv, str(out), "--devices", "2", "--epochs", "3")
    with _stopped_after_epoch(1):
        main(args)
    assert not out.exists()  # the run so far waits in its staging folder
    assert main([*args, "--resume"]) == 0
    record = json.loads((out / "deepfuse_run.json").read_text())
    assert record["training"]["resumed_at_epochs"] == [1]
    assert [h["epoch"] for h in record["training"]["history"]] == [1, 2, 3]
    assert not list(tmp_path.glob("*.deepfuse-partial"))


def test_another_rank_of_a_multi_node_run_writes_nothing(smiles, tmp_path, monkeypatch):
    """Global rank 5 of ``--num-nodes 2 --devices 4 --strategy ddp`` (node 1, local rank 1, as
    srun/torchrun/Lightning set it): it trains in a private folder (here fit_distributed is
    replaced), does not refuse an ``out`` that rank 0 has already filled, and writes nothing
    there or next to it."""
    from deepfuse_plugin.train import lightning
    from deepfuse_plugin.train.result import TrainingResult
    from deepfuse_plugin.workflows import train_from_csv

    csv = _csv(tmp_path / "data.csv", smiles)
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "deepfuse_run.json").write_text("{}")  # rank 0's run, already there
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, value in (("LOCAL_RANK", "1"), ("NODE_RANK", "1"), ("WORLD_SIZE", "8")):
        monkeypatch.setenv(name, value)
    trained_in = []

    def fit(model, train, valid, epochs, eval_every, transformers, save_dir, **settings):
        trained_in.append(save_dir)
        assert settings["num_nodes"] == 2 and settings["strategy"] == "ddp"
        return TrainingResult(1, 0.5, "rmse", [{"epoch": 1, "score": 0.5}])

    monkeypatch.setattr(lightning, "fit_distributed", fit)
    distributed = dict(accelerator="cpu", devices=4, num_nodes=2, strategy="ddp")
    assert lightning.process_rank(**distributed) == 5
    record = train_from_csv(
        csv,
        "smi",
        ["T1"],
        str(out),
        model="early",
        split="random",
        modalities=["ecfp"],
        epochs=1,
        progress=False,
        distributed=distributed,
    )
    assert record["rank"] == 5 and record["training"]["best_epoch"] == 1
    assert not trained_in[0].startswith(str(tmp_path))
    assert not os.path.exists(trained_in[0])  # the private folder is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in out.iterdir()) == ["deepfuse_run.json", "model"]


@pytest.mark.slow
def test_deepfuse_train_strategy_ddp_reruns_the_command_and_rank_0_writes(smiles, tmp_path):
    """``--strategy ddp --devices 2``: Lightning re-runs the command for rank 1 (as srun does on
    another node); one run folder comes out, as with ddp_fork."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    csv = _csv(tmp_path / "data.csv", smiles)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    args = _train_args(csv, str(out), "--devices", "2", "--strategy", "ddp")
    done = subprocess.run(
        [sys.executable, "-m", "deepfuse_plugin.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1: training done" in done.stderr
    record = json.loads((out / "deepfuse_run.json").read_text())
    assert [h["epoch"] for h in record["training"]["history"]] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "run"]
