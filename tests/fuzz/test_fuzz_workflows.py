"""Fuzzing ``deepfuse train``/``predict`` with hostile CSV cells and labels (issue 21, item 6),
through the Python API (:func:`~deepfuse_plugin.workflows.train_from_csv`,
:func:`~deepfuse_plugin.workflows.predict_from_csv`) and the command line (``main``).

Invariants: a run either stops with a clear error (a ``ValueError``, i.e. a ``DeepfuseError`` or
pandas/NumPy's own, from the API; exit code 2 from the CLI; never another exception) or finishes;
``predict`` then writes every input row, with its cells byte for byte, and a finite prediction or
a status other than ``ok``; nothing outside the run folder and the output file changes.
"""

from __future__ import annotations

import atexit
import csv
import functools
import hashlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.fuzz.ledger import SilentResult, Violation, record, shown
from tests.fuzz.strategies import (
    VALID_SMILES,
    id_cells,
    label_cells,
    numeric_label_cells,
    smiles_inputs,
)

TRAIN_SMILES = [
    "CCO",
    "CCN",
    "CCCC",
    "CC(=O)O",
    "c1ccccc1",
    "c1ccncc1",
    "c1ccccc1O",
    "C1CCCCC1",
    "ClC(Cl)Cl",
    "OC1CCCCC1",
    "CC#N",
    "C=CC=C",
    "CCOC(=O)C",
    "NC(=O)N",
    "c1ccsc1",
    "CC(C)(C)O",
]
MODEL_KWARGS = dict(encoder_dim=16, fused_dim=16, head_hidden=16, gate_hidden=8, decoder_hidden=16)
TRAIN_BUDGET_S = 180.0
PREDICT_BUDGET_S = 60.0


# -- files ---------------------------------------------------------------------------------------
def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Cells as given (a lone surrogate is written as its raw bytes: a file that is not UTF-8)."""
    buffer = io.StringIO()
    # "\r\n" as the line end: a cell holding a bare "\r" or "\n" is then quoted
    csv.writer(buffer, lineterminator="\r\n").writerows([header, *rows])
    path.write_bytes(buffer.getvalue().encode("utf-8", "surrogatepass"))


def read_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_unchanged_outside(
    before: dict[str, str], after: dict[str, str], allowed: tuple[str, ...]
) -> None:
    def outside(snap: dict[str, str]) -> dict[str, str]:
        return {
            k: v
            for k, v in snap.items()
            if not any(k == a or k.startswith(a + "/") for a in allowed)
        }

    if outside(before) != outside(after):
        changed = sorted(set(outside(before).items()) ^ set(outside(after).items()))
        raise Violation(f"files outside {allowed} changed: {changed[:5]}")


# -- the two calls -------------------------------------------------------------------------------
def train(csv_path: Path, out: Path, tasks: list[str], via_cli: bool) -> bool:
    """True when the run finished; False for a clear refusal; anything else propagates."""
    from deepfuse_plugin import workflows as wf
    from deepfuse_plugin.cli import main

    if via_cli:
        code = main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(csv_path),
                "--smiles-column",
                "smiles",
                "--tasks",
                ",".join(tasks),
                "--modalities",
                "ecfp",
                "--split",
                "random",
                "--epochs",
                "1",
                "--eval-every",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ]
        )
        if code not in (0, 2):
            raise Violation(f"deepfuse train exited with {code}")
        return code == 0
    try:
        wf.train_from_csv(
            str(csv_path),
            "smiles",
            tasks,
            str(out),
            modalities=["ecfp"],
            split="random",
            epochs=1,
            eval_every=1,
            batch_size=8,
            progress=False,
            featurizer_kwargs={"ecfp_size": 128},
            model_kwargs=MODEL_KWARGS,
        )
    except ValueError:
        return False
    return True


def predict(run: Path, csv_path: Path, out: Path, via_cli: bool) -> bool:
    from deepfuse_plugin import workflows as wf
    from deepfuse_plugin.cli import main

    if via_cli:
        code = main(
            [
                "--no-progress",
                "predict",
                "--model-dir",
                str(run),
                "--csv",
                str(csv_path),
                "--out",
                str(out),
            ]
        )
        if code not in (0, 2):
            raise Violation(f"deepfuse predict exited with {code}")
        return code == 0
    try:
        wf.predict_from_csv(str(run), str(csv_path), out=str(out))
    except ValueError:
        return False
    return True


def check_predictions(csv_path: Path, out: Path, tasks: list[str]) -> int:
    """Every input row in the output, its cells unchanged, a finite prediction or a status
    other than ok; returns how many rows got no prediction."""
    given_rows, written = read_cells(csv_path), read_cells(out)
    header, rows = given_rows[0], given_rows[1:]
    if written[0][: len(header)] != header or len(written) - 1 != len(rows):
        raise Violation(
            f"output has header {written[0]} and {len(written) - 1} rows for input "
            f"header {header} and {len(rows)} rows"
        )
    status_at = written[0].index("deepfuse_status")
    pred_at = [written[0].index(f"{t}_pred") for t in tasks]
    failed = 0
    for i, (row, out_row) in enumerate(zip(rows, written[1:])):
        if out_row[: len(header)] != row:
            raise Violation(
                f"row {i}: cells {shown(row)} were written as {shown(out_row[: len(header)])}"
            )
        status = out_row[status_at]
        values = [float(out_row[j]) if out_row[j] else float("nan") for j in pred_at]
        if status == "ok" and not np.isfinite(values).all():
            raise SilentResult(f"row {i} ({shown(row)}): predictions {values} with status ok")
        if status != "ok":
            failed += 1
            if not status.strip():
                raise Violation(f"row {i}: empty status")
    return failed


# -- a shared trained run ------------------------------------------------------------------------
@functools.cache
def trained_run() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="deepfuse-fuzz-run-"))
    atexit.register(shutil.rmtree, folder, True)
    rng = np.random.default_rng(0)
    write_csv(
        folder / "train.csv",
        ["smiles", "y"],
        [[s, f"{v:.3f}"] for s, v in zip(TRAIN_SMILES, rng.normal(size=len(TRAIN_SMILES)))],
    )
    assert train(folder / "train.csv", folder / "run", ["y"], via_cli=False)
    return folder / "run"


# -- tests ---------------------------------------------------------------------------------------
@settings(max_examples=examples(0.03, minimum=2))
# half the label columns are numbers with gaps (the run trains, predict is checked), half may hold
# anything (the run must be refused with a clear error)
@given(
    labels=st.lists(label_cells, min_size=len(TRAIN_SMILES), max_size=len(TRAIN_SMILES))
    | st.lists(numeric_label_cells, min_size=len(TRAIN_SMILES), max_size=len(TRAIN_SMILES)),
    ids=st.lists(id_cells, min_size=len(TRAIN_SMILES), max_size=len(TRAIN_SMILES)),
    via_cli=st.booleans(),
)
def test_train_then_predict_on_hostile_labels_and_ids(labels, ids, via_cli):
    rows = [[i, s, y] for i, s, y in zip(ids, TRAIN_SMILES, labels)]
    with (
        record("workflow_train", rows, budget_s=TRAIN_BUDGET_S) as outcome,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        write_csv(folder / "data.csv", ["id", "smiles", "y"], rows)
        (folder / "mine.txt").write_text("a user's file")
        before = snapshot(folder)
        finished = train(folder / "data.csv", folder / "run", ["y"], via_cli)
        allowed = ("run", "run.deepfuse-partial", "preds.csv")
        check_unchanged_outside(before, snapshot(folder), allowed)
        if not finished:
            outcome["refused"] = True
            return
        if not predict(folder / "run", folder / "data.csv", folder / "preds.csv", via_cli):
            raise Violation("predict refused the CSV its run was trained on")
        check_unchanged_outside(before, snapshot(folder), allowed)
        outcome["refused"] = check_predictions(folder / "data.csv", folder / "preds.csv", ["y"]) > 0


# NUL and "\r" become \x01 here for two known findings (NUL cells after 8 KiB are emptied; a
# bare "\r" is written unquoted by predict: tests/fuzz/test_known_findings.py); both are fuzzed
# in a SMILES through the featurizer (test_fuzz_smiles)
_smiles_cells = st.one_of(
    smiles_inputs.map(
        lambda v: (
            (v if isinstance(v, str) else str(v)).replace("\x00", "\x01").replace("\r", "\x01")
        )
    ),
    st.sampled_from(VALID_SMILES),
)


@settings(max_examples=examples(0.15, minimum=6))
@given(
    smiles=st.lists(_smiles_cells, min_size=1, max_size=6),
    ids=st.lists(id_cells, min_size=6, max_size=6),
    notes=st.lists(label_cells, min_size=6, max_size=6),
    via_cli=st.booleans(),
)
def test_predict_keeps_every_row_and_cell(smiles, ids, notes, via_cli):
    run = trained_run()
    rows = [[i, s, n] for i, s, n in zip(ids, smiles, notes)]
    run_before = snapshot(run)
    with (
        record("workflow_predict", rows, n_inputs=len(rows), budget_s=PREDICT_BUDGET_S) as outcome,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        write_csv(folder / "query.csv", ["id", "smiles", "note"], rows)
        before = snapshot(folder)
        finished = predict(run, folder / "query.csv", folder / "preds.csv", via_cli)
        check_unchanged_outside(before, snapshot(folder), ("preds.csv",))
        if snapshot(run) != run_before:
            raise Violation("predict changed the run folder")
        if not finished:
            outcome["refused"] = True
            return
        outcome["refused"] = (
            check_predictions(folder / "query.csv", folder / "preds.csv", ["y"]) > 0
        )
