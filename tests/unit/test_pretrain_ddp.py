"""Pretraining under Lightning (deepfuse_plugin.pretrained._lightning): one Lightning process is the
one-process loop, 2 CPU processes (gloo) train the same encoders on the same global batch, resume
points cross between the two, and only global rank 0 writes."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch

from deepfuse_plugin import MultiModalFeaturizer
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.pretrained import PretrainingConfig, load_encoders, pretrain_encoders
from deepfuse_plugin.pretrained._lightning import EpochShare
from tests.conftest import SMILES

pytestmark = pytest.mark.ddp

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork-started processes"
)

#: The targets term alone (a mean over molecules) and no dropout: nothing in a step depends on
#: how the batch is split over processes, so 2 processes must train what one does. Contrastive
#: and relational terms take negatives from a process's own share (4 molecules, not 8), and
#: masks are drawn per share: with those, 2 processes train a different (equally valid) model.
SPLIT_INVARIANT = dict(
    loss_weights={"contrastive": 0.0, "relational": 0.0, "masked": 0.0, "targets": 1.0},
    encoder_options={kind: {"dropout": 0.0} for kind in ("vector", "graph", "sequence")},
)


@pytest.fixture(scope="module")
def corpus():
    """The 24 test molecules: 19 to train on (2 global batches of 8), 5 to validate."""
    feat = MultiModalFeaturizer(
        ["ecfp", "smiles", "descriptors"], ecfp_size=64, max_length=24, progress=False
    )
    return feat.modalities[:2], feat.modalities[2:], feat.featurize(SMILES)


def _config(**overrides):
    settings = dict(
        epochs=2, batch_size=8, encoder_dim=16, projection_dim=8, valid_fraction=0.2, seed=3
    )
    return PretrainingConfig(**{**settings, **overrides})


def _pretrain(corpus, out, config, **distributed):
    inputs, targets, X = corpus
    return pretrain_encoders(X, inputs, targets, out, config=config, progress=False, **distributed)


def _assert_same_encoders(a, b, atol):
    for name in a.state:
        for key, value in a.state[name].items():
            torch.testing.assert_close(b.state[name][key], value, atol=atol, rtol=1e-4)


def _history(path):
    return json.loads((path / "history.json").read_text())


def _assert_same_history(a, b, rel):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b == pytest.approx(row_a, rel=rel)


def test_one_lightning_process_is_the_one_process_loop(corpus, tmp_path):
    """Every loss term (masking curriculum included): the same steps, masks and validation."""
    config = _config()
    plain = _pretrain(corpus, tmp_path / "plain", config)
    lightning = _pretrain(corpus, tmp_path / "pl", config, devices=1, strategy="auto")
    _assert_same_history(_history(plain), _history(lightning), rel=1e-5)
    assert {"train_masked", "train_contrastive", "valid_loss"} <= set(_history(plain)[-1])
    _assert_same_encoders(load_encoders(plain), load_encoders(lightning), atol=1e-6)
    assert not (lightning / "resume_state.pt").exists()


@needs_fork
def test_two_processes_train_what_one_does(corpus, tmp_path):
    config = _config(**SPLIT_INVARIANT)
    one = _pretrain(corpus, tmp_path / "one", config)
    two = _pretrain(corpus, tmp_path / "two", config, devices=2, strategy="ddp_fork")
    assert [row["epoch"] for row in _history(two)] == [1, 2]
    _assert_same_history(_history(one), _history(two), rel=1e-4)
    before = load_encoders(
        _pretrain(corpus, tmp_path / "zero", _config(epochs=1, **SPLIT_INVARIANT))
    )
    # measured: 2e-6 apart, while the second epoch moved a weight by 1e-3
    _assert_same_encoders(load_encoders(one), load_encoders(two), atol=1e-5)
    moved = max(
        float((load_encoders(one).state[n][k] - v).abs().max())
        for n in before.state
        for k, v in before.state[n].items()
    )
    assert moved > 5e-4  # the second epoch changed the encoders: the match is not trivial
    info = json.loads((two / "model.json").read_text())
    assert info["training"]["epochs"] == 2 and len(info["history"]) == 2


@needs_fork
def test_an_interrupted_run_resumes_on_two_processes(corpus, tmp_path, monkeypatch):
    config = _config(**SPLIT_INVARIANT)
    whole = _pretrain(corpus, tmp_path / "whole", config)
    from deepfuse_plugin.pretrained import _loop

    original = _loop._Run.train_epoch

    def interrupted(self, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, progress)

    monkeypatch.setattr(_loop._Run, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(corpus, tmp_path / "resumed", config)
    monkeypatch.setattr(_loop._Run, "train_epoch", original)
    resumed = _pretrain(corpus, tmp_path / "resumed", config, devices=2, strategy="ddp_fork")
    assert _history(resumed)[0] == _history(whole)[0]  # epoch 1 came from the resume point
    assert _history(resumed)[1] == pytest.approx(_history(whole)[1], rel=1e-4)
    _assert_same_encoders(load_encoders(whole), load_encoders(resumed), atol=1e-5)
    assert not (resumed / "resume_state.pt").exists()


def test_another_rank_writes_nothing(corpus, tmp_path, monkeypatch):
    """Rank 1 of a 2-process ``ddp`` run (as Lightning's launcher, torchrun or SLURM start it):
    it trains (here: its fit is skipped) and leaves the checkpoint folder to rank 0."""
    import lightning as L

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    fitted = []
    monkeypatch.setattr(L.Trainer, "fit", lambda trainer, module: fitted.append(trainer))
    out = _pretrain(corpus, tmp_path / "ckpt", _config(), devices=2, strategy="ddp")
    assert fitted and fitted[0].global_rank == 1
    assert out == tmp_path / "ckpt" and not out.exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused(corpus, tmp_path):
    with pytest.raises(InvalidSettingError, match="batch_size 6 must split evenly over the 4"):
        _pretrain(corpus, tmp_path / "x", _config(batch_size=6), devices=4, strategy="ddp_fork")
    with pytest.raises(InvalidSettingError, match="at least 4 molecules each"):
        _pretrain(corpus, tmp_path / "y", _config(batch_size=8), devices=4, strategy="ddp_fork")
    assert not (tmp_path / "x").exists()


def test_each_process_takes_its_share_of_every_global_batch():
    shares = [EpochShare(21, batch_size=8, seed=1, rank=r, world=2) for r in range(2)]
    for share in shares:
        share.set_epoch(3)
    batches = [list(share) for share in shares]
    order = np.random.default_rng([1, 3]).permutation(21)
    for b, (left, right) in enumerate(zip(*batches, strict=True)):
        assert sorted([*left, *right]) == sorted(order[8 * b : 8 * b + 8])
    assert len(shares[0]) == len(batches[0]) == 2  # the incomplete last batch is dropped


@needs_fork
def test_deepfuse_pretrain_takes_the_distributed_options(tmp_path, capsys):
    from deepfuse_plugin.cli import main

    corpus = tmp_path / "corpus.csv"
    corpus.write_text("SMILES\n" + "\n".join(SMILES) + "\n")
    out = tmp_path / "ckpt"
    args = ["--no-progress", "pretrain", "--corpus", str(corpus), "--modalities", "ecfp,smiles"]
    args += ["--epochs", "1", "--batch-size", "8", "--encoder-dim", "16"]
    args += ["--name", "tiny", "--out", str(out)]
    assert main([*args, "--num-nodes", "2"]) == 2
    assert "--num-nodes 2 needs --strategy ddp" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--devices", "2"]) == 0
    info = json.loads((out / "model.json").read_text())
    assert len(info["history"]) == 1 and info["corpus"]["molecules"] == len(SMILES)
    assert "Wrote the pretrained checkpoint tiny" in capsys.readouterr().out
