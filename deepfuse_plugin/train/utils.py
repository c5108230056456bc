"""Small pieces every training entry point shares: seeding, JSON output, setting checks, model
names.

Examples
--------
>>> import numpy as np
>>> from deepfuse_plugin.train.utils import to_jsonable
>>> to_jsonable({"rmse": np.float32(0.5), "bad": float("nan"), "ids": np.arange(2)})
{'rmse': 0.5, 'bad': None, 'ids': [0, 1]}
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import numpy as np

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.inputs import WorkflowError

__all__ = [
    "set_seed",
    "to_jsonable",
    "write_json",
    "check_training_settings",
    "resolve_model_class",
    "trainable_models",
    "TRAINABLE_KINDS",
]

#: Registry kinds ``deepfuse train`` and ``deepfuse hpopt`` build (``--model``): the fusion models
#: (molecules or crystal structures) and the crystal models (structures only, e.g. MatMMFuse).
TRAINABLE_KINDS = ("fusion", "crystal")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy (DeepChem's batch shuffling) and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_jsonable(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars as Python values, dict keys as strings and
    NaN/inf as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NumPy values converted, NaN/inf as null)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(to_jsonable(payload), fh, indent=1)
        fh.write("\n")


def check_training_settings(**settings: Any) -> None:
    """Refuse training settings outside their range, naming the setting and its value:
    ``epochs``, ``batch_size``, ``eval_every``, ``n_jobs`` (integers >= 1) and ``learning_rate``
    (a finite number > 0).

    Examples
    --------
    >>> check_training_settings(epochs=0)
    Traceback (most recent call last):
    ...
    deepfuse_plugin.errors.InvalidSettingError: epochs must be an integer >= 1, got 0
    """
    for name, value in settings.items():
        if name == "learning_rate":
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise InvalidSettingError(
                    f"learning_rate must be a finite number > 0, got {value!r}"
                )
        elif not (
            isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
        ):
            raise InvalidSettingError(f"{name} must be an integer >= 1, got {value!r}")


def trainable_models() -> list[str]:
    """The ``--model`` names: registered models of a :data:`TRAINABLE_KINDS` kind, sorted."""
    import deepfuse_plugin  # noqa: F401  (importing it registers every model)
    from deepfuse_plugin.models.registry import model_entries

    return sorted(e.name for e in model_entries() if e.kind in TRAINABLE_KINDS)


def resolve_model_class(name: str) -> type:
    """The model class for a ``--model`` name: a fusion or crystal model of
    :mod:`deepfuse_plugin.models.registry` (:func:`trainable_models`).

    Raises
    ------
    WorkflowError
        Unknown name.
    """
    from deepfuse_plugin.models.registry import get_model_class

    names = trainable_models()
    if name not in names:
        raise WorkflowError(f"Unknown model {name!r}; available: {names}")
    return get_model_class(name)
