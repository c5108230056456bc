"""deepfuse: multimodal fusion models for property prediction in DeepChem (and MatGL).

``import deepfuse_plugin`` registers the public names below into ``deepchem.models``,
``deepchem.feat``, ``deepchem.data`` and DeepChem's molnet featurizer table (``"multimodal"``).
"""

from __future__ import annotations

import os as _os

# DeepChem imports TensorFlow/JAX optionally and logs every missing one; keep the import quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deepfuse_plugin import analysis
from deepfuse_plugin._registry import REGISTRY, RegistrationError, register
from deepfuse_plugin._version import __version__
from deepfuse_plugin.analysis import (
    atom_attributions,
    embedding_projection,
    evaluate_missing_modalities,
    modality_ablation,
    modality_weights,
)

# Crystals: these modules import without pymatgen/matgl (imported lazily where needed), so the
# molecular API works without the `materials` extra; importing them registers the crystal_graph
# and text encoders and collaters.
from deepfuse_plugin.data import crystal as _crystal_collate  # noqa: F401
from deepfuse_plugin.data.collate import MultiModalBatch, TokenBatch, collate_samples
from deepfuse_plugin.data.datasets import (
    MultiModalDataset,
    drop_modalities,
    presence_frame,
)
from deepfuse_plugin.data.loaders import (
    family_mask,
    load_cif_folder,
    load_extxyz,
    load_extxyz_splits,
    load_materials_project,
    load_molnet_materials,
)
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
from deepfuse_plugin.feat.molecule import (
    ModalityFeaturizer,
    MultiModalFeaturizer,
    PrecomputedEmbeddingModality,
)
from deepfuse_plugin.modalities import GraphFeatures, Modality, MultiModalSample
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.calibration import (
    StdScales,
    calibration_report,
    fit_std_scale,
    fit_std_scales,
)
from deepfuse_plugin.models.cross_attention import CrossAttentionFusionModel
from deepfuse_plugin.models.dynamic import DynamicFusionModel
from deepfuse_plugin.models.early import EarlyFusionModel
from deepfuse_plugin.models.late import LateFusionModel
from deepfuse_plugin.models.matmmfuse import MatMMFuseModel, zero_shot_evaluate
from deepfuse_plugin.models.moe import GatedMoEFusionModel
from deepfuse_plugin.models.registry import (
    available_models,
    get_model_class,
    model_entries,
    register_model,
)
from deepfuse_plugin.models.unimodal import UnimodalModel
from deepfuse_plugin.nn import crystal as _crystal_encoders  # noqa: F401

REGISTRY["models"].update(
    {
        "MultiModalTorchModel": MultiModalTorchModel,
        **{e.cls.__name__: e.cls for e in model_entries()},
    }
)
REGISTRY["feat"].update(
    {
        "MultiModalFeaturizer": MultiModalFeaturizer,
        "CrystalMultiModalFeaturizer": CrystalMultiModalFeaturizer,
    }
)
REGISTRY["data"].update({"MultiModalDataset": MultiModalDataset})

__all__ = [
    "__version__",
    "register",
    "RegistrationError",
    "Modality",
    "MultiModalSample",
    "GraphFeatures",
    "MultiModalFeaturizer",
    "ModalityFeaturizer",
    "PrecomputedEmbeddingModality",
    "MultiModalDataset",
    "presence_frame",
    "drop_modalities",
    "MultiModalBatch",
    "TokenBatch",
    "collate_samples",
    "MultiModalTorchModel",
    "DynamicFusionModel",
    "EarlyFusionModel",
    "LateFusionModel",
    "CrossAttentionFusionModel",
    "GatedMoEFusionModel",
    "UnimodalModel",
    "register_model",
    "available_models",
    "get_model_class",
    "CrystalMultiModalFeaturizer",
    "MatMMFuseModel",
    "load_extxyz",
    "load_extxyz_splits",
    "load_cif_folder",
    "load_molnet_materials",
    "load_materials_project",
    "family_mask",
    "zero_shot_evaluate",
    "analysis",
    "evaluate_missing_modalities",
    "modality_ablation",
    "modality_weights",
    "atom_attributions",
    "embedding_projection",
    "calibration_report",
    "fit_std_scale",
    "fit_std_scales",
    "StdScales",
]

register()
