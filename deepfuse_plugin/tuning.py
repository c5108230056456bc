"""``deepfuse hpopt``: a hyper-parameter search on a labelled CSV, on validation data only.

The CSV is prepared exactly as ``deepfuse train`` prepares it
(:func:`~deepfuse_plugin.training_data.prepare_training_data`); the search itself is
:func:`~deepfuse_plugin.train.hpopt.run_hpopt` (Optuna TPE, a resumable SQLite study). Its
``best_params.json`` feeds ``deepfuse train --params``. Re-exported by
:mod:`deepfuse_plugin.workflows`.

Examples
--------
>>> from deepfuse_plugin.tuning import hpopt_from_csv
>>> result = hpopt_from_csv("esol.csv", "smiles", ["logS"], "runs/search")  # doctest: +SKIP
>>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from deepfuse_plugin.errors import CorruptCheckpointError, RunFolderError
from deepfuse_plugin.inputs import WorkflowError
from deepfuse_plugin.train import hpopt
from deepfuse_plugin.train.hpopt import HpoptResult
from deepfuse_plugin.train.utils import check_training_settings, resolve_model_class, to_jsonable
from deepfuse_plugin.training_data import run_inputs

__all__ = ["hpopt_from_csv"]


def hpopt_from_csv(
    csv: str,
    smiles_column: str | None,
    tasks: Sequence[str],
    out: str,
    mode: str = "regression",
    model: str = "dynamic",
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    n_trials: int = 20,
    timeout_s: float | None = None,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = 64,
    eval_every: int = 1,
    featurizer_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    n_jobs: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    cif_column: str | None = None,
) -> HpoptResult:
    """Search a fusion model's settings on the validation split of a CSV (Optuna TPE) and write
    the study, a trials table and plot and ``best_params.json`` to ``out``.

    The data are prepared exactly as :func:`train_from_csv` prepares them
    (:func:`prepare_training_data`: same checks, featurization, split and normalization), and
    only the validation split is scored: the test split is never used, so ``deepfuse train
    --params out/best_params.json`` reports an unbiased test score. Running the same search
    again continues it until ``n_trials`` trials are complete; another CSV (content), model or
    setting is refused before any work, unless ``overwrite`` starts the search over.

    Parameters
    ----------
    csv, smiles_column, tasks, mode, model, split, modalities, seed, featurizer_kwargs, n_jobs,
    cif_column:
        As for :func:`train_from_csv` (molecules or crystal structures).
    out: str
        Search folder (:data:`~deepfuse_plugin.train.hpopt.HPOPT_FILES`; other files are kept).
    n_trials: int
        Trials to complete in total, a continued search's earlier ones included.
    timeout_s: float, optional
        Start no new trial after this many seconds.
    epochs: int, optional
        Train every trial this long instead of searching the number of epochs.
    batch_size, eval_every:
        Fixed for every trial; each trial keeps its best validated epoch.
    model_kwargs: dict, optional
        Fixed model settings (e.g. ``pretrained``; with a checkpoint its encoder width is fixed).
    overwrite: bool
        Remove an earlier search in ``out`` (only its files) and start over.

    Returns
    -------
    HpoptResult
        Best settings and validation score, trials complete, the trials table (best first).

    Raises
    ------
    RunFolderError
        ``out`` is a file or holds a search of another model, data or settings.
    InvalidSettingError, WorkflowError
        As for :func:`train_from_csv`; an empty validation split; no trial completed.

    Examples
    --------
    >>> result = hpopt_from_csv("esol.csv", "smiles", ["logS"],  # doctest: +SKIP
    ...                         "runs/esol-search", modalities=["ecfp", "graph"], n_trials=20)
    >>> result.best_params["learning_rate"], result.best_score  # doctest: +SKIP
    (0.0012, 0.74)
    """
    check_training_settings(
        batch_size=batch_size,
        eval_every=eval_every,
        n_jobs=n_jobs,
        n_trials=n_trials,
        **({"epochs": epochs} if epochs is not None else {}),
    )
    resolve_model_class(model)
    fixed = {"batch_size": batch_size, **(model_kwargs or {})}
    inputs = run_inputs(
        csv,
        smiles_column,
        tasks,
        mode=mode,
        model=model,
        backbone=fixed.get("backbone"),
        split=split,
        modalities=modalities,
        seed=seed,
        featurizer_kwargs=featurizer_kwargs,
        n_jobs=n_jobs,
        cif_column=cif_column,
    )
    if epochs is not None:
        fixed["epochs"] = epochs
    if fixed.get("pretrained"):  # the checkpoint's encoders have one width
        fixed["encoder_dim"] = _pretrained_encoder_dim(fixed["pretrained"])
    setup = {
        **inputs.describe(),
        "model": model,
        "eval_every": eval_every,
        "fixed": to_jsonable(fixed),
    }
    if not overwrite:  # fail fast: a search of something else is refused before featurizing
        hpopt.check_study_setup(out, model, setup)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(
            f"--out {out} exists and is a file, not a folder; choose another --out"
        )
    data = inputs.prepare(progress)
    if len(data.valid) == 0:
        raise WorkflowError(
            f"The {inputs.split} split left no validation rows ({data.rows} rows in {csv}): a "
            "search scores its trials on validation data; add rows or try another --split"
        )
    if overwrite:
        hpopt.remove_search(out)
    return hpopt.run_hpopt(
        data.train,
        data.valid,
        data.transformers,
        mode,
        data.featurizer.modalities,
        len(data.tasks),
        out,
        model=model,
        n_trials=n_trials,
        timeout_s=timeout_s,
        seed=seed,
        fixed=fixed,
        progress=progress,
        eval_every=eval_every,
        setup=setup,
    )


def _pretrained_encoder_dim(name_or_path: str) -> int:
    """The encoder width of a pretrained checkpoint, from its ``model.json`` (no weights read)."""
    from deepfuse_plugin.pretrained._checkpoints import CONFIG_FILE, resolve_pretrained

    path = resolve_pretrained(name_or_path) / CONFIG_FILE
    try:
        return int(json.loads(path.read_text())["encoder_dim"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(
            f"{path} is not a valid pretrained-model config ({type(err).__name__}: {err})"
        ) from None
