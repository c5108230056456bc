"""The demo's table and figures: :class:`ModelRun` (one row), :func:`format_table`,
:func:`plot_parity` and :func:`plot_modality_weights` (``deepfuse demo`` writes them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ModelRun:
    """One row of the demo table."""

    name: str
    kind: str
    test: dict[str, float]
    valid: dict[str, float]
    best_epoch: int
    train_time_s: float
    history: list[dict[str, float]]
    predictions: np.ndarray


def format_table(runs: Sequence[ModelRun]) -> str:
    """The demo table (test metrics in original units)."""
    width = max([34, *(len(r.name) for r in runs)])  # the names decide the first column
    header = (
        f"{'model':<{width}} {'RMSE':>7} {'MAE':>7} {'R2':>7} {'valid RMSE':>10} "
        f"{'best ep':>7} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        lines.append(
            f"{r.name:<{width}} {r.test['rmse']:>7.3f} {r.test['mae']:>7.3f} "
            f"{_fmt(r.test.get('r2')):>7} {r.valid['rmse']:>10.3f} {r.best_epoch:>7d} "
            f"{r.train_time_s:>8.1f}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3f}"


def plot_parity(y_true: np.ndarray, runs: Sequence[ModelRun], path: str) -> None:
    """Predicted vs measured on test: the fusion model (``runs[0]``) in blue and, in grey, the
    DeepChem baseline with the best validation RMSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    baselines = sorted(
        (r for r in runs if r.kind == "deepchem baseline"),
        key=lambda r: r.valid.get("rmse", math.inf),
    )
    for r in baselines[:1]:
        ax.scatter(
            y_true,
            r.predictions,
            s=12,
            c="0.6",
            alpha=0.6,
            label=f"{r.name}: RMSE {r.test['rmse']:.2f}",
        )
    fusion = runs[0]
    ax.scatter(
        y_true,
        fusion.predictions,
        s=14,
        c="tab:blue",
        alpha=0.8,
        label=f"{fusion.name}: RMSE {fusion.test['rmse']:.2f}, R2 {_fmt(fusion.test['r2'])}",
    )
    values = np.concatenate([y_true, *[r.predictions for r in [fusion, *baselines[:1]]]])
    lo, hi = float(np.min(values)) - 0.5, float(np.max(values)) + 0.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="measured log S",
        ylabel="predicted log S",
        title="Huuskonen solubility, scaffold test split",
    )
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_modality_weights(weights: Any, path: str) -> None:
    """Bar chart of the mean (± std) attention weight per modality over the test molecules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = weights.where(weights > 0)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.bar(
        list(weights.columns),
        present.mean().fillna(0.0).to_numpy(),
        yerr=present.std().fillna(0.0).to_numpy(),
        color=[colors[i % len(colors)] for i in range(weights.shape[1])],
        capsize=4,
    )
    ax.axhline(1.0 / weights.shape[1], color="0.4", ls=":", lw=1, label="uniform")
    ax.legend(loc="upper right", fontsize=8)
    ax.set(
        ylabel="mean modality weight (alpha)",
        ylim=(0, 1),
        title="DynamicFusion modality weights (test)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
