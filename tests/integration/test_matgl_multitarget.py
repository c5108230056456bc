"""The MatGL route with more than one target: collate_fn_targets, MatMMFuse.target_names, the
multi-target loss and per-target MAE of MultiModalLightningModule, save/load (versioned: a
single-target model saved before target names existed still loads)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("matgl")
pytest.importorskip("pymatgen.core")

import lightning as L
import matgl
import torch
import torch.nn.functional as F
from matgl.ext.pymatgen import Structure2Graph
from matgl.graph.data import collate_fn_graph
from matgl.utils.training import ModelLightningModule
from torch.utils.data import DataLoader

from deepfuse_plugin.errors import CorruptCheckpointError, InvalidInputError, InvalidSettingError
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
from deepfuse_plugin.matgl import (
    MatMMFuse,
    MultiModalLightningModule,
    MultiModalMGLDataset,
    collate_fn_targets,
)
from tests.unit.test_crystal_structures import (
    cscl,
    lone_atom,
    nacl,
    srtio3,
    with_isolated_atom,
)

TINY = dict(
    backbone="cgcnn",
    backbone_options={"atom_fea_len": 8, "n_conv": 1},
    encoder_dim=8,
    fused_dim=8,
    head_hidden=8,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def structures():
    salt = nacl()  # built from its space group: slow, so built once
    return [salt, cscl(), srtio3(), with_isolated_atom(), lone_atom(), salt.copy()]


@pytest.fixture(scope="module")
def labels(structures):
    n = len(structures)
    # two targets in very different units, as formation energy (eV/atom) and a band gap (eV)
    return {"eform": np.linspace(-2.0, 0.5, n).tolist(), "band_gap": np.linspace(0, 60, n).tolist()}


@pytest.fixture(scope="module")
def converter(structures):
    return Structure2Graph(sorted({el.symbol for s in structures for el in s.composition}), 4.0)


@pytest.fixture(scope="module")
def featurizer():
    return CrystalMultiModalFeaturizer(["composition"], progress=False, cache_dir=False)


@pytest.fixture(scope="module")
def two_targets(structures, labels, converter, featurizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("two") / "data"
    return MultiModalMGLDataset(structures, labels, converter, featurizer, root=str(root))


def _one_target(structures, labels, converter, featurizer, root):
    labels = {"eform": labels["eform"]}
    return MultiModalMGLDataset(structures, labels, converter, featurizer, root=str(root))


def _trainer():
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _scaling(labels):
    y = np.column_stack([labels["eform"], labels["band_gap"]])
    return y.mean(0).tolist(), y.std(0).tolist()


def test_collate_stacks_every_label_in_the_datasets_order(two_targets, labels):
    assert two_targets.target_names == ["eform", "band_gap"]
    batch = [two_targets[i] for i in range(4)]
    g, lattices, state, targets = collate_fn_targets(batch)
    assert targets.shape == (4, 2) and targets.dtype == matgl.float_th
    np.testing.assert_allclose(targets[:, 0], labels["eform"][:4], rtol=1e-6)
    np.testing.assert_allclose(targets[:, 1], labels["band_gap"][:4], rtol=1e-6)
    # the gap it closes: MatGL's own collate keeps the first label only
    assert collate_fn_graph(batch)[3].shape == (4,)
    reference = collate_fn_graph(batch)
    assert torch.equal(g.edge_index, reference[0].edge_index)
    assert torch.equal(g.node_type, reference[0].node_type)
    assert torch.equal(lattices, reference[1])
    assert torch.equal(state, reference[2])


def test_collate_of_one_label_is_matgls(structures, labels, converter, featurizer, tmp_path):
    data = _one_target(structures, labels, converter, featurizer, tmp_path / "one")
    batch = [data[i] for i in range(3)]
    assert torch.equal(collate_fn_targets(batch)[3], collate_fn_graph(batch)[3])
    assert torch.equal(collate_fn_targets(batch[:1])[1], collate_fn_graph(batch[:1])[1])


def test_two_targets_train_log_predict_save_and_load(two_targets, labels, tmp_path):
    torch.manual_seed(0)
    mean, std = _scaling(labels)
    model = MatMMFuse.from_dataset(two_targets, data_mean=mean, data_std=std, **TINY)
    assert model.n_tasks == 2 and model.target_names == ("eform", "band_gap")
    loader = DataLoader(two_targets, batch_size=3, collate_fn=collate_fn_targets)
    trainer = _trainer()
    trainer.fit(MultiModalLightningModule(model, lr=3e-3), loader, loader)
    metrics = trainer.callback_metrics
    for key in ("val_MAE", "val_MAE_eform", "val_MAE_band_gap", "train_MAE_band_gap"):
        assert np.isfinite(float(metrics[key])), key
    # the pooled MAE is the mean of the per-target ones (every row has both targets)
    pooled = (float(metrics["val_MAE_eform"]) + float(metrics["val_MAE_band_gap"])) / 2
    assert float(metrics["val_MAE"]) == pytest.approx(pooled, rel=1e-4)

    before = model.predict_structure(srtio3())
    assert before.shape == (2,)
    named = model.predict_targets(srtio3())
    assert list(named) == ["eform", "band_gap"]
    assert named["band_gap"] == pytest.approx(float(before[1]), abs=1e-6)
    model.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["@model_version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = matgl.load_model(tmp_path / "model")
    assert restored.target_names == ("eform", "band_gap") and restored.data_std == std
    torch.testing.assert_close(restored.predict_structure(srtio3()), before, atol=1e-5, rtol=0)


def test_loss_is_the_mean_over_standardized_targets(two_targets, labels):
    mean, std = _scaling(labels)
    model = MatMMFuse.from_dataset(two_targets, data_mean=mean, data_std=std, **TINY)
    module = MultiModalLightningModule(model)
    torch.manual_seed(1)
    y = torch.tensor([[-1.0, 10.0], [0.0, 40.0], [0.3, 55.0]])
    preds = torch.randn(3, 2)
    results = module.loss_fn(F.mse_loss, y, preds)
    m, s = torch.tensor(mean), torch.tensor(std)
    per_target = ((preds - (y - m) / s) ** 2).mean(0)
    assert float(results["Total_Loss"]) == pytest.approx(float(per_target.mean()), rel=1e-5)
    scaled = preds * s + m
    assert float(results["MAE_band_gap"]) == pytest.approx(
        float((scaled[:, 1] - y[:, 1]).abs().mean()), rel=1e-5
    )
    assert float(results["MAE"]) == pytest.approx(float((scaled - y).abs().mean()), rel=1e-5)


def test_matgls_first_label_only_batches_are_refused_clearly(two_targets):
    model = MatMMFuse.from_dataset(two_targets, **TINY)
    module = MultiModalLightningModule(model)
    g, lattices, state, first_only = collate_fn_graph([two_targets[i] for i in range(3)])
    preds = module(g=g, lat=lattices, state_attr=state)
    with pytest.raises(InvalidInputError, match="collate_fn_targets"):
        module.loss_fn(F.mse_loss, first_only, preds)


def test_one_target_trains_exactly_as_matgl_does(
    structures, labels, converter, featurizer, tmp_path
):
    data = _one_target(structures, labels, converter, featurizer, tmp_path / "one")
    model = MatMMFuse.from_dataset(data, data_mean=-0.7, data_std=0.8, **TINY)
    assert model.n_tasks == 1 and model.target_names == ("eform",) and model.data_mean == -0.7
    ours = MultiModalLightningModule(model)
    matgls = ModelLightningModule(model=model, data_mean=-0.7, data_std=0.8)
    y, preds = torch.tensor([-1.0, 0.2, 0.4]), torch.tensor([0.1, -0.3, 0.9])
    expected = matgls.loss_fn(F.mse_loss, y, preds)
    results = ours.loss_fn(F.mse_loss, y, preds)
    assert set(results) == {"Total_Loss", "MAE", "RMSE"}
    for key in results:
        assert float(results[key]) == pytest.approx(float(expected[key]), rel=1e-6)


def _as_version_1(folder):
    """Rewrite a saved single-target model as deepfuse wrote it before target names."""
    args = torch.load(folder / "model.pt", weights_only=True)
    assert args["n_tasks"] == 1 and isinstance(args["data_mean"], float)
    del args["target_names"]
    torch.save(args, folder / "model.pt")
    meta = json.loads((folder / "model.json").read_text())
    meta["@model_version"] = 1
    del meta["kwargs"]["target_names"]
    (folder / "model.json").write_text(json.dumps(meta))


def test_a_version_1_single_target_model_still_loads(
    structures, labels, converter, featurizer, tmp_path
):
    data = _one_target(structures, labels, converter, featurizer, tmp_path / "one")
    model = MatMMFuse.from_dataset(data, data_mean=-0.7, data_std=0.8, **TINY)
    before = float(model.predict_structure(srtio3()))
    model.save(tmp_path / "old")
    _as_version_1(tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MatGL warns on every older version: not for these
        restored = matgl.load_model(tmp_path / "old")
    assert restored.n_tasks == 1 and restored.target_names == ("y",)
    assert float(restored.predict_structure(srtio3())) == pytest.approx(before, abs=1e-6)
    assert restored.predict_targets(srtio3()) == {"y": pytest.approx(before, abs=1e-6)}


def test_a_model_from_a_newer_deepfuse_is_refused(two_targets, tmp_path):
    MatMMFuse.from_dataset(two_targets, **TINY).save(tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "model.json").read_text())
    (tmp_path / "new" / "model.json").write_text(json.dumps({**meta, "@model_version": 99}))
    with pytest.raises(CorruptCheckpointError, match="format 99.*upgrade deepfuse"):
        MatMMFuse.load(tmp_path / "new")
    with pytest.raises(ValueError) as raised:  # MatGL's load_model re-raises as ValueError
        matgl.load_model(tmp_path / "new")
    assert isinstance(raised.value.__cause__, CorruptCheckpointError)


def test_target_settings_that_cannot_work_are_refused(
    two_targets, structures, converter, featurizer, tmp_path
):
    with pytest.raises(InvalidSettingError, match="n_tasks=1 but 2 target_names"):
        MatMMFuse([], n_tasks=1, target_names=["a", "b"], **TINY)
    with pytest.raises(InvalidSettingError, match="distinct"):
        MatMMFuse([], target_names=["a", "a"], **TINY)
    with pytest.raises(InvalidSettingError, match="data_std has 3 values for 2 targets"):
        MatMMFuse([], target_names=["a", "b"], data_std=[1.0, 2.0, 3.0], **TINY)
    with pytest.raises(InvalidSettingError, match="the dataset has 2 labels"):
        MatMMFuse.from_dataset(two_targets, n_tasks=1, **TINY)
    assert MatMMFuse([], n_tasks=3, **TINY).target_names == ("task_0", "task_1", "task_2")
    with pytest.raises(InvalidInputError, match="'gaps' holds 2 values per structure"):
        MultiModalMGLDataset(
            structures[:2],
            {"gaps": [[0.0, 1.0], [2.0, 3.0]]},
            converter,
            featurizer,
            root=str(tmp_path / "vector"),
        )
