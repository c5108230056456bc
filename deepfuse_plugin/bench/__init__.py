"""Deprecated: the benchmark harness is its own package, :mod:`deepfuse_bench`.

Install it from the repository with ``pip install -e benchmarks`` and import from
``deepfuse_bench`` (the command is ``deepfuse-bench``). For one release the old names still work:
``deepfuse_plugin.bench.<module>.<name>`` looks ``<name>`` up in the modules it moved to, with a
``FutureWarning``. ``deepfuse_plugin.bench.demo`` is :mod:`deepfuse_plugin.demo`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from typing import Any

if importlib.util.find_spec("deepfuse_bench") is None:
    raise ImportError(
        "deepfuse_plugin.bench moved to the separate package deepfuse_bench; install "
        "it from the repository with `pip install -e benchmarks`"
    )

warnings.warn(
    "deepfuse_plugin.bench is deprecated; import from deepfuse_bench (the harness "
    "package) or deepfuse_plugin.demo instead",
    FutureWarning,
    stacklevel=2,
)

#: Old module -> the modules its names now live in, searched in this order.
MOVED = {
    "chemprop": ("deepfuse_bench.chemprop", "deepfuse_bench.chemprop_env"),
    "crystals": (
        "deepfuse_bench.crystals",
        "deepfuse_bench.crystals_data",
        "deepfuse_bench.crystals_report",
        "deepfuse_bench.crystals_runs",
        "deepfuse_bench.crystals_timing",
    ),
    "demo": ("deepfuse_plugin.demo",),
    "featurize": ("deepfuse_bench.featurize",),
    "moleculenet": (
        "deepfuse_bench.moleculenet",
        "deepfuse_bench.datasets",
        "deepfuse_bench.models",
        "deepfuse_bench.runner",
        "deepfuse_bench.records",
        "deepfuse_bench.report",
        "deepfuse_bench.merge",
        "deepfuse_bench.environment",
        "deepfuse_bench.chemprop_peer",
    ),
    "peers": ("deepfuse_bench.peers", "deepfuse_bench.chemprop_peer"),
    "speed": ("deepfuse_bench.speed",),
}
__all__ = sorted(MOVED)


class _MovedModule(types.ModuleType):
    """An old module whose attributes are looked up, on first use, in the modules it moved to."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(f"{__name__}.{name}", f"Deprecated alias of {', '.join(targets)}.")
        self._targets = targets

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(
            f"{self.__name__} has no attribute {attribute!r} (looked in {', '.join(self._targets)})"
        )


for _name, _targets in MOVED.items():
    sys.modules[f"{__name__}.{_name}"] = globals()[_name] = _MovedModule(_name, _targets)
