"""Datasets, loaders, corpora and out-of-core featurization.

The out-of-core functions are imported on first use (``from deepfuse_plugin.data import
featurize_to_disk``), so importing a submodule such as :mod:`deepfuse_plugin.data.collate` stays
light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["featurize_to_disk", "featurize_corpus_to_disk", "read_failures"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deepfuse_plugin.data import sharded

        return getattr(sharded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
