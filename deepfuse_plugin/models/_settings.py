"""Checks of model settings (hyper-parameters): a bad value is refused when the model is built,
with the setting and its value named, instead of surfacing later as a ZeroDivisionError, a model
that trains nothing or an empty prediction.

Examples
--------
>>> positive_int("batch_size", 32)
32
>>> probability("dropout", 1.0)
Traceback (most recent call last):
...
deepfuse_plugin.errors.InvalidSettingError: dropout must be a number in [0, 1), got 1.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality, as_modalities
from deepfuse_plugin.nn.heads import UNCERTAINTY_KINDS


def _is_int(value: Any) -> bool:
    # bool is an int subclass: True as a width is a slip, not a setting
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1."""
    if not _is_int(value) or value < 1:
        raise InvalidSettingError(f"{name} must be >= 1 (a whole number), got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 0."""
    if not _is_int(value) or value < 0:
        raise InvalidSettingError(f"{name} must be >= 0 (a whole number), got {value!r}")
    return value


def probability(name: str, value: Any) -> float:
    """``value`` if it is a finite number in [0, 1) (dropout and masking rates)."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise InvalidSettingError(f"{name} must be a number in [0, 1), got {value!r}")
    return value


def non_negative_float(name: str, value: Any) -> float:
    """``value`` if it is a finite number >= 0 (loss weights)."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise InvalidSettingError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


#: Largest learning rate accepted: far above any useful rate, far below float32's overflow (a
#: rate of 1e37 overflowed inside torch's Adam step as a bare RuntimeError).
MAX_LEARNING_RATE = 1e3


def positive_float(name: str, value: Any, upper: float = math.inf) -> float:
    """``value`` if it is a finite number in (0, ``upper``] (learning rates)."""
    if not _is_real(value) or not math.isfinite(value) or not 0 < value <= upper:
        bound = f" and at most {upper:g}" if math.isfinite(upper) else ""
        raise InvalidSettingError(f"{name} must be a finite number > 0{bound}, got {value!r}")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise InvalidSettingError(f"{name} must be one of {list(choices)}, got {value!r}")
    try:
        if value in choices:
            return value
    except TypeError:  # unhashable/uncomparable: not a valid choice either
        pass
    raise InvalidSettingError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_all(checks: Iterable[tuple[Any, str, Any]]) -> None:
    """Run ``check(name, value)`` for each ``(check, name, value)``; the first failure raises."""
    for check, name, value in checks:
        check(name, value)


def check_base_settings(settings: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Refuse a bad value of any base-model setting (``settings`` = the constructor's locals),
    naming it, before the network is built (:class:`~deepfuse_plugin.errors.InvalidSettingError`).
    """
    check_all(
        [
            (positive_int, "n_tasks", settings["n_tasks"]),
            *((positive_int, k, settings[k]) for k in ("encoder_dim", "fused_dim", "head_hidden")),
            (probability, "dropout", settings["dropout"]),
            (probability, "modality_dropout", settings["modality_dropout"]),
            (non_negative_float, "fusion_loss_weight", settings["fusion_loss_weight"]),
            (non_negative_float, "unimodal_loss_weight", settings["unimodal_loss_weight"]),
            (non_negative_int, "evidential_anneal_epochs", settings["evidential_anneal_epochs"]),
            (non_negative_int, "length_bucket_pool", settings["length_bucket_pool"]),
        ]
    )
    one_of("mode", settings["mode"], ("regression", "classification"))
    one_of("uncertainty", settings["uncertainty"], UNCERTAINTY_KINDS)
    one_of("mixed_precision", settings["mixed_precision"], ("auto", True, False))
    one_of("progress", settings["progress"], (True, False))
    if settings["mode"] == "classification":
        check_all([(positive_int, "n_classes", settings["n_classes"])])
        if settings["n_classes"] < 2:
            raise InvalidSettingError(
                f"n_classes must be >= 2 for classification, got {settings['n_classes']!r}"
            )
    if settings["evidential_lambda"] is not None:
        non_negative_float("evidential_lambda", settings["evidential_lambda"])
    options = settings["encoder_options"]
    if options is not None and not (
        isinstance(options, dict) and all(isinstance(v, dict) for v in options.values())
    ):
        raise InvalidSettingError(
            "encoder_options must map a modality kind to a dict of "
            f"encoder settings, e.g. {{'graph': {{'n_layers': 4}}}}; got "
            f"{options!r}"
        )
    positive_int("batch_size", kwargs.get("batch_size", 64))
    rate = kwargs.get("learning_rate", 0.001)
    if isinstance(rate, (int, float, np.number)) or not hasattr(rate, "_create_pytorch_schedule"):
        positive_float("learning_rate", rate, MAX_LEARNING_RATE)


def resolve_modalities(modalities: Sequence[Modality | dict | str]) -> list[Modality]:
    """Specs from specs, dicts, or built-in names (default featurizer settings).

    Molecule names come first (``"graph"`` is the molecular graph); the crystal-only names
    (``"text_sentences"``, ``"composition"``, ``"matgl_graph"``, ...) resolve with the crystal
    featurizer's defaults."""
    from deepfuse_plugin.feat.molecule import BUILTIN_MODALITIES, MultiModalFeaturizer

    molecular = [m for m in modalities if isinstance(m, str) and m in BUILTIN_MODALITIES]
    crystal = [m for m in modalities if isinstance(m, str) and m not in BUILTIN_MODALITIES]
    defaults: dict[str, Modality] = {}
    if molecular:
        defaults.update(
            (m.name, m) for m in MultiModalFeaturizer(molecular, progress=False).modalities
        )
    if crystal:
        from deepfuse_plugin.feat.crystal import (
            BUILTIN_CRYSTAL_MODALITIES,
            crystal_modality_specs,
        )

        unknown = [m for m in crystal if m not in BUILTIN_CRYSTAL_MODALITIES]
        if unknown:
            raise ValueError(
                f"Unknown modality names {unknown}; built-in molecule modalities: "
                f"{list(BUILTIN_MODALITIES)}, crystal modalities: "
                f"{list(BUILTIN_CRYSTAL_MODALITIES)}"
            )
        defaults.update((m.name, m) for m in as_modalities(crystal_modality_specs(crystal)))
    return as_modalities([defaults[m] if isinstance(m, str) else m for m in modalities])
