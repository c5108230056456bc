"""dc.molnet loaders with the multimodal featurizer, on the shared MoleculeNet files (no download).

These tests need ``../shared/data/moleculenet`` (or ``$DEEPFUSE_DATA_DIR``): skipped locally when it
is missing, failed under ``CI=true`` (see ``conftest.shared_data_dir``).
"""

from __future__ import annotations

import os

import deepchem as dc
import numpy as np
import pytest

import deepfuse_plugin

pytestmark = pytest.mark.slow


def _multimodal(*modalities, **kwargs):
    return dc.feat.MultiModalFeaturizer(list(modalities), progress=False, **kwargs)


def test_load_bbbp_scaffold_fit_evaluate(moleculenet_dir, tmp_path, tiny_model_kwargs):
    feat = _multimodal("ecfp", "graph", "smiles", ecfp_size=256, max_length=96)
    tasks, (train, valid, test), transformers = dc.molnet.load_bbbp(
        featurizer=feat, splitter="scaffold", data_dir=str(moleculenet_dir), save_dir=str(tmp_path)
    )
    assert tasks == ["p_np"]
    n = len(train) + len(valid) + len(test)
    assert 2030 <= n <= 2050  # 2050 rows, a handful RDKit cannot parse are dropped
    assert len(train) == pytest.approx(0.8 * n, abs=2)
    for ds in (train, valid, test):
        assert all(isinstance(x, deepfuse_plugin.MultiModalSample) for x in ds.X[:50])
    assert not set(train.ids) & set(test.ids)  # ids are SMILES: the scaffold split worked on them
    model = dc.models.DynamicFusionModel(
        n_tasks=len(tasks),
        mode="classification",
        modalities=feat.modalities,
        **{**tiny_model_kwargs, "batch_size": 128},
    )
    loss = model.fit(train, nb_epoch=1)
    assert np.isfinite(loss)
    scores = model.evaluate(test, [dc.metrics.Metric(dc.metrics.roc_auc_score)], transformers)
    assert 0.0 <= scores["roc_auc_score"] <= 1.0
    probabilities = model.predict(test, transformers)
    assert probabilities.shape == (len(test), 1, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_molnet_cache_is_reused_and_keyed_by_featurizer(moleculenet_dir, tmp_path):
    ecfp_only = _multimodal("ecfp", ecfp_size=64)
    with_smiles = _multimodal("ecfp", "smiles", ecfp_size=64)
    kwargs = dict(splitter="random", data_dir=str(moleculenet_dir), save_dir=str(tmp_path))
    _, (train1, _, _), _ = dc.molnet.load_delaney(featurizer=ecfp_only, **kwargs)
    assert os.path.isdir(tmp_path / "delaney-featurized" / str(ecfp_only))
    # a different featurizer must not read the first one's cache
    _, (train2, _, _), _ = dc.molnet.load_delaney(featurizer=with_smiles, **kwargs)
    assert os.path.isdir(tmp_path / "delaney-featurized" / str(with_smiles))
    assert train1.X[0].modality_names == ("ecfp",)
    assert train2.X[0].modality_names == ("ecfp", "smiles")
    # same featurizer again: served from the cache, same split
    _, (train3, _, _), _ = dc.molnet.load_delaney(
        featurizer=_multimodal("ecfp", ecfp_size=64), **kwargs
    )
    np.testing.assert_array_equal(train3.ids, train1.ids)
    np.testing.assert_array_equal(train3.X[0].values["ecfp"], train1.X[0].values["ecfp"])


def test_load_delaney_with_the_multimodal_string_key(moleculenet_dir, tmp_path, tiny_model_kwargs):
    tasks, (train, valid, test), transformers = dc.molnet.load_delaney(
        featurizer="multimodal",
        splitter="scaffold",
        data_dir=str(moleculenet_dir),
        save_dir=str(tmp_path),
    )
    assert tasks == ["measured log solubility in mols per litre"]
    assert len(train) + len(valid) + len(test) == 1128
    default = deepfuse_plugin.MultiModalFeaturizer(progress=False)
    sample = train.X[0]
    assert sample.modality_names == tuple(default.modality_names)
    model = dc.models.DynamicFusionModel(
        n_tasks=1, modalities=default.modalities, **{**tiny_model_kwargs, "batch_size": 128}
    )
    assert np.isfinite(model.fit(train, nb_epoch=1))
    metric = dc.metrics.Metric(dc.metrics.rms_score)
    scores = model.evaluate(test, [metric], transformers)
    assert np.isfinite(scores["rms_score"]) and scores["rms_score"] > 0
    # predictions are returned in the units of the labels (normalisation undone)
    pred = model.predict(test, transformers)
    assert pred.shape == (len(test), 1)
    assert -14 < pred.mean() < 4
