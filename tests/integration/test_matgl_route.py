"""The MatGL route: MultiModalMGLDataset, MatMMFuse (a MatGLModel), MatGL's Lightning training,
``model.save`` / ``matgl.load_model``; and MatGL backbones (MEGNet/M3GNet) in the DeepChem route."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("matgl")
pytest.importorskip("pymatgen.core")

import deepchem as dc
import lightning as L
import matgl
import torch
from matgl.ext.pymatgen import Structure2Graph
from matgl.graph.data import collate_fn_graph
from torch.utils.data import DataLoader

import deepfuse_plugin  # noqa: F401
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
from deepfuse_plugin.matgl import (
    MatMMFuse,
    MultiModalLightningModule,
    MultiModalMGLDataset,
    attach_positions,
    modality_inputs,
)
from tests.unit.test_crystal_structures import (
    cscl,
    lone_atom,
    nacl,
    needs_text_model,
    silicon,
    srtio3,
    with_isolated_atom,
)

BUILDERS = [nacl, cscl, silicon, srtio3, with_isolated_atom, lone_atom]
TINY = dict(encoder_dim=16, fused_dim=16, head_hidden=16, dropout=0.0)
TINY_BACKBONE = {
    "megnet": {"nblocks": 1},
    "m3gnet": {"nblocks": 1, "units": 16},
    "cgcnn": {"atom_fea_len": 16, "n_conv": 1},
}


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    needs_text_model()
    return CrystalMultiModalFeaturizer(
        ["text_sentences", "composition"],
        progress=False,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="module")
def structures():
    return [build() for build in BUILDERS] * 2


@pytest.fixture(scope="module")
def labels(structures):
    return {"eform": np.linspace(-2.0, 1.0, len(structures)).tolist()}


@pytest.fixture(scope="module")
def converter(structures):
    elements = sorted({el.symbol for s in structures for el in s.composition})
    return Structure2Graph(elements, cutoff=4.0)


@pytest.fixture(scope="module")
def mgl_dataset(structures, labels, converter, featurizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("mgl") / "data"
    return MultiModalMGLDataset(structures, labels, converter, featurizer, root=str(root))


def _loader(dataset, shuffle=False):
    return DataLoader(dataset, batch_size=4, shuffle=shuffle, collate_fn=collate_fn_graph)


def test_dataset_attaches_modalities_and_reloads(mgl_dataset, featurizer):
    graph, lattice, state, label = mgl_dataset[0]
    assert graph.df_text_sentences.shape[1] == 384 and graph.df_text_sentences_n.item() >= 2
    assert graph.df_composition.shape == (1, 140)
    assert graph.df_mask.tolist() == [[True, True]]
    assert [m.name for m in mgl_dataset.modalities] == ["text_sentences", "composition"]
    reloaded = MultiModalMGLDataset(root=mgl_dataset.root)  # load-only flow
    assert len(reloaded) == len(mgl_dataset)
    assert [m.fingerprint for m in reloaded.modalities] == [
        m.fingerprint for m in mgl_dataset.modalities
    ]
    assert torch.equal(reloaded[3][0].df_composition, mgl_dataset[3][0].df_composition)


def test_batch_inputs_are_padded_per_crystal(mgl_dataset):
    g, lattice, state, labels = next(iter(_loader(mgl_dataset)))
    inputs, mask = modality_inputs(g, mgl_dataset.modalities)
    counts = g.df_text_sentences_n.tolist()
    sentences = inputs["text_sentences"]
    assert sentences.states.shape == (4, max(counts), 384)
    assert sentences.mask.sum(1).tolist() == counts
    assert inputs["composition"].shape == (4, 140) and mask.shape == (4, 2)


def test_missing_text_is_data_not_an_error(structures, labels, converter, featurizer, tmp_path):
    from deepfuse_plugin.matgl import attach_modalities

    ds = MultiModalMGLDataset(
        structures[:4],
        {"eform": labels["eform"][:4]},
        converter,
        featurizer,
        root=str(tmp_path / "d"),
        save_cache=False,
    )
    graph = ds[0][0]
    sample = featurizer.featurize([structures[0]])[0].without(["text_sentences"])
    attach_modalities(graph, sample, ds.modalities)
    assert graph.df_mask.tolist() == [[False, True]] and graph.df_text_sentences_n.item() == 0
    model = MatMMFuse.from_dataset(
        ds, backbone="cgcnn", backbone_options=TINY_BACKBONE["cgcnn"], **TINY
    )
    from torch_geometric.data import Batch

    batch = Batch.from_data_list([graph, ds[1][0]])
    attach_positions(batch, torch.stack([ds[0][1], ds[1][1]]))
    model.eval()
    assert torch.isfinite(model(batch)).all()


@pytest.mark.parametrize(
    "backbone,fusion", [("megnet", "cross_attention"), ("m3gnet", "dynamic"), ("cgcnn", "late")]
)
def test_lightning_fit_save_load_predict(mgl_dataset, labels, backbone, fusion, tmp_path):
    torch.manual_seed(0)
    y = np.asarray(labels["eform"])
    model = MatMMFuse.from_dataset(
        mgl_dataset,
        backbone=backbone,
        fusion=fusion,
        backbone_options=TINY_BACKBONE[backbone],
        data_mean=float(y.mean()),
        data_std=float(y.std()),
        **TINY,
    )
    module = MultiModalLightningModule(model, lr=3e-3)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, _loader(mgl_dataset, shuffle=True), _loader(mgl_dataset))
    assert np.isfinite(float(trainer.callback_metrics["val_MAE"]))
    if fusion == "dynamic":
        assert float(trainer.callback_metrics["train_Aux_Loss"]) > 0
    before = model.predict_structure(nacl())
    model.save(tmp_path / "model")
    restored = matgl.load_model(tmp_path / "model")
    assert type(restored) is MatMMFuse and restored.fusion_kind == fusion
    assert float(restored.predict_structure(nacl())) == pytest.approx(float(before), abs=1e-5)
    # a MatGL model: MatGL's own Lightning module drives it too
    from matgl.utils.training import ModelLightningModule

    plain = ModelLightningModule(model=restored, data_mean=float(y.mean()), data_std=float(y.std()))
    L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(plain, _loader(mgl_dataset))


def test_graph_only_baseline_and_errors(mgl_dataset):
    baseline = MatMMFuse(
        [],
        backbone="megnet",
        element_types=mgl_dataset.converter.element_types,
        backbone_options=TINY_BACKBONE["megnet"],
        **TINY,
    )
    assert baseline.fusion_kind == "projection"
    g, lattice, state, _ = next(iter(_loader(mgl_dataset)))
    attach_positions(g, lattice)
    assert baseline(g).shape == (4,)
    with pytest.raises(ValueError, match="backbone"):
        MatMMFuse([], backbone="schnet")
    with pytest.raises(ValueError, match="fusion"):
        MatMMFuse(mgl_dataset.modalities, fusion="sum")
    model = MatMMFuse.from_dataset(
        mgl_dataset, backbone="cgcnn", backbone_options=TINY_BACKBONE["cgcnn"], **TINY
    )
    del g.df_composition
    with pytest.raises(ValueError, match="composition"):
        model(g)


def test_dataset_rejects_bad_rows_by_index(structures, converter, featurizer, tmp_path):
    with pytest.raises(TypeError, match=r"rows \[1\]"):
        MultiModalMGLDataset(
            [structures[0], "NaCl"],
            {"e": [0.0, 1.0]},
            converter,
            featurizer,
            root=str(tmp_path / "a"),
        )
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        MultiModalMGLDataset(
            structures[:2],
            {"e": [0.0, float("nan")]},
            converter,
            featurizer,
            root=str(tmp_path / "b"),
        )


def test_dataset_leaves_the_callers_labels_as_given(structures, converter, featurizer, tmp_path):
    # MGLDataset turns arrays into lists inside the dict it gets: it must get a copy
    given = {"e": np.array([0.0, 1.0])}
    data = MultiModalMGLDataset(structures[:2], given, converter, featurizer, root=str(tmp_path))
    assert isinstance(given["e"], np.ndarray) and given["e"].tolist() == [0.0, 1.0]
    assert data.labels == {"e": [0.0, 1.0]}


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet"])
def test_matgl_backbones_in_the_deepchem_route(backbone, tmp_path):
    feat = CrystalMultiModalFeaturizer(
        ["matgl_graph", "composition"], progress=False, cache_dir=False
    )
    samples = feat.featurize([build() for build in BUILDERS])
    graph = samples[5].values["matgl_graph"]  # lone atom: no neighbour within 4 Å
    assert graph.edge_index.shape == (2, 0) and graph.node_features.shape == (1, 4)
    y = np.linspace(0, 1, len(samples)).reshape(-1, 1)
    ds = dc.data.NumpyDataset(samples, y)
    model = dc.models.MatMMFuseModel(
        1,
        feat.modalities,
        backbone=backbone,
        batch_size=3,
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
        model_dir=str(tmp_path),
        progress=False,
        encoder_options={"crystal_graph": TINY_BACKBONE[backbone]},
    )
    model.fit(ds, nb_epoch=1)
    before = model.predict(ds)
    model.save_checkpoint()
    restored = dc.models.MatMMFuseModel(
        1,
        feat.modalities,
        backbone=backbone,
        batch_size=3,
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
        model_dir=str(tmp_path),
        progress=False,
        encoder_options={"crystal_graph": TINY_BACKBONE[backbone]},
    )
    restored.restore()
    np.testing.assert_allclose(restored.predict(ds), before, atol=1e-5)


def test_cgcnn_format_graph_refuses_matgl_backbone():
    feat = CrystalMultiModalFeaturizer(["graph"], progress=False, cache_dir=False)
    with pytest.raises(ValueError, match="matgl_graph"):
        dc.models.MatMMFuseModel(1, feat.modalities, backbone="megnet")


class _Planted:
    """Unpickling this creates ``marker``: code planted in a dataset cache folder."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("planted", ["graphs", "legacy_matgl_cache"])
def test_a_planted_pickle_in_a_dataset_cache_is_refused_not_run(mgl_dataset, tmp_path, planted):
    import json
    import shutil
    from pathlib import Path

    from deepfuse_plugin.errors import CorruptCheckpointError
    from deepfuse_plugin.matgl._data import CACHE_FILES, METADATA_FILE

    root = Path(tmp_path / "cache")
    shutil.copytree(mgl_dataset.root, root)
    assert sorted(CACHE_FILES.values()) == sorted(p.name for p in root.glob("deepfuse_*.pt"))
    marker = str(tmp_path / "pwned")
    if planted == "graphs":
        torch.save([_Planted(marker)], root / CACHE_FILES["filename"])
        match = "deepfuse_graphs.pt cannot be read safely"
    else:  # MatGL's own (and deepfuse format 1) layout: pickled PyG graphs
        for name in CACHE_FILES.values():
            (root / name).unlink()
        for name in ("pyg_graph.pt", "lattice.pt", "state_attr.pt"):
            torch.save([_Planted(marker)], root / name)
        meta = json.loads((root / METADATA_FILE).read_text())
        (root / METADATA_FILE).write_text(json.dumps({**meta, "format": 1}))
        match = "MatGL's pickled format"
    with pytest.raises(CorruptCheckpointError, match=match):
        MultiModalMGLDataset(root=str(root))
    assert not os.path.exists(marker)
