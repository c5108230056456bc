"""deepfuse's benchmark harness: the deepfuse models against DeepChem and chemprop v2.

A separate distribution (``deepfuse-benchmarks``, ``pip install -e benchmarks``) beside the
library it measures; the ``deepfuse-bench`` command runs it and writes the tables in
``benchmarks/``.

* :mod:`~deepfuse_bench.featurize`: featurization speed and memory vs DeepChem's featurizers
  (``deepfuse-bench featurize``).
* :mod:`~deepfuse_bench.moleculenet`: MoleculeNet accuracy of every deepfuse model, the DeepChem
  baselines (:mod:`~deepfuse_bench.peers`), chemprop v2 (:mod:`~deepfuse_bench.chemprop_peer`)
  and, opt-in, the pretrained views (:mod:`~deepfuse_bench.models`: the MiniMol peer
  ``minimol_mlp``, fusion with the MiniMol view from scratch and with pretrained encoders,
  ``--pretrained``) on the same split (``deepfuse-bench moleculenet``), every model keeping its
  best validation ROC-AUC / RMSE epoch, built from
  :mod:`~deepfuse_bench.datasets` (loading, alignment, split), :mod:`~deepfuse_bench.runner`
  (runs, worker processes, resume) and :mod:`~deepfuse_bench.report` (markdown, plot);
  :mod:`~deepfuse_bench.merge` combines output folders run in parallel
  (``deepfuse-bench merge``).
* :mod:`~deepfuse_bench.speed`: featurization, training and inference speed and peak memory vs
  DMPNN and chemprop, with profiles (``deepfuse-bench speed``), built from
  :mod:`~deepfuse_bench.speed_runs` (the timed sections), :mod:`~deepfuse_bench.speed_profile`
  (pyinstrument) and :mod:`~deepfuse_bench.speed_report` (table, markdown).
* :mod:`~deepfuse_bench.crystals`: formation energy on mp36k (MEGNet split): CGCNN, text-only,
  MatMMFuse and DynamicFusion, zero-shot sulfides, describer speed (``deepfuse-bench crystals``).
* :mod:`~deepfuse_bench.chemprop_env` and :mod:`~deepfuse_bench.chemprop`: chemprop's own
  virtual environment and its command line; :mod:`~deepfuse_bench.environment`: the machine
  record and peak-memory sampling.

Submodules are imported on use, so ``import deepfuse_bench`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
