"""chemprop v2's own virtual environment (chemprop pins another RDKit, Lightning and friends).

:func:`ensure_chemprop_env` creates it once (``.venv-chemprop`` in the current folder, or
``$DEEPFUSE_CHEMPROP_VENV``): ``torch==2.13.0`` first, then ``chemprop==2.3.1``. Any other torch
release would pull gigabytes of CUDA wheels, and with the CPU wheel installed first pip keeps it.
A stamp file records the requirements and the versions pip resolved, so later calls return at
once. About a minute from a local package mirror.

Examples
--------
>>> from deepfuse_bench.chemprop_env import REQUIREMENTS, install_commands
>>> from pathlib import Path
>>> [c[-1] for c in install_commands(Path("venv"), "python3")[1:]] == list(REQUIREMENTS)
True
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from deepfuse_plugin.workflows import WorkflowError

CHEMPROP_VERSION = "2.3.1"
TORCH_VERSION = "2.13.0"
#: Installed in this order, one pip call each: the CPU torch wheel first, so that chemprop's
#: ``torch`` requirement is already met and pip downloads no CUDA build.
REQUIREMENTS = (f"torch=={TORCH_VERSION}", f"chemprop=={CHEMPROP_VERSION}")
DEFAULT_VENV = ".venv-chemprop"
VENV_ENV = "DEEPFUSE_CHEMPROP_VENV"
STAMP = ".deepfuse-chemprop.json"
INSTALL_LOG = ".deepfuse-install.log"
#: Versions copied into the stamp (and the benchmark's JSON).
REPORTED_PACKAGES = ("chemprop", "torch", "rdkit", "lightning", "numpy", "pandas", "scikit-learn")
INSTALL_TIMEOUT_S = 1800.0
TAIL_LINES = 25


class ChempropError(WorkflowError):
    """A chemprop step failed (the message names the command and shows the end of its output)."""


class ChempropEnvError(ChempropError):
    """chemprop's virtual environment could not be created."""


# -- the environment -----------------------------------------------------------------------------
def default_venv_dir() -> Path:
    """``$DEEPFUSE_CHEMPROP_VENV``, else ``.venv-chemprop`` in the current folder."""
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def read_stamp(venv: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp of a finished installation (requirements, versions, install time), or None."""
    try:
        return json.loads((Path(venv) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def env_ready(venv: str | os.PathLike) -> bool:
    """Whether ``venv`` holds a finished installation of :data:`REQUIREMENTS`."""
    stamp = read_stamp(venv)
    return (
        stamp is not None
        and stamp.get("requirements") == list(REQUIREMENTS)
        and (Path(venv) / "bin" / "chemprop").exists()
    )


def install_commands(venv: Path, python: str) -> list[list[str]]:
    """The commands that build the environment: ``venv``, then one ``pip install`` per
    requirement, in the order of :data:`REQUIREMENTS`."""
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
    return [[python, "-m", "venv", str(venv)], *([*pip, req] for req in REQUIREMENTS)]


def ensure_chemprop_env(
    venv_dir: str | os.PathLike | None = None,
    python: str | None = None,
    timeout: float = INSTALL_TIMEOUT_S,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Create (or reuse) chemprop's virtual environment; return its ``chemprop`` executable.

    Idempotent: a finished installation (stamp file present, same requirements) is returned at
    once. Concurrent callers wait on a file lock, so only one of them installs.

    Parameters
    ----------
    venv_dir: path, optional
        Default :func:`default_venv_dir`.
    python: str, optional
        Interpreter that creates the environment (default: this one, Python >= 3.11 for
        chemprop 2.3).
    timeout: float
        Seconds allowed for the whole installation.
    echo: callable, optional
        Receives a line before and after an installation.

    Raises
    ------
    ChempropEnvError
        A step failed or timed out; the message names the command and ends with the last lines
        of pip's output (all of it is in ``<venv>/.deepfuse-install.log``).
    """
    venv = Path(venv_dir or default_venv_dir()).expanduser().absolute()
    executable = venv / "bin" / "chemprop"
    if env_ready(venv):
        return executable
    try:
        venv.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ChempropEnvError(
            f"Cannot create chemprop's environment folder {venv}: {err}"
        ) from err
    with _locked(venv / ".deepfuse-lock"):
        if env_ready(venv):  # another process finished it while we waited
            return executable
        if echo:
            echo(
                f"chemprop: creating its virtual environment {venv} ({', '.join(REQUIREMENTS)}; "
                "about a minute from a local package mirror)"
            )
        seconds = _install(venv, python or sys.executable, timeout)
        if echo:
            echo(
                f"chemprop: environment ready in {seconds:.0f} s: "
                f"{(read_stamp(venv) or {}).get('versions')}"
            )
    return executable


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(venv: Path, python: str, timeout: float) -> float:
    """Run :func:`install_commands`, then write the stamp; return the seconds it took."""
    log_path = venv / INSTALL_LOG
    start = time.perf_counter()
    with open(log_path, "w") as log:
        for cmd in install_commands(venv, python):
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            left = timeout - (time.perf_counter() - start)
            try:
                code = subprocess.run(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(),
                    timeout=max(left, 1.0),
                ).returncode
                problem = f"exited with code {code}" if code else ""
            except subprocess.TimeoutExpired:
                problem = f"did not finish within the {timeout:.0f} s allowed"
            except OSError as err:
                problem = f"could not start ({err})"
            if problem:
                log.flush()
                raise ChempropEnvError(
                    f"Could not create chemprop's environment {venv}: `{shlex.join(cmd)}` "
                    f"{problem}. Last lines of its output ({log_path}):\n{tail(log_path)}"
                )
    seconds = time.perf_counter() - start
    stamp = {
        "requirements": list(REQUIREMENTS),
        "versions": installed_versions(venv),
        "python": python,
        "install_s": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (venv / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return seconds


def installed_versions(venv: Path) -> dict[str, str]:
    """Versions of :data:`REPORTED_PACKAGES` that pip resolved in ``venv``."""
    cmd = [
        str(venv_python(venv)),
        "-m",
        "pip",
        "list",
        "--format=json",
        "--disable-pip-version-check",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if done.returncode:
        raise ChempropEnvError(f"`{shlex.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    found = {p["name"].lower(): p["version"] for p in json.loads(done.stdout)}
    return {name: found[name] for name in REPORTED_PACKAGES if name in found}


def child_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment without what would leak deepfuse's packages into chemprop's
    interpreter; ``threads`` caps torch's intra-op threads (OpenMP/MKL)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    env["PYTHONNOUSERSITE"] = "1"
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def tail(path: str | os.PathLike, lines: int = TAIL_LINES, width: int = 400) -> str:
    """The last ``lines`` lines of a text file, each cut to ``width`` characters (chemprop logs
    all its arguments on one very long line); '' when the file cannot be read."""
    try:
        with open(path, errors="replace") as fh:
            last = fh.read().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(line if len(line) <= width else line[:width] + " [...]" for line in last)
