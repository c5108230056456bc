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

from deepfuse_bench.crystals import check_same_settings, read_payload
from deepfuse_bench.crystals_report import STEM, write_outputs
from deepfuse_bench.crystals_runs import add_ratios, load_predictions
from deepfuse_plugin import workflows as wf

#: Facts of the rows two folders must share: the same structures, splits and label scaling.
SAME_DATA = ("n_structures", "split_counts", "n", "normalization")
#: The same for the Castelli zero-shot set (its calibration sample included).
SAME_ZERO_SHOT = ("n_usable", "n_calibration", "n_evaluation", "seed")


def crystal_stems(folder: str) -> list[str]:
    """Stems of the crystal results in ``folder`` (``crystals``, ``crystals_castelli``)."""
    if not os.path.isdir(folder):
        return []
    return sorted(
        name[: -len(".json")]
        for name in os.listdir(folder)
        if name.startswith(STEM) and name.endswith(".json")
    )


def _check_same_facts(
    old: dict[str, Any] | None, new: dict[str, Any] | None, keys: Sequence[str], where: str
) -> None:
    old, new = old or {}, new or {}
    differ = {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
    if differ:
        raise wf.WorkflowError(f"{where} holds other rows (old, new): {differ}")


def _union(*lists: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(item for values in lists for item in values))


def _copy_predictions(source: str, out: str, stem: str, run: dict[str, Any]) -> None:
    """The run's saved test predictions (for the parity plot), when the source kept them."""
    name = f"{run['model']}_s{run['seed']}.npz"
    src = os.path.join(source, f"{stem}_predictions", name)
    if os.path.exists(src):
        os.makedirs(os.path.join(out, f"{stem}_predictions"), exist_ok=True)
        shutil.copyfile(src, os.path.join(out, f"{stem}_predictions", name))


def _merge_stem(
    folders: Sequence[str], out: str, stem: str, replace: bool
) -> dict[str, Any] | None:
    """Merge ``<folder>/<stem>.json`` of every folder holding one into ``out``."""
    holding = [f for f in folders if os.path.exists(os.path.join(f, f"{stem}.json"))]
    if not holding:
        return None
    payloads = [read_payload(os.path.join(f, f"{stem}.json"), "re-run it") for f in holding]
    merged = dict(payloads[0], commands=[], notes=[], wall_time_s=0.0)
    merged["settings"] = dict(payloads[0]["settings"])
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for folder, payload in zip(holding, payloads):
        where = os.path.join(folder, f"{stem}.json")
        check_same_settings(merged["settings"], payload["settings"], where)
        _check_same_facts(merged.get("data"), payload.get("data"), SAME_DATA, where)
        _check_same_facts(
            merged.get("zero_shot_castelli"),
            payload.get("zero_shot_castelli"),
            SAME_ZERO_SHOT,
            where,
        )
        for listed in ("seeds", "models"):
            merged["settings"][listed] = _union(
                merged["settings"][listed], payload["settings"][listed]
            )
        merged["commands"] = _union(merged["commands"], payload.get("commands", []))
        merged["notes"] = _union(merged["notes"], payload.get("notes", []))
        merged["wall_time_s"] += payload.get("wall_time_s", 0.0)
        is_source = os.path.abspath(folder) != os.path.abspath(out)
        for run in payload["runs"]:
            key = (run["model"], run["seed"])
            kept = by_key.get(key)
            if kept is not None and kept.get("test_mae") != run.get("test_mae"):
                if not (replace and is_source):
                    raise wf.WorkflowError(
                        f"{where}: run {key} is also in another folder with a different "
                        "result; remove one of them, or merge with --replace to let the "
                        "source's run replace it"
                    )
            by_key[key] = run if kept is None or is_source else kept
            if is_source and by_key[key] is run:
                _copy_predictions(folder, out, stem, run)
    merged["runs"] = sorted(
        by_key.values(),
        key=lambda r: (
            merged["settings"]["seeds"].index(r["seed"]),
            merged["settings"]["models"].index(r["model"]),
        ),
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
    ``crystals_castelli``). The featurization timing and data facts are ``out``'s (or the first
    source's). All folders must have the same shared settings (rows, epochs, batch size, learning
    rate, schedule, zero-shot sets) and the same rows; a run (model, seed) present twice must have
    the same test MAE unless ``replace``.

    Parameters
    ----------
    sources: list of str
        Output folders of ``deepfuse-bench crystals``.
    out: str
        The folder to merge into (its own runs, if any, are kept).
    replace: bool
        A source's run replaces the run of the same model and seed in ``out``.

    Returns
    -------
    dict
        ``{stem: merged payload}``.
    """
    folders = [out] + [s for s in sources if os.path.abspath(s) != os.path.abspath(out)]
    stems = _union(*(crystal_stems(f) for f in folders))
    if not stems:
        raise wf.WorkflowError(
            "nothing to merge: give at least one folder with crystals.json or "
            "crystals_castelli.json"
        )
    os.makedirs(out, exist_ok=True)
    merged: dict[str, dict[str, Any]] = {}
    for stem in stems:
        payload = _merge_stem(folders, out, stem, replace)
        if payload is not None:
            merged[stem] = payload
            echo(f"Merged {len(payload['runs'])} runs into {os.path.join(out, stem)}.json")
    return merged
