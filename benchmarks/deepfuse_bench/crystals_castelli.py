"""The Castelli perovskites in the crystal benchmark: trained on with their own seeded split
(``deepfuse-bench crystals --dataset castelli``), and predicted zero-shot by models trained on
mp36k (``--zero-shot-castelli``, the MatMMFuse paper's protocol).

The perovskites were computed with GPAW/RPBE outside the Materials Project
(:mod:`deepfuse_plugin.data.perovskites`), so a view pretrained on Materials Project data (CHGNet)
does not leak on them. Their ``heat_ref`` follows other reference energies than mp36k's formation
energy per atom, and its source does not say whether it is per atom or per 5-atom cell: a model
trained on mp36k predicts on another scale and offset. The zero-shot protocol therefore reports the
raw MAE (mp36k units against ``heat_ref`` as given) and the MAE after a linear recalibration
``y = a * prediction + b`` fitted on a small labelled sample (``n_calibration`` structures, seeded)
and scored on the rest, beside the MAE of the sample's mean (what a recalibrated model that knew
nothing would reach).

Examples
--------
>>> import numpy as np
>>> from deepfuse_bench.crystals_castelli import castelli_split, recalibrate
>>> {part: len(rows) for part, rows in castelli_split(100, (0.7, 0.15, 0.15), seed=0).items()}
{'train': 70, 'val': 15, 'test': 15}
>>> pred = np.array([0.0, 1.0, 2.0, 3.0])
>>> fit = recalibrate(pred, 2 * pred + 1, calibration=np.array([0, 1]), evaluation=np.array([2, 3]))
>>> [round(fit[k], 6) for k in ("slope", "intercept", "raw_mae", "recalibrated_mae")]
[2.0, 1.0, 3.5, 0.0]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepfuse_bench.crystals_data import (
    CrystalData,
    featurize_part,
    featurize_parts,
    make_featurizer,
    normalized_data,
    resolve_data_file,
)
from deepfuse_plugin import workflows as wf

#: The shared file, relative to ``--data-dir``.
CASTELLI_FILE = os.path.join("materials", "perovskites_castelli.csv.gz")
CASTELLI_TARGET = "heat_ref"
#: train/val/test shares of the usable rows (``--split-fractions``).
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
#: Labelled Castelli structures the zero-shot recalibration is fitted on.
DEFAULT_N_CALIBRATION = 50


def resolve_castelli_file(data_dir: str | None, castelli_file: str | None) -> str:
    """``castelli_file`` or ``<data_dir>/materials/perovskites_castelli.csv.gz``; raises if
    neither is given or the file does not exist."""
    return resolve_data_file(
        data_dir, castelli_file, CASTELLI_FILE, "--castelli-file", "Castelli perovskites"
    )


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three positive train/val/test shares summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) <= 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise wf.WorkflowError(
            f"split fractions must be three positive train,val,test shares summing to 1, got "
            f"{list(fractions)} (e.g. 0.7,0.15,0.15)"
        )
    return values[0], values[1], values[2]


def castelli_split(n_rows: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """A seeded random split of rows ``0..n_rows-1``: train and val get their rounded shares,
    test the rest. Each part keeps the shuffled order, so its first N rows are a subset that a
    larger N extends."""
    train, val, _ = check_fractions(fractions)
    order = np.random.default_rng([seed, 1]).permutation(n_rows)
    n_train, n_val = round(train * n_rows), round(val * n_rows)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def _load(path: str, target: str) -> tuple[Any, float]:
    from deepfuse_plugin.data.perovskites import load_castelli_perovskites

    start = time.perf_counter()
    data = load_castelli_perovskites(path, target)
    return data, time.perf_counter() - start


def prepare_castelli_data(
    path: str,
    models: Sequence[str],
    fractions: Sequence[float],
    sizes: dict[str, int | None],
    split_seed: int,
    cache_dir: str,
    n_timing: int,
    target: str = CASTELLI_TARGET,
    n_jobs: int = 1,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    chgnet_layers: Sequence[int] | None = None,
) -> CrystalData:
    """Read the perovskites, split them (``castelli_split``, then the first ``sizes[part]`` rows
    of each part), featurize (or load the cached parts), normalize."""
    data, read_s = _load(path, target)
    pools = castelli_split(len(data), fractions, split_seed)
    rows = {p: pool if sizes.get(p) is None else pool[: sizes[p]] for p, pool in pools.items()}
    report: dict[str, Any] = {
        "file": path,
        "target": target,
        "n_structures": data.n_rows,
        "n_usable": len(data),
        "problems": data.problems,
        "split_fractions": list(check_fractions(fractions)),
        "pool_sizes": {p: len(v) for p, v in pools.items()},
        "n": {p: len(v) for p, v in rows.items()},
        "read_s": read_s,
    }
    echo(
        f"read {data.n_rows} perovskites in {read_s:.0f} s ({len(data.problems)} left out); "
        f"parts {report['n']}"
    )
    featurizer = make_featurizer(models, cache_dir, n_jobs, progress, chgnet_layers)
    ids = np.asarray(data.ids, dtype=object)
    parts, featurized = featurize_parts(
        data.structures, ids, data.labels[:, 0], rows, featurizer, cache_dir, target
    )
    report.update(featurized)
    timing = [data.structures[i] for i in rows["train"][:n_timing]]
    return normalized_data(parts, featurizer, report, timing)


# -- the zero-shot protocol ----------------------------------------------------------------------
@dataclass
class ZeroShotSet:
    """Featurized Castelli structures with their raw labels: ``calibration`` and ``evaluation``
    are row numbers of ``dataset``."""

    dataset: Any
    calibration: np.ndarray
    evaluation: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def prepare_zero_shot_castelli(
    path: str,
    featurizer: Any,
    cache_dir: str,
    n_calibration: int = DEFAULT_N_CALIBRATION,
    seed: int = 0,
    n_evaluation: int | None = None,
    target: str = CASTELLI_TARGET,
    echo: Callable[[str], None] = print,
) -> ZeroShotSet:
    """The calibration sample (``n_calibration`` rows drawn with ``seed``) and the evaluation
    rows (the others, at most ``n_evaluation``), featurized with the mp36k models' featurizer."""
    data, read_s = _load(path, target)
    if not 2 <= n_calibration < len(data):
        raise wf.WorkflowError(
            f"n_calibration must be at least 2 and below the {len(data)} usable Castelli "
            f"structures, got {n_calibration}"
        )
    order = np.random.default_rng([seed, 2]).permutation(len(data))
    chosen = order[n_calibration:] if n_evaluation is None else order[n_calibration:][:n_evaluation]
    rows = np.concatenate([order[:n_calibration], chosen])
    start = time.perf_counter()
    dataset, cached = featurize_part(
        [data.structures[i] for i in rows],
        np.asarray(data.ids, dtype=object)[rows],
        data.labels[rows, :1],
        featurizer,
        os.path.join(cache_dir, "crystal_bench"),
        target,
    )
    info = {
        "file": path,
        "target": target,
        "n_structures": data.n_rows,
        "n_usable": len(data),
        "problems": data.problems,
        "n_calibration": n_calibration,
        "n_evaluation": len(chosen),
        "seed": seed,
        "read_s": read_s,
        "featurize_s": time.perf_counter() - start,
        "dataset_cache": "hit" if cached else "miss",
    }
    echo(
        f"zero-shot Castelli: {n_calibration} calibration + {len(chosen)} evaluation "
        f"structures ({target})"
    )
    calibration = np.arange(n_calibration)
    return ZeroShotSet(dataset, calibration, np.arange(n_calibration, len(rows)), info)


def recalibrate(
    pred: np.ndarray, y: np.ndarray, calibration: np.ndarray, evaluation: np.ndarray
) -> dict[str, Any]:
    """Raw and linearly recalibrated MAE of ``pred`` against ``y`` on the ``evaluation`` rows.

    ``a``, ``b`` minimise the squared error of ``a * pred + b`` on the ``calibration`` rows
    (least squares; constant predictions get ``a = 0``, ``b`` = the sample mean). Also returned:
    the MAE of the calibration sample's mean label on the evaluation rows (``constant_mae``), the
    recalibrated MAE over it (below 1: the model ranks the new data better than knowing only its
    mean) and the Pearson correlation of predictions and labels on the evaluation rows.
    """
    pred, y = np.asarray(pred, float).ravel(), np.asarray(y, float).ravel()
    p_cal, y_cal = pred[calibration], y[calibration]
    p_eval, y_eval = pred[evaluation], y[evaluation]
    if np.ptp(p_cal) > 0:
        slope, intercept = np.polyfit(p_cal, y_cal, 1)
    else:
        slope, intercept = 0.0, float(y_cal.mean())
    recalibrated = float(np.mean(np.abs(slope * p_eval + intercept - y_eval)))
    constant = float(np.mean(np.abs(y_cal.mean() - y_eval)))
    spread = float(np.std(p_eval) * np.std(y_eval))
    covariance = float(np.mean((p_eval - p_eval.mean()) * (y_eval - y_eval.mean())))
    return {
        "raw_mae": float(np.mean(np.abs(p_eval - y_eval))),
        "recalibrated_mae": recalibrated,
        "slope": float(slope),
        "intercept": float(intercept),
        "constant_mae": constant,
        "recalibrated_to_constant": recalibrated / constant if constant > 0 else None,
        "pearson_r": covariance / spread if spread > 0 else None,
        "n_calibration": len(p_cal),
        "n_evaluation": len(p_eval),
    }


def castelli_zero_shot(model: Any, zero_shot: ZeroShotSet, transformers: Sequence[Any]) -> dict:
    """``recalibrate`` on one trained model's predictions (mp36k units, its training
    normalization undone) for the Castelli structures."""
    from deepfuse_plugin.train.metrics import predict_original_units

    pred = predict_original_units(model, zero_shot.dataset, transformers, "regression")
    return recalibrate(
        pred[:, 0],
        np.asarray(zero_shot.dataset.y)[:, 0],
        zero_shot.calibration,
        zero_shot.evaluation,
    )
