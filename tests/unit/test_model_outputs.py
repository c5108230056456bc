"""The public way to a model's outputs: ``iterate_outputs``, ``inference_network``,
``fusion_layer``; and the names that moved out of ``models/base.py`` and ``feat/crystal.py``."""

from __future__ import annotations

import re
from pathlib import Path

import deepchem as dc
import numpy as np
import pytest
import torch

from deepfuse_plugin import DynamicFusionModel, EarlyFusionModel, MultiModalTorchModel
from deepfuse_plugin.models.inference import BatchOutputs

ANALYSIS = Path(__file__).resolve().parents[2] / "deepfuse_plugin" / "analysis"


@pytest.fixture(scope="module")
def model_and_data(small_featurizer, featurized, smiles, make_tiny_kwargs):
    """An untrained 1-task DynamicFusionModel (batches of 8) and the 24 molecules (ids = SMILES)."""
    torch.manual_seed(0)
    ds = dc.data.NumpyDataset(featurized, np.zeros((len(featurized), 1)), ids=np.array(smiles))
    return DynamicFusionModel(1, small_featurizer.modalities, **make_tiny_kwargs()), ds


def test_iterate_outputs_gives_network_fusion_batch_and_ids_per_batch(model_and_data):
    model, ds = model_and_data
    outputs = list(model.iterate_outputs(ds))
    assert [len(o.ids) for o in outputs] == [8, 8, 8]
    assert all(isinstance(o, BatchOutputs) for o in outputs)
    assert np.concatenate([o.ids for o in outputs]).tolist() == list(ds.ids)
    first = outputs[0]
    assert first.network.prediction.shape == (8, 1) and first.batch.mask.shape == (8, 3)
    assert not first.network.prediction.requires_grad  # no gradients
    assert torch.equal(first.network.embedding, first.fusion.fused)  # the same batch's fusion
    predictions = np.concatenate([o.network.prediction.numpy() for o in outputs])
    np.testing.assert_allclose(predictions, model.predict(ds), rtol=1e-6)
    key = sorted(first.fusion.extras)[0]
    np.testing.assert_allclose(
        np.concatenate([o.fusion.extras[key].numpy() for o in outputs]),
        model.collect_extras(ds, key),
        rtol=1e-6,
    )


def test_iterate_outputs_drops_modalities_and_refuses_unknown_ones(model_and_data):
    model, ds = model_and_data
    for out in model.iterate_outputs(ds, drop_modalities="graph"):
        assert not out.batch.mask[:, 1].any() and out.batch.mask[:, [0, 2]].all()
        assert (out.network.modality_weights[:, 1] == 0).all()
    with pytest.raises(ValueError, match="selfies"):
        next(model.iterate_outputs(ds, drop_modalities=["selfies"]))
    empty = dc.data.NumpyDataset(np.zeros(0, dtype=object), np.zeros((0, 1)))
    with pytest.raises(ValueError, match="no rows"):
        next(model.iterate_outputs(empty))


def test_inference_network_builds_evaluates_and_restores_training(
    small_featurizer, tiny_model_kwargs
):
    model = EarlyFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    assert not model._built and model.model.training
    with model.inference_network() as network:
        assert network is model.model and model._built
        assert not any(m.training for m in network.modules())
        assert next(network.parameters()).device.type == model.device.type
    assert model.model.training
    with pytest.raises(RuntimeError, match="inside"):
        with model.inference_network():
            raise RuntimeError("inside")
    assert model.model.training  # restored after an error too
    with model.inference_network(restore_training=False):
        pass
    assert not model.model.training  # as DeepChem's predict leaves it
    with model.inference_network():
        pass
    assert not model.model.training  # an evaluation-mode network stays in evaluation mode


def test_fusion_layer_is_the_networks_fusion_layer(model_and_data):
    model, _ = model_and_data
    assert model.fusion_layer is model.model.fusion
    assert model.fusion is model.fusion_layer  # DynamicFusionModel's own name for it


def test_prediction_methods_stay_on_the_model_and_override_deepchems():
    for name in (
        "predict",
        "predict_checked",
        "predict_uncertainty",
        "predict_embedding",
        "modality_weights",
        "collect_extras",
        "iterate_outputs",
        "inference_network",
        "fusion_layer",
        "last_row_problems",
    ):
        assert hasattr(MultiModalTorchModel, name), name
    for name in ("predict", "predict_uncertainty", "predict_embedding"):
        assert getattr(MultiModalTorchModel, name) is not getattr(dc.models.TorchModel, name)


def test_analysis_reads_no_private_model_state():
    """The analyses go through iterate_outputs / inference_network / fusion_layer only."""
    private = re.compile(r"\._iterate_outputs|\.last_fusion|\._ensure_built|model\.model\b")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(ANALYSIS.glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert not found, "\n".join(found)


def test_names_that_moved_still_import_from_their_old_homes():
    from deepfuse_plugin.feat import crystal, crystal_modalities, elements
    from deepfuse_plugin.models import _batching, _losses, base, checkpoints, inference, uncertainty

    moved = {
        base: {
            "autocast_dtype": _batching,
            "DEFAULT_EVIDENTIAL_LAMBDA": _losses,
            "_released_after_backward": None,
            "UNCERTAINTY_OUTPUTS": uncertainty,
            "NAMED_OUTPUTS": inference,
            "CONFIG_FILE": checkpoints,
            "CONFIG_FORMAT": checkpoints,
            "MissingCheckpointError": checkpoints,
        },
        crystal: {n: crystal_modalities for n in crystal_modalities.__all__}
        | {n: elements for n in elements.__all__},
    }
    for old, names in moved.items():
        for name, new in names.items():
            assert hasattr(old, name), f"{old.__name__}.{name}"
            if new is not None:
                assert getattr(old, name) is getattr(new, name), name
    assert base._released_after_backward is _losses.released_after_backward
    assert set(crystal_modalities.__all__) | set(elements.__all__) <= set(crystal.__all__)
