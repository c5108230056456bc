"""The machine a benchmark ran on, and how much memory a run took.

* :func:`environment`: library versions, CPU model and vector extensions, core count, GPU;
* :class:`PeakRSS`: the peak resident set size of a process (tree) while a block runs, sampled
  in a background thread with psutil.

Examples
--------
>>> from deepfuse_bench.environment import PeakRSS
>>> with PeakRSS() as memory:
...     block = bytearray(1 << 20)
>>> memory.peak_mib is None or memory.peak_mib >= memory.start_mib
True
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import threading
from typing import Any

import numpy as np


class PeakRSS:
    """Sample a process's resident set size in a thread while the block runs (psutil).

    By default this process; ``pid`` another one, and ``tree`` adds its descendants' (the chemprop
    child process tree). A process that has exited counts as 0.
    """

    method = "psutil RSS sampled every 50 ms (peak during the run; delta = peak - RSS at start)"

    def __init__(self, interval: float = 0.05, pid: int | None = None, tree: bool = False) -> None:
        self.interval, self.tree = interval, tree
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self._process = None
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ipykernel ([test] extra)
            psutil = None
        if psutil is not None:
            self._gone = (psutil.NoSuchProcess, psutil.AccessDenied)
            with contextlib.suppress(*self._gone):  # it may have ended before sampling began
                self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> float:
        root = self._process
        if root is None:
            return 0.0
        try:
            processes = [root, *(root.children(recursive=True) if self.tree else [])]
        except self._gone:
            return 0.0
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except self._gone:
                pass
        return total / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib or 0.0, self._rss())

    def __enter__(self) -> PeakRSS:
        if self._process is not None:
            self.start_mib = self.peak_mib = self._rss()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib or 0.0, self._rss())

    @property
    def delta_mib(self) -> float | None:
        if self.start_mib is None or self.peak_mib is None:
            return None
        return self.peak_mib - self.start_mib


def environment() -> dict[str, Any]:
    """Versions of deepfuse, DeepChem, torch, RDKit, scikit-learn, NumPy and Python, and the
    machine: platform, CPU model and vector extensions, core count, GPU name (or None)."""
    import deepchem as dc
    import rdkit
    import sklearn
    import torch

    from deepfuse_plugin._version import __version__

    return {
        "deepfuse": __version__,
        "deepchem": dc.__version__,
        "torch": torch.__version__,
        "rdkit": rdkit.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_simd": cpu_simd_flags(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


#: CPU vector extensions worth recording: NumPy's and scikit-learn's float sums can round
#: differently with and without them (``benchmarks/experiments/forest_label_rounding.py``).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "neon", "asimd")


@functools.lru_cache(maxsize=1)
def _cpuinfo_lines() -> tuple[str, ...]:
    """``/proc/cpuinfo`` (Linux; empty elsewhere), read once per process."""
    try:
        with open("/proc/cpuinfo") as fh:
            return tuple(fh)
    except OSError:
        return ()


def cpu_model() -> str:
    """The CPU's model name (Linux), else what :mod:`platform` knows."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_simd_flags() -> list[str] | None:
    """Which of :data:`SIMD_FLAGS` the CPU reports (Linux); None where that cannot be read."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            reported = set(line.split(":", 1)[1].split())
            return [flag for flag in SIMD_FLAGS if flag in reported]
    return None
