"""Checks of training data and inputs that would otherwise give silently wrong models:
text or float32-overflowing labels, tasks without a single label, token sequences longer than
the model reads, featurizer settings other than the model's, and a loss that stops being finite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.errors import DeepfuseError, InvalidInputError, InvalidSettingError
from deepfuse_plugin.modalities import Modality, as_modalities

Dataset = Any  # a deepchem.data.Dataset


def check_token_lengths(dataset: Any, modalities: Sequence[Modality]) -> None:
    """Token sequences longer than the model's ``max_length`` (data featurized with another
    ``max_length``) are refused before training, naming the ids."""
    limits = {
        m.name: m.max_length
        for m in modalities
        if m.kind == "sequence" and m.max_length is not None
    }
    for name, limit in limits.items():
        too_long = [
            (str(ids), len(x.values[name]))
            for x, _, _, ids in dataset.itersamples()
            if getattr(x, "values", {}).get(name) is not None and len(x.values[name]) > limit
        ]
        if too_long:
            raise InvalidInputError(
                f"Modality {name!r}: {len(too_long)} row(s) have more tokens than the model's "
                f"max_length={limit} (ids and lengths: {too_long[:5]}): the data was featurized "
                "with another max_length; featurize with "
                "MultiModalFeaturizer(modalities=model.modalities)"
            )


def refusing_non_finite(loss_fn: Any, model: Any) -> Any:
    """``loss_fn`` raising a clear error, before the optimizer step, when a batch's loss is not
    finite (labels far too large for float32 arithmetic, a learning rate that diverges)."""

    def loss(outputs: list, labels: list, weights: list) -> Any:
        value = loss_fn(outputs, labels, weights)
        if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach()).all()):
            largest = max(
                (
                    float(t.detach().abs().nan_to_num(0.0).max())
                    for t in labels
                    if isinstance(t, torch.Tensor) and t.numel()
                ),
                default=float("nan"),
            )
            raise DeepfuseError(
                f"The training loss became {float(value.detach().sum()):g} at epoch "
                f"{model.epochs_started}, batch {model._global_step + 1} (counted over every fit "
                f"call; largest |label| in the batch {largest:g}, learning_rate "
                f"{model.learning_rate!r}): normalise the labels (e.g. "
                "dc.trans.NormalizationTransformer, or the workflows' default normalisation) or "
                "lower learning_rate. This batch did not update the weights."
            )
        return value

    return loss


def numeric_labels(dataset: Dataset) -> np.ndarray:
    """``dataset.y`` as ``(N, n_tasks)`` float64; text labels are an InvalidInputError."""
    raw = np.asarray(dataset.y)
    try:
        return np.asarray(raw, dtype=np.float64).reshape(len(dataset), -1)
    except (TypeError, ValueError) as err:
        flat = raw.reshape(len(dataset), -1)
        rows = [i for i in range(len(flat)) if not all(_is_number(v) for v in flat[i])]
        examples = [(str(dataset.ids[i]), [str(v) for v in flat[i]]) for i in rows[:5]]
        raise InvalidInputError(
            f"Labels must be numbers; {len(rows)} row(s) are not (ids and values: {examples}). "
            "Convert them (e.g. yes/no to 1/0) or mark a missing label as empty/NaN"
        ) from err


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def check_label_range(y: np.ndarray, dataset: Dataset) -> None:
    """Finite labels beyond float32's range would become inf in training and be dropped."""
    huge = np.isfinite(y) & (np.abs(y) > np.finfo(np.float32).max)
    if huge.any():
        rows = np.flatnonzero(huge.any(axis=1))
        raise InvalidInputError(
            f"{len(rows)} row(s) have labels beyond float32's range (|y| > 3.4e38; ids and "
            f"values: {[(str(dataset.ids[r]), y[r][huge[r]].tolist()) for r in rows[:5]]}): "
            "fix or drop those values, or rescale the labels"
        )


def check_labelled_tasks(y: np.ndarray, dataset: Dataset) -> None:
    """A task without a single finite label of non-zero weight would train an untrained head."""
    w = np.asarray(dataset.w, dtype=np.float64).reshape(len(dataset), -1)
    if w.shape[1] not in (1, y.shape[1]):
        return  # DeepChem's own checks report odd weight shapes
    labelled = (np.isfinite(y) & (np.broadcast_to(w, y.shape) != 0)).any(axis=0)
    if not labelled.all():
        names = list(dataset.get_task_names())
        empty = [
            str(names[j]) if j < len(names) else f"task {j}" for j in np.flatnonzero(~labelled)
        ]
        raise InvalidInputError(
            f"Task(s) {empty} have no labelled rows (every label is missing/NaN or has weight "
            "0): their predictions would come from an untrained head. Drop those tasks or add "
            "labels."
        )


def spec_differences(ours: Modality, theirs: Modality) -> list[str]:
    """Readable differences of two specs of the same modality, field by field."""
    lines = []
    for field in ("kind", "dim", "max_length", "node_dim", "edge_dim"):
        a, b = getattr(ours, field), getattr(theirs, field)
        if a != b:
            lines.append(f"modality {ours.name!r} {field}: model {a!r}, featurizer {b!r}")
    if ours.vocab != theirs.vocab:
        a, b = ours.vocab or (), theirs.vocab or ()
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        lines.append(
            f"modality {ours.name!r} vocab: model {len(a)} tokens, featurizer {len(b)} "
            f"tokens (first difference at token id {first})"
        )
    for key in sorted(set(ours.params) | set(theirs.params)):
        a, b = ours.params.get(key), theirs.params.get(key)
        if a != b and key != "vocab":
            lines.append(f"modality {ours.name!r} params[{key!r}]: model {a!r}, featurizer {b!r}")
    return lines


def check_training_data(
    dataset: Dataset,
    modalities: Sequence[Modality],
    n_tasks: int,
    mode: str,
    n_classes: int,
    labelled: bool,
    log: logging.Logger,
) -> None:
    """Refuse data ``fit`` cannot use, naming the rows: no rows, other modalities than the
    model's, token sequences longer than the model reads, and (``labelled``) no tasks, a task
    count other than ``n_tasks``, text or float32-overflowing labels, tasks without a label and
    classification labels outside ``[0, n_classes)``. NaN/inf labels are logged (weight 0)."""
    if len(dataset) == 0:
        raise ValueError(
            "The dataset has no rows: every input failed to featurize or the "
            "split is empty (see the featurizer's warnings for the failed inputs)"
        )
    # not dataset.X: that loads every shard. DiskDataset yields a map per sample: unpack it.
    first, *_ = next(iter(dataset.itersamples()))
    collate_samples([first], modalities)  # clear error if modalities differ
    check_token_lengths(dataset, modalities)
    if not labelled:
        return
    if len(dataset.get_task_names()) == 0:  # e.g. CSVLoader(tasks=[]): DiskDataset.y fails
        raise ValueError(
            "The dataset has no labels (no tasks): fit() needs labels; use "
            "pretrain() for self-supervised training"
        )
    y = numeric_labels(dataset)
    if y.shape[1] != n_tasks:
        raise ValueError(
            f"The model has n_tasks={n_tasks} but the labels have {y.shape[1]} column(s)"
        )
    check_label_range(y, dataset)
    check_labelled_tasks(y, dataset)
    bad_rows = np.flatnonzero(~np.isfinite(y).all(axis=1))
    if len(bad_rows):
        ids = [str(dataset.ids[i]) for i in bad_rows[:10]]
        log.warning(
            "%d row(s) have NaN/inf labels; those entries get weight 0 (ids: %s%s)",
            len(bad_rows),
            ids,
            " ..." if len(bad_rows) > 10 else "",
        )
    if mode == "classification":
        _check_class_labels(y, dataset, n_classes)


def _check_class_labels(y: np.ndarray, dataset: Dataset, n_classes: int) -> None:
    finite = y[np.isfinite(y)]
    invalid = finite[(finite < 0) | (finite >= n_classes) | (finite != np.round(finite))]
    if invalid.size:
        rows = np.flatnonzero(((y < 0) | (y >= n_classes) | (y != np.round(y))) & np.isfinite(y))[
            :10
        ]
        raise ValueError(
            f"Classification labels must be integers in [0, {n_classes}); "
            f"found {sorted(set(invalid.tolist()))[:5]} (ids: "
            f"{[str(dataset.ids[r]) for r in rows]})"
        )


def check_featurizer_matches(modalities: Sequence[Modality], featurizer: Any) -> None:
    """Raise :class:`~deepfuse_plugin.errors.InvalidSettingError` if ``featurizer`` (or a list
    of modality specs) lacks one of ``modalities`` or computes it differently."""
    specs = getattr(featurizer, "modalities", featurizer)
    theirs = {m.name: m for m in as_modalities(list(specs))}
    missing = [m.name for m in modalities if m.name not in theirs]
    if missing:
        raise InvalidSettingError(
            f"The featurizer does not compute the model's modalities "
            f"{missing} (it has {list(theirs)}): build it with "
            "MultiModalFeaturizer(modalities=model.modalities)"
        )
    problems = [line for m in modalities for line in spec_differences(m, theirs[m.name])]
    if problems:
        raise InvalidSettingError(
            "The featurizer does not match the model: " + "; ".join(problems) + ". Build it with "
            "MultiModalFeaturizer(modalities=model.modalities)"
        )
