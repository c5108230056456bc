"""Each built-in modality of MultiModalFeaturizer: the values a user (or an encoder) relies on."""

from __future__ import annotations

import deepchem as dc
import numpy as np
import pytest
import selfies as sf
from rdkit import Chem

import deepfuse_plugin as dfp
from deepfuse_plugin.feat.molecule import (
    ATOM_FEATURE_DIM,
    BOND_FEATURE_DIM,
    DescriptorsModality,
    atom_bond_features,
)
from deepfuse_plugin.feat.tokenizers import BOS, EOS, PAD, tokenize_selfies, tokenize_smiles

MOLS = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "CCCCCCCC"]


def feat(modalities, **kwargs):
    return dfp.MultiModalFeaturizer(modalities, progress=False, **kwargs)


def values(featurizer, smiles, name):
    return [s.values[name] for s in featurizer.featurize(smiles)]


# -- ecfp ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius,size", [(2, 2048), (1, 256), (3, 128)])
def test_ecfp_bits_match_deepchem_circular_fingerprint(radius, size):
    ours = np.stack(values(feat(["ecfp"], ecfp_radius=radius, ecfp_size=size), MOLS, "ecfp"))
    reference = dc.feat.CircularFingerprint(radius=radius, size=size).featurize(MOLS)
    assert ours.shape == (len(MOLS), size)
    assert ours.dtype == np.uint8  # bits as bytes; collate casts to float32
    assert set(np.unique(ours)) <= {0, 1}
    np.testing.assert_array_equal(ours, reference)


def test_ecfp_counts_are_counts_and_agree_with_bits():
    bits = np.stack(values(feat(["ecfp"], ecfp_size=512), MOLS, "ecfp"))
    counts = np.stack(values(feat(["ecfp"], ecfp_size=512, ecfp_counts=True), MOLS, "ecfp"))
    reference = dc.feat.CircularFingerprint(size=512, is_counts_based=True).featurize(MOLS)
    np.testing.assert_array_equal(counts, reference)
    # octane has six CH2 environments at radius 0: counts exceed 1, bits never do
    assert counts[-1].max() > 1
    np.testing.assert_array_equal(counts > 0, bits > 0)


def test_ecfp_radius_and_size_change_the_fingerprint_and_spec():
    r1 = feat(["ecfp"], ecfp_radius=1, ecfp_size=256)
    r3 = feat(["ecfp"], ecfp_radius=3, ecfp_size=256)
    a = values(r1, ["CC(=O)Nc1ccc(O)cc1"], "ecfp")[0]
    b = values(r3, ["CC(=O)Nc1ccc(O)cc1"], "ecfp")[0]
    assert b.sum() > a.sum()  # larger radius: more environments
    assert r1.modalities[0].dim == 256 and r1.modalities[0].params["radius"] == 1
    assert r3.modalities[0].params["radius"] == 3


# -- graph -----------------------------------------------------------------------------------------
def test_graph_shapes_and_both_edge_directions():
    g = values(feat(["graph"]), ["CC(=O)Nc1ccc(O)cc1"], "graph")[0]
    mol = Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1")
    n_atoms, n_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    assert g.node_features.shape == (n_atoms, ATOM_FEATURE_DIM)
    assert g.edge_index.shape == (2, 2 * n_bonds)
    assert g.edge_features.shape == (2 * n_bonds, BOND_FEATURE_DIM)
    assert g.node_features.dtype == np.float32 and g.edge_index.dtype == np.int64
    assert g.edge_index.min() >= 0 and g.edge_index.max() < n_atoms
    # every bond appears in both directions, with identical features
    pairs = {tuple(e): i for i, e in enumerate(g.edge_index.T.tolist())}
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        assert (a, b) in pairs and (b, a) in pairs
        np.testing.assert_array_equal(
            g.edge_features[pairs[(a, b)]], g.edge_features[pairs[(b, a)]]
        )


def test_graph_features_encode_chemistry():
    mol = Chem.MolFromSmiles("c1ccccc1C")
    g = atom_bond_features(mol)
    # each atom has exactly one hot entry in each of the 6 one-hot blocks
    one_hot_width = ATOM_FEATURE_DIM - 3
    np.testing.assert_array_equal(g.node_features[:, :one_hot_width].sum(1), 6)
    aromatic_col = one_hot_width
    assert g.node_features[:6, aromatic_col].tolist() == [1.0] * 6
    assert g.node_features[6, aromatic_col] == 0.0
    # bond types: aromatic ring bonds and one single bond, each a single one-hot in the first 4 cols
    np.testing.assert_array_equal(g.edge_features[:, :4].sum(1), 1)
    aromatic = g.edge_features[:, 3] == 1
    assert aromatic.sum() == 12  # 6 ring bonds x 2 directions
    ring = g.edge_features[:, 5] == 1
    np.testing.assert_array_equal(ring, aromatic)


def test_graph_of_a_single_atom_has_no_edges():
    g = values(feat(["graph"]), ["C"], "graph")[0]
    assert g.node_features.shape == (1, ATOM_FEATURE_DIM)
    assert g.edge_index.shape == (2, 0)
    assert g.edge_features.shape == (0, BOND_FEATURE_DIM)


# -- smiles / selfies ------------------------------------------------------------------------------
def test_smiles_tokens_have_bos_eos_and_decode_to_canonical_smiles():
    f = feat(["smiles"])
    spec = f.modalities[0]
    vocab = dfp.feat.molecule.Vocabulary(spec.vocab)
    for smi, ids in zip(MOLS, values(f, MOLS, "smiles")):
        assert ids.dtype == np.int64
        assert ids[0] == spec.vocab.index(BOS) and ids[-1] == spec.vocab.index(EOS)
        assert spec.vocab.index(PAD) not in ids.tolist()
        canonical = Chem.MolToSmiles(Chem.MolFromSmiles(smi))
        assert "".join(vocab.decode(ids)) == canonical
        assert len(ids) == len(tokenize_smiles(canonical)) + 2


def test_smiles_are_canonicalised_so_spellings_agree():
    f = feat(["smiles"])
    a, b = values(f, ["OCC", "C(O)C"], "smiles")
    np.testing.assert_array_equal(a, b)


def test_sequence_truncated_at_max_length_keeps_eos():
    long = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCO"
    for name in ("smiles", "selfies"):
        f = feat([name], max_length=10)
        ids = values(f, [long], name)[0]
        vocab = f.modalities[0].vocab
        assert len(ids) == 10
        assert f.modalities[0].max_length == 10
        assert ids[0] == vocab.index(BOS) and ids[-1] == vocab.index(EOS)
        # the kept tokens are the first 8 of the sequence
        assert list(ids[1:-1]) == [vocab.index("C" if name == "smiles" else "[C]")] * 8
        short = values(f, ["CO"], name)[0]
        assert len(short) < 10  # short sequences are not padded by the featurizer


def test_selfies_tokens_round_trip_to_the_molecule():
    f = feat(["selfies"])
    vocab = dfp.feat.molecule.Vocabulary(f.modalities[0].vocab)
    for smi, ids in zip(MOLS, values(f, MOLS, "selfies")):
        assert ids[0] == vocab._index[BOS] and ids[-1] == vocab._index[EOS]
        tokens = vocab.decode(ids)
        assert "[UNK]" not in tokens
        canonical = Chem.MolToSmiles(Chem.MolFromSmiles(smi))
        assert tokens == tokenize_selfies(sf.encoder(canonical))
        back = Chem.MolToSmiles(Chem.MolFromSmiles(sf.decoder("".join(tokens))))
        assert back == canonical


@pytest.mark.parametrize("name", ["smiles", "selfies"])
def test_default_vocabularies_cover_stereo_charged_and_aromatic_nh(name):
    # stereo centres, double-bond stereo, pyrrole [nH], salts: common in MoleculeNet (BBBP)
    common = [
        "C[C@H](N)C(=O)O",
        "C[C@@](O)(F)Cl",
        "F/C=C/F",
        "C/C=C\\C",
        "c1cc[nH]c1",
        "[Na+].[Cl-]",
        "C[N+](C)(C)C",
        "CC(=O)[O-]",
        "c1ccc2[nH]ccc2c1",
    ]
    f = feat([name])
    unk = f.modalities[0].vocab.index("[UNK]")
    for smi, ids in zip(common, values(f, common, name)):
        assert unk not in ids.tolist(), smi


# -- descriptors -----------------------------------------------------------------------------------
def test_descriptors_finite_and_sized_by_spec():
    f = feat(["descriptors"])
    spec = f.modalities[0]
    vals = values(f, MOLS + ["C", "[Na+].[Cl-]", "[H][H]"], "descriptors")
    for v in vals:
        assert v is not None and v.shape == (spec.dim,) and v.dtype == np.float32
        assert np.isfinite(v).all()
    assert spec.dim == len(spec.params["descriptors"]) > 100
    # different molecules, different descriptors
    assert not np.allclose(vals[0], vals[1])


def test_descriptors_nan_inf_and_raising_functions_become_zero():
    modality = DescriptorsModality()

    def boom(mol):
        raise RuntimeError("descriptor failed")

    modality._functions = [
        ("nan", lambda m: float("nan")),
        ("inf", lambda m: float("inf")),
        ("neginf", lambda m: -float("inf")),
        ("raises", boom),
        ("three", lambda m: 3.0),
        ("minus", lambda m: -1.0),
    ]
    out = modality.compute(Chem.MolFromSmiles("CCO"), "CCO")
    np.testing.assert_allclose(out, [0, 0, 0, 0, np.log1p(3.0), -np.log1p(1.0)], rtol=1e-6)


# -- precomputed embeddings ------------------------------------------------------------------------
def test_embedding_from_dict_keyed_by_any_spelling_and_missing_key_keeps_molecule():
    table = {"OCC": [1.0, 2.0, 3.0], "C1=CC=CC=C1": [4.0, 5.0, 6.0]}  # non-canonical keys
    f = feat(["ecfp", "emb"], ecfp_size=64, embeddings={"emb": table})
    assert f.modalities[1].kind == "embedding" and f.modalities[1].dim == 3
    samples = f.featurize(["CCO", "c1ccccc1", "CCN"])
    assert len(samples) == 3 and all(isinstance(s, dfp.MultiModalSample) for s in samples)
    np.testing.assert_array_equal(samples[0].values["emb"], [1, 2, 3])
    np.testing.assert_array_equal(samples[1].values["emb"], [4, 5, 6])
    assert samples[0].values["emb"].dtype == np.float32
    # no entry for CCN: modality missing (with a reason), molecule and other modalities kept
    assert not samples[2].present("emb") and samples[2].present("ecfp")
    assert "emb" in samples[2].missing_reasons
    np.testing.assert_array_equal(samples[2].mask(["ecfp", "emb"]), [True, False])


def test_embedding_from_callable_gets_canonical_smiles_and_none_means_missing():
    seen = []

    def embed(smiles):
        seen.append(smiles)
        return None if smiles == "CCN" else np.full(4, len(smiles), dtype=float)

    modality = dfp.PrecomputedEmbeddingModality("emb", embed, dim=4)
    f = feat(["ecfp", modality], ecfp_size=64)
    samples = f.featurize(["OCC", "CCN", "C(C)O"])
    assert seen == ["CCO", "CCN", "CCO"]  # callables receive the canonical SMILES
    np.testing.assert_array_equal(samples[0].values["emb"], [3, 3, 3, 3])
    assert not samples[1].present("emb") and samples[1].present("ecfp")
    assert "emb" in samples[1].missing_reasons
    np.testing.assert_array_equal(samples[2].values["emb"], samples[0].values["emb"])


def test_embedding_callable_through_the_embeddings_argument_infers_its_width():
    """The documented form ``embeddings={name: callable}`` works without giving dim."""
    f = feat(
        ["ecfp", "emb"],
        ecfp_size=64,
        embeddings={"emb": lambda s: None if s == "CCN" else np.arange(6.0)},
    )
    assert f.modalities[1].kind == "embedding" and f.modalities[1].dim == 6
    samples = f.featurize(["CCO", "CCN"])
    np.testing.assert_array_equal(samples[0].values["emb"], np.arange(6.0))
    assert not samples[1].present("emb") and samples[1].present("ecfp")


def test_embedding_callable_whose_width_cannot_be_inferred_needs_dim():
    table = {"CC(=O)O": [1.0, 2.0]}

    def lookup(smiles):  # knows none of the probe molecules
        return table[smiles]

    with pytest.raises(ValueError, match="give dim="):
        feat(["emb"], embeddings={"emb": lookup})
    with pytest.raises(ValueError, match="give dim="):
        dfp.PrecomputedEmbeddingModality("emb", lambda s: None)
    modality = dfp.PrecomputedEmbeddingModality("emb", lookup, dim=2)
    samples = feat([modality]).featurize(["CC(=O)O", "CCO"])
    assert samples[0].present("emb") and not samples[1].present("emb")  # KeyError -> missing


def test_embedding_with_wrong_width_or_nonfinite_is_missing_not_fatal():
    modality = dfp.PrecomputedEmbeddingModality(
        "emb",
        lambda s: [1.0, 2.0] if s == "CCO" else ([np.nan] * 3 if s == "CCN" else [1.0] * 3),
        dim=3,
    )
    samples = feat([modality]).featurize(["CCO", "CCN", "CCC"])
    assert [s.present("emb") for s in samples] == [False, False, True]


def test_embedding_table_inconsistent_widths_rejected():
    with pytest.raises(ValueError, match="different shapes"):
        dfp.PrecomputedEmbeddingModality("emb", {"CCO": [1.0, 2.0], "CCN": [1.0]})
    with pytest.raises(ValueError, match="dim=4"):
        dfp.PrecomputedEmbeddingModality("emb", {"CCO": [1.0, 2.0]}, dim=4)
