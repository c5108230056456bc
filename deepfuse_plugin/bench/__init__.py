"""Benchmark runners used by ``make demo`` and the ``make bench*`` targets (via the ``deepfuse``
command). Each writes its tables to ``benchmarks/``.

* :func:`deepfuse_plugin.bench.demo.run_demo`: accuracy of DynamicFusionModel vs single modalities
  and DeepChem baselines on Huuskonen solubility (``deepfuse demo``).
* :func:`deepfuse_plugin.bench.featurize.run_featurize_bench`: featurization speed and memory vs
  DeepChem's featurizers (``deepfuse bench featurize``).
* :func:`deepfuse_plugin.bench.moleculenet.run_moleculenet_bench`: MoleculeNet accuracy of every
  deepfuse model, the DeepChem baselines (:mod:`~deepfuse_plugin.bench.peers`) and chemprop v2
  (:mod:`~deepfuse_plugin.bench.chemprop`, in its own environment) on the same split
  (``deepfuse bench moleculenet``); :func:`~deepfuse_plugin.bench.moleculenet.merge_results`
  combines output folders run in parallel (``deepfuse bench merge``).
* :func:`deepfuse_plugin.bench.speed.run_speed_bench`: featurization, training and inference
  speed and peak memory vs DMPNN and chemprop, with profiles (``deepfuse bench speed``).
* :func:`deepfuse_plugin.bench.crystals.run_crystal_bench`: formation energy on mp36k (MEGNet
  split): CGCNN, text-only, MatMMFuse and DynamicFusion, zero-shot sulfides, describer speed
  (``deepfuse bench crystals``).

Submodules are imported on use, so ``import deepfuse_plugin.bench`` stays cheap.
"""
from __future__ import annotations

__all__ = ["chemprop", "crystals", "demo", "featurize", "moleculenet", "peers", "speed"]
