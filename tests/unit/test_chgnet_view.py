"""The pretrained CHGNet crystal view: features, per-row failures, input limits, the disk cache,
the structure provider registry and the ``vector_set`` encoder (offline, tiny structures)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")
pytest.importorskip("chgnet")

import torch  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from deepfuse_plugin.data.collate import collate_samples  # noqa: E402
from deepfuse_plugin.feat.chgnet import CHGNetProvider  # noqa: E402
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.feat.crystal_pretrained import (  # noqa: E402
    StructureEmbedder,
    _decode,
    _encode,
)
from deepfuse_plugin.feat.pretrained import (  # noqa: E402
    StructureEmbedding,
    StructureEmbeddingProvider,
    available_structure_providers,
    register_structure_provider,
    structure_provider,
)
from deepfuse_plugin.nn.encoders import VectorSetEncoder, build_encoder  # noqa: E402
from tests.unit.test_crystal_structures import (  # noqa: E402
    cscl,
    disordered,
    srtio3,
    with_isolated_atom,
)

# built directly (pymatgen's space-group route costs seconds on its first call)


def magnesia() -> Structure:
    """MgO in the CsCl arrangement (2 atoms)."""
    return Structure(Lattice.cubic(2.6), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


NAMES = ["graph", "chgnet", "chgnet_atoms"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chgnet_cache")


@pytest.fixture(scope="module")
def featurizer(cache_dir):
    return CrystalMultiModalFeaturizer(NAMES, progress=False, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def samples(featurizer):
    return featurizer.featurize([cscl(), srtio3(), with_isolated_atom(), disordered()])


def test_specs_name_the_checkpoint(featurizer):
    crystal, atoms = featurizer.modalities[1:]
    assert (crystal.kind, crystal.dim, atoms.kind, atoms.dim) == ("embedding", 64, "vector_set", 64)
    settings = atoms.params["provider_settings"]
    assert settings["model"] == "0.3.0" and len(settings["checkpoint_sha256"]) == 64
    assert atoms.params["provider_options"] == {"model": "0.3.0"}  # no batch size or device
    assert crystal.params["provider_key"] == atoms.params["provider_key"]


def test_features_are_chgnets_own(samples):
    """The values are what CHGNet's public API returns for the same structure."""
    from chgnet.model import CHGNet

    reference = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    expected = reference.predict_structure(
        srtio3(), task="e", return_crystal_feas=True, return_atom_feas=True
    )
    sample = samples[1]
    np.testing.assert_allclose(sample.values["chgnet"], expected["crystal_fea"], atol=1e-5)
    atoms = sample.values["chgnet_atoms"]
    assert atoms.shape == (5, 64) and atoms.dtype == np.float16
    np.testing.assert_allclose(atoms.astype(np.float32), expected["atom_fea"], rtol=2e-3, atol=2e-3)
    assert not np.allclose(atoms[0], atoms[1])  # Sr and Ti differ: real per-site states


def test_structures_chgnet_cannot_take_are_missing_with_the_reason(featurizer, samples):
    assert len(samples) == 4 and featurizer.last_failures == {}
    isolated, mixed = samples[2], samples[3]
    assert isolated.present("graph") and not isolated.present("chgnet")
    assert "no neighbour within CHGNet's 6 A" in isolated.missing_reasons["chgnet_atoms"]
    assert not mixed.present("chgnet_atoms")
    assert "partial occupancies" in mixed.missing_reasons["chgnet"]


def test_input_limits_apply_before_chgnet(monkeypatch):
    seen = []
    original = CHGNetProvider.embed

    def recording(self, structures):
        seen.extend(structures)
        return original(self, structures)

    monkeypatch.setattr(CHGNetProvider, "embed", recording)
    too_close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    feat = CrystalMultiModalFeaturizer(["chgnet"], progress=False, cache_dir=False)
    out = feat.featurize([cscl(), too_close])
    assert "InputLimits.min_distance" in feat.last_failures[1] and len(out[1]) == 0
    assert [s.composition.reduced_formula for s in seen] == ["CsCl"]


def test_results_and_reasons_come_back_from_the_disk_cache(cache_dir, samples, monkeypatch):
    def no_model(self, structures):
        raise AssertionError("CHGNet ran although every structure was cached")

    monkeypatch.setattr(CHGNetProvider, "embed", no_model)
    again = CrystalMultiModalFeaturizer(NAMES, progress=False, cache_dir=cache_dir)
    cached = again.featurize([cscl(), srtio3(), with_isolated_atom(), disordered()])
    for before, after in zip(samples, cached):
        assert before.missing_reasons == after.missing_reasons
        for name in ("chgnet", "chgnet_atoms"):
            if before.present(name):
                assert np.array_equal(before.values[name], after.values[name])
    other = StructureEmbedder("chgnet", cache_dir=cache_dir, provider_options={"model": "0.2.0"})
    assert other.provider.key != again.modalities[1].params["provider_key"]


def test_cache_codec_round_trips():
    result = StructureEmbedding(np.arange(3, dtype=np.float32), np.ones((2, 4), np.float16))
    decoded = _decode(_encode(result))
    assert isinstance(decoded, StructureEmbedding)
    assert np.array_equal(decoded.crystal, result.crystal)
    assert np.array_equal(decoded.atoms, result.atoms) and decoded.atoms.dtype == np.float16
    assert _decode(_encode("no graph: Fe")) == "no graph: Fe"


@pytest.mark.parametrize("layers", [(3,), (3, 4)])
def test_a_failing_batch_costs_only_the_structure_responsible(monkeypatch, layers):
    provider = CHGNetProvider(batch_size=8, atom_layers=layers)
    network = provider._load()
    original = network.predict_graph

    def fails_on_five_atoms(graphs, **kwargs):
        if any(len(g.atomic_number) == 5 for g in graphs):
            raise RuntimeError("out of memory")
        return original(graphs, **kwargs)

    monkeypatch.setattr(network, "predict_graph", fails_on_five_atoms)
    first, perovskite, last = provider.embed([cscl(), srtio3(), magnesia()])
    assert isinstance(first, StructureEmbedding) and isinstance(last, StructureEmbedding)
    assert perovskite == "CHGNet failed on this structure (RuntimeError: out of memory)"
    assert first.atoms.shape == (2, 64 * len(layers)) and last.atoms.shape == (2, 64 * len(layers))


def test_a_failing_bond_graph_writes_nothing_into_the_working_folder(tmp_path, monkeypatch):
    """CHGNet's converter dumps bond_graph_error.cif into the working directory on this error."""
    from chgnet.graph import CrystalGraphConverter

    def chgnet_failure(self, structure, graph_id=None, mp_id=None):
        structure.to(filename="bond_graph_error.cif")
        raise RuntimeError(f"Failed creating bond graph for {graph_id}")

    monkeypatch.setattr(CrystalGraphConverter, "forward", chgnet_failure)
    monkeypatch.chdir(tmp_path)
    [result] = CHGNetProvider().embed([cscl()])
    assert result.startswith("CHGNet cannot build its graph (RuntimeError")
    assert list(tmp_path.iterdir()) == []


def test_specs_rebuild_the_featurizer_and_refuse_another_provider(featurizer):
    rebuilt = CrystalMultiModalFeaturizer(featurizer.modalities, progress=False, cache_dir=False)
    assert rebuilt.modalities == featurizer.modalities
    spec = featurizer.modalities[2]
    foreign = type(spec)(
        spec.name, spec.kind, dim=spec.dim, params={**spec.params, "provider_key": "chgnet:0"}
    )
    with pytest.raises(ValueError, match="install the same package version"):
        CrystalMultiModalFeaturizer([foreign], progress=False, cache_dir=False)


def test_a_name_and_a_saved_spec_of_the_same_network_share_one_embedder(featurizer):
    # "chgnet" by name (no options) and a saved "chgnet_atoms" spec ({"model": "0.3.0"}) are one
    # network: CHGNet must run once per structure, not once per modality
    mixed = CrystalMultiModalFeaturizer(
        ["chgnet", featurizer.modalities[2]], progress=False, cache_dir=False
    )
    assert len(mixed._structure_embedders) == 1


def test_structure_provider_registry():
    assert "chgnet" in available_structure_providers()
    assert isinstance(structure_provider("chgnet", batch_size=4), CHGNetProvider)
    impostor = type("Other", (StructureEmbeddingProvider,), {"name": "chgnet"})
    with pytest.raises(ValueError, match="already registered"):
        register_structure_provider(impostor)
    with pytest.raises(ValueError, match="registered: .*chgnet"):
        structure_provider("mace")
    with pytest.raises(ValueError, match="CHGNet model must be one of"):
        CHGNetProvider(model="9.9.9")


def test_atom_states_collate_and_encode_permutation_invariantly(featurizer, samples):
    batch = collate_samples(list(samples), featurizer.modalities)
    states = batch.inputs["chgnet_atoms"]
    assert states.states.shape == (4, 5, 64) and states.mask.sum(1).tolist() == [2, 5, 0, 0]
    encoder = build_encoder(featurizer.modalities[2], 16, {"n_layers": 1, "n_heads": 2})
    assert isinstance(encoder, VectorSetEncoder)
    encoder.eval()
    out = encoder(states)
    assert torch.isfinite(out.pooled).all() and (out.pooled[2:] == 0).all()  # missing: zeros
    order = torch.tensor([4, 2, 0, 3, 1])
    shuffled = type(states)(states.states[:, order], states.mask[:, order])
    perovskite = encoder(shuffled)
    torch.testing.assert_close(perovskite.pooled[1], out.pooled[1])
    torch.testing.assert_close(perovskite.tokens[1], out.tokens[1, order])


def test_without_the_chgnet_package_the_error_says_how_to_install(monkeypatch):
    import deepfuse_plugin.feat.chgnet as chgnet_view

    monkeypatch.setattr(chgnet_view, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install"):
        chgnet_view._package_dir()


def test_atom_layers_join_the_states_of_the_chosen_chgnet_layers():
    """``atom_layers=(3, 4)``: CHGNet's atom_fea, then the last convolution's output (checked
    against a hook on CHGNet's own network), in a spec of its own that rebuilds the same view."""
    from chgnet.model import CHGNet

    reference = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    last = []
    hook = reference.atom_conv_layers[3].register_forward_hook(lambda m, i, out: last.append(out))
    expected = reference.predict_structure(srtio3(), task="e", return_atom_feas=True)
    hook.remove()
    featurizer = CrystalMultiModalFeaturizer(
        ["chgnet_atoms", "chgnet_graph"],
        progress=False,
        cache_dir=False,
        pretrained_options={"chgnet": {"atom_layers": [3, 4]}},
    )
    atoms_spec, graph_spec = featurizer.modalities
    assert atoms_spec.dim == 128 and graph_spec.node_dim == 91 + 128
    assert atoms_spec.params["provider_options"] == {"model": "0.3.0", "atom_layers": [3, 4]}
    assert atoms_spec.params["provider_settings"]["atoms"] == "atom layers [3, 4]"
    default_key = CrystalMultiModalFeaturizer(["chgnet_atoms"], progress=False, cache_dir=False)
    assert atoms_spec.params["provider_key"] != default_key.modalities[0].params["provider_key"]
    [sample] = featurizer.featurize([srtio3()])
    atoms = sample.values["chgnet_atoms"].astype(np.float32)
    assert atoms.shape == (5, 128)
    np.testing.assert_allclose(atoms[:, :64], expected["atom_fea"], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(atoms[:, 64:], last[0].detach().numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(sample.values["chgnet_graph"].node_features[:, 91:], atoms)
    rebuilt = CrystalMultiModalFeaturizer(featurizer.modalities, progress=False, cache_dir=False)
    assert rebuilt.modalities == featurizer.modalities
    for bad in ([], [5], [3, 3]):
        with pytest.raises(ValueError, match="atom_layers must be distinct layers from 0"):
            CHGNetProvider(atom_layers=bad)
