"""The one model registry: short names (``"dynamic"``) and class names for every deepfuse model.

A model class registers itself where it is defined (chemprop-style decorator), so adding a model
is one file. The CLI's ``--model``, the run-folder workflows, :meth:`MultiModalTorchModel.load`,
``dc.models`` and the benchmark harness all read this registry.

Examples
--------
>>> import deepfuse_plugin
>>> from deepfuse_plugin.models.registry import available_models, get_model_class
>>> available_models("fusion")
['crossattention', 'dynamic', 'early', 'late', 'moe']
>>> get_model_class("dynamic").__name__
'DynamicFusionModel'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from deepfuse_plugin.errors import InvalidSettingError

__all__ = [
    "ModelEntry",
    "register_model",
    "get_model_class",
    "available_models",
    "model_entries",
    "MODEL_KINDS",
]

#: ``fusion``: several modalities, trainable from a SMILES CSV with ``deepfuse train``;
#: ``unimodal``: one modality; ``crystal``: structure + text models, trainable from crystal
#: structures with ``deepfuse train`` (``deepfuse_plugin.train.utils.TRAINABLE_KINDS``).
MODEL_KINDS = ("fusion", "unimodal", "crystal")

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its short name, class, kind and one-line description."""

    name: str
    cls: type
    kind: str
    description: str


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(name: str, *, kind: str = "fusion", description: str = "") -> Callable[[T], T]:
    """Class decorator: register a model class under ``name``.

    Registering a different class under a taken name is an error (a saved run names its model, so
    a name must keep meaning one class).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")

    def decorate(cls: T) -> T:
        existing = _ENTRIES.get(name)
        if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"A model named {name!r} is already registered "
                f"({existing.cls.__module__}.{existing.cls.__qualname__})"
            )
        _ENTRIES[name] = ModelEntry(name, cls, kind, description or _first_line(cls.__doc__))
        return cls

    return decorate


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def model_entries(kind: str | None = None) -> list[ModelEntry]:
    """Registered entries (of one ``kind``), sorted by name."""
    return [e for _, e in sorted(_ENTRIES.items()) if kind is None or e.kind == kind]


def available_models(kind: str | None = None) -> list[str]:
    """Registered short names (of one ``kind``)."""
    return [e.name for e in model_entries(kind)]


def get_model_class(name: str, kind: str | None = None) -> type:
    """The class registered under ``name`` (a short name or a class name)."""
    for entry in model_entries(kind):
        if name in (entry.name, entry.cls.__name__):
            return entry.cls
    raise InvalidSettingError(f"Unknown model {name!r}; available: {available_models(kind)}")
