"""The models the MoleculeNet benchmark compares: deepfuse fusion models (every model in
:data:`deepfuse_plugin.workflows.MODELS`), unimodal baselines and the peers
(:data:`deepfuse_bench.peers.PEERS`).

Examples
--------
>>> from deepfuse_bench.models import model_kind
>>> model_kind("dynamic"), model_kind("unimodal_ecfp"), model_kind("dc_rf")
('deepfuse fusion', 'deepfuse unimodal', 'deepchem')
"""
from __future__ import annotations

from typing import Sequence

from deepfuse_plugin import workflows as wf

from deepfuse_bench.datasets import FUSION_MODALITIES
from deepfuse_bench.peers import PEERS

UNIMODAL = tuple(f"unimodal_{m}" for m in FUSION_MODALITIES)


def default_models() -> list[str]:
    """Every deepfuse fusion model registered in :data:`workflows.MODELS`, the unimodal
    baselines and the DeepChem peers."""
    return [*wf.MODELS, *UNIMODAL, *PEERS]


def model_kind(name: str) -> str:
    """``"deepchem"``/``"chemprop"`` (peers), ``"deepfuse unimodal"`` or ``"deepfuse fusion"``."""
    if name in PEERS:
        return PEERS[name].library
    if name in UNIMODAL:
        return "deepfuse unimodal"
    return "deepfuse fusion"


def model_features(name: str) -> str:
    return PEERS[name].features if name in PEERS else "multimodal"


def model_label(name: str) -> str:
    if name in PEERS:
        return PEERS[name].label
    if name in UNIMODAL:
        return f"UnimodalModel ({name.split('_', 1)[1]} only)"
    target = wf.MODELS.get(name, name)
    cls = target if isinstance(target, str) else target.__name__
    return f"{cls} ({'+'.join(FUSION_MODALITIES)})"


def check_models(models: Sequence[str]) -> list[str]:
    known = default_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise wf.WorkflowError(f"Unknown model(s) {unknown}; available: {known}")
    return list(dict.fromkeys(models))
