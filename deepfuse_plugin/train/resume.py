"""Resume points: continue an interrupted training run from its last finished epoch.

:func:`~deepfuse_plugin.train.loop.train_with_validation` with ``resumable=True`` writes one after
every epoch into the model folder; a later call with the same plan (model, data, epochs) picks it
up. A resume point holds everything the next epoch depends on, so a resumed run trains the same
epochs as an uninterrupted one:

- the weights, the optimizer state and the global step (a DeepChem checkpoint; deepfuse models
  also carry ``epochs_started``, which drives their curricula and KL annealing);
- the random states of Python, NumPy (DeepChem's shuffling, length buckets) and torch (dropout,
  modality masking), and the learning-rate schedule's position;
- the validation history, the best epoch and its score, and the training time so far.

Layout inside the model folder (all removed when the run finishes)::

    training_state.json    the state above and which slot holds the latest resume point
    resume_a/, resume_b/   two slots used in turn: the state file is replaced (atomically) only
                           once the new slot is complete, so an interruption at any moment leaves
                           a consistent resume point. Each holds a checkpoint,
                           random_state.json (Python and NumPy generators) and random_state.pt
                           (torch generators and the learning-rate schedule)

Nothing in a resume point is unpickled: the JSON is plain data, the checkpoint and
``random_state.pt`` are read with ``torch.load(weights_only=True)``. A resume point written by an
older deepfuse (``random_state.pkl``, a pickle) is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import numpy as np

from deepfuse_plugin.errors import CorruptCheckpointError
from deepfuse_plugin.train.result import TrainingResult

STATE_FILE = "training_state.json"
SLOTS = ("resume_a", "resume_b")
RNG_JSON = "random_state.json"
RNG_TENSORS = "random_state.pt"
#: What older versions wrote (a pickle): its presence is reported, its contents never read.
LEGACY_RNG_FILE = "random_state.pkl"
FORMAT = 1


class ResumeMismatchError(ValueError):
    """The resume point in a folder was written for another plan (model, data or budget)."""


@dataclass
class ResumeState:
    """Where an interrupted run stands (see the module docstring).

    Attributes
    ----------
    plan: dict
        What must be the same to continue (:func:`training_plan`).
    epochs_done: int
        Finished epochs (the resume point is at the end of this epoch).
    result: TrainingResult
        The run so far: best epoch (0 if none yet) and score, validation history, training time
        of the finished epochs (over every segment) and earlier continuations.
    slot: str
        Folder (one of :data:`SLOTS`) holding the checkpoint and the random states.
    """

    plan: dict[str, Any]
    epochs_done: int
    result: TrainingResult
    slot: str = SLOTS[0]


def _digest(values: Any) -> str:
    return hashlib.sha1("\n".join(map(str, values)).encode()).hexdigest()


def training_plan(
    model: Any, train: Any, valid: Any, epochs: int, eval_every: int
) -> dict[str, Any]:
    """The facts a resume point must share with the run continuing it (JSON-serialisable)."""
    config = model.get_config() if hasattr(model, "get_config") else {}
    valid_ids = [] if valid is None else valid.ids  # fit_distributed: no validation rows
    return {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "config": json.loads(json.dumps(config, default=str)),
        "epochs": int(epochs),
        "eval_every": int(eval_every),
        "batch_size": int(model.batch_size),
        "n_train": len(train),
        "n_valid": len(valid_ids),
        "train_ids": _digest(train.ids),
        "valid_ids": _digest(valid_ids),
    }


def read_state(directory: str) -> ResumeState | None:
    """The resume point in ``directory``, or None if there is none."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            saved = json.load(fh)
        state = ResumeState(**{**saved, "result": TrainingResult(**saved["result"])})
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(
            f"{path} is not a valid resume state ({type(err).__name__}: {err}): restart the run "
            f"without --resume (resumable=False), or delete {STATE_FILE}"
        ) from err
    if state.slot not in SLOTS:  # never a path out of the folder
        raise CorruptCheckpointError(
            f"{path} names the slot {state.slot!r}, not one of {SLOTS}: "
            f"restart the run without --resume, or delete {STATE_FILE}"
        )
    return state


def check_plan(state: ResumeState, plan: dict[str, Any], directory: str) -> None:
    """Raise :class:`ResumeMismatchError` naming what differs between the saved and this plan."""
    keys = sorted(set(state.plan) | set(plan))
    differ = [k for k in keys if state.plan.get(k) != plan.get(k)]
    if "config" in differ:
        old, new = state.plan.get("config", {}), plan.get("config", {})
        differ[differ.index("config")] = (
            "config ("
            + ", ".join(
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            + ")"
        )
    if differ:
        raise ResumeMismatchError(
            f"The resume point in {directory!r} belongs to another run; it differs in: "
            f"{'; '.join(differ)}. Remove {STATE_FILE} there (or the folder) to start over."
        )


def _random_states(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(plain, tensors)``: Python's and NumPy's generator states as JSON-ready data; torch's
    (CPU and every CUDA device) and the learning-rate schedule's state for ``torch.save``."""
    import torch

    version, internal, gauss = random.getstate()
    # the legacy global generator is always MT19937, whose state is this tuple (not a dict)
    legacy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = legacy_state
    plain = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    schedule = getattr(model, "_lr_schedule", None)
    tensors = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "lr_schedule": schedule.state_dict() if schedule is not None else None,
    }
    return plain, tensors


def _set_random_states(model: Any, plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    import torch

    py, npy = plain["python"], plain["numpy"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    np.random.set_state(
        (
            str(npy["kind"]),
            np.asarray(npy["keys"], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )
    torch.set_rng_state(tensors["torch"])
    if tensors.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    schedule = getattr(model, "_lr_schedule", None)
    if schedule is not None and tensors.get("lr_schedule") is not None:
        schedule.load_state_dict(tensors["lr_schedule"])


def _write_random_states(model: Any, folder: str) -> None:
    import torch

    plain, tensors = _random_states(model)
    with open(os.path.join(folder, RNG_JSON), "w") as fh:
        json.dump(plain, fh)
    torch.save(tensors, os.path.join(folder, RNG_TENSORS))


def _read_random_states(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The states :func:`_write_random_states` wrote, read without running code from the files."""
    import torch

    json_path, tensor_path = (os.path.join(folder, n) for n in (RNG_JSON, RNG_TENSORS))
    if not os.path.exists(json_path) and os.path.exists(os.path.join(folder, LEGACY_RNG_FILE)):
        raise CorruptCheckpointError(
            f"The resume point in {folder!r} predates safe resume state: its random states are a "
            f"pickle ({LEGACY_RNG_FILE}), which deepfuse never loads. Restart the run without "
            "--resume (resumable=False), or delete that folder."
        )
    try:
        with open(json_path) as fh:
            plain = json.load(fh)
        tensors = torch.load(tensor_path, map_location="cpu", weights_only=True)
        if not isinstance(plain, dict) or not isinstance(tensors, dict):
            raise TypeError("not a mapping")
    except Exception as err:  # noqa: BLE001 (missing, unreadable, unsafe or edited files)
        raise CorruptCheckpointError(
            f"The random states of the resume point in {folder!r} cannot be read safely "
            f"({type(err).__name__}: {str(err).strip()[:200]}): restart the run without --resume "
            "(resumable=False), or delete that folder."
        ) from err
    return plain, tensors


def _write_json_atomically(path: str, payload: dict[str, Any]) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of a shared folder
    os.replace(tmp, path)


def save_checkpoint_atomically(model: Any, directory: str) -> None:
    """``model.save_checkpoint`` into ``directory`` (one checkpoint kept) such that an interruption
    leaves either the old or the new files, never a half-written checkpoint."""
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(dir=directory, prefix=".staging_")
    try:
        model.save_checkpoint(max_checkpoints_to_keep=1, model_dir=staging)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_resume_point(model: Any, directory: str, state: ResumeState) -> ResumeState:
    """Write ``model`` and the random states into the slot not in use, then point
    ``training_state.json`` at it. Returns the state as written."""
    current = read_state(directory)
    slot = SLOTS[0] if current is None or current.slot == SLOTS[1] else SLOTS[1]
    folder = os.path.join(directory, slot)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_checkpoint(max_checkpoints_to_keep=1, model_dir=folder)
    _write_random_states(model, folder)
    state = replace(state, slot=slot)
    _write_json_atomically(os.path.join(directory, STATE_FILE), asdict(state))
    return state


def save_resume_point_or_warn(
    model: Any, directory: str, state: ResumeState, desc: str, log: Any
) -> None:
    """:func:`save_resume_point`, but a failure to write (e.g. a full disk) is logged on ``log``
    instead of raised: the run itself can still finish."""
    try:
        save_resume_point(model, directory, state)
    except OSError as err:
        saved = read_state(directory)
        log.warning(
            "%s: could not write the resume point of epoch %d (%s); training goes on, but an "
            "interruption now continues from epoch %d",
            desc,
            state.epochs_done,
            err,
            saved.epochs_done if saved else 0,
        )


def restore_resume_point(model: Any, directory: str, state: ResumeState) -> None:
    """Load the weights, optimizer, global step and random states of ``state`` into ``model``."""
    from deepfuse_plugin.models.checkpoints import restore_safely

    folder = os.path.join(directory, state.slot)
    plain, tensors = _read_random_states(folder)  # first: a legacy pickle stops before anything
    restore_safely(model, folder)  # DeepChem baselines too, weights_only
    try:
        _set_random_states(model, plain, tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CorruptCheckpointError(
            f"The random states of the resume point in {folder!r} are invalid "
            f"({type(err).__name__}: {err}): restart the run without --resume (resumable=False), "
            "or delete that folder."
        ) from err


def clear(directory: str) -> None:
    """Remove the resume point (the run finished)."""
    for slot in SLOTS:
        shutil.rmtree(os.path.join(directory, slot), ignore_errors=True)
    path = os.path.join(directory, STATE_FILE)
    if os.path.exists(path):
        os.remove(path)
