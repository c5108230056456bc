"""Why DynamicFusion trails its own graph branch on ClinTox.

Trains DynamicFusionModel once (seed 0, DeepChem's scaffold split, 30 epochs, the epoch chosen on
validation) and prints its test ROC-AUC and mean modality weights on train and test. Results and
their reading: ``README.md`` beside this file.

Usage::

    python benchmarks/experiments/clintox_attention_diagnosis.py [--lambda-ent 1.0]
        [--vector-input-dropout 0.5] [--unimodal-loss-weight 1.0] [--without ecfp]
"""

from __future__ import annotations

import argparse
import tempfile

import deepchem as dc
import numpy as np
import torch

import deepfuse_plugin  # noqa: F401  (registers dc.feat.MultiModalFeaturizer, dc.models.*)
from deepfuse_plugin import workflows as wf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/moleculenet")
    parser.add_argument("--lambda-ent", type=float, default=0.01)
    parser.add_argument("--vector-input-dropout", type=float, default=0.2)
    parser.add_argument("--unimodal-loss-weight", type=float, default=0.0)
    parser.add_argument("--without", default="", help="a modality to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf.set_seed(0)
    featurizer = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    tasks, (train, valid, test), transformers = dc.molnet.load_clintox(
        featurizer=featurizer,
        splitter="scaffold",
        data_dir=args.data_dir,
        save_dir=tempfile.mkdtemp(),
    )
    modalities = [m for m in featurizer.modalities if m.name != args.without]
    model = dc.models.DynamicFusionModel(
        n_tasks=len(tasks),
        modalities=modalities,
        mode="classification",
        batch_size=64,
        learning_rate=1e-3,
        lambda_ent=args.lambda_ent,
        vector_input_dropout=args.vector_input_dropout,
        unimodal_loss_weight=args.unimodal_loss_weight,
        progress=False,
    )
    result = wf.train_with_validation(
        model,
        train,
        valid,
        30,
        1,
        transformers,
        "classification",
        tempfile.mkdtemp(),
        progress=False,
    )
    metric = dc.metrics.Metric(dc.metrics.roc_auc_score, np.mean, mode="classification")
    test_score = model.evaluate(test, [metric], transformers)["mean-roc_auc_score"]
    print(
        f"best epoch {result.best_epoch}, validation ROC-AUC {abs(result.best_score):.3f}, "
        f"test ROC-AUC {test_score:.3f}"
    )
    for name, part in (("train", train), ("test", test)):
        weights = model.mean_modality_weights(part).round(3).to_dict()
        print(f"mean modality weights, {name}: {weights}")


if __name__ == "__main__":
    main()
