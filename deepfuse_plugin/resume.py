"""Deprecated: resume points moved to :mod:`deepfuse_plugin.train.resume`.

``from deepfuse_plugin.resume import X`` keeps working (with a ``DeprecationWarning``) for every
name that module had; import from :mod:`deepfuse_plugin.train.resume` instead. Nothing in the
library imports this module.
"""

from __future__ import annotations

import warnings

from deepfuse_plugin.train.resume import (
    FORMAT,
    LEGACY_RNG_FILE,
    RNG_JSON,
    RNG_TENSORS,
    SLOTS,
    STATE_FILE,
    ResumeMismatchError,
    ResumeState,
    TrainingResult,
    check_plan,
    clear,
    read_state,
    restore_resume_point,
    save_checkpoint_atomically,
    save_resume_point,
    training_plan,
)

__all__ = [
    "FORMAT",
    "LEGACY_RNG_FILE",
    "RNG_JSON",
    "RNG_TENSORS",
    "SLOTS",
    "STATE_FILE",
    "ResumeMismatchError",
    "ResumeState",
    "TrainingResult",
    "check_plan",
    "clear",
    "read_state",
    "restore_resume_point",
    "save_checkpoint_atomically",
    "save_resume_point",
    "training_plan",
]

warnings.warn(
    "deepfuse_plugin.resume moved to deepfuse_plugin.train.resume; import it from "
    "there (this alias will be removed)",
    DeprecationWarning,
    stacklevel=2,
)
