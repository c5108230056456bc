"""chemprop v2 as a peer of ``deepfuse-bench moleculenet``: its own environment, its own CLI.

chemprop 2.3.1 pins its own RDKit, Lightning and friends, so it cannot live in deepfuse's
environment. This module

1. creates (once) a virtual environment for it,
   :func:`~deepfuse_bench.chemprop_env.ensure_chemprop_env`
   (``.venv-chemprop`` in the current folder, or ``$DEEPFUSE_CHEMPROP_VENV``): ``torch==2.13.0``
   first, then ``chemprop==2.3.1``. Any other torch release would pull gigabytes of CUDA wheels,
   and with the CPU wheel installed first pip keeps it. A stamp file records the requirements and
   the versions pip resolved, so later calls return at once. About a minute from the local
   mirror;
2. trains and predicts with chemprop's own command line, :func:`run_chemprop`:

   * ``chemprop train --data-path train.csv valid.csv test.csv``: with three files chemprop uses
     them as the train, validation and test parts as they are (its predefined split; no
     re-splitting). The call passes the task columns, ``--task-type classification|regression``,
     ``--epochs`` (the shared budget), ``--batch-size`` (the shared budget; 64 by default, which
     is chemprop's default too), ``--pytorch-seed``/``--data-seed`` (the model seed),
     ``--metrics M --tracking-metric M`` (the selection rule, below),
     ``--num-workers 0`` and ``--accelerator cpu --devices 1``. Everything else keeps chemprop's
     defaults: D-MPNN with hidden size 300, depth 3, no dropout, ``norm`` aggregation, a 1-layer
     FFN of 300, and the Noam learning-rate schedule (1e-4 to 1e-3 to 1e-4, 2 warm-up epochs;
     chemprop refuses budgets of 1 or 2 epochs with that, so such test-sized runs warm up for
     ``epochs - 1``).
     Regression targets are standardized on train and predictions un-scaled by chemprop itself.
     Missing labels (empty cells) are masked in its loss;
   * ``chemprop predict --model-paths best.pt`` on the validation and test SMILES. The
     predictions come back in the rows' order, checked SMILES by SMILES: P(class 1) per task
     for classification, original units for regression.

Model selection. ``best.pt`` is the checkpoint that chemprop's ``ModelCheckpoint`` keeps, by
its ``--tracking-metric``. Every other model of the benchmark keeps the epoch with the best
validation ROC-AUC (classification) or RMSE (regression), so chemprop is given the same rule:
``--tracking-metric roc`` / ``rmse`` (:data:`TRACKING_METRICS`; chemprop accepts a tracking
metric only among its ``--metrics``, hence ``--metrics roc`` / ``rmse`` too). Its own default,
``val_loss`` (the masked training criterion: MSE of standardized targets / binary cross-entropy),
kept epoch 2 of 30 on BBBP-like splits where the validation ROC-AUC was still rising; it stays
available as ``tracking_metric="val_loss"`` to reproduce older rows. Two differences remain,
both chemprop's: with several tasks its ``roc`` pools every labelled (molecule, task) pair into
one ROC-AUC, where the others average per-task ROC-AUCs, and its ``rmse`` is on standardized
targets (the same ranking of epochs for one task). Validation data only, never test. Early
stopping is off: ``--patience`` defaults to the number of epochs.

Timing. ``chemprop train`` runs through a small launcher, ``chemprop_epoch_clock.py`` in the
work folder. It calls chemprop's CLI entry point (``chemprop.cli.main.main``) with the same
arguments and adds a Lightning callback that only records wall times. This gives
:attr:`ChempropResult.train_time_s`, the Lightning ``fit`` (sanity check plus every epoch with
its validation pass and checkpoint), which compares with the other models' fit time, and
:attr:`ChempropResult.epoch_times_s`, one entry per epoch. ``train_process_s`` is the whole
process: interpreter start-up, featurization, fit, chemprop's own test pass and saving. Peak
memory is the resident set size of the child process tree, sampled with psutil.

Examples
--------
>>> from deepfuse_bench import chemprop as cp
>>> cp.train_command(["chemprop"], "tr.csv", "va.csv", "te.csv", ["logS"], "regression",
...                  epochs=30, seed=0, output_dir="out")[:6]
['chemprop', 'train', '--data-path', 'tr.csv', 'va.csv', 'te.csv']
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfuse_bench.chemprop_env import (
    CHEMPROP_VERSION,
    ChempropEnvError,
    ChempropError,
    child_env,
    ensure_chemprop_env,
    read_stamp,
    tail,
)
from deepfuse_bench.environment import PeakRSS

__all__ = [
    "CHEMPROP_VERSION",
    "ChempropEnvError",
    "ChempropError",
    "ChempropResult",
    "ensure_chemprop_env",
    "predict_command",
    "read_history",
    "read_predictions",
    "read_settings",
    "read_stamp",
    "run_chemprop",
    "train_command",
]

DEFAULT_BATCH_SIZE = 64  # chemprop 2.3.1's --batch-size default
#: chemprop 2.3.1's --warmup-epochs default; it refuses an epoch budget that is not larger.
DEFAULT_WARMUP_EPOCHS = 2
MODES = ("classification", "regression")
PARTS = ("train", "valid", "test")
CLOCK_ENV = "DEEPFUSE_CHEMPROP_CLOCK"
#: chemprop's ``--tracking-metric`` per task type: the benchmark's selection metric.
TRACKING_METRICS = {"classification": "roc", "regression": "rmse"}
#: Tracking metric -> (column of Lightning's metrics.csv, higher is better).
_TRACKED_COLUMNS = {
    "val_loss": ("val_loss", False),
    "roc": ("val/roc", True),
    "rmse": ("val/rmse", False),
}
#: How chemprop picks its checkpoint (for the benchmark's records), per tracking metric.
SELECTIONS = {
    "val_loss": "lowest validation loss (chemprop's default --tracking-metric val_loss: MSE of "
    "standardized targets / binary cross-entropy)",
    "roc": "best validation ROC-AUC (chemprop --tracking-metric roc; several tasks: one "
    "ROC-AUC over every labelled pair)",
    "rmse": "best validation RMSE (chemprop --tracking-metric rmse, on standardized targets)",
}
#: Settings in chemprop's config.toml left out of the recorded hyper-parameters: inputs and
#: outputs, and chemprop's own splitter (unused: the split is given as three files); and prefixes
#: of settings for atom/bond targets (unused here).
_NOT_RECORDED = {
    "data-path",
    "output-dir",
    "smiles-columns",
    "target-columns",
    "devices",
    "num-workers",
    "accelerator",
    "split",
    "split-sizes",
    "split-key-molecule",
    "num-replicates",
}
_UNUSED_PREFIXES = ("atom-", "bond-", "multiclass-")

#: Launcher for ``chemprop train``: chemprop's own CLI entry point plus a Lightning callback that
#: writes wall times (fit, each training epoch including its validation pass) as JSON to
#: ``$DEEPFUSE_CHEMPROP_CLOCK``. It changes nothing else.
CLOCK_SCRIPT = '''"""`chemprop ARGS` plus a callback recording epoch wall times (by deepfuse)."""
import json
import os
import sys
import time

import lightning.pytorch as pl
from chemprop.cli.main import main


class EpochClock(pl.Callback):
    def __init__(self):
        self.epoch_s = []

    def on_fit_start(self, trainer, pl_module):
        self.fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_s.append(time.perf_counter() - self.epoch_start)

    def on_fit_end(self, trainer, pl_module):
        with open(os.environ["DEEPFUSE_CHEMPROP_CLOCK"], "w") as fh:
            json.dump({"fit_s": time.perf_counter() - self.fit_start,
                       "epoch_s": self.epoch_s}, fh)


_init = pl.Trainer.__init__


def _init_with_clock(self, *args, **kwargs):
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), EpochClock()]
    _init(self, *args, **kwargs)


pl.Trainer.__init__ = _init_with_clock
sys.argv[0] = "chemprop"
sys.exit(main())
'''


# -- commands ------------------------------------------------------------------------------------
def train_command(
    program: Sequence[str],
    train_csv: str | os.PathLike,
    valid_csv: str | os.PathLike,
    test_csv: str | os.PathLike,
    tasks: Sequence[str],
    mode: str,
    epochs: int,
    seed: int,
    output_dir: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    smiles_column: str = "smiles",
    accelerator: str = "cpu",
    tracking_metric: str | None = None,
) -> list[str]:
    """``chemprop train`` on a predefined split (three files: train, validation, test).

    ``program`` is what runs chemprop's CLI (``[".../chemprop"]``, or the interpreter and the
    epoch-clock launcher). chemprop refuses a budget of no more epochs than its 2 warm-up epochs,
    so such short runs (tests) get ``--warmup-epochs epochs - 1``; longer ones keep the default.
    ``tracking_metric`` (default :data:`TRACKING_METRICS` of ``mode``; ``"val_loss"``: chemprop's
    own default, no option passed) picks the kept checkpoint.
    """
    warmup = [] if epochs > DEFAULT_WARMUP_EPOCHS else ["--warmup-epochs", str(max(0, epochs - 1))]
    tracking = tracking_metric or TRACKING_METRICS[mode]
    selection = (
        [] if tracking == "val_loss" else ["--metrics", tracking, "--tracking-metric", tracking]
    )
    return [
        *map(str, program),
        "train",
        "--data-path",
        str(train_csv),
        str(valid_csv),
        str(test_csv),
        "--smiles-columns",
        smiles_column,
        "--target-columns",
        *tasks,
        "--task-type",
        mode,
        "--epochs",
        str(epochs),
        *warmup,
        *selection,
        "--batch-size",
        str(batch_size),
        "--pytorch-seed",
        str(seed),
        "--data-seed",
        str(seed),
        "--num-workers",
        "0",
        "--accelerator",
        accelerator,
        "--devices",
        "1",
        "--output-dir",
        str(output_dir),
    ]


def predict_command(
    executable: str | os.PathLike,
    input_csv: str | os.PathLike,
    output_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    smiles_column: str = "smiles",
    accelerator: str = "cpu",
) -> list[str]:
    """``chemprop predict`` with one trained model."""
    return [
        str(executable),
        "predict",
        "--test-path",
        str(input_csv),
        "--preds-path",
        str(output_csv),
        "--model-paths",
        str(model_path),
        "--smiles-columns",
        smiles_column,
        "--batch-size",
        str(batch_size),
        "--num-workers",
        "0",
        "--accelerator",
        accelerator,
        "--devices",
        "1",
    ]


# -- reading chemprop's files --------------------------------------------------------------------
def read_smiles_csv(
    path: str | os.PathLike, smiles_column: str, tasks: Sequence[str], part: str
) -> list[str]:
    """The SMILES of a split CSV, after checking that it has the SMILES and task columns.

    Raises
    ------
    ChempropError
        Missing file or columns.
    """
    import pandas as pd

    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except FileNotFoundError as err:
        raise ChempropError(f"The {part} CSV {path} does not exist") from err
    except pd.errors.EmptyDataError as err:
        raise ChempropError(f"The {part} CSV {path} is empty (no header)") from err
    if smiles_column not in header:
        raise ChempropError(
            f"The {part} CSV {path} has no {smiles_column!r} column (columns: {header})"
        )
    missing = [t for t in tasks if t not in header]
    if missing:
        raise ChempropError(
            f"The {part} CSV {path} lacks task column(s) {missing} (columns: {header})"
        )
    frame = pd.read_csv(path, usecols=[smiles_column], dtype=str, keep_default_na=False)
    return frame[smiles_column].tolist()


def read_predictions(
    path: str | os.PathLike,
    smiles: Sequence[str],
    tasks: Sequence[str],
    mode: str,
    smiles_column: str = "smiles",
) -> np.ndarray:
    """``chemprop predict``'s output as ``(len(smiles), n_tasks)`` floats, row-aligned.

    Raises
    ------
    ChempropError
        A missing task column, another number of rows, a row whose SMILES differs from the
        input's (surrounding whitespace ignored), a NaN prediction, or a classification output
        outside [0, 1].
    """
    import pandas as pd

    frame = pd.read_csv(
        path,
        dtype={smiles_column: str},
        keep_default_na=False,
        na_values={t: ["", "nan", "NaN"] for t in tasks},
    )
    missing = [t for t in [smiles_column, *tasks] if t not in frame.columns]
    if missing:
        raise ChempropError(
            f"chemprop's predictions {path} lack column(s) {missing} "
            f"(columns: {list(frame.columns)})"
        )
    if len(frame) != len(smiles):
        raise ChempropError(
            f"chemprop's predictions {path} have {len(frame)} rows for "
            f"{len(smiles)} input molecules"
        )
    got = [str(s).strip() for s in frame[smiles_column]]
    wrong = [i for i, (a, b) in enumerate(zip(got, smiles)) if a != str(b).strip()]
    if wrong:
        i = wrong[0]
        raise ChempropError(
            f"chemprop's predictions {path} are not in the input's order: row {i} "
            f"is {got[i]!r}, expected {smiles[i]!r} ({len(wrong)} such rows)"
        )
    pred = frame[list(tasks)].to_numpy(dtype=np.float64)
    if np.isnan(pred).any():
        raise ChempropError(
            f"chemprop predicted NaN for {int(np.isnan(pred).any(1).sum())} row(s) in {path}"
        )
    if mode == "classification" and ((pred < 0) | (pred > 1)).any():
        raise ChempropError(
            f"chemprop's classification output in {path} is not a probability "
            f"(range {pred.min():.3g} to {pred.max():.3g})"
        )
    return pred


def read_history(
    train_dir: str | os.PathLike, tracking_metric: str = "val_loss"
) -> tuple[list[dict[str, Any]], int | None]:
    """Per-epoch ``val_loss``/``train_loss`` (and ``score``, the ``tracking_metric``'s value)
    from Lightning's ``metrics.csv`` (1-based epochs) and the epoch of the best score (the one
    chemprop's checkpoint keeps; the first on ties), or ``([], None)`` when the file is absent."""
    import pandas as pd

    files = sorted(Path(train_dir).glob("model_0/trainer_logs/*/metrics.csv"))
    if not files:
        return [], None
    frame = pd.read_csv(files[-1])
    tracked, higher = _TRACKED_COLUMNS[tracking_metric]
    history = []
    for epoch, rows in frame.groupby("epoch", sort=True):
        entry: dict[str, Any] = {"epoch": int(epoch) + 1}
        for key, column in (
            ("val_loss", "val_loss"),
            ("train_loss", "train_loss_epoch"),
            ("score", tracked),
        ):
            values = rows[column].dropna() if column in rows else None
            entry[key] = float(values.iloc[-1]) if values is not None and len(values) else None
        history.append(entry)
    scores = [h["score"] for h in history if h["score"] is not None and np.isfinite(h["score"])]
    target = (max(scores) if higher else min(scores)) if scores else None
    best = next(h["epoch"] for h in history if h["score"] == target) if scores else None
    return history, best


def read_settings(config_toml: str | os.PathLike) -> dict[str, Any]:
    """The model and training settings chemprop wrote to ``config.toml`` (all of them, defaults
    included), minus input/output paths and atom/bond-target settings.

    chemprop writes ``key = value`` lines with bare lists (``[300]``), which are not TOML, so
    they are parsed here: numbers, booleans, lists of them, else strings.
    """
    settings: dict[str, Any] = {}
    for line in Path(config_toml).read_text().splitlines():
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or key in _NOT_RECORDED or key.startswith(_UNUSED_PREFIXES):
            continue
        if value.startswith("[") and value.endswith("]"):
            settings[key] = [_scalar(v.strip()) for v in value[1:-1].split(",") if v.strip()]
        else:
            settings[key] = _scalar(value)
    return settings


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# -- one run -------------------------------------------------------------------------------------
@dataclass
class ChempropResult:
    """What :func:`run_chemprop` measured and predicted.

    Attributes
    ----------
    tasks, mode:
        As given.
    valid_pred, test_pred: numpy.ndarray or None
        ``(n_rows, n_tasks)`` predictions of the best checkpoint, in the CSV's row order
        (P(class 1) / original units); None with ``predict=False``.
    valid_smiles, test_smiles: list of str
        The SMILES of those rows, as read from the CSVs.
    epochs: int
        The epoch budget (``--epochs``); ``epochs_run`` is how many Lightning completed.
    n_train, n_valid, n_test: int
        Rows per part.
    train_time_s: float
        Lightning ``fit``: sanity check plus every epoch with its validation pass and checkpoint.
    epoch_times_s: list of float
        Wall time of each epoch, validation included.
    train_process_s, predict_process_s:
        Wall time of the whole ``chemprop train`` / ``chemprop predict`` process.
    peak_rss_mib: float or None
        Peak resident memory of the child process tree (the larger of train and predict).
    best_epoch: int or None
        1-based epoch of the kept checkpoint (best ``tracking_metric``).
    history: list of dict
        ``{"epoch", "val_loss", "train_loss", "score"}`` per epoch (``score``: the tracking
        metric's validation value).
    hyperparameters: dict
        Every model/training setting chemprop used (its ``config.toml``).
    commands: list of list of str
        The exact command lines run (train, then predict).
    model_path: Path
        ``best.pt`` (deleted with ``workdir`` by the benchmark).
    tracking_metric: str
        chemprop's ``--tracking-metric`` (``roc``, ``rmse`` or ``val_loss``).
    """

    tasks: list[str]
    mode: str
    valid_pred: np.ndarray | None
    test_pred: np.ndarray | None
    valid_smiles: list[str]
    test_smiles: list[str]
    epochs: int
    epochs_run: int
    n_train: int
    n_valid: int
    n_test: int
    train_time_s: float
    epoch_times_s: list[float]
    train_process_s: float
    predict_process_s: float | None
    peak_rss_mib: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]
    hyperparameters: dict[str, Any]
    commands: list[list[str]]
    model_path: Path
    workdir: Path
    tracking_metric: str = "val_loss"

    @property
    def selection(self) -> str:
        """The checkpoint rule, as the benchmark records it."""
        return SELECTIONS[self.tracking_metric]

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch (training + validation)."""
        times = self.epoch_times_s or []
        return float(np.mean(times)) if times else self.train_time_s / max(1, self.epochs_run)

    @property
    def train_molecules_per_s(self) -> float:
        """Training throughput: train molecules per second of an average epoch."""
        return self.n_train / self.seconds_per_epoch if self.seconds_per_epoch > 0 else float("nan")


def run_chemprop(
    train_csv: str | os.PathLike,
    valid_csv: str | os.PathLike,
    test_csv: str | os.PathLike,
    tasks: Sequence[str],
    mode: str,
    epochs: int,
    seed: int,
    workdir: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = 1,
    smiles_column: str = "smiles",
    accelerator: str = "cpu",
    executable: str | os.PathLike | None = None,
    predict: bool = True,
    timeout: float | None = None,
    tracking_metric: str | None = None,
) -> ChempropResult:
    """Train chemprop on a predefined split and predict its validation and test rows.

    Parameters
    ----------
    train_csv, valid_csv, test_csv:
        CSVs with ``smiles_column`` and one column per task (empty cell: missing label), e.g.
        the ``splits/`` files of ``deepfuse-bench moleculenet``.
    tasks: list of str
        Task columns, in the order of the returned prediction columns.
    mode: str
        ``"classification"`` (binary, per task) or ``"regression"``.
    epochs, seed:
        ``--epochs``; ``--pytorch-seed`` and ``--data-seed``.
    workdir: path
        Gets the logs, chemprop's output folder ``train/`` (replaced if present) and the
        predictions.
    batch_size, threads, accelerator:
        ``--batch-size``; OpenMP/MKL threads of the child process; Lightning accelerator.
    executable: path, optional
        The environment's ``chemprop`` (default: :func:`ensure_chemprop_env`, which may install).
    predict: bool
        Predict the validation and test rows with the best checkpoint (False: only train, e.g.
        to time it).
    timeout: float, optional
        Seconds allowed per chemprop process.
    tracking_metric: str, optional
        The kept checkpoint's validation metric: default ``roc`` (classification) / ``rmse``
        (regression), the benchmark's rule; ``"val_loss"`` is chemprop's own default.

    Returns
    -------
    ChempropResult

    Raises
    ------
    ChempropError
        Bad input (missing file or column, empty part, unknown mode), or a chemprop command that
        failed: the message names the command and ends with the tail of its stderr.
    """
    tasks = _check_arguments(tasks, mode, epochs)
    tracking = tracking_metric or TRACKING_METRICS[mode]
    if tracking not in _TRACKED_COLUMNS:
        raise ChempropError(
            f"tracking_metric must be one of {sorted(_TRACKED_COLUMNS)}, got {tracking!r}"
        )
    smiles = {
        part: read_smiles_csv(path, smiles_column, tasks, part)
        for part, path in zip(PARTS, (train_csv, valid_csv, test_csv))
    }
    empty = [part for part, rows in smiles.items() if not rows]
    if empty:
        raise ChempropError(f"chemprop needs rows in every part; empty: {empty}")
    exe = Path(executable) if executable else ensure_chemprop_env()
    work = Path(workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    train_dir = work / "train"
    shutil.rmtree(train_dir, ignore_errors=True)  # an old model_0/ would be mistaken for ours
    clock = work / "epoch_clock.json"
    clock.unlink(missing_ok=True)
    launcher = work / "chemprop_epoch_clock.py"
    launcher.write_text(CLOCK_SCRIPT)
    env = {**child_env(threads), CLOCK_ENV: str(clock)}
    train_cmd = train_command(
        [str(exe.parent / "python"), str(launcher)],
        Path(train_csv).absolute(),
        Path(valid_csv).absolute(),
        Path(test_csv).absolute(),
        tasks,
        mode,
        epochs,
        seed,
        train_dir,
        batch_size,
        smiles_column,
        accelerator,
        tracking,
    )
    train_s, train_peak = run_step(train_cmd, work / "train", env, timeout)
    timing = json.loads(clock.read_text()) if clock.exists() else {}
    history, best_epoch = read_history(train_dir, tracking)
    model_path = train_dir / "model_0" / "best.pt"
    result = ChempropResult(
        tasks=tasks,
        mode=mode,
        valid_pred=None,
        test_pred=None,
        valid_smiles=smiles["valid"],
        test_smiles=smiles["test"],
        epochs=epochs,
        epochs_run=len(timing.get("epoch_s", [])) or len(history),
        n_train=len(smiles["train"]),
        n_valid=len(smiles["valid"]),
        n_test=len(smiles["test"]),
        train_time_s=float(timing.get("fit_s", train_s)),
        epoch_times_s=timing.get("epoch_s", []),
        train_process_s=train_s,
        predict_process_s=None,
        peak_rss_mib=train_peak,
        best_epoch=best_epoch,
        history=history,
        hyperparameters=_settings(train_dir),
        commands=[train_cmd],
        model_path=model_path,
        workdir=work,
        tracking_metric=tracking,
    )
    if predict:
        _predict(result, exe, env, batch_size, smiles_column, accelerator, timeout)
    return result


def _check_arguments(tasks: Sequence[str], mode: str, epochs: int) -> list[str]:
    tasks = [str(t) for t in tasks]
    if not tasks:
        raise ChempropError("chemprop needs at least one task column")
    dashed = [t for t in tasks if t.startswith("-")]
    if dashed:  # chemprop's argparse would read them as options
        raise ChempropError(f"Task names starting with '-' cannot be passed to chemprop: {dashed}")
    if mode not in MODES:
        raise ChempropError(f"mode must be one of {MODES}, got {mode!r}")
    if int(epochs) < 1:
        raise ChempropError(f"epochs must be >= 1, got {epochs}")
    return tasks


def _settings(train_dir: Path) -> dict[str, Any]:
    config = train_dir / "config.toml"
    return read_settings(config) if config.exists() else {}


def _predict(
    result: ChempropResult,
    exe: Path,
    env: dict[str, str],
    batch_size: int,
    smiles_column: str,
    accelerator: str,
    timeout: float | None,
) -> None:
    """One ``chemprop predict`` over the validation then the test SMILES (one start-up)."""
    import pandas as pd

    if not result.model_path.exists():
        raise ChempropError(f"chemprop train finished without writing {result.model_path}")
    work = result.workdir
    rows = result.valid_smiles + result.test_smiles
    input_csv, output_csv = work / "predict_input.csv", work / "predictions.csv"
    pd.DataFrame({smiles_column: rows}).to_csv(input_csv, index=False)
    cmd = predict_command(
        exe, input_csv, output_csv, result.model_path, batch_size, smiles_column, accelerator
    )
    seconds, peak = run_step(cmd, work / "predict", env, timeout)
    pred = read_predictions(output_csv, rows, result.tasks, result.mode, smiles_column)
    result.valid_pred, result.test_pred = pred[: result.n_valid], pred[result.n_valid :]
    result.predict_process_s = seconds
    result.commands.append(cmd)
    if peak is not None:
        result.peak_rss_mib = max(peak, result.peak_rss_mib or 0.0)


def run_step(
    cmd: Sequence[str], log_prefix: Path, env: dict[str, str], timeout: float | None = None
) -> tuple[float, float | None]:
    """Run one chemprop command (output to ``<log_prefix>.{out,err}.log``), sampling the peak
    resident memory of its process tree; return ``(wall seconds, peak MiB or None)``.

    Raises
    ------
    ChempropError
        The command could not start, failed or timed out.
    """
    out_log, err_log = Path(f"{log_prefix}.out.log"), Path(f"{log_prefix}.err.log")
    shown = shlex.join(cmd)
    start = time.perf_counter()
    with open(out_log, "w") as out, open(err_log, "w") as err:
        try:
            proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=err, env=env, cwd=str(log_prefix.parent)
            )
        except OSError as exc:
            raise ChempropError(f"Cannot start `{shown}`: {exc}") from exc
        with PeakRSS(pid=proc.pid, tree=True) as memory:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop(proc)
                raise ChempropError(
                    f"`{shown}` did not finish within {timeout:.0f} s. Last "
                    f"lines of its stderr:\n{tail(err_log)}"
                ) from None
            except BaseException:  # Ctrl-C: do not leave chemprop running
                _stop(proc)
                raise
    seconds = time.perf_counter() - start
    if code != 0:
        raise ChempropError(
            f"`{shown}` failed with exit code {code}. Last lines of its stderr "
            f"({err_log}):\n{tail(err_log)}"
        )
    return seconds, memory.peak_mib


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
