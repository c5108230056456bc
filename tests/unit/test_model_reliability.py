"""Issue 21, model side: no code runs from a model folder, nothing is silently wrong, every bad
setting or file is one clear error naming it."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import deepchem as dc
import numpy as np
import pytest
import torch

import deepfuse_plugin as dfp
from deepfuse_plugin import EarlyFusionModel, MultiModalTorchModel
from deepfuse_plugin.errors import (
    CorruptCheckpointError,
    DeepfuseError,
    InvalidInputError,
    InvalidSettingError,
)
from deepfuse_plugin.modalities import MultiModalSample
from deepfuse_plugin.models.checkpoints import (
    MissingCheckpointError,
    checkpoint_digest,
    verify_checkpoint_digest,
)


class Planted:
    """A pickle payload that, if ever unpickled, creates ``marker`` (code execution)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_pickle(path: str, marker: str) -> None:
    torch.save({"model_state_dict": Planted(marker)}, path)


def early(modalities, **overrides):
    kwargs = dict(
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
        batch_size=8,
        progress=False,
        encoder_options={"graph": {"n_layers": 1}, "sequence": {"n_layers": 1, "n_heads": 2}},
    )
    return EarlyFusionModel(1, modalities, **{**kwargs, **overrides})


@pytest.fixture(scope="module")
def saved(small_featurizer, featurized, smiles, tmp_path_factory):
    """A trained EarlyFusionModel, its dataset and its folder."""
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("saved"))
    ds = dc.data.NumpyDataset(
        featurized, np.random.default_rng(0).normal(size=(len(smiles), 1)), ids=np.array(smiles)
    )
    model = early(small_featurizer.modalities, model_dir=folder)
    model.fit(ds, nb_epoch=1)
    return model, ds, folder


@pytest.fixture
def copy_of(saved, tmp_path):
    """A private copy of the saved folder (tests damage it)."""
    import shutil

    target = str(tmp_path / "copy")
    shutil.copytree(saved[2], target)
    return target


# -- no code from data --------------------------------------------------------------------------
def test_a_planted_pickle_checkpoint_is_refused_not_run(copy_of, tmp_path):
    marker = str(tmp_path / "pwned")
    plant_pickle(os.path.join(copy_of, "checkpoint1.pt"), marker)
    with pytest.raises(CorruptCheckpointError, match="checkpoint1.pt.*cannot be read safely"):
        MultiModalTorchModel.load(copy_of, progress=False)
    assert not os.path.exists(marker)


def test_every_torch_load_in_the_package_is_weights_only():
    root = Path(dfp.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


# -- damaged checkpoints and configurations -------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "nan"])
def test_a_damaged_checkpoint_is_a_corrupt_checkpoint_error(copy_of, damage):
    path = os.path.join(copy_of, "checkpoint1.pt")
    data = Path(path).read_bytes()
    if damage == "nan":
        state = torch.load(path, weights_only=True)
        name = next(k for k, v in state["model_state_dict"].items() if v.is_floating_point())
        state["model_state_dict"][name].fill_(float("nan"))
        torch.save(state, path)
    else:
        content = {
            "empty": b"",
            "truncated": data[: len(data) // 2],
            "random": np.random.default_rng(0).bytes(4096),
        }[damage]
        Path(path).write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="checkpoint1.pt") as err:
        MultiModalTorchModel.load(copy_of, progress=False)
    assert "architecture" not in str(err.value)
    assert "retrain" in str(err.value).lower()


def test_missing_folders_and_checkpoints_name_the_path(saved, small_featurizer, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(MissingCheckpointError, match="nowhere.*does not exist"):
        MultiModalTorchModel.load(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        early(small_featurizer.modalities).restore(model_dir=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingCheckpointError, match="No checkpoint"):
        early(small_featurizer.modalities, model_dir=str(empty)).restore()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda text: text[:-40], "not valid JSON"),
        (
            lambda text: json.dumps({**json.loads(text), "config": "x"}),
            "'config' must be an object",
        ),
        (
            lambda text: json.dumps(
                {
                    **json.loads(text),
                    "config": {
                        k: v for k, v in json.loads(text)["config"].items() if k != "n_tasks"
                    },
                }
            ),
            r"lacks the key\(s\) \['n_tasks'\]",
        ),
        (
            lambda text: json.dumps(
                {
                    **json.loads(text),
                    "config": {**json.loads(text)["config"], "batch_size": "eight"},
                }
            ),
            "batch_size.*'eight'",
        ),
        (
            lambda text: json.dumps(
                {
                    **json.loads(text),
                    "config": {**json.loads(text)["config"], "mode": "classification"},
                }
            ),
            "architecture",
        ),
    ],
)
def test_an_edited_configuration_is_a_clear_error(copy_of, edit, match):
    path = os.path.join(copy_of, "deepfuse_config.json")
    Path(path).write_text(edit(Path(path).read_text()))
    with pytest.raises(DeepfuseError, match=match) as err:
        MultiModalTorchModel.load(copy_of, progress=False)
    if match != "architecture":
        assert "deepfuse_config.json" in str(err.value)


def test_checkpoint_digest_detects_a_flipped_bit_and_an_edit(copy_of, saved):
    digest = checkpoint_digest(copy_of)
    assert digest == checkpoint_digest(saved[2]) and digest.startswith("sha256:")
    verify_checkpoint_digest(copy_of, digest)
    path = os.path.join(copy_of, "checkpoint1.pt")
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="changed since it was saved"):
        verify_checkpoint_digest(copy_of, digest)
    data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))
    verify_checkpoint_digest(copy_of, digest)
    config = os.path.join(copy_of, "deepfuse_config.json")
    Path(config).write_text(Path(config).read_text() + " ")
    assert checkpoint_digest(copy_of) != digest


# -- nothing silent in predictions ----------------------------------------------------------------
def _with_ecfp(sample: MultiModalSample, value: np.ndarray) -> MultiModalSample:
    return MultiModalSample(
        {**sample.values, "ecfp": value}, dict(sample.missing_reasons), dict(sample.fingerprints)
    )


def test_non_finite_rows_are_nan_named_and_reported(saved, caplog):
    model, ds, _ = saved
    X = ds.X.copy()
    X[2] = _with_ecfp(X[2], np.full(X[2].values["ecfp"].shape, np.nan, np.float32))
    X[4] = X[4].without(list(X[4].values))  # no modality at all
    bad = dc.data.NumpyDataset(X, ids=ds.ids)
    good = model.predict(ds)
    with caplog.at_level(logging.WARNING):
        checked = model.predict_checked(bad)
    assert checked.failed_ids == [ds.ids[2], ds.ids[4]]
    assert checked.reasons[2] == "non-finite model output"
    assert checked.reasons[4] == "no modality present"
    assert np.isnan(checked.values[[2, 4]]).all()
    keep = checked.ok
    np.testing.assert_array_equal(checked.values[keep], good[keep])  # other rows untouched
    assert ds.ids[2] in caplog.text and ds.ids[4] in caplog.text
    assert model.last_row_problems == {2: "non-finite model output", 4: "no modality present"}
    plain = model.predict(bad)
    np.testing.assert_array_equal(np.isnan(plain).any(axis=1), ~keep)
    model.predict(ds)
    assert model.last_row_problems == {}


def test_dropping_modalities_by_string_and_refusing_all(saved):
    model, ds, _ = saved
    np.testing.assert_array_equal(
        model.predict(ds, drop_modalities="graph"), model.predict(ds, drop_modalities=["graph"])
    )
    with pytest.raises(InvalidSettingError, match=r"Cannot drop \['grpah'\].*'ecfp', 'graph'"):
        model.predict(ds, drop_modalities="grpah")
    with pytest.raises(InvalidSettingError, match="removes every modality"):
        model.predict(ds, drop_modalities=["ecfp", "graph", "smiles"])


# -- training refuses what would be silently wrong -------------------------------------------------
@pytest.mark.parametrize(
    "labels,weights,match",
    [
        (np.nan, 1.0, r"Task\(s\) \['1'\] have no labelled rows"),
        (1.0, 0.0, r"Task\(s\) \['1'\] have no labelled rows"),
    ],
)
def test_fit_refuses_a_task_without_labels(featurized, small_featurizer, labels, weights, match):
    y = np.ones((len(featurized), 2))
    w = np.ones_like(y)
    y[:, 1], w[:, 1] = labels, weights
    ds = dc.data.NumpyDataset(featurized, y, w)
    model = EarlyFusionModel(
        2,
        small_featurizer.modalities,
        encoder_dim=8,
        fused_dim=8,
        progress=False,
        encoder_options={"sequence": {"n_heads": 2}},
    )
    with pytest.raises(InvalidInputError, match=match):
        model.fit(ds, nb_epoch=1)


def test_huge_and_text_labels_are_clear_errors(saved, featurized, smiles):
    model = saved[0]
    y = np.zeros((len(featurized), 1))
    y[3] = 1e300
    with pytest.raises(InvalidInputError, match=f"float32's range.*{re.escape(smiles[3])}"):
        model.fit(dc.data.NumpyDataset(featurized, y, ids=np.array(smiles)), nb_epoch=1)
    text = np.array([["yes"]] * len(featurized), dtype=object)
    with pytest.raises(InvalidInputError, match="Labels must be numbers.*yes"):
        model.fit(dc.data.NumpyDataset(featurized, text, ids=np.array(smiles)), nb_epoch=1)


def test_a_non_finite_loss_stops_training_before_the_weights_change(small_featurizer, featurized):
    y = np.full((len(featurized), 1), 1e30)  # finite in float32, its square is not
    model = early(small_featurizer.modalities)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    with pytest.raises(DeepfuseError, match=r"loss became inf at epoch 1, batch 1.*normalise"):
        model.fit(dc.data.NumpyDataset(featurized, y), nb_epoch=1)
    for name, value in model.model.state_dict().items():
        if name != "epochs_started":  # the epoch did start
            assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    "setting",
    [
        {"batch_size": 0},
        {"batch_size": -5},
        {"batch_size": 2.5},
        {"batch_size": True},
        {"learning_rate": float("nan")},
        {"learning_rate": -1e-3},
        {"learning_rate": 0.0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"modality_dropout": 1.0},
        {"encoder_dim": 0},
        {"fused_dim": 8.5},
        {"head_hidden": -1},
        {"fusion_loss_weight": float("inf")},
        {"unimodal_loss_weight": -1.0},
        {"evidential_lambda": float("nan")},
        {"n_classes": 1},
        {"mode": "ranking"},
        {"fusion_layers": 0},
        {"progress": "yes"},
    ],
)
def test_invalid_settings_are_refused_at_construction(small_featurizer, setting):
    name, value = next(iter(setting.items()))
    if name == "n_classes":
        setting = {**setting, "mode": "classification"}
    with pytest.raises(InvalidSettingError, match=name) as err:
        early(small_featurizer.modalities, **setting)
    assert repr(value) in str(err.value) or str(value) in str(err.value)


@pytest.mark.parametrize(
    "model_cls,setting",
    [
        ("DynamicFusionModel", {"mask_end": 1.0}),
        ("DynamicFusionModel", {"gate_hidden": 0}),
        ("DynamicFusionModel", {"lambda_align": -1.0}),
        ("LateFusionModel", {"stacking_hidden": 0}),
        ("GatedMoEFusionModel", {"top_k": 0}),
        ("GatedMoEFusionModel", {"balance_weight": -1}),
        ("CrossAttentionFusionModel", {"n_heads": 3}),
        ("CrossAttentionFusionModel", {"pooling": "max"}),
    ],
)
def test_invalid_subclass_settings_are_refused(small_featurizer, model_cls, setting):
    with pytest.raises(InvalidSettingError, match=next(iter(setting))):
        getattr(dfp, model_cls)(
            1, small_featurizer.modalities, encoder_dim=16, progress=False, **setting
        )


@pytest.mark.parametrize("nb_epoch", [0, -1, 1.5])
def test_fit_refuses_a_bad_epoch_count(saved, nb_epoch):
    model, ds, _ = saved
    with pytest.raises(InvalidSettingError, match=f"nb_epoch.*{nb_epoch}"):
        model.fit(ds, nb_epoch=nb_epoch)


# -- featurizer / model mismatches ----------------------------------------------------------------
def test_check_featurizer_names_the_field_and_both_values(saved, small_featurizer):
    model = saved[0]
    model.check_featurizer(small_featurizer)
    model.check_featurizer(small_featurizer.modalities)
    longer = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=128, max_length=100, progress=False
    )
    with pytest.raises(InvalidSettingError, match="'smiles' max_length: model 48, featurizer 100"):
        model.check_featurizer(longer)
    wider = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=256, max_length=48, progress=False
    )
    with pytest.raises(InvalidSettingError, match="'ecfp' dim: model 128, featurizer 256"):
        model.check_featurizer(wider)
    with pytest.raises(InvalidSettingError, match=r"modalities \['graph'\]"):
        model.check_featurizer(dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False))


def test_fit_refuses_token_sequences_longer_than_the_model_allows(saved, small_featurizer):
    model = saved[0]
    long_smiles = "C" * 70
    longer = dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=128, max_length=100, progress=False
    )
    X = longer.featurize(["CCO", long_smiles])
    ds = dc.data.NumpyDataset(X, np.zeros((2, 1)), ids=np.array(["short", "long"]))
    with pytest.raises(InvalidInputError, match=r"max_length=48.*\('long', 7\d\)"):
        model.fit(ds, nb_epoch=1)
