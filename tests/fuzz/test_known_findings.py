"""Bugs the fuzz suite found outside the featurizers and loaders, pinned until they are fixed.

Each test is ``xfail(strict=True)``: it fails today (the bug), and the day the bug is fixed it
passes, which fails the suite, so the marker (and the matching restriction in
:mod:`tests.fuzz.strategies`) is removed with the fix.
"""
from __future__ import annotations

import pytest

from deepfuse_plugin.errors import InvalidSettingError


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="nn/encoders.py:199: encoder_dim not divisible by the SMILES encoder's "
                          "n_heads (4) raises torch's bare AssertionError, not a named setting")
def test_encoder_dim_not_divisible_by_attention_heads_is_a_named_setting_error():
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    modalities = MultiModalFeaturizer(["smiles"], progress=False).modalities
    with pytest.raises(InvalidSettingError, match="encoder_dim"):
        DynamicFusionModel(n_tasks=1, modalities=modalities, encoder_dim=30, progress=False)
