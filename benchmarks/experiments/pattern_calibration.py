"""Does a std factor per set of present modalities calibrate evidential fusion with missing inputs?

ESOL (DeepChem's delaney loader, scaffold split, the benchmark's split), evidential late and
dynamic fusion, seeds 0-2, 30 epochs, the epoch chosen on validation. For each trained model the
std is judged on test with every set of modalities present (the others removed): as predicted,
rescaled by one factor fitted on validation (``fit_std_scale``), and rescaled by one factor per
set of present modalities fitted on validation (``fit_std_scales``). Prints one JSON line per
(model, seed, input, calibration); ``--plot`` draws the 1-sigma coverage.

Usage::

    python benchmarks/experiments/pattern_calibration.py [--seeds 0,1,2] [--models late,dynamic]
        [--epochs 30] [--plot benchmarks/experiments/pattern_calibration.png] \
        > pattern_calibration.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import deepchem as dc
import pandas as pd
import torch

import deepfuse_plugin  # noqa: F401  (registers dc.feat.MultiModalFeaturizer, dc.models.*)
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.models.calibration import calibration_report, fit_std_scale, fit_std_scales

NAMES = ("ecfp", "graph", "smiles")


def run(model_name: str, seed: int, data: tuple, modalities: list, epochs: int = 30) -> list[dict]:
    train, valid, test, transformers = data
    wf.set_seed(seed)
    model = wf.resolve_model_class(model_name)(
        n_tasks=1,
        modalities=modalities,
        mode="regression",
        batch_size=64,
        learning_rate=1e-3,
        uncertainty="evidential",
        progress=False,
    )
    result = wf.train_with_validation(
        model,
        train,
        valid,
        epochs,
        1,
        transformers,
        "regression",
        tempfile.mkdtemp(),
        progress=False,
    )
    calibrations = {
        "as predicted": 1.0,
        "one factor": fit_std_scale(model, valid, transformers),
        "factor per input": fit_std_scales(model, valid, transformers),
    }
    rows = []
    for present, scale in calibrations["factor per input"].scales.items():
        removed = [n for n in NAMES if n not in present]
        for label, std_scale in calibrations.items():
            report = calibration_report(
                model, test, transformers, std_scale=std_scale, drop_modalities=removed
            )
            rows.append(
                {
                    "model": model_name,
                    "seed": seed,
                    "best_epoch": result.best_epoch,
                    "present": "+".join(present),
                    "calibration": label,
                    "valid_factor": scale,
                    **report,
                }
            )
    return rows


def plot(frame: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mean = (
            frame[frame["model"] == model]
            .groupby(["present", "calibration"], sort=False)["within_1sigma"]
            .mean()
            .unstack("calibration")
        )
        mean.plot.bar(ax=ax, rot=30)
        ax.axhline(0.683, color="k", ls="--", lw=1, label="Gaussian 68.3%")
        ax.set(
            title=f"evidential {model} fusion, ESOL test (mean of seeds)",
            ylabel="errors within 1 predicted std",
            xlabel="modalities present",
            ylim=(0, 1),
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/moleculenet")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="late,dynamic")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plot", default=None, help="PNG path for the coverage plot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    featurizer = dc.feat.MultiModalFeaturizer(list(NAMES), progress=False)
    _, (train, valid, test), transformers = dc.molnet.load_delaney(
        featurizer=featurizer,
        splitter="scaffold",
        data_dir=args.data_dir,
        save_dir=tempfile.mkdtemp(),
    )
    rows = []
    for model_name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for row in run(
                model_name,
                seed,
                (train, valid, test, transformers),
                featurizer.modalities,
                args.epochs,
            ):
                print(json.dumps(row), flush=True)
                rows.append(row)
    frame = pd.DataFrame(rows)
    summary = (
        frame.groupby(["model", "present", "calibration"], sort=False)[
            ["within_1sigma", "within_2sigma", "rms_std", "rmse"]
        ]
        .mean()
        .round(3)
    )
    print(summary.to_string(), file=sys.stderr)
    if args.plot:
        plot(frame, args.plot)


if __name__ == "__main__":
    main()
