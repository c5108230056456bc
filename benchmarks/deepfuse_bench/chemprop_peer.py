"""chemprop v2 as a peer in the MoleculeNet benchmark: its environment for one benchmark, its run
record, and its predictions scored by the same metric code as every other model.

chemprop trains in its own environment (:mod:`deepfuse_bench.chemprop_env`) through its own
command line (:mod:`deepfuse_bench.chemprop`) on the exported split CSVs; an unavailable
environment or a failing command gives a run recorded as skipped (with the reason), never an
exception, so the benchmark goes on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfuse_bench import chemprop as cp
from deepfuse_bench import chemprop_env
from deepfuse_bench.datasets import PreparedDataset
from deepfuse_bench.records import finish_record, run_header, skipped_record
from deepfuse_plugin import workflows as wf


@dataclass
class ChempropSetup:
    """chemprop's environment for one benchmark: its executable, or why it is unavailable."""

    executable: Path | None
    reason: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


def chemprop_setup(
    venv_dir: str | None = None, echo: Callable[[str], None] | None = None
) -> ChempropSetup:
    """Create or reuse chemprop's environment
    (:func:`~deepfuse_bench.chemprop_env.ensure_chemprop_env`).

    A failure is returned as the reason, not raised: the benchmark then records its chemprop
    runs as skipped and goes on.
    """
    try:
        executable = chemprop_env.ensure_chemprop_env(venv_dir, echo=echo)
    except cp.ChempropError as err:
        return ChempropSetup(None, str(err))
    stamp = chemprop_env.read_stamp(executable.parents[1]) or {}
    return ChempropSetup(executable, None, stamp.get("versions", {}))


class Precomputed:
    """Predictions made elsewhere (by chemprop), served through the ``predict(dataset,
    transformers)`` interface :func:`deepfuse_plugin.workflows.evaluate` uses.

    ``pred`` is in original units (regression) or P(class 1) (classification), so transformers are
    not applied; ``predict`` checks that the dataset's ids are the SMILES that were predicted, in
    the same order.
    """

    def __init__(self, pred: np.ndarray, smiles: Sequence[str]) -> None:
        self.pred = np.asarray(pred, dtype=np.float64)
        self.smiles = [str(s).strip() for s in smiles]

    def predict(self, dataset: Any, transformers: Sequence[Any] = ()) -> np.ndarray:
        ids = [str(i).strip() for i in dataset.ids]
        if ids != self.smiles:
            raise wf.WorkflowError(
                f"Predictions for {len(self.smiles)} molecules do not match the "
                f"{len(ids)} rows being scored (other molecules or order)"
            )
        return self.pred


def fit_chemprop(
    paths: dict[str, str],
    tasks: Sequence[str],
    mode: str,
    seed: int,
    budget: dict[str, Any],
    valid: Any,
    test: Any,
    transformers: list,
    workdir: str,
    executable: Path,
    threads: int = 1,
) -> tuple[cp.ChempropResult, dict[str, Any], dict[str, Any]]:
    """Train chemprop on the split CSVs ``paths`` (train/valid/test) and score its predictions
    on ``valid`` and ``test`` (the same rows, as DeepChem datasets, possibly with normalized
    labels undone by ``transformers``): ``(result, valid metrics, test metrics)``."""
    result = cp.run_chemprop(
        paths["train"],
        paths["valid"],
        paths["test"],
        tasks,
        mode,
        budget["epochs"],
        seed,
        workdir,
        batch_size=budget["batch_size"],
        threads=threads,
        executable=executable,
    )
    if result.valid_pred is None or result.test_pred is None:
        raise cp.ChempropError(f"chemprop finished in {workdir} without predictions")
    metrics = [
        wf.evaluate(Precomputed(pred, smiles), part, transformers, mode)[0]
        for pred, smiles, part in (
            (result.valid_pred, result.valid_smiles, valid),
            (result.test_pred, result.test_smiles, test),
        )
    ]
    return result, metrics[0], metrics[1]


def chemprop_hyperparameters(result: cp.ChempropResult, setup: ChempropSetup) -> dict[str, Any]:
    """What chemprop ran with (every setting of its config.toml, defaults included) and where."""
    return {
        **result.hyperparameters,
        "selection": result.selection,
        "chemprop": setup.versions.get("chemprop", cp.CHEMPROP_VERSION),
        "environment": str(setup.executable.parents[1]) if setup.executable else None,
    }


CHEMPROP_MEMORY = (
    "psutil RSS of the chemprop child process tree (train, then predict), sampled "
    "every 50 ms; a fresh process, so delta = peak"
)


def run_chemprop_peer(
    name: str,
    data: PreparedDataset,
    seed: int,
    budget: dict[str, Any],
    scratch: str,
    setup: ChempropSetup,
) -> dict[str, Any]:
    """The chemprop run record: train on the exported split CSVs, score on the same rows.

    An unavailable environment or a failing chemprop command gives a record with ``skipped``
    (the reason) and null metrics instead of an exception, so the benchmark goes on.
    """
    record = run_header(name, data, seed)
    record.update(
        model_class="chemprop.models.MPNN",
        epochs=budget["epochs"],
        eval_every=1,
        selection=cp.SELECTIONS[cp.TRACKING_METRICS[data.mode]],
        best_epoch=None,
        history=[],
        hyperparameters={},
        device="cpu",
    )  # run_chemprop passes --accelerator cpu
    if setup.executable is None:
        return skipped_record(record, f"chemprop environment unavailable: {setup.reason}")
    _, valid, test = data.parts["multimodal"]  # the rows of the exported CSVs, in their order
    workdir = os.path.join(scratch, f"{data.name}_{name}_{seed}")
    wall = time.perf_counter()
    try:
        result, valid_m, test_m = fit_chemprop(
            data.split_paths,
            data.tasks,
            data.mode,
            seed,
            budget,
            valid,
            test,
            data.transformers,
            workdir,
            setup.executable,
            record["torch_threads"],
        )
    except cp.ChempropError as err:
        return skipped_record(record, f"chemprop run failed: {err}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record.update(
        best_epoch=result.best_epoch,
        selection=result.selection,
        history=[
            {"epoch": h["epoch"], "score": h["score"], "val_loss": h["val_loss"]}
            for h in result.history
        ],
        hyperparameters=chemprop_hyperparameters(result, setup),
        chemprop={
            "commands": [shlex.join(c) for c in result.commands],
            "epochs_run": result.epochs_run,
            "n_train": result.n_train,
            "epoch_times_s": result.epoch_times_s,
            "seconds_per_epoch": result.seconds_per_epoch,
            "train_process_s": result.train_process_s,
            "predict_process_s": result.predict_process_s,
            "versions": setup.versions,
        },
    )
    return finish_record(
        record,
        valid_m,
        test_m,
        result.train_time_s,
        time.perf_counter() - wall,
        result.peak_rss_mib,
        result.peak_rss_mib,
        CHEMPROP_MEMORY,
    )


#: The Settings line for chemprop (formatted with the run's epochs and batch size).
CHEMPROP_SETTINGS = (
    "- chemprop v2 (`chemprop`): chemprop==2.3.1 in its own virtual environment (it pins another "
    "RDKit), driven through its CLI on the exported split CSVs (train/valid/test given as three "
    "files: its predefined split) with its default settings (D-MPNN, hidden 300, depth 3, "
    "1-layer FFN, Noam learning rate 1e-4 to 1e-3 to 1e-4), {epochs} epochs and batch size "
    "{batch_size}. It keeps the checkpoint with the best validation ROC-AUC / RMSE like every "
    "other neural model (`--tracking-metric roc` / `rmse`; with several tasks chemprop's ROC-AUC "
    "pools all labelled pairs instead of averaging per task), unless the notes below say "
    "otherwise for older runs; its predictions are scored by the same metric code on the same "
    "rows as every other model."
)
