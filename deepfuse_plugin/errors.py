"""deepfuse's error classes: one family, so callers (and the CLI) tell a user's mistake from a bug.

Every class derives from :class:`DeepfuseError`, itself a :class:`ValueError`, so code written
against plain ``ValueError`` keeps working. The CLI turns any ``DeepfuseError`` into one sentence on
standard error and exit code 2; anything else is a bug and keeps its traceback.

Examples
--------
>>> from deepfuse_plugin.errors import CorruptCheckpointError, DeepfuseError
>>> issubclass(CorruptCheckpointError, DeepfuseError) and issubclass(DeepfuseError, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "DeepfuseError",
    "InvalidInputError",
    "InvalidSettingError",
    "CorruptCheckpointError",
    "RunFolderError",
]


class DeepfuseError(ValueError):
    """A problem with what the user gave (data, settings, files), explained in one sentence."""


class InvalidInputError(DeepfuseError):
    """Input data that cannot be used: an unreadable file, bad labels, rows over a limit."""


class InvalidSettingError(DeepfuseError):
    """A setting (hyper-parameter, option) with a value it cannot take; the message names it."""


class CorruptCheckpointError(DeepfuseError):
    """Saved weights or a run record that are unreadable, truncated, edited or yield non-finite
    outputs; the message names the file."""


class RunFolderError(DeepfuseError):
    """A run or output folder that would overwrite something the user owns, or is incomplete."""
