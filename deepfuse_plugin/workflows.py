"""End-to-end workflows behind the ``deepfuse`` command: train on a CSV, predict from a saved run.

Everything here is a plain function that tests (and notebooks) can call; :mod:`deepfuse_plugin.cli`
only parses arguments. DeepChem does the data work (datasets, splitters, transformers, metrics);
this module adds the glue a command-line user needs: input checks with clear messages
(:mod:`deepfuse_plugin.inputs`), validation based checkpoint selection
(:mod:`deepfuse_plugin.train`), and a run folder that ``deepfuse predict``
(:mod:`deepfuse_plugin.prediction`) can use on its own. The names of those modules that this one
had before they moved are still importable from here.

A run folder written by :func:`train_from_csv` (and by ``deepfuse demo``) looks like::

    DIR/model/              the model (``MultiModalTorchModel.load(DIR/model)``), best valid epoch;
                            while training also its resume point (``train --resume``)
    DIR/deepfuse_run.json   model name, SMILES column, tasks, mode, modalities, featurizer settings
                            and input limits, y normalization (mean/std per task), split and
                            training settings, checksums of itself and of the model
    DIR/metrics.json        metrics on the valid and test splits (original label units)
    DIR/std_scales.json     with ``--uncertainty evidential`` (regression): the std factor per set
                            of present modalities, fitted on the validation split
                            (:func:`~deepfuse_plugin.models.calibration.fit_std_scales`)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from deepfuse_plugin import run_folder
from deepfuse_plugin.errors import (
    CorruptCheckpointError,
    InvalidSettingError,
    RunFolderError,
)

# Re-exported: ``from deepfuse_plugin.workflows import X`` keeps working for everything that
# moved to ``inputs``, ``prediction`` and the ``train`` package.
from deepfuse_plugin.inputs import (
    BINARY_SIGNATURES,
    MAX_ABS_LABEL,
    MISSING_LABELS,
    WorkflowError,
    labels_and_weights,
    parse_labels,
    rdkit_log_disabled,
    read_csv_checked,
    smiles_problems,
    valid_smiles_mask,
)
from deepfuse_plugin.prediction import (
    CORRUPT_OUTPUT_FRACTION,
    load_run,
    predict_from_csv,
    predict_with_std,
)
from deepfuse_plugin.run_folder import METRICS_FILE, RUN_FILE, STD_SCALES_FILE
from deepfuse_plugin.train import resume as resume_points
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
)
from deepfuse_plugin.train.result import TrainingResult
from deepfuse_plugin.train.utils import (
    check_training_settings,
    resolve_model_class,
    set_seed,
    write_json,
)
from deepfuse_plugin.training_data import MODES, TrainingData, prepare_training_data, run_inputs
from deepfuse_plugin.tuning import hpopt_from_csv

__all__ = [
    # the run-folder workflows
    "train_from_csv",
    "prepare_training_data",
    "hpopt_from_csv",
    "TrainingData",
    "predict_from_csv",
    "load_run",
    "predict_with_std",
    "calibrate_run",
    "fresh_model_dir",
    "check_training_settings",
    "featurizer_settings",
    # model names
    "MODELS",
    "MODES",
    "SPLITS",
    "resolve_model_class",
    "register_model",
    # run folder layout
    "RUN_FILE",
    "RUN_FORMAT",
    "METRICS_FILE",
    "STD_SCALES_FILE",
    "FEATURIZER_KEYS",
    "CRYSTAL_FEATURIZER_KEYS",
    "CORRUPT_OUTPUT_FRACTION",
    # training pieces (deepfuse_plugin.train)
    "train_with_validation",
    "BestCheckpointCallback",
    "TrainingResult",
    "evaluate",
    "selection_score",
    "regression_metrics",
    "classification_metrics",
    "predict_original_units",
    "set_seed",
    "write_json",
    "make_dataset",
    "split_indices",
    "fit_normalizer",
    "normalizer_to_dict",
    "denormalize",
    # input checks (deepfuse_plugin.inputs)
    "WorkflowError",
    "read_csv_checked",
    "labels_and_weights",
    "parse_labels",
    "smiles_problems",
    "valid_smiles_mask",
    "rdkit_log_disabled",
    "BINARY_SIGNATURES",
    "MAX_ABS_LABEL",
    "MISSING_LABELS",
    # errors
    "CorruptCheckpointError",
    "InvalidSettingError",
    "RunFolderError",
]

logger = logging.getLogger(__name__)

RUN_FORMAT = 1


class _FusionModels(Mapping):
    """``--model`` name -> class: a read-only view of the fusion models of
    :mod:`deepfuse_plugin.models.registry` (one registry for the CLI, workflows and harness)."""

    def __getitem__(self, name: str) -> type:
        from deepfuse_plugin.models.registry import available_models, get_model_class

        if name not in available_models("fusion"):
            raise KeyError(name)
        return get_model_class(name, kind="fusion")

    def __iter__(self) -> Iterator[str]:
        from deepfuse_plugin.models.registry import available_models

        return iter(available_models("fusion"))

    def __len__(self) -> int:
        return len(list(iter(self)))


MODELS: Mapping[str, type] = _FusionModels()

#: Featurizer keyword arguments recorded with a run (the rest is in the model's modality specs;
#: the input limits are recorded too, under ``"limits"``).
FEATURIZER_KEYS = ("ecfp_radius", "ecfp_size", "ecfp_counts", "max_length")
#: The same for a crystal run (the graph, text model and MatGL cutoff settings).
CRYSTAL_FEATURIZER_KEYS = (
    "radius",
    "max_neighbors",
    "gaussian_step",
    "gaussian_var",
    "atom_features",
    "text_model",
    "text_max_length",
    "matgl_cutoff",
)


def register_model(name: str, model_class: type) -> None:
    """Deprecated: decorate the class with
    :func:`deepfuse_plugin.models.registry.register_model` instead."""
    import warnings

    from deepfuse_plugin.models.registry import register_model as register

    warnings.warn(
        "workflows.register_model is deprecated; use the @register_model decorator "
        "of deepfuse_plugin.models.registry",
        FutureWarning,
        stacklevel=2,
    )
    register(name, kind="fusion")(model_class)


def fresh_model_dir(path: str, check_only: bool = False) -> str:
    """Make ``path`` ready for a new model: the files of a previous deepfuse/DeepChem model there
    are removed (its checkpoints must not mix with the new ones); a user's other files in it are
    kept; a non-empty folder without any model is an error.

    With ``check_only`` nothing is changed (used to fail fast before a long featurization).
    """
    if os.path.isdir(path) and os.listdir(path):
        entries = run_folder.own_model_entries(path)
        if not entries:
            raise WorkflowError(
                f"{path} exists and is not a deepfuse model folder; choose another --out"
            )
        if not check_only:
            for entry in entries:
                target = os.path.join(path, entry)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.remove(target)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise WorkflowError(f"{path} exists and is not a folder")
    if not check_only:
        os.makedirs(path, exist_ok=True)
    return path


# -- deepfuse train ------------------------------------------------------------------------------
def train_from_csv(
    csv: str,
    smiles_column: str | None,
    tasks: Sequence[str],
    out: str,
    mode: str = "regression",
    model: str = "dynamic",
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_every: int = 2,
    seed: int = 0,
    featurizer_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    n_jobs: int = 1,
    resume: bool = False,
    uncertainty: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    cif_column: str | None = None,
    distributed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Featurize a CSV (or crystal structures), split it, train a fusion model with
    validation-based epoch selection and write a run folder to ``out`` (see the module
    docstring).

    The data are read, featurized, split and normalized by :func:`prepare_training_data` (which
    ``deepfuse hpopt`` uses too). Training happens in a staging folder next to ``out``
    (``out.deepfuse-partial``); the run is moved into ``out`` only when it has finished, so a
    failed run leaves ``out`` as it was.

    Parameters
    ----------
    csv, smiles_column, tasks:
        Input file, its SMILES column and its label columns. For crystal structures ``csv`` is
        a CIF folder (``id_prop.csv`` + ``<id>.cif``), an extended XYZ file or a CSV with
        ``cif_column``, and ``smiles_column`` is None (see :func:`prepare_training_data`).
    out: str
        Run folder (created).
    mode: str
        ``"regression"`` (labels normalized on the train split) or ``"classification"`` (0/1).
    model: str
        A key of :data:`MODELS` (a fusion model, for molecules or structures) or a crystal model
        of the registry (``"matmmfuse"``: structures only), see
        :func:`~deepfuse_plugin.train.utils.trainable_models`.
    split: str, optional
        ``"scaffold"`` or ``"random"`` (80/10/10); default scaffold for molecules, random for
        structures.
    modalities: sequence of str, optional
        Built-in modality names (default ``ecfp, graph, smiles``; structures:
        ``graph, composition``; ``model="matmmfuse"``: ``graph, text_sentences``, or
        ``matgl_graph, text_sentences`` with ``model_kwargs={"backbone": "megnet"}``).
    epochs, batch_size, learning_rate, eval_every, seed:
        Training budget; the validation split is scored every ``eval_every`` epochs.
    featurizer_kwargs, model_kwargs: dict, optional
        Extra arguments of the featurizer and the model.
    resume: bool
        Training writes a resume point into the staging folder after every epoch; with
        ``resume`` an interrupted run there continues from its last finished epoch (same CSV and
        settings required: :class:`~deepfuse_plugin.train.resume.ResumeMismatchError` otherwise).
        Without it training starts over.
    uncertainty: str, optional
        ``"evidential"``: the model predicts a distribution (``predict`` then writes a
        ``<task>_std`` column). For regression the std is rescaled per set of present modalities
        on the validation split (``std_scales.json``; see
        :func:`~deepfuse_plugin.models.calibration.fit_std_scales`), and the record gets the test
        split's calibration.
    overwrite: bool
        Replace a run already in ``out`` (only deepfuse's files there: ``model/``'s model files,
        ``deepfuse_run.json``, ``metrics.json``, ``std_scales.json``). Without it such an ``out``
        is refused before any work.
    cif_column: str, optional
        The column of CIF text when ``csv`` is a CSV of crystal structures.
    distributed: dict, optional
        Train under Lightning with these :func:`~deepfuse_plugin.train.lightning.fit_distributed`
        settings (``accelerator``, ``devices``, ``num_nodes``, ``strategy``); the same
        validation-based epoch selection and resume points (``resume`` continues a run
        interrupted on any number of processes; on several machines ``out``'s folder must be
        on a file system they share). None: the single-process trainer.
        Every process of the run calls this function (``ddp``: started on every node by
        srun/torchrun, or re-run by Lightning); only global rank 0 checks and writes ``out``,
        the others train in a private temporary folder, remove it and return
        ``{"rank": r, "training": ...}``.

    Returns
    -------
    dict
        The run record written to ``deepfuse_run.json`` (metrics and checksums included).

    Raises
    ------
    RunFolderError
        ``out`` holds a run and ``overwrite`` is false, or something there is not deepfuse's.
    InvalidSettingError
        A training setting outside its range (the message names it and its value).
    WorkflowError
        Bad input data (missing column, no labelled rows for a task, non-numeric labels, ...).

    Examples
    --------
    >>> record = train_from_csv("esol.csv", "smiles", ["logS"], "runs/esol",  # doctest: +SKIP
    ...                         modalities=["ecfp", "graph"], epochs=20)
    >>> record["training"]["best_epoch"], record["metrics"]["test"]["rmse"]  # doctest: +SKIP
    (18, 0.71)
    """
    check_training_settings(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        eval_every=eval_every,
        n_jobs=n_jobs,
    )
    model_cls = resolve_model_class(model)
    inputs = run_inputs(
        csv,
        smiles_column,
        tasks,
        mode=mode,
        model=model,
        backbone=(model_kwargs or {}).get("backbone"),
        split=split,
        modalities=modalities,
        seed=seed,
        featurizer_kwargs=featurizer_kwargs,
        n_jobs=n_jobs,
        cif_column=cif_column,
    )
    rank = _rank(distributed)
    resume_from = None
    if rank:
        # another process of a distributed run (re-run by Lightning's ddp launcher, or started
        # by srun/torchrun on another node) trains along in a private folder: global rank 0
        # owns out, and this process never checks, refuses or writes anything there. It reads
        # the resume point of --resume from rank 0's staging folder (a shared file system)
        private = tempfile.mkdtemp(prefix=f"deepfuse-rank{rank}-")
        staging = run_folder.staging_path(os.path.join(private, "run"))
        if resume:
            resume_from = os.path.join(run_folder.staging_path(out), run_folder.MODEL_DIR)
    else:
        # fail fast, before a long featurization: nothing in out or the staging folder is
        # touched yet
        run_folder.check_run_target(out, overwrite)
        staging = run_folder.staging_path(out)
    run_folder.check_staging(staging)
    model_dir = os.path.join(staging, run_folder.MODEL_DIR)
    continuing = resume and resume_points.read_state(model_dir) is not None
    data = inputs.prepare(progress)
    featurizer, transformers, normalizer = data.featurizer, data.transformers, data.normalizer
    train, valid, test = data.train, data.valid, data.test

    run_folder.open_staging(staging, keep=continuing)
    try:
        extra = dict(model_kwargs or {}, **({"uncertainty": uncertainty} if uncertainty else {}))
        fusion = model_cls(
            n_tasks=len(data.tasks),
            modalities=featurizer.modalities,
            mode=mode,
            batch_size=batch_size,
            learning_rate=learning_rate,
            model_dir=model_dir,
            progress=False,
            **extra,
        )
        result = _train(
            fusion,
            train,
            valid,
            epochs,
            eval_every,
            transformers,
            model_dir,
            seed,
            progress,
            distributed,
            desc=f"{model} ({'+'.join(fusion.modality_names)})",
            resume_from=resume_from,
        )
        if rank:
            shutil.rmtree(os.path.dirname(staging))
            return {"rank": rank, "training": _selection_summary(result)}
        metrics = {
            "valid": evaluate(fusion, valid, transformers, mode)[0],
            "test": evaluate(fusion, test, transformers, mode)[0],
        }
        record = {
            "format": RUN_FORMAT,
            "model": model,
            "model_class": type(fusion).__name__,
            "model_dir": run_folder.MODEL_DIR,
            "smiles_column": smiles_column,
            "input": data.input,
            "tasks": data.tasks,
            "mode": mode,
            "modalities": fusion.modality_names,
            "featurizer": featurizer_settings(featurizer),
            "normalization": normalizer_to_dict(normalizer),
            "data": data.summary(),
            "training": {
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "eval_every": eval_every,
                "seed": seed,
                **_selection_summary(result),
            },
            "metrics": metrics,
        }
        if getattr(fusion, "uncertainty", None):
            record["uncertainty"] = calibrate_run(fusion, valid, test, transformers, mode, staging)
        record = run_folder.write_sealed_record(staging, record)
        write_json(os.path.join(staging, METRICS_FILE), metrics)
    except BaseException:
        if rank:
            shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
        else:
            _keep_staging_only_to_resume(staging, out)
        raise
    run_folder.publish(staging, out, overwrite)
    return record


def _rank(distributed: dict[str, Any] | None) -> int:
    """This process's global rank in the distributed run (0 without one, and in the process
    that starts it); Lightning is imported only for a distributed run (an optional extra)."""
    if not distributed:
        return 0
    from deepfuse_plugin.train.ddp import process_rank

    return process_rank(**distributed)


def _train(
    fusion: Any,
    train: Any,
    valid: Any,
    epochs: int,
    eval_every: int,
    transformers: Sequence[Any],
    model_dir: str,
    seed: int,
    progress: bool,
    distributed: dict[str, Any] | None,
    desc: str,
    resume_from: str | None = None,
) -> TrainingResult:
    """Validation-based training in this process, or under Lightning with ``distributed``;
    resumable either way (another rank reads the resume point ``resume_from``)."""
    if distributed:
        from deepfuse_plugin.train.lightning import fit_distributed

        return fit_distributed(
            fusion,
            train,
            valid,
            epochs,
            eval_every,
            transformers,
            model_dir,
            seed=seed,
            progress=progress,
            resumable=True,
            resume_from=resume_from,
            **distributed,
        )
    return train_with_validation(
        fusion,
        train,
        valid,
        epochs,
        eval_every,
        transformers,
        fusion.mode,
        model_dir,
        desc=desc,
        progress=progress,
        resumable=True,
    )


def featurizer_settings(featurizer: Any) -> dict[str, Any]:
    """What a run record keeps of its featurizer: :data:`FEATURIZER_KEYS` (a crystal
    featurizer's :data:`CRYSTAL_FEATURIZER_KEYS` and describer) and the input limits
    (``"limits"``), with which ``predict`` featurizes new molecules or structures."""
    if hasattr(featurizer, "describer"):  # CrystalMultiModalFeaturizer
        settings = {k: getattr(featurizer, k) for k in CRYSTAL_FEATURIZER_KEYS}
        settings["describer"] = featurizer.describer.name
    else:
        settings = {k: getattr(featurizer, k) for k in FEATURIZER_KEYS}
    return {**settings, "limits": asdict(featurizer.limits)}


def _selection_summary(result: TrainingResult) -> dict[str, Any]:
    """The run record's account of how the kept epoch was chosen."""
    return {
        "best_epoch": result.best_epoch,
        "selection": f"validation {result.score_name}",
        "train_time_s": result.train_time_s,
        "history": result.history,
        "resumed_at_epochs": result.resumed_at,
    }


def _keep_staging_only_to_resume(staging: str, out: str) -> None:
    """After a failed or interrupted run: keep the staging folder if it holds a resume point
    (``--resume`` continues it), remove it otherwise. ``out`` was never touched."""
    if resume_points.read_state(os.path.join(staging, run_folder.MODEL_DIR)) is not None:
        logger.warning(
            "Training stopped; %s is unchanged. The run so far is in %s: continue it with --resume",
            out,
            staging,
        )
    else:
        shutil.rmtree(staging, ignore_errors=True)


def calibrate_run(
    model: Any, valid: Any, test: Any, transformers: Sequence[Any], mode: str, out: str
) -> dict[str, Any]:
    """Fit the std factors of an evidential regression model on ``valid`` into
    ``out/std_scales.json`` and report the test calibration before and after (the record's
    ``uncertainty`` entry). Too few validation molecules for a factor: a warning, and the std is
    used as predicted."""
    from deepfuse_plugin.models.calibration import calibration_report, fit_std_scales

    entry: dict[str, Any] = {"kind": model.uncertainty, "std_scales": None}
    if mode != "regression":
        return entry
    path = os.path.join(out, STD_SCALES_FILE)
    if os.path.exists(path):
        os.remove(path)  # a factor of an earlier model in this folder must not survive
    try:
        scales = fit_std_scales(model, valid, list(transformers))
    except ValueError as err:
        logger.warning("No std factors fitted, the std is used as predicted: %s", err)
        return entry
    write_json(path, scales.to_dict())
    entry["std_scales"] = STD_SCALES_FILE
    try:
        entry["test_calibration"] = {
            "as_predicted": calibration_report(model, test, list(transformers)),
            "rescaled": calibration_report(model, test, list(transformers), std_scale=scales),
        }
    except ValueError as err:  # e.g. an empty test split, or rows without a fitted factor
        logger.warning("No test calibration in the record: %s", err)
    return entry
