"""Does starting from the pretrained checkpoint or adding the MiniMol view slow training down?

Seconds per training epoch of ``DynamicFusionModel`` on the first 600 BBBP molecules (those every
view can featurize), one torch thread, for the four combinations of the benchmark's variants:
the three default views from scratch (``dynamic``) or from ``DeepFuse-MOSES40k-v1-Multiview``
(``dynamic_ssl``), and the same with the MiniMol view (``dynamic_minimol``,
``dynamic_pretrained``). Every model is built first; the epochs are then timed in interleaved
rounds (A B C D A B C D ...) so that background load hits every variant alike.

    python benchmarks/experiments/epoch_time_pretrained.py --data-dir ../shared/data

Result (2 shared CPU cores, a CI run beside it, 2 rounds): 3.1-3.6 s per epoch on the three
views with or without the checkpoint (1,248,203 parameters either way), 3.9-4.3 s with the MiniMol
view added (1,397,773: its encoder). The checkpoint costs nothing per epoch; the MiniMol view about
10-15%. The up to 6x longer train times of the pretrained variants in ``benchmarks/full`` come from
machine load when those runs ran, not from the model.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

CHECKPOINT = "DeepFuse-MOSES40k-v1-Multiview"
VARIANTS = {
    "from scratch": (["ecfp", "graph", "smiles"], None),
    "pretrained encoders": (["ecfp", "graph", "smiles"], CHECKPOINT),
    "+ MiniMol, from scratch": (["ecfp", "graph", "smiles", "minimol"], None),
    "+ MiniMol, pretrained encoders": (["ecfp", "graph", "smiles", "minimol"], CHECKPOINT),
}


def bbbp(data_dir: str, n: int, modalities: list[str]):
    """The first ``n`` BBBP molecules as a DeepChem dataset (rows a featurizer refuses left out)."""
    import deepchem as dc
    import pandas as pd

    import deepfuse_plugin as dfp

    frame = pd.read_csv(os.path.join(data_dir, "moleculenet", "BBBP.csv")).head(n)
    featurizer = dfp.MultiModalFeaturizer(modalities, progress=False)
    samples = featurizer.featurize(frame["smiles"].tolist())
    ok = np.array([not isinstance(x, np.ndarray) for x in samples])
    labels = frame["p_np"].to_numpy(dtype=float).reshape(-1, 1)
    return featurizer.modalities, dc.data.NumpyDataset(samples[ok], labels[ok])


def main() -> None:
    import torch

    import deepfuse_plugin as dfp

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {}
    for name, (modalities, checkpoint) in VARIANTS.items():
        specs, dataset = bbbp(args.data_dir, args.n, modalities)
        torch.manual_seed(0)
        model = dfp.DynamicFusionModel(
            1,
            specs,
            mode="classification",
            pretrained=checkpoint,
            batch_size=64,
            curriculum_epochs=args.rounds,  # one fit call per epoch: one curriculum across them
        )
        models[name] = (model, dataset)
    for _ in range(args.rounds):
        for name, (model, dataset) in models.items():
            start = time.perf_counter()
            model.fit(dataset, nb_epoch=1)
            parameters = sum(p.numel() for p in model.model.parameters())
            print(
                f"{name:32s} {parameters:>10,d} parameters  "
                f"{time.perf_counter() - start:6.2f} s per epoch",
                flush=True,
            )


if __name__ == "__main__":
    main()
