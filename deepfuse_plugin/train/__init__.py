"""Training: metrics and checkpoint selection, the training loop, resume points, and
hyper-parameter search (:mod:`.hpopt`, imported on its own: it needs Optuna).

The run-folder workflows behind ``deepfuse train``/``predict`` (:mod:`deepfuse_plugin.workflows`)
and the benchmark harness are built on these pieces:

- :mod:`.metrics`: regression/classification metrics in original units, :func:`evaluate`,
  :func:`selection_score` (the validation number a checkpoint is chosen by);
- :mod:`.loop`: :func:`train_with_validation` and its :class:`BestCheckpointCallback`;
- :mod:`.resume`: resume points of an interrupted run (no pickle: JSON and tensors only);
- :mod:`.data`: datasets, DeepChem splits, label normalization;
- :mod:`.utils`: seeding, JSON output, training-setting checks;
- :mod:`.lightning`: :func:`fit_distributed`, training on several processes, GPUs or machines
  under Lightning (DDP); imported on first use (``pip install deepfuse[distributed]``).

Examples
--------
>>> from deepfuse_plugin.train import selection_score
>>> selection_score({"rmse": 0.7}, "regression")
('rmse', 0.7)
"""

from deepfuse_plugin.train.data import (
    SPLITS,
    denormalize,
    fit_normalizer,
    make_dataset,
    normalizer_to_dict,
    split_indices,
)
from deepfuse_plugin.train.loop import BestCheckpointCallback, train_with_validation
from deepfuse_plugin.train.metrics import (
    classification_metrics,
    evaluate,
    predict_original_units,
    regression_metrics,
    selection_score,
    task_columns,
)
from deepfuse_plugin.train.result import TrainingResult
from deepfuse_plugin.train.resume import ResumeMismatchError, ResumeState
from deepfuse_plugin.train.utils import (
    check_training_settings,
    resolve_model_class,
    set_seed,
    to_jsonable,
    write_json,
)

__all__ = [
    # the loop
    "train_with_validation",
    "fit_distributed",
    "BestCheckpointCallback",
    "TrainingResult",
    # metrics and selection
    "regression_metrics",
    "classification_metrics",
    "evaluate",
    "predict_original_units",
    "task_columns",
    "selection_score",
    # data
    "SPLITS",
    "make_dataset",
    "split_indices",
    "fit_normalizer",
    "normalizer_to_dict",
    "denormalize",
    # resume points
    "ResumeState",
    "ResumeMismatchError",
    # utilities
    "set_seed",
    "check_training_settings",
    "resolve_model_class",
    "to_jsonable",
    "write_json",
]


def __getattr__(name: str) -> object:
    """:func:`fit_distributed` on first use: Lightning is an optional dependency."""
    if name == "fit_distributed":
        from deepfuse_plugin.train.lightning import fit_distributed

        return fit_distributed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
