"""Registration of deepfuse's names into DeepChem: present, idempotent, never overwriting."""

from __future__ import annotations

import deepchem as dc
import pytest
from deepchem.molnet.load_function import molnet_loader

import deepfuse_plugin
from deepfuse_plugin import RegistrationError, register
from deepfuse_plugin._registry import MOLNET_FEATURIZER_KEY, REGISTRY


class Foreign:
    """Something another package put into DeepChem's namespace."""


def test_import_registers_the_public_names():
    assert dc.models.DynamicFusionModel is deepfuse_plugin.DynamicFusionModel
    assert dc.models.MultiModalTorchModel is deepfuse_plugin.MultiModalTorchModel
    assert dc.feat.MultiModalFeaturizer is deepfuse_plugin.MultiModalFeaturizer
    assert dc.data.MultiModalDataset is deepfuse_plugin.MultiModalDataset
    default = molnet_loader.featurizers[MOLNET_FEATURIZER_KEY]
    assert isinstance(default, deepfuse_plugin.MultiModalFeaturizer)
    assert default.progress is False


def test_every_registered_name_is_importable_from_the_package():
    for label, names in REGISTRY.items():
        for name, obj in names.items():
            assert getattr(deepfuse_plugin, name) is obj
            assert name in deepfuse_plugin.__all__
            assert getattr(getattr(dc, label), name) is obj


def test_register_is_idempotent():
    before = {
        label: {n: getattr(getattr(dc, label), n) for n in names}
        for label, names in REGISTRY.items()
    }
    featurizer = molnet_loader.featurizers[MOLNET_FEATURIZER_KEY]
    first, second = register(), register()
    assert first == second
    assert "dc.models.DynamicFusionModel" in first
    assert "dc.feat.MultiModalFeaturizer" in first and "dc.data.MultiModalDataset" in first
    after = {
        label: {n: getattr(getattr(dc, label), n) for n in names}
        for label, names in REGISTRY.items()
    }
    assert before == after
    assert molnet_loader.featurizers[MOLNET_FEATURIZER_KEY] is featurizer


def test_register_restores_a_removed_name(monkeypatch):
    monkeypatch.delattr(dc.models, "DynamicFusionModel")
    assert not hasattr(dc.models, "DynamicFusionModel")
    register()
    assert dc.models.DynamicFusionModel is deepfuse_plugin.DynamicFusionModel
    monkeypatch.delitem(molnet_loader.featurizers, MOLNET_FEATURIZER_KEY)
    register()
    assert isinstance(
        molnet_loader.featurizers[MOLNET_FEATURIZER_KEY], deepfuse_plugin.MultiModalFeaturizer
    )


@pytest.mark.parametrize(
    "label,name",
    [
        ("models", "DynamicFusionModel"),
        ("feat", "MultiModalFeaturizer"),
        ("data", "MultiModalDataset"),
    ],
)
def test_never_overwrites_a_foreign_attribute(monkeypatch, label, name):
    namespace = getattr(dc, label)
    monkeypatch.setattr(namespace, name, Foreign)
    with pytest.raises(RegistrationError, match=f"dc.{label}.{name} already exists"):
        register()
    assert getattr(namespace, name) is Foreign  # untouched
    monkeypatch.undo()
    assert getattr(namespace, name) is REGISTRY[label][name]


def test_never_overwrites_a_foreign_molnet_featurizer(monkeypatch):
    foreign = dc.feat.CircularFingerprint(size=16)
    monkeypatch.setitem(molnet_loader.featurizers, MOLNET_FEATURIZER_KEY, foreign)
    with pytest.raises(RegistrationError, match="already taken"):
        register()
    assert molnet_loader.featurizers[MOLNET_FEATURIZER_KEY] is foreign


def test_registration_error_is_a_runtime_error():
    assert issubclass(RegistrationError, RuntimeError)
