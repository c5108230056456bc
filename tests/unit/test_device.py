"""Device and precision: CPU by default here, bfloat16 autocast on request, the CUDA path when a GPU
is present (skipped without one; CI has none)."""

from __future__ import annotations

import deepchem as dc
import numpy as np
import pytest
import torch

import deepfuse_plugin  # noqa: F401
from deepfuse_plugin.models.base import autocast_dtype

FUSION_MODELS = [
    "DynamicFusionModel",
    "EarlyFusionModel",
    "LateFusionModel",
    "CrossAttentionFusionModel",
    "GatedMoEFusionModel",
]


def test_autocast_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype(False, cuda) is None
    assert autocast_dtype(True, cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="mixed_precision"):
        autocast_dtype("fp8", cpu)


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_bfloat16_autocast_trains_and_predicts_float32(
    name, small_featurizer, tiny_dataset, tiny_model_kwargs
):
    model = getattr(dc.models, name)(
        1, small_featurizer.modalities, mixed_precision=True, **tiny_model_kwargs
    )
    assert model.model.autocast_dtype is torch.bfloat16
    loss = model.fit(tiny_dataset, nb_epoch=2)
    prediction = model.predict(tiny_dataset)
    assert np.isfinite(loss) and prediction.dtype == np.float32 and np.isfinite(prediction).all()
    # float32 and bfloat16 forward passes of the same weights agree to bfloat16 precision
    model.model.autocast_dtype = None
    reference = model.predict(tiny_dataset)
    np.testing.assert_allclose(prediction, reference, atol=0.1 * (np.abs(reference).max() + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_is_chosen_automatically_and_matches_cpu(
    small_featurizer, tiny_dataset, tiny_model_kwargs, tmp_path
):
    gpu = dc.models.DynamicFusionModel(
        1,
        small_featurizer.modalities,
        model_dir=str(tmp_path),
        mixed_precision=False,
        **tiny_model_kwargs,
    )
    assert gpu.device.type == "cuda"
    gpu.fit(tiny_dataset, nb_epoch=1)
    gpu.save_checkpoint()
    cpu = dc.models.DynamicFusionModel(
        1,
        small_featurizer.modalities,
        model_dir=str(tmp_path),
        device=torch.device("cpu"),
        **tiny_model_kwargs,
    )
    cpu.restore()
    np.testing.assert_allclose(gpu.predict(tiny_dataset), cpu.predict(tiny_dataset), atol=1e-4)
    amp = dc.models.DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    assert amp.model.autocast_dtype is torch.bfloat16  # "auto" on a bf16-capable GPU
