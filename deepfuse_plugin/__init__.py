"""deepfuse: multimodal fusion models for property prediction in DeepChem (and MatGL).

``import deepfuse_plugin`` registers the public names below into ``deepchem.models``,
``deepchem.feat``, ``deepchem.data`` and DeepChem's molnet featurizer table (``"multimodal"``).
"""

from __future__ import annotations

import os as _os

# DeepChem imports TensorFlow/JAX optionally and logs every missing one; keep the import quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deepfuse_plugin import analysis  # noqa: E402
from deepfuse_plugin._registry import REGISTRY, RegistrationError, register  # noqa: E402
from deepfuse_plugin._version import __version__  # noqa: E402
from deepfuse_plugin.analysis import (
    atom_attributions,
    embedding_projection,  # noqa: E402
    evaluate_missing_modalities,
    modality_ablation,
    modality_weights,
)

# Crystals: these modules import without pymatgen/matgl (imported lazily where needed), so the
# molecular API works without the `materials` extra; importing them registers the crystal_graph
# and text encoders and collaters.
from deepfuse_plugin.data import crystal as _crystal_collate  # noqa: E402,F401
from deepfuse_plugin.data.collate import MultiModalBatch, TokenBatch, collate_samples  # noqa: E402
from deepfuse_plugin.data.datasets import (
    MultiModalDataset,
    drop_modalities,  # noqa: E402
    presence_frame,
)
from deepfuse_plugin.data.loaders import (
    family_mask,
    load_cif_folder,
    load_extxyz,  # noqa: E402
    load_extxyz_splits,
    load_materials_project,
    load_molnet_materials,
)
from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.feat.molecule import (
    ModalityFeaturizer,
    MultiModalFeaturizer,  # noqa: E402
    PrecomputedEmbeddingModality,
)
from deepfuse_plugin.modalities import GraphFeatures, Modality, MultiModalSample  # noqa: E402
from deepfuse_plugin.models.base import MultiModalTorchModel  # noqa: E402
from deepfuse_plugin.models.calibration import (
    StdScales,
    calibration_report,  # noqa: E402
    fit_std_scale,
    fit_std_scales,
)
from deepfuse_plugin.models.cross_attention import CrossAttentionFusionModel  # noqa: E402
from deepfuse_plugin.models.dynamic import DynamicFusionModel  # noqa: E402
from deepfuse_plugin.models.early import EarlyFusionModel  # noqa: E402
from deepfuse_plugin.models.late import LateFusionModel  # noqa: E402
from deepfuse_plugin.models.matmmfuse import MatMMFuseModel, zero_shot_evaluate  # noqa: E402
from deepfuse_plugin.models.moe import GatedMoEFusionModel  # noqa: E402
from deepfuse_plugin.models.registry import (
    available_models,
    get_model_class,  # noqa: E402
    model_entries,
    register_model,
)
from deepfuse_plugin.models.unimodal import UnimodalModel  # noqa: E402
from deepfuse_plugin.nn import crystal as _crystal_encoders  # noqa: E402,F401

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
