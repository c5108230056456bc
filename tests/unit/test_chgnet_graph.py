"""The ``chgnet_graph`` modality: the CGCNN crystal graph with CHGNet's atom states appended to its
node features (offline, tiny structures)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("chgnet")

import deepchem as dc  # noqa: E402

import deepfuse_plugin as dfp  # noqa: E402
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.feat.crystal_modalities import CrystalGraphModality  # noqa: E402
from deepfuse_plugin.feat.crystal_pretrained import (  # noqa: E402
    PretrainedStateGraphModality,
    StructureEmbedder,
)
from tests.unit.test_chgnet_models import TINY  # noqa: E402
from tests.unit.test_crystal_structures import (  # noqa: E402
    cscl,
    disordered,
    srtio3,
    with_isolated_atom,
)

BUILDERS = [cscl, srtio3, with_isolated_atom, disordered]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory):
    return CrystalMultiModalFeaturizer(
        ["graph", "chgnet_atoms", "chgnet_graph"],
        radius=6.0,  # not CGCNN's default: the spec must carry the graph's own settings
        progress=False,
        cache_dir=tmp_path_factory.mktemp("chgnet_graph"),
    )


@pytest.fixture(scope="module")
def samples(featurizer):
    return featurizer.featurize([build() for build in BUILDERS])


def test_nodes_are_the_graphs_atom_features_then_chgnets_states(featurizer, samples):
    graph_spec, _, spec = featurizer.modalities
    assert (spec.kind, spec.node_dim, spec.edge_dim) == ("crystal_graph", 91 + 64, 31)
    assert spec.params["radius"] == 6.0 and spec.params["level"] == "graph"
    perovskite = samples[1]
    plain, states = perovskite.values["graph"], perovskite.values["chgnet_atoms"]
    fused = perovskite.values["chgnet_graph"]
    assert fused.node_features.shape == (5, 155) and fused.node_features.dtype == np.float32
    np.testing.assert_array_equal(fused.node_features[:, :91], plain.node_features)
    np.testing.assert_array_equal(fused.node_features[:, 91:], states.astype(np.float32))
    np.testing.assert_array_equal(fused.edge_index, plain.edge_index)
    np.testing.assert_array_equal(fused.edge_features, plain.edge_features)
    assert len(featurizer._structure_embedders) == 1  # one CHGNet pass feeds both views


def test_a_structure_chgnet_cannot_take_keeps_its_plain_graph(samples):
    isolated, mixed = samples[2], samples[3]
    assert isolated.present("graph") and not isolated.present("chgnet_graph")
    assert "no neighbour within CHGNet's 6 A" in isolated.missing_reasons["chgnet_graph"]
    assert not mixed.present("chgnet_graph")
    assert "partial occupancies" in mixed.missing_reasons["chgnet_graph"]


def test_the_spec_rebuilds_the_same_modality_and_refuses_another_provider(featurizer, samples):
    spec = featurizer.modalities[2]
    rebuilt = CrystalMultiModalFeaturizer([spec], progress=False, cache_dir=False)
    assert rebuilt.modalities == [spec]
    [again] = rebuilt.featurize([srtio3()])
    np.testing.assert_array_equal(
        again.values["chgnet_graph"].node_features, samples[1].values["chgnet_graph"].node_features
    )
    foreign = type(spec)(
        spec.name,
        spec.kind,
        node_dim=spec.node_dim,
        edge_dim=spec.edge_dim,
        params={**spec.params, "provider_key": "chgnet:0"},
    )
    with pytest.raises(ValueError, match="install the same package version"):
        CrystalMultiModalFeaturizer([foreign], progress=False, cache_dir=False)


def test_a_site_count_mismatch_is_a_reason_not_a_wrong_graph():
    class Truncated(StructureEmbedder):
        def embedding(self, structure):
            result = super().embedding(structure)
            return type(result)(result.crystal, result.atoms[:-1])

    modality = PretrainedStateGraphModality(
        Truncated("chgnet", cache_dir=False), CrystalGraphModality()
    )
    featurizer = CrystalMultiModalFeaturizer([modality], progress=False, cache_dir=False)
    [sample] = featurizer.featurize([srtio3()])
    assert not sample.present("chgnet_graph")
    assert "4 atom states for 5 sites" in sample.missing_reasons["chgnet_graph"]


def test_cgcnn_and_matmmfuse_train_on_it_and_reload(featurizer, samples, tmp_path):
    y = np.linspace(-1.0, 1.0, len(samples)).reshape(-1, 1)
    dataset = dc.data.NumpyDataset(samples, y, ids=np.array([b.__name__ for b in BUILDERS]))
    specs = [m for m in featurizer.modalities if m.name in ("chgnet_graph", "graph")]
    model = dc.models.MatMMFuseModel(1, specs, n_heads=2, model_dir=str(tmp_path), **TINY)
    assert model.model.encoders["chgnet_graph"].embedding.in_features == 155
    assert np.isfinite(model.fit(dataset, nb_epoch=1))
    predictions = model.predict(dataset)
    assert np.isfinite(predictions[:3]).all()
    restored = dfp.MultiModalTorchModel.load(str(tmp_path))
    np.testing.assert_allclose(restored.predict(dataset), predictions, atol=1e-5)
    alone = dc.models.MatMMFuseModel(1, [featurizer.modalities[2]], **TINY)
    assert np.isfinite(alone.fit(dataset, nb_epoch=1))


def test_the_matgl_route_refuses_it_instead_of_dropping_it(featurizer, tmp_path):
    pytest.importorskip("matgl")
    from deepfuse_plugin.matgl import MultiModalMGLDataset
    from deepfuse_plugin.matgl._data import _extra_modalities

    structures = [srtio3(), cscl()]
    with pytest.raises(ValueError, match=r"\['chgnet_graph'\].*'chgnet_atoms'"):
        MultiModalMGLDataset(structures, {"e": [0.0, 1.0]}, None, featurizer, root=str(tmp_path))
    plain = CrystalMultiModalFeaturizer(["graph", "chgnet_atoms"], progress=False, cache_dir=False)
    assert [m.name for m in _extra_modalities(plain)] == ["chgnet_atoms"]
