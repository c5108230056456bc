"""Models on the CHGNet view: MatMMFuse (atoms attend over CHGNet's atom states), DynamicFusion
and late fusion in the DeepChem route, and MatMMFuse in the MatGL route (1 epoch, tiny)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("chgnet")

import deepchem as dc  # noqa: E402
import torch  # noqa: E402

import deepfuse_plugin as dfp  # noqa: E402
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from tests.unit.test_crystal_structures import (  # noqa: E402
    cscl,
    disordered,
    srtio3,
    with_isolated_atom,
)

TINY = dict(
    encoder_dim=16,
    fused_dim=16,
    head_hidden=16,
    batch_size=3,
    learning_rate=3e-3,
    progress=False,
    encoder_options={"crystal_graph": {"atom_fea_len": 16, "n_conv": 1}},
)
BUILDERS = [cscl, srtio3, with_isolated_atom, disordered]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    return CrystalMultiModalFeaturizer(
        ["graph", "composition", "chgnet", "chgnet_atoms"],
        progress=False,
        cache_dir=tmp_path_factory.mktemp("chgnet_models"),
    )


@pytest.fixture(scope="module")
def dataset(featurizer):
    samples = featurizer.featurize([build() for build in BUILDERS])
    y = np.linspace(-1.0, 1.0, len(samples)).reshape(-1, 1)
    return dc.data.NumpyDataset(samples, y, ids=np.array([b.__name__ for b in BUILDERS]))


def _specs(featurizer, *names):
    return [m for m in featurizer.modalities if m.name in names]


def test_matmmfuse_atoms_attend_over_chgnet_atom_states(featurizer, dataset, tmp_path):
    specs = _specs(featurizer, "graph", "chgnet_atoms")
    model = dc.models.MatMMFuseModel(1, specs, n_heads=2, model_dir=str(tmp_path), **TINY)
    assert type(model.model.encoders["chgnet_atoms"]).__name__ == "VectorSetEncoder"
    assert np.isfinite(model.fit(dataset, nb_epoch=1))
    predictions = model.predict(dataset)
    assert np.isfinite(predictions[:3]).all()  # the disordered row has neither view: NaN
    maps = model.attention_maps(dataset, "graph")
    assert maps[1].shape == (5, 1 + 5)  # SrTiO3: 5 graph atoms x (null + 5 CHGNet atoms)
    assert maps[2].shape == (3, 1)  # isolated atom: no CHGNet view, only the null key
    restored = dfp.MultiModalTorchModel.load(str(tmp_path))
    np.testing.assert_allclose(restored.predict(dataset), predictions, atol=1e-5)


def test_names_resolve_to_the_featurizer_specs(featurizer):
    model = dc.models.MatMMFuseModel(1, ["graph", "chgnet_atoms"], n_heads=2, **TINY)
    assert model.modalities == _specs(featurizer, "graph", "chgnet_atoms")


@pytest.mark.parametrize("model_cls", ["DynamicFusionModel", "LateFusionModel"])
def test_fusion_models_train_and_predict_with_the_chgnet_view(featurizer, dataset, model_cls):
    kwargs = dict(TINY)
    if model_cls == "DynamicFusionModel":
        kwargs.update(gate_hidden=8, decoder_hidden=16)
    model = getattr(dc.models, model_cls)(1, featurizer.modalities, **kwargs)
    assert np.isfinite(model.fit(dataset, nb_epoch=1))
    out = model.predict(dataset)
    assert out.shape == (4, 1) and np.isfinite(out).all()
    weights = model.modality_weights(dataset)
    assert weights.loc["disordered", "chgnet"] == 0.0  # missing view, no weight


def test_matgl_route_carries_chgnet_atom_states(tmp_path):
    pytest.importorskip("matgl")
    import lightning as L
    import matgl
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import collate_fn_graph
    from torch.utils.data import DataLoader

    from deepfuse_plugin.matgl import MatMMFuse, MultiModalLightningModule, MultiModalMGLDataset

    structures = [cscl(), srtio3(), with_isolated_atom()] * 2
    elements = sorted({el.symbol for s in structures for el in s.composition})
    featurizer = CrystalMultiModalFeaturizer(
        ["chgnet_atoms", "chgnet"], progress=False, cache_dir=tmp_path / "cache"
    )
    data = MultiModalMGLDataset(
        structures,
        {"e": np.linspace(-1.0, 1.0, len(structures)).tolist()},
        Structure2Graph(elements, cutoff=4.0),
        featurizer,
        root=str(tmp_path / "graphs"),
    )
    perovskite = data[1][0]
    assert perovskite.df_chgnet_atoms.shape == (5, 64) and perovskite.df_mask.tolist() == [[1, 1]]
    assert data[2][0].df_mask.tolist() == [[False, False]]  # isolated atom: missing, kept
    loader = DataLoader(data, batch_size=3, collate_fn=collate_fn_graph)
    model = MatMMFuse.from_dataset(
        data,
        backbone="cgcnn",
        backbone_options={"atom_fea_len": 16, "n_conv": 1},
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MultiModalLightningModule(model, lr=3e-3), loader, loader)
    assert np.isfinite(float(trainer.callback_metrics["val_MAE"]))
    before = float(model.predict_structure(srtio3()))
    model.save(tmp_path / "model")
    restored = matgl.load_model(tmp_path / "model")  # rebuilds the chgnet featurizer from specs
    assert float(restored.predict_structure(srtio3())) == pytest.approx(before, abs=1e-5)
    assert torch.isfinite(torch.tensor(before))
