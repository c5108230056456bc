"""Fusion layers. One layer per idea, one file per layer, one call signature for all:

``layer(embeddings: dict[str, EncodedModality], mask: Tensor (B, M)) -> FusionOutput``

``embeddings`` are the encoder outputs in the model's modality order; ``mask`` is the presence mask
(True = the modality exists for that sample). Layers never read a missing modality's values.

=============================  ===================  ================================================
layer                          module               idea
=============================  ===================  ================================================
:class:`ProjectionFusion`      ``projection``       projections averaged over present modalities
:class:`EarlyFusion`           ``early``            zero-filled concatenation + presence bits, MLP
:class:`LateFusion`            ``late``             one predictor per modality, weighted combination
:class:`DynamicFusion`         ``dynamic``          gates, attention over modalities, reconstruction
:class:`CrossAttentionFusion`  ``cross_attention``  token-level cross-attention between modalities
:class:`GatedMoEFusion`        ``moe``              sparse mixture of experts, noisy top-k gating
=============================  ===================  ================================================

The shared output type lives in ``output`` (:class:`FusionOutput`), the masking helpers every layer
uses in ``masking``. A new layer is a new module here that returns a :class:`FusionOutput`, is
re-exported below, and gets a model wrapper in :mod:`deepfuse_plugin.models`.
"""

from deepfuse_plugin.nn.fusion.cross_attention import CrossAttentionFusion
from deepfuse_plugin.nn.fusion.dynamic import DynamicFusion
from deepfuse_plugin.nn.fusion.early import EarlyFusion
from deepfuse_plugin.nn.fusion.late import LateFusion
from deepfuse_plugin.nn.fusion.masking import (
    curriculum_rate,
    masked_concat,
    masked_mean,
    masked_softmax,
    presence_weights,
    present_pooled,
    sample_modality_drop,
    zero_missing,
)
from deepfuse_plugin.nn.fusion.moe import GatedMoEFusion, cv_squared
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names
from deepfuse_plugin.nn.fusion.projection import ProjectionFusion

__all__ = [
    # layers
    "ProjectionFusion",
    "EarlyFusion",
    "LateFusion",
    "DynamicFusion",
    "CrossAttentionFusion",
    "GatedMoEFusion",
    # what they return and share
    "FusionOutput",
    "check_names",
    "masked_softmax",
    "masked_mean",
    "masked_concat",
    "present_pooled",
    "presence_weights",
    "zero_missing",
    "sample_modality_drop",
    "curriculum_rate",
    "cv_squared",
]
