"""Merging ``deepfuse-bench crystals`` output folders: seeds or models run in parallel processes
(each with its own ``--out``, the same rows, budget and schedule) become one table.

``deepfuse-bench merge SOURCE [...] --out OUT`` calls :func:`merge_crystal_results` when the
folders hold crystal results (``crystals.json``, ``crystals_castelli.json``) and the molecule merge
(:mod:`deepfuse_bench.merge`) when they hold ``moleculenet.json``.

Examples
--------
>>> crystal_stems("no-such-folder")
[]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from deepfuse_bench.crystals import DATASETS, check_same_settings, differing, read_payload
from deepfuse_bench.crystals_report import planned_runs, write_outputs
from deepfuse_bench.crystals_runs import add_ratios, load_predictions
from deepfuse_bench.crystals_runs import stem as stem_of
from deepfuse_plugin import workflows as wf

#: Facts of the rows two folders must share: the same structures, splits and label scaling.
SAME_DATA = ("n_structures", "split_counts", "n", "normalization")
#: The same for the Castelli zero-shot set (its calibration sample included).
SAME_ZERO_SHOT = ("n_usable", "n_calibration", "n_evaluation", "seed")


def crystal_stems(folder: str) -> list[str]:
    """Stems of the crystal results in ``folder`` (``crystals`` for mp36k,
    ``crystals_castelli``)."""
    return [
        stem_of(dataset)
        for dataset in DATASETS
        if os.path.isfile(os.path.join(folder, f"{stem_of(dataset)}.json"))
    ]


def _same_folder(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def _check_folder(merged: dict[str, Any], payload: dict[str, Any], where: str) -> None:
    """``payload`` (read from ``where``) may join ``merged``: same settings, rows, zero-shot set."""
    check_same_settings(merged["settings"], payload["settings"], where)
    differ = differing(merged.get("data"), payload.get("data"), SAME_DATA)
    differ |= differing(
        merged.get("zero_shot_castelli"), payload.get("zero_shot_castelli"), SAME_ZERO_SHOT
    )
    if differ:
        raise wf.WorkflowError(
            f"{where} holds other rows than the folders before it (theirs, its): {differ}; "
            "only runs of the same rows share a table"
        )


def _union(*lists: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(item for values in lists for item in values))


def _predictions_path(folder: str, stem: str, run: dict[str, Any]) -> str:
    return os.path.join(folder, f"{stem}_predictions", f"{run['model']}_s{run['seed']}.npz")


def _take_predictions(source: str, out: str, stem: str, run: dict[str, Any]) -> None:
    """The run's saved test predictions (for the parity plot) replace any in ``out``; a source
    that kept none leaves none (not the replaced run's)."""
    src, dst = _predictions_path(source, stem, run), _predictions_path(out, stem, run)
    if os.path.exists(dst):
        os.remove(dst)
    if os.path.exists(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)


def _position(values: Sequence[Any], value: Any) -> int:
    return values.index(value) if value in values else len(values)


def _replaced_note(replaced: Sequence[tuple[str, int]]) -> str:
    runs = ", ".join(f"{model} s{seed}" for model, seed in replaced)
    return f"{len(replaced)} run(s) replaced by a re-run (bench merge --replace): {runs}."


def _unknown_time_note(folders: Sequence[str]) -> str:
    return (
        f"No wall time was recorded by {', '.join(folders)} (stopped before its runs kept one); "
        "the total leaves it out."
    )


def _merge_stem(
    folders: Sequence[str], out: str, stem: str, replace: bool
) -> dict[str, Any] | None:
    """Merge ``<folder>/<stem>.json`` of every folder holding one into ``out``."""
    holding = [f for f in folders if os.path.exists(os.path.join(f, f"{stem}.json"))]
    if not holding:
        return None
    payloads = [read_payload(os.path.join(f, f"{stem}.json"), "re-run it") for f in holding]
    merged = dict(payloads[0], commands=[], notes=[], planned=[], wall_time_s=0.0)
    merged.pop("wall_time_unknown", None)
    unknown: list[str] = []  # folders stopped before they recorded a wall time
    merged["settings"] = dict(payloads[0]["settings"])
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    origin: dict[tuple[str, int], str] = {}
    replaced: list[tuple[str, int]] = []
    for folder, payload in zip(holding, payloads):
        where = os.path.join(folder, f"{stem}.json")
        _check_folder(merged, payload, where)
        merged["settings"]["seeds"] = sorted(
            _union(merged["settings"]["seeds"], payload["settings"]["seeds"])
        )
        merged["settings"]["models"] = _union(
            merged["settings"]["models"], payload["settings"]["models"]
        )
        commands = payload.get("commands", [])
        if not set(commands) <= set(merged["commands"]):  # a folder merged in before: once
            merged["wall_time_s"] += payload.get("wall_time_s", 0.0)
            missing = payload.get("wall_time_unknown", []) if "wall_time_s" in payload else [where]
            unknown = _union(unknown, missing)
        merged["commands"] = _union(merged["commands"], commands)
        merged["planned"] = _union(merged["planned"], planned_runs(payload))
        merged["notes"] = _union(merged["notes"], payload.get("notes", []))
        is_source = not _same_folder(folder, out)
        for run in payload["runs"]:
            key = (run["model"], run["seed"])
            kept = by_key.get(key)
            if kept is not None and kept.get("test_mae") != run.get("test_mae"):
                if not (replace and is_source):
                    raise wf.WorkflowError(
                        f"run {key} has a different result in {where} and in "
                        f"{origin[key]}; remove one of them, or merge with --replace to let "
                        "the source's run replace the one in --out"
                    )
                replaced.append(key)
            if kept is None or is_source:
                by_key[key], origin[key] = run, where
                if is_source:
                    _take_predictions(folder, out, stem, run)
    if replaced:
        merged["notes"] = _union(merged["notes"], [_replaced_note(replaced)])
    if unknown:
        merged["wall_time_unknown"] = unknown
        merged["notes"] = _union(merged["notes"], [_unknown_time_note(unknown)])
    seeds, models = merged["settings"]["seeds"], merged["settings"]["models"]
    merged["runs"] = sorted(
        by_key.values(),
        key=lambda r: (_position(seeds, r["seed"]), _position(models, r["model"])),
    )
    add_ratios(merged["runs"])  # each run against the CGCNN run of its seed, wherever it ran
    predictions = load_predictions(os.path.join(out, f"{stem}_predictions"), merged["runs"])
    # no saved predictions (a committed table keeps only its plot): the plot is left as it is
    write_outputs(merged, out, stem, predictions or None)
    return merged


def merge_crystal_results(
    sources: Sequence[str],
    out: str,
    replace: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Merge the runs of other ``deepfuse-bench crystals`` output folders into ``out``.

    For seeds or models run in parallel processes (each with its own ``--out``): the runs,
    commands, notes and wall times are combined, the saved test predictions copied, the ratios to
    CGCNN recomputed (each run against the CGCNN run of its own seed) and ``<stem>.{json,md,png}``
    of ``out`` rewritten, for every result stem the folders hold (``crystals`` for mp36k,
    ``crystals_castelli``). The featurization timing, data facts and environment are ``out``'s
    (or the first source's); wall times are summed (a folder merged in before counted once, one
    that recorded none named in the notes), and while a run some folder planned is missing from
    every folder the report says "in progress or stopped". All
    folders must have the same shared settings (rows, epochs, batch size, learning rate,
    schedule, zero-shot sets, device) and the same row counts and label scaling; a run (model,
    seed) present twice must have the same test MAE unless ``replace``.

    Parameters
    ----------
    sources: list of str
        Output folders of ``deepfuse-bench crystals``.
    out: str
        The folder to merge into (its own runs, if any, are kept).
    replace: bool
        A source's run replaces the run of the same model and seed in ``out`` (and its saved
        predictions); the notes say which runs were replaced.

    Returns
    -------
    dict
        ``{stem: merged payload}``.

    Raises
    ------
    WorkflowError
        A source without crystal results, other settings or rows, a run with two results.
    """
    empty = [s for s in sources if not crystal_stems(s)]
    if empty:
        raise wf.WorkflowError(
            f"no crystal results (crystals.json, crystals_castelli.json) in: {', '.join(empty)}"
        )
    folders = [out]
    for source in sources:  # each folder once, --out first
        if not any(_same_folder(source, f) for f in folders):
            folders.append(source)
    stems = _union(*(crystal_stems(f) for f in folders))
    os.makedirs(out, exist_ok=True)
    merged: dict[str, dict[str, Any]] = {}
    for name in stems:
        payload = _merge_stem(folders, out, name, replace)
        if payload is not None:
            merged[name] = payload
            echo(f"Merged {len(payload['runs'])} runs into {os.path.join(out, name)}.json")
    return merged
