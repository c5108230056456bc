"""CrossAttentionFusionModel training time with and without length chunks, on HIV molecules.

One training epoch (batch 64, the benchmark's ECFP + graph + SMILES modalities, 1 torch thread)
is timed in CPU seconds for each ``length_chunk``, alternating between the settings so that load
from other processes spreads over all of them. Both models start from the same weights, and their
eval-mode predictions before training are compared: chunking must not change the outputs. One
JSON line per timed epoch, then the median per setting and the speed-up over one pass (``0``).

    python benchmarks/experiments/cross_attention_length_chunks.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import numpy as np


def hiv_dataset(data_dir: str, n: int) -> tuple[Any, list[Any]]:
    """The parseable ones of the first ``n`` HIV molecules, featurized like the benchmark's."""
    import deepchem as dc
    import pandas as pd

    from deepfuse_bench.datasets import FUSION_MODALITIES
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.modalities import MultiModalSample

    frame = pd.read_csv(f"{data_dir}/moleculenet/HIV.csv").iloc[:n]
    featurizer = MultiModalFeaturizer(list(FUSION_MODALITIES), progress=False)
    X = featurizer.featurize(frame["smiles"].tolist())
    parsed = np.array([isinstance(x, MultiModalSample) for x in X])
    y = frame["HIV_active"].to_numpy(dtype=float)[parsed, None]
    return dc.data.NumpyDataset(X[parsed], y), featurizer.modalities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--molecules", type=int, default=2048)
    parser.add_argument("--chunks", default="0,16", help="length_chunk values; 0 = one pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from deepfuse_plugin import CrossAttentionFusionModel

    torch.set_num_threads(1)
    dataset, modalities = hiv_dataset(args.data_dir, args.molecules)
    chunks = [int(c) for c in args.chunks.split(",")]
    models = {}
    with tempfile.TemporaryDirectory() as scratch:
        for chunk in chunks:
            torch.manual_seed(0)  # the same initial weights for every setting
            models[chunk] = CrossAttentionFusionModel(
                1,
                modalities,
                mode="classification",
                batch_size=64,
                length_chunk=chunk,
                progress=False,
                model_dir=f"{scratch}/{chunk}",
            )
        reference = models[chunks[0]].predict(dataset)
        for chunk in chunks[1:]:
            gap = float(np.abs(models[chunk].predict(dataset) - reference).max())
            print(json.dumps({"length_chunk": chunk, "max_abs_prediction_difference": gap}))
        seconds: dict[int, list[float]] = {c: [] for c in chunks}
        for repeat in range(args.repeats):
            for chunk in chunks:
                start = time.process_time()
                models[chunk].fit(dataset, nb_epoch=1)
                seconds[chunk].append(time.process_time() - start)
                print(
                    json.dumps(
                        {
                            "repeat": repeat,
                            "length_chunk": chunk,
                            "cpu_s_per_epoch": round(seconds[chunk][-1], 2),
                        }
                    ),
                    flush=True,
                )
    median = {c: statistics.median(s) for c, s in seconds.items()}
    print(
        json.dumps(
            {
                "molecules": len(dataset),
                "median_cpu_s_per_epoch": median,
                "speedup_over_one_pass": {
                    c: round(median[0] / median[c], 2) for c in chunks if 0 in median and c
                },
            }
        )
    )


if __name__ == "__main__":
    main()
