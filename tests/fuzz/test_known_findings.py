"""Regression tests for bugs the fuzz suite found outside the featurizers and loaders (each was
first pinned as a strict xfail, then fixed): an overflowing learning rate, an encoder width the
attention heads cannot split, a NUL cell after the first 8 KiB of a CSV, and a bare carriage
return in a pass-through cell."""

from __future__ import annotations

import pytest

from deepfuse_plugin.errors import InvalidSettingError


def test_a_learning_rate_beyond_float32_is_a_named_setting_error(tmp_path):
    # the input the fuzz suite shrank to (tests/fuzz/test_fuzz_settings.py's 12-molecule set)
    from tests.fuzz.test_fuzz_settings import _build, dataset

    values = dict(batch_size=1, learning_rate=3.402823466385288e37, dropout=0.0, encoder_dim=4)
    with pytest.raises(InvalidSettingError, match="learning_rate"):
        _build(values, str(tmp_path)).fit(dataset()[1], nb_epoch=1)


def test_encoder_dim_not_divisible_by_attention_heads_is_a_named_setting_error():
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    modalities = MultiModalFeaturizer(["smiles"], progress=False).modalities
    with pytest.raises(InvalidSettingError, match="encoder_dim"):
        DynamicFusionModel(n_tasks=1, modalities=modalities, encoder_dim=30, progress=False)


def test_a_nul_cell_after_the_first_8_kib_is_refused_or_kept(tmp_path):
    from deepfuse_plugin.workflows import predict_from_csv
    from tests.fuzz.test_fuzz_workflows import read_cells, trained_run, write_csv

    query = tmp_path / "query.csv"
    write_csv(query, ["id", "smiles"], [["a", "C" * 9000], ["\x00", "CCO"]])
    try:
        predict_from_csv(str(trained_run()), str(query), out=str(tmp_path / "preds.csv"))
    except ValueError:
        return  # refused as a binary file: fine
    assert read_cells(tmp_path / "preds.csv")[2][0] == "\x00"


def test_a_cell_with_a_bare_carriage_return_survives_predict(tmp_path):
    from deepfuse_plugin.workflows import predict_from_csv
    from tests.fuzz.test_fuzz_workflows import read_cells, trained_run, write_csv

    query = tmp_path / "query.csv"
    write_csv(query, ["id", "smiles"], [["x\ry", "CCO"]])
    predict_from_csv(str(trained_run()), str(query), out=str(tmp_path / "preds.csv"))
    rows = read_cells(tmp_path / "preds.csv")
    assert len(rows) == 2 and rows[1][:2] == ["x\ry", "CCO"]
