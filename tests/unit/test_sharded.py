"""Out-of-core featurization (``deepfuse_plugin.data.featurize_to_disk``): the shards hold exactly
the in-memory dataset, bad rows fail alone with their row numbers, an interrupted run resumes,
workers give what one process gives, and nothing a user owns is overwritten."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

import deepfuse_plugin as dfp
from deepfuse_plugin.data import _shards, featurize_corpus_to_disk, featurize_to_disk, read_failures
from deepfuse_plugin.data.corpora import iter_smiles_chunks, read_smiles_file
from deepfuse_plugin.data.sharded import FAILURES_FILE, MANIFEST
from deepfuse_plugin.errors import InvalidInputError, RunFolderError
from deepfuse_plugin.feat._base import CRASH_REASON
from deepfuse_plugin.modalities import GraphFeatures, MultiModalSample

BAD = {3: "C1CC", 11: None, 17: "x" * 3000}  # unparsable, not a string, over the length limit


@pytest.fixture(scope="module")
def inputs(smiles):
    smiles = list(smiles[:22])
    for row, value in BAD.items():
        smiles[row] = value
    labels = np.arange(len(smiles), dtype=np.float64)
    labels[5] = np.nan  # a missing label: weight 0
    return smiles, labels


@pytest.fixture
def featurizer(small_featurizer):
    small_featurizer.last_failures = {}
    return small_featurizer


@pytest.fixture
def reference(featurizer, inputs):
    """The in-memory dataset and failures the shards must reproduce."""
    smiles, labels = inputs
    dataset = dfp.MultiModalDataset.from_smiles(smiles, featurizer, y=labels)
    return dataset, dict(featurizer.last_failures)


def _assert_same_value(a, b) -> None:
    if isinstance(a, GraphFeatures):
        for field in ("node_features", "edge_index", "edge_features"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and np.array_equal(x, y)
    elif a is None:
        assert b is None
    else:
        assert a.dtype == b.dtype and np.array_equal(a, b)


def assert_same_dataset(disk, memory) -> None:
    """Same samples (values, masks, reasons, fingerprints), ids, labels and weights, in order."""
    X = disk.X
    assert len(X) == len(memory) == len(disk)
    for got, want in zip(X, memory.X):
        assert isinstance(got, MultiModalSample)
        assert list(got.values) == list(want.values)
        assert got.missing_reasons == want.missing_reasons
        assert got.fingerprints == want.fingerprints
        assert np.array_equal(got.mask(list(want.values)), want.mask(list(want.values)))
        for name in want.values:
            _assert_same_value(got.values[name], want.values[name])
    assert [str(i) for i in disk.ids] == [str(i) for i in memory.ids]
    np.testing.assert_array_equal(disk.y, memory.y)
    np.testing.assert_array_equal(disk.w, memory.w)


def test_shards_equal_the_in_memory_dataset(featurizer, inputs, reference, tmp_path):
    smiles, labels = inputs
    memory, failures = reference
    disk = featurize_to_disk(
        smiles, featurizer, tmp_path / "ds", labels=labels, shard_size=5, progress=False
    )
    assert disk.get_number_shards() == 5  # 22 rows, 5 a shard
    assert_same_dataset(disk, memory)
    assert disk.w[4, 0] == 0  # input row 5 (row 3 failed): its label is missing
    assert featurizer.last_failures == failures == read_failures(tmp_path / "ds")
    assert sorted(failures) == sorted(BAD)


def test_a_bad_row_fails_alone_with_its_row_number(featurizer, inputs, tmp_path):
    smiles, labels = inputs
    featurize_to_disk(smiles, featurizer, tmp_path / "ds", shard_size=4, progress=False)
    report = pd.read_csv(tmp_path / "ds" / FAILURES_FILE, keep_default_na=False)
    assert report["row"].tolist() == sorted(BAD)
    assert report["reason"].tolist() == [
        "RDKit cannot parse this SMILES",
        "not a string (got NoneType)",
        featurizer.last_failures[17],
    ]
    assert "max_smiles_length" in featurizer.last_failures[17]
    assert report["input"].tolist()[:2] == ["C1CC", "None"]
    assert len(report["input"][2]) < 300  # a huge input is cut in the report


def test_a_csv_is_read_in_shards_with_labels_and_ids(featurizer, inputs, tmp_path):
    smiles, labels = inputs
    frame = pd.DataFrame(
        {
            "name": [f"mol{i:03d}" for i in range(len(smiles))],
            "smiles": ["" if s is None else s for s in smiles],
            "logS": ["" if np.isnan(v) else str(v) for v in labels],
            "unused": "x",
        }
    )
    frame.to_csv(tmp_path / "in.csv", index=False)
    disk = featurize_to_disk(
        tmp_path / "in.csv",
        featurizer,
        tmp_path / "ds",
        tasks=["logS"],
        id_column="name",
        shard_size=6,
        progress=False,
    )
    memory = dfp.MultiModalDataset.from_smiles(
        frame["smiles"], featurizer, y=labels, ids=frame["name"]
    )
    assert_same_dataset(disk, memory)
    assert list(disk.get_task_names()) == ["logS"] and disk.ids[0] == "mol000"
    assert read_failures(tmp_path / "ds")[11] == "empty SMILES"  # an empty cell: its own row


def test_text_in_a_label_column_stops_before_any_shard(featurizer, tmp_path):
    pd.DataFrame({"smiles": ["CCO", "CCN"], "y": ["1.5", "high"]}).to_csv(
        tmp_path / "in.csv", index=False
    )
    with pytest.raises(InvalidInputError, match=r"not numeric.*row 1: 'high'"):
        featurize_to_disk(
            tmp_path / "in.csv", featurizer, tmp_path / "ds", tasks=["y"], progress=False
        )
    assert not [p for p in os.listdir(tmp_path / "ds") if p.startswith("shard-")]


class _Interrupted(Exception):
    pass


def test_an_interrupted_featurization_resumes_keeping_written_shards(
    featurizer, inputs, reference, tmp_path, monkeypatch
):
    smiles, labels = inputs
    real = _shards.featurize_and_write
    featurized: list[int] = []

    def stop_at_shard_3(featurizer, task, out_dir):
        if task.index == 3:
            raise _Interrupted  # e.g. Ctrl-C while featurizing shard 3
        featurized.append(task.index)
        return real(featurizer, task, out_dir)

    monkeypatch.setattr(_shards, "featurize_and_write", stop_at_shard_3)
    out = tmp_path / "ds"
    with pytest.raises(_Interrupted):
        featurize_to_disk(smiles, featurizer, out, labels=labels, shard_size=5, progress=False)
    assert json.loads((out / MANIFEST).read_text())["status"] == "in progress"
    assert featurized == [0, 1, 2]
    (out / "shard-2.npz").write_bytes(b"half-written")  # killed while writing shard 2 ...
    (out / "shard-2.done.json").unlink()  # ... before its record

    counted: list[int] = []
    monkeypatch.setattr(
        _shards,
        "featurize_and_write",
        lambda f, task, out_dir: counted.append(task.index) or real(f, task, out_dir),
    )
    disk = featurize_to_disk(smiles, featurizer, out, labels=labels, shard_size=5, progress=False)
    assert counted == [2, 3, 4]  # shards 0 and 1 were kept
    assert_same_dataset(disk, reference[0])
    assert featurizer.last_failures == reference[1]
    assert json.loads((out / MANIFEST).read_text())["status"] == "complete"

    counted.clear()  # a complete folder is reused as it is
    featurize_to_disk(smiles, featurizer, out, labels=labels, shard_size=5, progress=False)
    assert counted == []


def test_two_workers_give_what_one_process_gives(featurizer, inputs, reference, tmp_path):
    smiles, labels = inputs
    disk = featurize_to_disk(
        smiles, featurizer, tmp_path / "ds", labels=labels, shard_size=3, n_jobs=2, progress=False
    )
    assert_same_dataset(disk, reference[0])
    assert featurizer.last_failures == reference[1]


class _CrashingFeaturizer(dfp.MultiModalFeaturizer):
    """Kills its process on the input ``"CRASH"`` (as a segfault inside RDKit would)."""

    def featurize_row(self, datapoint):
        if datapoint == "CRASH":
            os.kill(os.getpid(), signal.SIGKILL)
        return super().featurize_row(datapoint)


def test_a_worker_killed_by_an_input_costs_only_that_input(tmp_path):
    featurizer = _CrashingFeaturizer(["ecfp"], ecfp_size=32, progress=False)
    smiles = ["CCO", "CCN", "CRASH", "CCC", "c1ccccc1", "CC(=O)O", "CCCl", "CO"]
    disk = featurize_to_disk(
        smiles, featurizer, tmp_path / "ds", shard_size=3, n_jobs=2, progress=False
    )
    assert list(disk.ids) == [s for s in smiles if s != "CRASH"]
    assert featurizer.last_failures == {2: CRASH_REASON}


def test_a_folder_with_other_content_is_refused_and_left_untouched(featurizer, inputs, tmp_path):
    smiles, _ = inputs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not empty and is not a deepfuse featurization"):
        featurize_to_disk(smiles, featurizer, tmp_path / "mine", progress=False)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]

    featurize_to_disk(smiles[:4], featurizer, tmp_path / "ds", progress=False)
    with pytest.raises(RunFolderError, match="differs in: rows, sha256"):
        featurize_to_disk(smiles[:5], featurizer, tmp_path / "ds", progress=False)
    other = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=64, progress=False)
    with pytest.raises(RunFolderError, match="featurizer, modalities"):
        featurize_to_disk(smiles[:4], other, tmp_path / "ds", progress=False)


def test_no_featurizable_input_is_an_error(featurizer, tmp_path):
    with pytest.raises(InvalidInputError, match="None of the 2 inputs"):
        featurize_to_disk(["C1CC", None], featurizer, tmp_path / "ds", progress=False)


def test_the_corpus_variant_featurizes_what_read_smiles_file_returns(featurizer, smiles, tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("SMILES\n" + "\n".join([*smiles[:30], "  ", " CCO "]) + "\n")
    expected = read_smiles_file(path, n=12, seed=3)
    disk = featurize_corpus_to_disk(
        path, featurizer, tmp_path / "ds", n=12, seed=3, shard_size=5, progress=False
    )
    assert list(disk.ids) == expected and disk.get_number_shards() == 3
    memory = dfp.MultiModalDataset.from_smiles(expected, featurizer)
    assert_same_dataset(disk, memory)


def test_iter_smiles_chunks_streams_the_same_subset_in_bounded_chunks(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("SMILES\n" + "\n".join(f"C{'C' * i}O" for i in range(50)) + "\n\n")
    chunks = list(iter_smiles_chunks(path, chunk_rows=7, n=20, seed=1))
    assert max(len(c) for c in chunks) <= 7
    assert [s for c in chunks for s in c] == read_smiles_file(path, n=20, seed=1)
    assert len(read_smiles_file(path)) == 50  # the empty line is skipped


def test_fit_streams_the_disk_dataset_shard_by_shard(
    featurizer, inputs, tmp_path, make_tiny_kwargs, monkeypatch
):
    import deepchem as dc
    import torch

    smiles, labels = inputs
    disk = featurize_to_disk(
        smiles, featurizer, tmp_path / "ds", labels=labels, shard_size=5, progress=False
    )

    def no_whole_x(self):
        raise AssertionError("fit loaded every shard at once (dataset.X)")

    assert isinstance(disk, dc.data.Dataset)
    monkeypatch.setattr(type(disk), "X", property(no_whole_x))
    torch.manual_seed(0)
    model = dfp.DynamicFusionModel(1, featurizer.modalities, **make_tiny_kwargs())
    assert np.isfinite(model.fit(disk, nb_epoch=1))
    assert model.predict(disk).shape == (len(disk), 1)


def test_pretraining_reads_a_disk_dataset(featurizer, smiles, tmp_path):
    from deepfuse_plugin.pretrained import PretrainingConfig, pretrain_encoders

    disk = featurize_to_disk(smiles, featurizer, tmp_path / "ds", shard_size=7, progress=False)
    config = PretrainingConfig(
        epochs=1, batch_size=8, encoder_dim=16, projection_dim=8, valid_fraction=0.2
    )
    out = pretrain_encoders(
        disk, featurizer.modalities, (), tmp_path / "ckpt", "tiny", config, progress=False
    )
    assert json.loads((out / "model.json").read_text())["history"][0]["epoch"] == 1


def test_processes_default_to_the_featurizers_and_bad_settings_are_refused(tmp_path):
    from deepfuse_plugin.data.sharded import _check_settings
    from deepfuse_plugin.errors import InvalidSettingError

    featurizer = dfp.MultiModalFeaturizer(["ecfp"], n_jobs=3, progress=False)
    assert _check_settings(featurizer, 10, None) == 3 and _check_settings(featurizer, 10, 1) == 1
    with pytest.raises(InvalidSettingError, match="shard_size and n_jobs must be at least 1"):
        featurize_to_disk(["CCO"], featurizer, tmp_path / "ds", shard_size=0)
    with pytest.raises(InvalidSettingError, match="featurize_row"):
        featurize_to_disk(["CCO"], object(), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
