"""Datasets, loaders, corpora, out-of-core featurization (pickle-free shards) and the Castelli
perovskites.

The functions listed here are imported on first use (``from deepfuse_plugin.data import
featurize_to_disk``), so importing a submodule such as :mod:`deepfuse_plugin.data.collate` stays
light.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_LAZY = {
    "featurize_to_disk": "sharded",
    "featurize_corpus_to_disk": "sharded",
    "read_failures": "sharded",
    "ShardedMultiModalDataset": "shard_dataset",
    "load_castelli_perovskites": "perovskites",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"deepfuse_plugin.data.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
