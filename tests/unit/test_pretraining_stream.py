"""Pretraining streamed from pickle-free shards: the corpus is never loaded whole, the batches are
drawn from the seed and epoch alone (a resumed run equals an uninterrupted one), held-out rows are
the in-memory split's, and ``deepfuse pretrain --shards-dir`` featurizes to shards and streams."""

from __future__ import annotations

import json

import deepchem as dc
import numpy as np
import pandas as pd
import pytest
import torch

from deepfuse_plugin import MultiModalFeaturizer
from deepfuse_plugin.data import ShardedMultiModalDataset
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.pretrained import _loop, load_encoders, pretrain_encoders
from tests.unit.test_pretraining import SMILES, _config


@pytest.fixture(scope="module")
def featurized():
    feat = MultiModalFeaturizer(
        ["ecfp", "graph", "smiles", "descriptors"], ecfp_size=64, max_length=32, progress=False
    )
    X = feat.featurize(SMILES)
    ids = np.array([f"{s}#{i}" for i, s in enumerate(SMILES)], dtype=object)  # unique ids
    return feat, dc.data.NumpyDataset(X, ids=ids)


@pytest.fixture
def sharded(featurized, tmp_path):
    feat, memory = featurized
    return ShardedMultiModalDataset.from_dataset(memory, tmp_path / "shards", shard_size=5)


def _no_whole_corpus(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError("the whole corpus was loaded (dataset.X)")

    monkeypatch.setattr(ShardedMultiModalDataset, "X", property(refuse))


def _batch_ids(run, rows, epoch, shuffle):
    """The molecules of each batch, by their ECFP bits (stand-ins for ids)."""
    return [b.inputs["ecfp"].numpy().tolist() for b in run.batches(rows, epoch, shuffle)]


def test_batches_come_from_the_seed_and_epoch_and_cover_the_training_rows(
    sharded, featurized, monkeypatch
):
    feat, memory = featurized
    _no_whole_corpus(monkeypatch)
    run = _loop._Run(
        _loop._samples(sharded, 2), feat.modalities[:3], feat.modalities[3:], _config()
    )
    assert (len(run.train), len(run.valid)) == (38, 10)  # 48 molecules, 20% held out
    assert run.steps_per_epoch == 38 // 8
    first = _batch_ids(run, run.train, 0, True)
    assert len(first) == 4 and all(len(b) == 8 for b in first)
    assert first == _batch_ids(run, run.train, 0, True)  # the same batches again
    assert first != _batch_ids(run, run.train, 1, True)  # another epoch, another order
    valid = list(run.batches(run.valid, 0, False))
    assert [b.batch_size for b in valid] == [8]  # the last 2 rows are too few for a batch

    streamed, held_out = list(run.train.iter_samples()), list(run.valid.iter_samples())
    in_memory = _loop._Run(_loop._samples(memory), feat.modalities[:3], [], _config())
    assert sorted(_keys(held_out)) == sorted(_keys(in_memory.valid))  # the same held-out rows
    assert sorted(_keys(streamed)) == sorted(_keys(in_memory.train))


def _keys(samples):
    return [s.values["smiles"].tobytes() + s.values["ecfp"].tobytes() for s in samples]


def test_target_statistics_stream_to_the_in_memory_values(sharded, featurized):
    feat, memory = featurized
    targets = feat.modalities[3:]
    run = _loop._Run(_loop._samples(sharded, 3), feat.modalities[:3], targets, _config())
    streamed = _loop._target_statistics(run.train, targets)["descriptors"]
    expected = _loop._target_statistics(np.array(list(run.train.iter_samples())), targets)
    np.testing.assert_allclose(streamed[0], expected["descriptors"][0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(streamed[1], expected["descriptors"][1], rtol=1e-9, atol=1e-9)


def test_streamed_resumed_run_equals_uninterrupted_run(sharded, featurized, tmp_path, monkeypatch):
    feat, _ = featurized
    _no_whole_corpus(monkeypatch)
    inputs = [m for m in feat.modalities if m.name in ("ecfp", "smiles")]  # fast: no graph
    args = (sharded, inputs, feat.modalities[3:])
    options = dict(config=_config(), progress=False, shuffle_window=2)
    whole = load_encoders(pretrain_encoders(*args, tmp_path / "a", **options))
    original = _loop._Run.train_epoch

    def interrupted(self, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, progress)

    monkeypatch.setattr(_loop._Run, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoders(*args, tmp_path / "b", **options)
    monkeypatch.setattr(_loop._Run, "train_epoch", original)
    other_order = dict(options, shuffle_window=3)  # another order of every later epoch
    with pytest.raises(InvalidSettingError, match="shuffle_window"):
        pretrain_encoders(*args, tmp_path / "b", **other_order)
    resumed = load_encoders(pretrain_encoders(*args, tmp_path / "b", **options))
    assert resumed.info["history"] == whole.info["history"]
    for name in whole.state:
        for key, value in whole.state[name].items():
            assert torch.equal(value, resumed.state[name][key]), (name, key)
    corpus = whole.info["corpus"]
    assert corpus["shards"] == 10 and corpus["shuffle_window"] == 2
    assert (corpus["molecules"], corpus["train"], corpus["valid"]) == (48, 38, 10)


def test_a_bad_shuffle_window_is_refused(sharded, featurized, tmp_path):
    feat, _ = featurized
    with pytest.raises(InvalidSettingError, match="shuffle_window must be a positive integer"):
        pretrain_encoders(
            sharded, feat.modalities[:3], (), tmp_path / "c", config=_config(), shuffle_window=0
        )


def test_cli_pretrain_featurizes_to_shards_and_streams(tmp_path, monkeypatch):
    from deepfuse_plugin.cli import main

    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"SMILES": [*SMILES, "not a smiles"]}).to_csv(corpus, index=False)
    _no_whole_corpus(monkeypatch)
    argv = [
        "--no-progress",
        "pretrain",
        "--corpus",
        str(corpus),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--modalities",
        "ecfp,smiles",
        "--targets",
        "descriptors",
        "--name",
        "Tiny-v1",
        "--out",
        str(tmp_path / "ckpt"),
        "--shards-dir",
        str(tmp_path / "shards"),
    ]
    assert main(argv) == 0
    info = json.loads((tmp_path / "ckpt" / "model.json").read_text())["corpus"]
    assert info["molecules"] == len(SMILES) and info["failed_to_featurize"] == 1
    assert info["streamed_from"] == str(tmp_path / "shards")
    assert len(ShardedMultiModalDataset(tmp_path / "shards")) == len(SMILES)


def test_a_streamed_corpus_refuses_several_processes(tmp_path):
    from deepfuse_plugin import MultiModalDataset

    feat = MultiModalFeaturizer(["ecfp"], progress=False)
    data = MultiModalDataset.from_smiles(["CCO", "CCN", "CCC", "CCCl"], feat)
    corpus = ShardedMultiModalDataset.from_dataset(data, tmp_path / "shards", shard_size=2)
    with pytest.raises(InvalidSettingError, match="one process only"):
        pretrain_encoders(corpus, feat.modalities, out_dir=tmp_path / "ckpt", devices=2)
