"""``ShardedMultiModalDataset``: a DeepChem dataset over pickle-free shards that DeepChem's
splitters, transformers, ``fit``, ``predict`` and metrics drive unchanged, without pickle."""

from __future__ import annotations

import json
import os

import deepchem as dc
import numpy as np
import pytest

import deepfuse_plugin as dfp
from deepfuse_plugin.data import ShardedMultiModalDataset, featurize_to_disk
from deepfuse_plugin.data.sharded import MANIFEST
from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError, RunFolderError
from tests.unit.test_sharded import assert_same_dataset
from tests.unit.test_sharded_codec import _refuse_pickle


@pytest.fixture(scope="module")
def memory(featurized, smiles):
    y = np.linspace(-1.0, 2.0, len(smiles)).reshape(-1, 1)
    return dfp.MultiModalDataset(featurized, y, np.ones_like(y), np.array(smiles, dtype=object))


@pytest.fixture
def disk(memory, small_featurizer, tmp_path):
    return ShardedMultiModalDataset.from_dataset(
        memory, tmp_path / "ds", shard_size=5, modalities=small_featurizer.modalities
    )


def test_it_holds_the_in_memory_dataset_and_describes_itself(disk, memory, small_featurizer):
    assert isinstance(disk, dc.data.Dataset)
    assert len(disk) == len(memory) and disk.get_number_shards() == 5
    assert disk.get_shape() == ((len(memory),), (len(memory), 1), (len(memory), 1), (len(memory),))
    assert disk.get_task_names().tolist() == [0] and disk.get_shard_size() == 5
    assert [m.to_dict() for m in disk.modalities] == [
        m.to_dict() for m in small_featurizer.modalities
    ]
    assert_same_dataset(ShardedMultiModalDataset(disk.data_dir), memory)  # reopened


def test_open_iterate_fit_and_predict_never_unpickle(
    small_featurizer, smiles, tmp_path, monkeypatch, make_tiny_kwargs
):
    import torch

    labels = np.arange(len(smiles), dtype=float)
    featurize_to_disk(
        smiles, small_featurizer, tmp_path / "ds", labels=labels, shard_size=7, progress=False
    )
    _refuse_pickle(monkeypatch)
    disk = ShardedMultiModalDataset(tmp_path / "ds")
    assert sum(len(b[0]) for b in disk.iterbatches(batch_size=4)) == len(smiles)
    assert len(list(disk.itersamples())) == len(disk) == len(disk.ids) == len(disk.X)
    torch.manual_seed(0)
    model = dfp.DynamicFusionModel(1, small_featurizer.modalities, **make_tiny_kwargs())
    assert np.isfinite(model.fit(disk, nb_epoch=1))
    assert model.predict(disk).shape == (len(smiles), 1)


def test_batches_follow_diskdatasets_rules(disk, memory):
    ordered = list(disk.iterbatches(batch_size=4, deterministic=True))
    assert [len(b[0]) for b in ordered] == [4] * 6  # batches span shards of 5
    assert [i for b in ordered for i in b[3]] == list(memory.ids)
    np.random.seed(1)
    shuffled = list(disk.iterbatches(batch_size=7, epochs=2))
    assert [len(b[0]) for b in shuffled] == [7, 7, 7, 3] * 2
    ids = [i for b in shuffled for i in b[3]]
    assert sorted(ids[:24]) == sorted(ids[24:]) == sorted(memory.ids)
    assert ids[:24] != list(memory.ids)
    per_shard = [len(b[0]) for b in disk.iterbatches(deterministic=True)]
    assert per_shard == [5, 5, 5, 5, 4]
    *_, last = disk.iterbatches(batch_size=10, deterministic=True, pad_batches=True)
    assert len(last[0]) == 10 and list(last[3][:4]) == list(memory.ids[20:])
    assert last[2][4:].sum() == 0  # padding rows weigh nothing


def test_select_keeps_the_order_in_memory_or_in_a_new_folder(disk, memory, tmp_path):
    rows = [17, 3, 3, 22, 0]
    in_memory = disk.select(rows)
    assert isinstance(in_memory, dfp.MultiModalDataset)
    assert list(in_memory.ids) == [memory.ids[i] for i in rows]
    on_disk = disk.select(rows, tmp_path / "sel", select_shard_size=2)
    assert isinstance(on_disk, ShardedMultiModalDataset) and on_disk.get_number_shards() == 3
    assert_same_dataset(on_disk, memory.select(rows))
    with pytest.raises(InvalidInputError, match=r"Row indices \[24, -1\] are outside"):
        disk.select([0, 24, -1])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not empty"):
        disk.select(rows, tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    assert len(disk.select([], tmp_path / "empty")) == 0


def test_a_deepchem_split_trains_predicts_and_scores(disk, memory, make_tiny_kwargs):
    import torch

    train, valid, test = dc.splits.RandomSplitter().train_valid_test_split(disk, seed=0)
    assert all(isinstance(d, ShardedMultiModalDataset) for d in (train, valid, test))
    assert sorted([*train.ids, *valid.ids, *test.ids]) == sorted(memory.ids)
    scaffold = dc.splits.ScaffoldSplitter().train_valid_test_split(disk)
    assert sum(len(d) for d in scaffold) == len(memory)
    torch.manual_seed(0)
    model = dfp.DynamicFusionModel(1, disk.modalities, **make_tiny_kwargs())
    model.fit(train, nb_epoch=2)
    score = model.evaluate(test, [dc.metrics.Metric(dc.metrics.mean_absolute_error)])
    assert np.isfinite(score["mean_absolute_error"])


def test_normalization_transformer_streams_the_labels(disk, memory, tmp_path, make_tiny_kwargs):
    transformer = dc.trans.NormalizationTransformer(transform_y=True, dataset=disk)
    np.testing.assert_allclose(transformer.y_means, memory.y.mean(0))
    np.testing.assert_allclose(transformer.y_stds, memory.y.std(0))
    normalized = transformer.transform(disk)
    assert isinstance(normalized, ShardedMultiModalDataset)
    np.testing.assert_allclose(normalized.y, (memory.y - memory.y.mean(0)) / memory.y.std(0))
    assert list(normalized.ids) == list(memory.ids)
    model = dfp.DynamicFusionModel(1, disk.modalities, **make_tiny_kwargs())
    model.fit(normalized, nb_epoch=1)
    assert model.predict(normalized, [transformer]).shape == (len(memory), 1)
    with pytest.raises(InvalidSettingError, match="X statistics are not defined"):
        dc.trans.NormalizationTransformer(transform_X=True, dataset=disk)


def test_folders_that_are_not_sharded_datasets_are_refused(memory, tmp_path):
    old = tmp_path / "old"
    dc.data.DiskDataset.from_numpy(memory.X[:3], memory.y[:3], data_dir=str(old))
    with pytest.raises(InvalidInputError, match="DiskDataset .*pickle"):
        ShardedMultiModalDataset(old)
    with pytest.raises(InvalidInputError, match="holds no sharded dataset"):
        ShardedMultiModalDataset(tmp_path)


def test_a_featurization_folder_of_the_pickle_format_is_refused_not_reused(
    small_featurizer, tmp_path
):
    out = tmp_path / "ds"
    out.mkdir()
    manifest = {"identity": {"format": "deepfuse-featurization/1"}, "status": "complete"}
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RunFolderError, match="DiskDataset, which is read with pickle"):
        featurize_to_disk(["CCO"], small_featurizer, out, progress=False)
    assert os.listdir(out) == [MANIFEST]
