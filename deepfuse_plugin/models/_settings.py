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
from typing import Any, Iterable

from deepfuse_plugin.errors import InvalidSettingError


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


def positive_float(name: str, value: Any) -> float:
    """``value`` if it is a finite number > 0 (learning rates)."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise InvalidSettingError(f"{name} must be a finite number > 0, got {value!r}")
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
