"""Reading model folders safely: checkpoints, the saved configuration, and their checksum.

Safety model: a checkpoint is loaded with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only and never runs code from the file; its weights must all be
finite. The configuration is JSON. Whatever is wrong with either (empty, truncated, random bytes,
edited, non-finite weights) is a :class:`~deepfuse_plugin.errors.CorruptCheckpointError` naming the
file; a missing folder or checkpoint is a :class:`MissingCheckpointError` naming the path.

:func:`checkpoint_digest` gives a sha256 of the latest checkpoint and the configuration, so a run
record can store it at training time and :func:`verify_checkpoint_digest` check it before a
prediction.

Examples
--------
>>> import tempfile
>>> checkpoint_digest(tempfile.mkdtemp())  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
MissingCheckpointError: No checkpoint (checkpoint*.pt) in '/tmp/...'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from deepfuse_plugin._version import __version__
from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError, RunFolderError
from deepfuse_plugin.modalities import Modality

CONFIG_FILE = "deepfuse_config.json"
#: 2: ``unimodal_loss_weight`` on every model (format 1 had unimodal losses in late fusion only).
CONFIG_FORMAT = 2
#: Keys every saved configuration has (the base model's required constructor arguments).
REQUIRED_CONFIG_KEYS = ("n_tasks", "modalities", "mode")
_FIX = "retrain the model, or restore the folder from a backup copy"


class MissingCheckpointError(RunFolderError, FileNotFoundError):
    """A model folder, checkpoint or configuration that does not exist (a ``FileNotFoundError``
    as well, for code written against it)."""

    def __str__(self) -> str:  # FileNotFoundError's own str would show the errno form
        return str(self.args[0]) if self.args else ""


def latest_checkpoint(model_dir: str) -> str:
    """Path of the newest DeepChem checkpoint (``checkpoint1.pt``) in ``model_dir``."""
    if not os.path.isdir(model_dir):
        raise MissingCheckpointError(
            f"Model folder {model_dir!r} does not exist: give the folder "
            "a trained model was saved in"
        )
    names = sorted(
        f for f in os.listdir(model_dir) if f.startswith("checkpoint") and f.endswith(".pt")
    )
    if not names:
        raise MissingCheckpointError(
            f"No checkpoint (checkpoint*.pt) in {model_dir!r}: the model "
            "was not trained or saved there"
        )
    return os.path.join(model_dir, names[0])


def load_checkpoint_file(path: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A DeepChem checkpoint's contents, loaded without running code, its weights checked finite.

    Returns the dict with ``model_state_dict``, ``optimizer_state_dict`` and ``global_step``.
    """
    if not os.path.isfile(path):
        raise MissingCheckpointError(f"Checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"Checkpoint {path!r} is empty (0 bytes): {_FIX}")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpointError(
            f"Checkpoint {path!r} cannot be read safely (truncated, damaged, or not a plain-tensor "
            f"checkpoint; nothing in it was run): {reason[:200]}. {_FIX[0].upper()}{_FIX[1:]}"
        ) from err
    missing = [
        k
        for k in ("model_state_dict", "optimizer_state_dict", "global_step")
        if not isinstance(data, Mapping) or k not in data
    ]
    if missing or not isinstance(data["model_state_dict"], Mapping):
        raise CorruptCheckpointError(
            f"Checkpoint {path!r} is not a DeepChem checkpoint (missing "
            f"{missing or ['model_state_dict']}): {_FIX}"
        )
    _check_finite(data["model_state_dict"], path)
    return dict(data)


def restore_safely(model: Any, model_dir: str) -> None:
    """Restore any DeepChem ``TorchModel`` from ``model_dir``'s newest checkpoint without
    running code from it (DeepChem's own ``restore`` calls ``torch.load`` without
    ``weights_only``). deepfuse models use their ``restore``, which also checks the saved
    configuration."""
    if getattr(model, "restores_safely", False):  # deepfuse models: weights-only and checked
        model.restore(model_dir=model_dir)
        return
    model._ensure_built()
    data = load_checkpoint_file(latest_checkpoint(model_dir), model.device)
    model.model.load_state_dict(data["model_state_dict"])
    model._pytorch_optimizer.load_state_dict(data["optimizer_state_dict"])
    model._global_step = int(data["global_step"])


def _check_finite(state: Mapping[str, Any], path: str) -> None:
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CorruptCheckpointError(
            f"Checkpoint {path!r} holds NaN/inf weights in {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''} (a damaged file or a "
            f"diverged training run): {_FIX}"
        )


def read_config(model_dir: str | None) -> dict[str, Any] | None:
    """The saved configuration payload of ``model_dir`` in the current format, or None if the
    folder has no :data:`CONFIG_FILE`. A file that is not valid JSON or lacks a key is a
    :class:`CorruptCheckpointError` naming the file and the key."""
    path = os.path.join(model_dir or "", CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            payload = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({err}): {_FIX}") from err
    return upgrade_config(_check_payload(payload, path), path)


def _check_payload(payload: Any, path: str) -> dict[str, Any]:
    def bad(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{path} is not a valid deepfuse configuration: {what}; {_FIX}"
        )

    if not isinstance(payload, dict):
        raise bad(f"expected a JSON object, found {type(payload).__name__}")
    if not isinstance(payload.get("model_class"), str):
        raise bad(f"key 'model_class' must be a string, found {payload.get('model_class')!r}")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise bad(f"key 'config' must be an object, found {type(config).__name__}")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise bad(f"config lacks the key(s) {missing}")
    if not isinstance(config["modalities"], list) or not all(
        isinstance(m, dict) for m in config["modalities"]
    ):
        raise bad("config key 'modalities' must be a list of modality objects")
    version = payload.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad(f"key 'format' must be an integer, found {version!r}")
    return payload


def upgrade_config(payload: dict[str, Any], path: str) -> dict[str, Any]:
    """A saved configuration in the current format: older formats get the settings their
    version had implicitly; a newer format is an error."""
    version = int(payload.get("format", 1))
    if version > CONFIG_FORMAT:
        raise CorruptCheckpointError(
            f"{path} was written by a newer deepfuse (configuration format {version}; this "
            f"version reads up to {CONFIG_FORMAT}): upgrade deepfuse"
        )
    if version < 2:  # before unimodal heads outside late fusion (late fusion always saved it)
        payload["config"].setdefault("unimodal_loss_weight", 0.0)
    return {**payload, "format": CONFIG_FORMAT}


def checkpoint_digest(model_dir: str) -> str:
    """``"sha256:<hex>"`` of the latest checkpoint's bytes and the configuration file's bytes.

    Store it when a model is saved; :func:`verify_checkpoint_digest` then detects any change to
    the weights (a flipped bit included) or to the configuration (an edited mode or width).

    Parameters
    ----------
    model_dir: str
        A folder with ``checkpoint1.pt`` (DeepChem's newest) and, for deepfuse models,
        ``deepfuse_config.json`` (hashed as absent when a DeepChem model has none).

    Examples
    --------
    >>> digest = checkpoint_digest("results/demo/model")  # doctest: +SKIP
    >>> digest.startswith("sha256:") and len(digest) == 71  # doctest: +SKIP
    True
    """
    digest = hashlib.sha256()
    for label, path in (
        ("checkpoint", latest_checkpoint(model_dir)),
        ("config", os.path.join(model_dir, CONFIG_FILE)),
    ):
        digest.update(label.encode() + b"\0")
        if os.path.exists(path):
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def verify_checkpoint_digest(model_dir: str, expected: str) -> None:
    """Raise :class:`CorruptCheckpointError` if ``model_dir``'s checkpoint or configuration no
    longer has the digest ``expected`` (from :func:`checkpoint_digest` at saving time)."""
    actual = checkpoint_digest(model_dir)
    if actual != expected:
        raise CorruptCheckpointError(
            f"The checkpoint or configuration in {model_dir!r} changed since it was saved "
            f"(sha256 {actual[7:19]}..., the run record says {str(expected)[7:19]}...): the "
            f"weights were damaged or a file was edited; {_FIX}"
        )


def config_diff(
    saved: dict[str, Any], current: dict[str, Any], training_settings: frozenset[str]
) -> tuple[list[str], list[str]]:
    """Differences as ``(architecture, training_only)`` lists of readable lines."""
    architecture: list[str] = []
    training: list[str] = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) == current.get(key):
            continue
        if key not in saved and key in training_settings:
            continue  # a training option newer than the checkpoint: nothing to compare
        if key == "modalities":
            s = {m["name"]: m for m in saved[key]}
            c = {m["name"]: m for m in current[key]}
            if list(s) != list(c):
                architecture.append(f"modalities: saved {list(s)}, this {list(c)}")
            else:
                architecture += [
                    f"modality {n!r}: saved {_short(s[n])}, this {_short(c[n])}"
                    for n in s
                    if s[n] != c[n]
                ]
        else:
            line = f"{key}: saved {saved.get(key)!r}, this {current.get(key)!r}"
            (training if key in training_settings else architecture).append(line)
    return architecture, training


def _short(spec: dict[str, Any]) -> str:
    return repr(Modality.from_dict(spec)) + (
        f" params={spec['params']}" if spec.get("params") else ""
    )


# -- a model's configuration ---------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """``json.dumps`` ``default=`` for a model configuration: specs as dicts, numpy scalars as
    Python numbers, tuples as lists.

    Examples
    --------
    >>> json.dumps({"dim": np.int64(8), "names": ("a", "b")}, default=jsonable)
    '{"dim": 8, "names": ["a", "b"]}'
    """
    if isinstance(value, Modality):
        return value.to_dict()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{value!r} is not JSON-serialisable")


def write_config(model_dir: str, model_class: str, config: dict[str, Any]) -> None:
    """Write ``config`` (a model's ``get_config()``) as ``model_dir``/:data:`CONFIG_FILE`.

    Parameters
    ----------
    model_dir : str
        The model folder (created if missing).
    model_class : str
        The model's class name, which :meth:`MultiModalTorchModel.load` rebuilds.
    config : dict
        Every constructor argument, JSON-serialisable.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_config(folder, "EarlyFusionModel",
    ...              {"n_tasks": 1, "mode": "regression", "modalities": []})
    >>> read_config(folder)["model_class"]
    'EarlyFusionModel'
    """
    os.makedirs(model_dir, exist_ok=True)
    payload = {
        "format": CONFIG_FORMAT,
        "deepfuse_version": __version__,
        "model_class": model_class,
        "config": config,
    }
    with open(os.path.join(model_dir, CONFIG_FILE), "w") as fh:
        json.dump(payload, fh, indent=1)


def check_saved_config(
    saved: dict[str, Any],
    current: dict[str, Any],
    model_class: str,
    training_settings: frozenset[str],
    directory: str,
    log: logging.Logger | None = None,
) -> None:
    """Refuse to restore a checkpoint whose configuration differs in the architecture.

    Parameters
    ----------
    saved : dict
        The folder's payload (:func:`read_config`).
    current : dict
        The model's ``get_config()``.
    model_class : str
        The model's class name (must be the saved one).
    training_settings : frozenset of str
        Keys that may differ (logged as a warning on ``log``).
    directory : str
        The folder, named in the messages.
    log : logging.Logger, optional
        Where a training-only difference is reported (default: this module's logger).

    Raises
    ------
    InvalidSettingError
        Naming each architecture difference.
    CorruptCheckpointError
        When the saved configuration cannot be compared.

    Examples
    --------
    >>> saved = {"model_class": "EarlyFusionModel", "config": {"fused_dim": 8}}
    >>> check_saved_config(
    ...     saved, {"fused_dim": 16}, "EarlyFusionModel", frozenset(), "run"
    ... )  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    deepfuse_plugin.errors.InvalidSettingError: Cannot restore checkpoint from 'run' into this
    model: its configuration differs:
      fused_dim: saved 8, this 16
    Rebuild with EarlyFusionModel.load('run').
    """
    try:
        mismatched, training_only = config_diff(saved["config"], current, training_settings)
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"{os.path.join(directory, CONFIG_FILE)} is not a valid deepfuse configuration "
            f"({type(err).__name__}: {err}): retrain the model, or restore the folder from a "
            "backup copy"
        ) from err
    if saved["model_class"] != model_class:
        mismatched.insert(0, f"model_class: saved {saved['model_class']}, this {model_class}")
    if mismatched:
        raise InvalidSettingError(
            f"Cannot restore checkpoint from {directory!r} into this model: its "
            "configuration differs:\n  "
            + "\n  ".join(mismatched)
            + f"\nRebuild with {model_class}.load({directory!r})."
        )
    if training_only:
        (log or logging.getLogger(__name__)).warning(
            "Restoring from %r with different training settings: %s",
            directory,
            "; ".join(training_only),
        )


def require_config(model_dir: str) -> dict[str, Any]:
    """:func:`read_config`, but a missing folder or file is a :class:`MissingCheckpointError`."""
    saved = read_config(model_dir)
    if saved is None:
        if not os.path.isdir(model_dir):
            raise MissingCheckpointError(
                f"Model folder {model_dir!r} does not exist: give "
                "the folder a trained model was saved in"
            )
        raise MissingCheckpointError(
            f"No {CONFIG_FILE} in {model_dir!r}: not a deepfuse model folder"
        )
    return saved


def build_from_config(
    model_cls: type, saved: dict[str, Any], model_dir: str, overrides: dict[str, Any]
) -> Any:
    """``model_cls`` built from the saved configuration (``None`` values left to the defaults)
    and ``overrides``, in ``model_dir``; its weights are not restored yet.

    A configuration the class refuses is a :class:`CorruptCheckpointError` naming the file."""
    config = {k: v for k, v in saved["config"].items() if v is not None}
    try:
        # the weights come from the checkpoint: a pretrained start need not be re-read
        return model_cls(
            **{**config, "model_dir": model_dir, "load_pretrained_weights": False, **overrides}
        )
    except (TypeError, ValueError) as err:
        given = f" with the overrides {sorted(overrides)}" if overrides else ""
        raise CorruptCheckpointError(
            f"The configuration in {os.path.join(model_dir, CONFIG_FILE)} cannot rebuild a "
            f"{saved['model_class']}{given}: {err}. Retrain the model, or restore the file from a "
            "backup copy"
        ) from err


def load_weights(model: Any, checkpoint: str, directory: str, strict: bool) -> None:
    """Load ``checkpoint`` (weights-only, checked finite) into a built deepfuse ``model``: the
    network's weights, the optimizer state and the step. A state that does not fit the network
    is an :class:`~deepfuse_plugin.errors.InvalidSettingError`; an unusable optimizer state or
    step a :class:`~deepfuse_plugin.errors.CorruptCheckpointError`."""
    data = load_checkpoint_file(checkpoint, model.device)
    try:
        model.model.load_state_dict(data["model_state_dict"], strict=strict)
    except RuntimeError as err:
        raise InvalidSettingError(
            f"Checkpoint in {directory!r} does not fit this model's architecture: "
            f"{str(err).splitlines()[0]}"
        ) from err
    try:
        model._pytorch_optimizer.load_state_dict(data["optimizer_state_dict"])
        model._global_step = int(data["global_step"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(
            f"Checkpoint {checkpoint!r} has an unusable optimizer "
            f"state or step ({err}): retrain the model, or restore "
            "the folder from a backup copy"
        ) from err
