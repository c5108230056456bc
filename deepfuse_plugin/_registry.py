"""Attach deepfuse's public names to DeepChem's namespaces.

After ``import deepfuse_plugin``, ``dc.models.DynamicFusionModel``,
``dc.feat.MultiModalFeaturizer``, ``dc.data.MultiModalDataset`` and
``dc.molnet.load_*(featurizer="multimodal")`` work. Registration is idempotent and never replaces
something DeepChem (or another plugin) already defines.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: DeepChem module attribute path -> names exported there (filled by the package __init__).
REGISTRY: dict[str, dict[str, Any]] = {"models": {}, "feat": {}, "data": {}}
MOLNET_FEATURIZER_KEY = "multimodal"


class RegistrationError(RuntimeError):
    """A deepfuse name collides with an existing, different DeepChem attribute."""


def _is_ours(obj: Any) -> bool:
    return getattr(obj, "__module__", "").startswith("deepfuse_plugin")


def _attach(namespace: Any, label: str, name: str, obj: Any) -> None:
    existing = getattr(namespace, name, None)
    if existing is obj:
        return
    if existing is not None and not _is_ours(existing):
        raise RegistrationError(
            f"dc.{label}.{name} already exists ({existing!r}); deepfuse will not "
            f"replace it. Use deepfuse_plugin.{name} instead."
        )
    setattr(namespace, name, obj)


def register() -> list[str]:
    """Register every deepfuse name into DeepChem; returns the names attached (``"dc.models.X"``).

    Safe to call any number of times.
    """
    import deepchem as dc
    from deepchem.molnet.load_function import molnet_loader

    attached = []
    for label, names in REGISTRY.items():
        namespace = getattr(dc, label)
        for name, obj in names.items():
            _attach(namespace, label, name, obj)
            attached.append(f"dc.{label}.{name}")
    table = molnet_loader.featurizers
    existing = table.get(MOLNET_FEATURIZER_KEY)
    if existing is not None and not _is_ours(existing):
        raise RegistrationError(
            f"molnet featurizer key {MOLNET_FEATURIZER_KEY!r} is already taken by {existing!r}"
        )
    if existing is None:
        from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

        table[MOLNET_FEATURIZER_KEY] = MultiModalFeaturizer(progress=False)
    attached.append(f"dc.molnet featurizer {MOLNET_FEATURIZER_KEY!r}")
    return attached
