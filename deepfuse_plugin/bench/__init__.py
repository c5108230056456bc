"""Benchmark runners used by ``make demo`` and ``make bench`` (via the ``deepfuse`` command).

* :func:`deepfuse_plugin.bench.demo.run_demo`: accuracy of DynamicFusionModel vs single modalities
  and DeepChem baselines on Huuskonen solubility (``deepfuse demo``).
* :func:`deepfuse_plugin.bench.featurize.run_featurize_bench`: featurization speed and memory vs
  DeepChem's featurizers (``deepfuse bench featurize``).

Submodules are imported on use, so ``import deepfuse_plugin.bench`` stays cheap.
"""
from __future__ import annotations

__all__ = ["demo", "featurize"]
