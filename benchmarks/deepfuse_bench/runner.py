"""Training and scoring the benchmark's runs: one run (:func:`run_one`), many in forked worker
processes (:func:`run_many`), and resumable training of the epoch-trained models.

Every neural model gets the same epochs, batch size, learning rate and seed, and keeps the epoch
with the best validation score (:func:`deepfuse_plugin.workflows.train_with_validation`, never
test). The random forest has no epochs; chemprop runs in its own environment
(:mod:`deepfuse_bench.chemprop_peer`). Each run is seeded on its own, so a run's result does not
depend on the process it ran in.

The MiniMol peer (``minimol_mlp``) is a deepfuse ``UnimodalModel`` on the ``minimol`` view; the
pretrained-view variants (:data:`deepfuse_bench.models.VARIANTS`) are fusion models on the
MiniMol feature set (``*_minimol``, ``*_pretrained``) or the three default views (``*_ssl``);
``*_pretrained`` and ``*_ssl`` are built with ``pretrained=budget["pretrained"]`` (a checkpoint
folder; its name and weights SHA-256 go into the run's hyper-parameters).

With ``budget["missing_views"]`` a model with two or more views is also scored on the test split
with each view absent (:mod:`deepfuse_bench.missing_views`), inside :func:`run_one`: the selected
model is not kept after its run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from deepfuse_bench import peers as peer_lib
from deepfuse_bench.chemprop_peer import ChempropSetup, chemprop_setup, run_chemprop_peer
from deepfuse_bench.datasets import PreparedDataset
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.missing_views import FIELD as MISSING_VIEWS
from deepfuse_bench.missing_views import score_missing_views
from deepfuse_bench.models import UNIMODAL, VARIANTS, model_features
from deepfuse_bench.records import finish_record, run_header
from deepfuse_plugin import workflows as wf
from deepfuse_plugin.train import resume as resume_lib

logger = logging.getLogger(__name__)


def build_deepfuse(name: str, data: PreparedDataset, model_dir: str, budget: dict[str, Any]) -> Any:
    """A deepfuse model: a fusion model, a unimodal baseline, the MiniMol peer or a
    pretrained-view variant, with the shared budget."""
    common = dict(
        n_tasks=len(data.tasks),
        mode=data.mode,
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        model_dir=model_dir,
        progress=False,
        length_bucket_pool=budget.get("length_bucket_pool", 0),
    )
    peer = peer_lib.PEERS.get(name)
    modalities = data.modality_sets.get(model_features(name), data.modalities)
    if name in UNIMODAL or (peer is not None and peer.modality):
        from deepfuse_plugin.models.unimodal import UnimodalModel

        modality = peer.modality if peer is not None else name.split("_", 1)[1]
        spec = next(m for m in modalities if m.name == modality)
        return UnimodalModel(modality=spec, **common)
    variant = VARIANTS.get(name)
    if variant is not None and variant.pretrained:
        common["pretrained"] = budget["pretrained"]["path"]
    cls = wf.resolve_model_class(variant.base if variant else name)
    return cls(modalities=list(modalities), **common)


def hyperparameters(
    name: str, model: Any, data: PreparedDataset, budget: dict[str, Any]
) -> dict[str, Any]:
    from deepfuse_plugin.nn.encoders import SequenceEncoder

    peer = peer_lib.PEERS.get(name)
    if peer is not None and not peer.modality:
        return peer_lib.peer_hyperparameters(name, data.mode, budget)
    config = dict(model.get_config())
    config["modalities"] = [
        m.get("name") if isinstance(m, dict) else str(m) for m in config.get("modalities", [])
    ]
    chunks = sorted(
        {e.length_chunk for e in model.model.modules() if isinstance(e, SequenceEncoder)}
    )
    if chunks:  # provenance: runs recorded before SequenceEncoder had length chunks lack it
        config["sequence_length_chunk"] = chunks[0] if len(chunks) == 1 else chunks
    if config.get("pretrained") is not None:  # which weights: the name alone may be reused
        config["pretrained_name"] = budget["pretrained"]["name"]
        config["pretrained_weights_sha256"] = budget["pretrained"]["weights_sha256"]
        config["pretrained_modalities"] = list(model.pretrained_modalities)
    return config


def run_one(
    name: str,
    data: PreparedDataset,
    seed: int,
    budget: dict[str, Any],
    scratch: str,
    progress: bool = False,
    chemprop: ChempropSetup | None = None,
    work_dir: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and score one model on one prepared dataset with one seed: the JSON run record.

    ``chemprop``: its environment, prepared once per benchmark (default: prepared here).
    ``work_dir``: where epoch-trained models keep their checkpoints and resume points while they
    train (default ``scratch``); with ``resume`` an interrupted run found there continues from its
    last finished epoch (a run of other settings starts over, with a warning).
    """
    peer = peer_lib.PEERS.get(name)
    if peer is not None and peer.library == "chemprop":
        return run_chemprop_peer(name, data, seed, budget, scratch, chemprop or chemprop_setup())
    train, valid, test = data.parts[model_features(name)]
    model_dir = os.path.join(work_dir or scratch, f"{data.name}_{name}_{seed}")
    if not (resume and resume_lib.read_state(model_dir) is not None):
        wf.fresh_model_dir(model_dir)
    record = run_header(name, data, seed)
    with PeakRSS() as memory:
        wall = time.perf_counter()
        if peer is not None and not peer.epochs:
            wf.set_seed(seed)
            model, valid_m, test_m, fit_s = peer_lib.fit_forest(
                name,
                len(data.tasks),
                data.mode,
                seed,
                budget,
                train,
                valid,
                test,
                data.transformers,
            )
            record.update(
                model_class="SklearnModel",
                epochs=None,
                eval_every=None,
                best_epoch=None,
                selection="none (no epochs)",
                history=[],
                device="cpu",
            )
        else:
            model, result = _train_resumable(name, data, seed, budget, model_dir, progress)
            valid_m = wf.evaluate(model, valid, data.transformers, data.mode)[0]
            test_m = wf.evaluate(model, test, data.transformers, data.mode)[0]
            fit_s = result.train_time_s
            record.update(
                model_class=type(model).__name__,
                epochs=budget["epochs"],
                device=str(model.device),  # DeepChem's default: CUDA when present
                eval_every=budget["eval_every"],
                best_epoch=result.best_epoch,
                selection=f"best validation {result.score_name}",
                history=[{"epoch": h["epoch"], "score": h["score"]} for h in result.history],
            )
            if result.resumed_at:
                record["resumed_at_epochs"] = result.resumed_at
        wall = time.perf_counter() - wall
    record["hyperparameters"] = hyperparameters(name, model, data, budget)
    finish_record(record, valid_m, test_m, fit_s, wall, memory.peak_mib, memory.delta_mib, None)
    if budget.get("missing_views"):
        # here, while the selected model is loaded: the model folder is deleted just below
        scores = score_missing_views(model, test, data.transformers, data.mode)
        if scores is not None:
            record[MISSING_VIEWS] = scores
    shutil.rmtree(model_dir, ignore_errors=True)
    del model
    return record


#: Seconds of one run on BBBP (seed 0, 30 epochs, one torch thread, a one-process ``make bench``
#: on this project's 2-core test machine): parallel runs start with the dearest. Only the order
#: matters.
#: The MiniMol and pretrained variants are estimates (one more encoder, a 512-d MLP; the MiniMol
#: embedding itself is computed once per dataset, before the runs; ``*_ssl``: their base model).
RUN_COST_S = {
    "crossattention": 605,
    "dynamic_minimol": 320,
    "dynamic_pretrained": 320,
    "dynamic": 295,
    "dynamic_ssl": 295,
    "late_minimol": 275,
    "late_pretrained": 275,
    "moe": 273,
    "early": 257,
    "late": 253,
    "late_ssl": 253,
    "chemprop": 217,
    "unimodal_smiles": 194,
    "dc_dmpnn": 128,
    "unimodal_graph": 44,
    "dc_mlp": 23,
    "minimol_mlp": 12,
    "dc_rf": 10,
    "unimodal_ecfp": 8,
}

#: The dataset a forked worker runs on: set in the parent just before the fork, so that workers
#: share it copy-on-write instead of unpickling it per run.
_WORKER_DATA: PreparedDataset | None = None


def _run_in_worker(name: str, seed: int, threads: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    import torch

    assert _WORKER_DATA is not None, "workers must be forked after _WORKER_DATA is set"
    torch.set_num_threads(threads)
    return run_one(name, _WORKER_DATA, seed, progress=False, **kwargs)


def run_many(
    todo: Sequence[tuple[int, str]],
    data: PreparedDataset,
    processes: int = 1,
    progress: bool = False,
    **kwargs: Any,
) -> Iterable[tuple[int, str, dict[str, Any]]]:
    """``(seed, model, record)`` of each run in ``todo`` on ``data``, in the order they finish.

    ``processes > 1`` runs them in that many forked worker processes, the dearest first
    (:data:`RUN_COST_S`), each with ``torch threads // processes`` threads (at least 1). Each run
    is seeded on its own, so a run's result does not depend on where it ran. ``kwargs`` go to
    :func:`run_one`.
    """
    if processes <= 1 or len(todo) <= 1:
        for seed, name in todo:
            yield seed, name, run_one(name, data, seed, progress=progress, **kwargs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    global _WORKER_DATA
    threads = max(1, torch.get_num_threads() // processes)
    default_cost = float(np.median(list(RUN_COST_S.values())))
    ordered = sorted(todo, key=lambda run: -RUN_COST_S.get(run[1], default_cost))
    _WORKER_DATA = data
    pool = ProcessPoolExecutor(
        max_workers=min(processes, len(todo)), mp_context=multiprocessing.get_context("fork")
    )
    try:
        futures = {
            pool.submit(_run_in_worker, name, seed, threads, kwargs): (seed, name)
            for seed, name in ordered
        }
        for future in as_completed(futures):
            seed, name = futures[future]
            yield seed, name, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORKER_DATA = None


def _train_resumable(
    name: str,
    data: PreparedDataset,
    seed: int,
    budget: dict[str, Any],
    model_dir: str,
    progress: bool,
) -> tuple[Any, wf.TrainingResult]:
    """Build and train an epoch-trained model with resume points in ``model_dir``; a resume
    point of other settings (e.g. written by another deepfuse version) is discarded."""
    train, valid, _ = data.parts[model_features(name)]
    peer = peer_lib.PEERS.get(name)

    def build() -> Any:
        wf.set_seed(seed)
        if peer is not None and peer.build is not None:
            return peer.model(len(data.tasks), data.mode, model_dir, seed, budget)
        return build_deepfuse(name, data, model_dir, budget)

    def fit(model: Any) -> wf.TrainingResult:
        return wf.train_with_validation(
            model,
            train,
            valid,
            budget["epochs"],
            budget["eval_every"],
            data.transformers,
            data.mode,
            model_dir,
            desc=f"{data.name} {name} s{seed}",
            progress=progress,
            resumable=True,
        )

    return train_or_start_over(build, fit, model_dir)


def train_or_start_over(
    build: Callable[[], Any], fit: Callable[[Any], Any], model_dir: str
) -> tuple[Any, Any]:
    """``(model, fit(model))`` for ``model = build()``, resuming from ``model_dir``; a resume
    point of another plan is discarded and the run starts over (with a warning)."""
    model = build()
    try:
        return model, fit(model)
    except resume_lib.ResumeMismatchError as err:
        logger.warning("%s Starting this run over.", err)
    wf.fresh_model_dir(model_dir)
    model = build()
    return model, fit(model)
