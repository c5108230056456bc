"""``deepfuse-bench gains``: what the pretrained views bought, per dataset.

Reads one or more ``moleculenet.json`` result files (e.g. the committed full suite and a run of the
pretrained variants on the same splits), and for each fusion model compares, per dataset, the mean
test score over seeds of

* the model trained from scratch on ECFP + graph + SMILES (``dynamic``),
* the same with the encoders from deepfuse's self-supervised checkpoint, no MiniMol
  (``dynamic_ssl``: with the shipped checkpoint, no assay label is behind any of its weights),
* the same with the MiniMol view added, encoders from scratch (``dynamic_minimol``),
* the MiniMol view and the encoders from the pretrained checkpoint (``dynamic_pretrained``),

against the best other model of the tables (every deepfuse unimodal model, the DeepChem peers,
chemprop, the MiniMol peer). It writes ``gains.md`` (the table and the issue's target counts:
datasets where a pretrained-view fusion model is best of all, and where it beats its own scratch
version) and ``gains.png`` (relative change per dataset). Only runs present in the files count:
a dataset/model with fewer seeds says so in the table. Runs scored with ``--missing-views`` add
the "Missing views at inference" table to ``gains.md`` and ``gains_missing_views.png``.

Examples
--------
>>> relative_gain(1.0, 0.8, higher_is_better=False)  # RMSE 1.0 -> 0.8: 20% better
0.2
>>> round(relative_gain(0.70, 0.77, higher_is_better=True), 3)  # ROC-AUC 0.70 -> 0.77
0.1
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from deepfuse_bench import missing_views
from deepfuse_bench.datasets import DISPLAY, PUBCHEM_ASSAY_DATASETS, minimol_leakage_note
from deepfuse_bench.missing_views import carry_field as carry_missing_views

#: fusion model -> (scratch, + pretrained encoders, + MiniMol, + MiniMol and pretrained encoders)
FAMILIES: dict[str, tuple[str, ...]] = {
    "dynamic": ("dynamic", "dynamic_ssl", "dynamic_minimol", "dynamic_pretrained"),
    "late": ("late", "late_ssl", "late_minimol", "late_pretrained"),
}
STAGES = (
    "from scratch",
    "+ pretrained encoders",
    "+ MiniMol view",
    "+ MiniMol, pretrained encoders",
)


def relative_gain(before: float, after: float, higher_is_better: bool) -> float:
    """Relative improvement from ``before`` to ``after`` (positive = better)."""
    change = (after - before) / abs(before)
    return round(change if higher_is_better else -change, 12)


def load_runs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs of every file (a later file's run replaces the same dataset/model/seed) and the
    datasets' descriptions."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    datasets: dict[str, Any] = {}
    for path in paths:
        with open(path) as fh:
            payload = json.load(fh)
        datasets.update(payload.get("datasets", {}))
        for run in payload["runs"]:
            if run.get("test_metric") is not None:
                key = (run["dataset"], run["model"], int(run["seed"]))
                runs[key] = carry_missing_views(run, runs[key]) if key in runs else run
    return list(runs.values()), datasets


def means(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, int]]:
    """``(dataset, model) -> (mean test score, seeds)``."""
    groups: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"]), []).append(float(run["test_metric"]))
    return {k: (sum(v) / len(v), len(v)) for k, v in groups.items()}


def higher_is_better(runs: Sequence[dict[str, Any]], dataset: str) -> bool:
    metric = next(r["metric"] for r in runs if r["dataset"] == dataset)
    return metric != "rmse"


def gains_table(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset and fusion family: the :data:`STAGES`, the best other model, and
    whether the best pretrained stage beats scratch and every other model (a dataset with no
    other model in the files is not counted as won)."""
    from deepfuse_bench.peers import PEERS

    score = means(runs)
    rows = []
    for dataset in sorted({r["dataset"] for r in runs}):
        higher = higher_is_better(runs, dataset)
        pick = max if higher else min
        others = {
            m: s
            for (d, m), s in score.items()
            if d == dataset and (m.startswith("unimodal_") or m in PEERS)
        }
        best_other = pick(others.items(), key=lambda kv: kv[1][0]) if others else None
        for family, stages in FAMILIES.items():
            cells = [score.get((dataset, m)) for m in stages]
            if cells[0] is None or all(c is None for c in cells[1:]):
                continue
            pretrained = [c for c in cells[1:] if c is not None]
            best = pick(c[0] for c in pretrained)
            rows.append(
                {
                    "dataset": dataset,
                    "family": family,
                    "metric": "ROC-AUC" if higher else "RMSE",
                    "stages": cells,
                    "gain": relative_gain(cells[0][0], best, higher),
                    "best_other": best_other,
                    "beats_scratch": pick(best, cells[0][0]) == best and best != cells[0][0],
                    "beats_others": best_other is not None
                    and pick(best, best_other[1][0]) == best
                    and best != best_other[1][0],
                }
            )
    return rows


def _cell(cell: tuple[float, int] | None, seeds: int) -> str:
    if cell is None:
        return "–"
    mean, n = cell
    return f"{mean:.3f}" + ("" if n == seeds else f" ({n} seed{'s' if n > 1 else ''})")


def format_markdown(rows: Sequence[dict[str, Any]], seeds: int, sources: Sequence[str]) -> str:
    lines = [
        "# What the pretrained views bought",
        "",
        f"Mean test score over {seeds} seeds (DeepChem scaffold split; fewer seeds are marked). "
        "Gain: the best of the pretrained stages against the model from scratch. Best other: the "
        "best of every deepfuse unimodal model, the DeepChem peers, chemprop and the MiniMol "
        "peer (the issue's target; the other fusion models are in the full table).",
        "",
        f"| dataset | model | metric | {' | '.join(STAGES)} | gain | best other |",
        "|---|---|---|" + "---:|" * (len(STAGES) + 1) + "---|",
    ]
    for row in rows:
        other = row["best_other"]
        other_text = f"{other[0]} {other[1][0]:.3f}" if other else "–"
        stages = " | ".join(_cell(c, seeds) for c in row["stages"])
        lines.append(
            f"| {DISPLAY.get(row['dataset'], row['dataset'])} | {row['family']} | "
            f"{row['metric']} | {stages} | {row['gain']:+.1%} | {other_text} |"
        )
    datasets = sorted({r["dataset"] for r in rows})
    best_of_all = sorted({r["dataset"] for r in rows if r["beats_others"]})
    beats_own = sorted(
        {d for d in datasets if all(r["beats_scratch"] for r in rows if r["dataset"] == d)}
    )
    lines += [
        "",
        *_leakage_notes(datasets),
        f"- A fusion model with pretrained encoders or views is the best model on "
        f"{len(best_of_all)} of {len(datasets)} datasets ({_names(best_of_all)}).",
        f"- Every fusion model with pretrained encoders or views beats its own from-scratch "
        f"version on {len(beats_own)} of {len(datasets)} datasets ({_names(beats_own)}).",
        "",
        "Sources: " + ", ".join(f"`{s}`" for s in sources),
        "",
    ]
    return "\n".join(lines)


def _names(datasets: Sequence[str]) -> str:
    """Dataset display names, those whose MiniMol rows may be leaked marked.

    Examples
    --------
    >>> _names(["bbbp", "tox21"]), _names([])
    ('BBBP, Tox21 (MiniMol possibly leaked)', 'none')
    """
    marked = [
        DISPLAY.get(d, d) + (" (MiniMol possibly leaked)" if d in PUBCHEM_ASSAY_DATASETS else "")
        for d in datasets
    ]
    return ", ".join(marked) or "none"


def _leakage_notes(datasets: Sequence[str]) -> list[str]:
    """A warning for the datasets whose labels MiniMol may have been pretrained on.

    Examples
    --------
    >>> _leakage_notes(["bbbp"])
    []
    >>> _leakage_notes(["tox21"])[0][:32]
    '- Possibly leaked: the MiniMol v'
    """
    note = minimol_leakage_note(datasets)
    if note is None:
        return []
    return [
        f"- {note} The '+ pretrained encoders' stage has no such overlap when its checkpoint saw "
        "no assay labels (the shipped one: self-supervised objectives and computed RDKit "
        "descriptors as auxiliary targets)."
    ]


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Bars: relative change of each stage against the model from scratch, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{DISPLAY.get(r['dataset'], r['dataset'])}\n{r['family']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    bars = len(STAGES) - 1
    x, width = np.arange(len(rows)), 0.8 / bars
    for i, stage in enumerate(STAGES[1:], start=1):
        values = [
            100 * relative_gain(r["stages"][0][0], r["stages"][i][0], r["metric"] == "ROC-AUC")
            if r["stages"][i] is not None
            else np.nan
            for r in rows
        ]
        ax.bar(x + (i - (bars + 1) / 2) * width, values, width, label=stage)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("better than from scratch (%)")
    ax.set_title("Pretrained views against the same fusion model from scratch (test, mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_gains(sources: Sequence[str], out: str, seeds: int = 3, echo: Any = print) -> str:
    """Write ``<out>/gains.md`` and ``gains.png`` from ``sources`` (``moleculenet.json``
    files or folders holding one); returns the markdown."""
    paths = [os.path.join(s, "moleculenet.json") if os.path.isdir(s) else s for s in sources]
    runs, _ = load_runs(paths)
    rows = gains_table(runs)
    os.makedirs(out, exist_ok=True)
    text = format_markdown(rows, seeds, sources)
    section = missing_views.markdown_section(runs)
    if section:
        text += "\n" + "\n".join(section)
    with open(os.path.join(out, "gains.md"), "w") as fh:
        fh.write(text)
    if rows:
        plot(rows, os.path.join(out, "gains.png"))
    missing_views.plot(runs, os.path.join(out, "gains_missing_views.png"))
    echo(text)
    return text


def add_parser(sub: Any) -> None:
    """``deepfuse-bench gains`` on the harness's subcommand parser."""
    parser = sub.add_parser(
        "gains", help="what the pretrained views bought, per dataset (table and plot)"
    )
    parser.add_argument("sources", nargs="+", help="moleculenet.json files or their folders")
    parser.add_argument("--seeds", type=int, default=3, help="seeds a complete cell has")
    parser.add_argument("--out", required=True)


def run_from_args(args: Any) -> None:
    run_gains(args.sources, args.out, args.seeds)
