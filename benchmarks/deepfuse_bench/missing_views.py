"""Missing views at inference: ``deepfuse-bench moleculenet --missing-views``.

After a deepfuse model with two or more views has selected its checkpoint, the runner scores it on
the test split once with every view and once with each single view absent from every molecule
(:func:`deepfuse_plugin.analysis.evaluate_missing_modalities`, no retraining: one predict pass per
view). The scores go into the run record as ``missing_views``::

    {"metric": "roc_auc", "split": "test", "all_views": 0.91,
     "absent": {"ecfp": 0.90, "graph": 0.88, "smiles": 0.91, "minimol": 0.86},
     "n_samples": 150, "n_excluded": {"ecfp": 0, ...}, "reasons": {}, "time_s": 0.4}

``all_views`` equals the run's ``test_metric`` (the same metric code); a view whose removal cannot
be scored has ``null`` and its reason. Models with one view (the unimodal baselines, the MiniMol
peer) and the DeepChem and chemprop peers have no view to remove: their runs get no field.

The harness deletes each model once it is scored, so a run that finished without the flag cannot
get the field later (``--resume`` says which runs lack it); re-run those runs into another
``--out`` and ``deepfuse-bench merge --replace`` them in.

The report (:func:`markdown_section`, :func:`plot`) gives per dataset and model the mean test
metric over seeds with all views and with each view absent, and the relative change.

Examples
--------
>>> runs = [{"dataset": "delaney", "model": "dynamic", "seed": 0, "metric": "rmse",
...          "missing_views": {"metric": "rmse", "all_views": 1.0,
...                            "absent": {"ecfp": 1.1, "graph": 1.25}}}]
>>> row = summary_rows(runs)[0]
>>> row["all_views"], [round(c["change"], 3) for c in row["absent"].values()]
(1.0, [0.1, 0.25])
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from deepchem.metrics import Metric

from deepfuse_bench.datasets import DISPLAY, MINIMOL_MODALITIES, primary_metric

#: The run record's field.
FIELD = "missing_views"
#: Where the report's figure goes, next to ``moleculenet.png``.
PLOT_NAME = "moleculenet_missing_views.png"


class PrimaryMetric(Metric):
    """The harness's primary metric (ROC-AUC or RMSE, mean over tasks, ``w == 0`` masked) as a
    DeepChem ``Metric``: the code of the run's ``test_metric``
    (:func:`deepfuse_plugin.train.metrics.evaluate`), so the all-views score equals it.

    DeepChem's own ``roc_auc_score`` metric fails on a task with one class in the split; the
    harness's skips that task, as every other column of the table does.
    """

    def __init__(self, mode: str) -> None:
        import deepchem as dc

        # the per-task function DeepChem would call; compute_metric below scores all tasks
        per_task = dc.metrics.roc_auc_score if mode == "classification" else dc.metrics.rms_score
        super().__init__(per_task, name=primary_metric(mode)[0], mode=mode)

    def compute_metric(
        self, y_true: Any, y_pred: Any, w: Any = None, n_tasks: int | None = None, **kwargs: Any
    ) -> float:
        from deepfuse_plugin.train.metrics import (
            classification_metrics,
            regression_metrics,
            task_columns,
        )

        pred = task_columns(y_pred, str(self.mode))
        scores = (
            classification_metrics(y_true, pred, w)
            if self.mode == "classification"
            else regression_metrics(y_true, pred, w)
        )
        return float(scores[str(self.name)])


def views_of(model: Any) -> list[str]:
    """The views a model can lose at inference: its modalities when it has two or more (a
    one-view model, or a model without deepfuse modalities, has none)."""
    names = list(getattr(model, "modality_names", None) or ())
    return names if len(names) >= 2 else []


def score_missing_views(
    model: Any, test: Any, transformers: Sequence[Any], mode: str
) -> dict[str, Any] | None:
    """The ``missing_views`` field of a run: the test metric with all views and with each view
    absent; None when the model has no view it can lose (:func:`views_of`)."""
    from deepfuse_plugin.analysis import evaluate_missing_modalities

    views = views_of(model)
    if not views or len(test) == 0:
        return None
    start = time.perf_counter()
    metric = PrimaryMetric(mode)
    table, _ = evaluate_missing_modalities(
        model, test, metric, list(transformers), patterns=views, random_drop=(), plot=False
    )
    full = table[table["condition"] == "full"].iloc[0]
    patterns = table[table["condition"] == "subset"]
    return {
        "metric": metric.name,
        "split": "test",
        "all_views": _number(full["value"]),
        "absent": {r.removed: _number(r.value) for r in patterns.itertuples()},
        "n_samples": int(full["n_samples"]),
        "n_excluded": {r.removed: int(r.n_excluded) for r in patterns.itertuples()},
        "reasons": {r.removed: str(r.reason) for r in patterns.itertuples() if r.reason},
        "time_s": time.perf_counter() - start,
    }


def _number(value: Any) -> float | None:
    """A JSON number, None for NaN (a score that could not be computed)."""
    value = float(value)
    return value if math.isfinite(value) else None


# -- records ------------------------------------------------------------------------------------
def expects_field(run: dict[str, Any]) -> bool:
    """Whether ``--missing-views`` scores this run: a finished run of a deepfuse model with two
    or more views."""
    if run.get("skipped") or not str(run.get("kind", "")).startswith("deepfuse"):
        return False
    return len((run.get("hyperparameters") or {}).get("modalities") or []) >= 2


def runs_lacking_field(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs :func:`expects_field` says could have the field and that do not have it."""
    return [r for r in runs if expects_field(r) and FIELD not in r]


def carry_field(kept: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``kept``, with ``other``'s ``missing_views`` when ``kept`` lacks it and both are the same
    run with the same test result (one folder ran it with ``--missing-views``, one without)."""
    if FIELD in kept or FIELD not in other or kept.get("test") != other.get("test"):
        return kept
    return {**kept, FIELD: other[FIELD]}


def summary_text(record: dict[str, Any]) -> str:
    """``; views absent: ecfp 0.812, graph 0.790`` for the progress log ("" without the field)."""
    field = record.get(FIELD)
    if not field:
        return ""
    return "; views absent: " + ", ".join(
        f"{view} {_fmt(value)}" for view, value in field["absent"].items()
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# -- report -------------------------------------------------------------------------------------
def summary_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset and model with the field: the mean over seeds of the all-views metric
    and, per view, of the metric with it absent and its relative change (``(absent - all) /
    |all|`` over the seeds where both are finite; positive = the metric went up)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get(FIELD) and run[FIELD].get("all_views") is not None:
            groups[(run["dataset"], run["model"])].append(run)
    rows = []
    for (dataset, model), these in groups.items():
        fields = [r[FIELD] for r in these]
        views = list(dict.fromkeys(v for f in fields for v in f["absent"]))
        absent = {}
        for view in views:
            pairs = [
                (f["all_views"], f["absent"][view])
                for f in fields
                if f["absent"].get(view) is not None
            ]
            if not pairs:
                absent[view] = {"mean": math.nan, "change": math.nan, "n": 0}
                continue
            full, gone = (float(np.mean(p)) for p in zip(*pairs))
            change = (gone - full) / abs(full) if full else math.nan  # no change relative to 0
            absent[view] = {"mean": gone, "change": change, "n": len(pairs)}
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "metric": fields[0]["metric"],
                "all_views": float(np.mean([f["all_views"] for f in fields])),
                "n": len(fields),
                "absent": absent,
            }
        )
    return sorted(rows, key=_row_order)


def _row_order(row: dict[str, Any]) -> tuple:
    from deepfuse_bench.datasets import FULL_DATASETS
    from deepfuse_bench.models import all_models

    datasets, models = list(FULL_DATASETS), all_models()
    return (
        datasets.index(row["dataset"]) if row["dataset"] in datasets else len(datasets),
        row["dataset"],
        models.index(row["model"]) if row["model"] in models else len(models),
        row["model"],
    )


def view_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The views of the table's columns: the fusion views in their usual order, then others."""
    present = {v for r in rows for v in r["absent"]}
    known = [v for v in MINIMOL_MODALITIES if v in present]
    return known + sorted(present - set(known))


def loss(metric: str, change: float) -> float:
    """A relative change of ``metric`` as a loss: positive = worse (ROC-AUC down, RMSE up)."""
    return change if metric == "rmse" else -change


def markdown_section(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The report's "Missing views at inference" section ([] when no run has the field)."""
    rows = summary_rows(runs)
    if not rows:
        return []
    views = view_columns(rows)
    lines = [
        "## Missing views at inference (test)",
        "",
        "Each deepfuse model with two or more views, scored on the test split again with one "
        "view removed from every molecule (`evaluate_missing_modalities`, no retraining; "
        "`deepfuse-bench moleculenet --missing-views`). Cells: mean test metric over seeds and "
        "its relative change against all views (ROC-AUC ↑: a negative change is a loss; RMSE ↓: "
        'a positive change is a loss); "–": the model does not have that view.',
        "",
        "| dataset | model | metric | seeds | all views | "
        + " | ".join(f"{v} absent" for v in views)
        + " |",
        "|" + "---|" * 3 + "---:|" * (2 + len(views)),
    ]
    for row in rows:
        higher = row["metric"] != "rmse"
        cells = [_absent_cell(row["absent"].get(v), row["n"]) for v in views]
        lines.append(
            f"| {DISPLAY.get(row['dataset'], row['dataset'])} | {row['model']} | "
            f"{'ROC-AUC ↑' if higher else 'RMSE ↓'} | {row['n']} | {row['all_views']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", *_headline(rows), *_lacking_note(runs)]
    return lines + [""]


def _absent_cell(cell: dict[str, Any] | None, seeds: int) -> str:
    if cell is None:
        return "–"
    if not math.isfinite(cell["mean"]):
        return "n/a"
    change = cell["change"]
    text = f"{cell['mean']:.3f} ({change:+.1%})" if math.isfinite(change) else f"{cell['mean']:.3f}"
    return text + (f" (n={cell['n']})" if cell["n"] < seeds else "")


def _headline(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The largest loss of any single view, and of MiniMol's, computed from the rows."""
    cells = [
        (loss(r["metric"], c["change"]), r, view)
        for r in rows
        for view, c in r["absent"].items()
        if math.isfinite(c["change"])
    ]
    if not cells:
        return []
    out = []
    for label, chosen in (
        ("any single view", cells),
        ("the MiniMol view", [c for c in cells if c[2] == "minimol"]),
    ):
        if chosen:
            worst, row, view = max(chosen, key=lambda c: c[0])
            out.append(
                f"- Largest loss with {label} absent: {worst:.1%} of the all-views metric "
                f"({row['model']} on {DISPLAY.get(row['dataset'], row['dataset'])}, "
                f"{view} absent)."
            )
    return out


def _lacking_note(runs: Sequence[dict[str, Any]]) -> list[str]:
    lacking = runs_lacking_field(runs)
    if not lacking:
        return []
    datasets: dict[str, dict[str, None]] = defaultdict(dict)  # model -> datasets, in run order
    for run in lacking:
        datasets[run["model"]][DISPLAY.get(run["dataset"], run["dataset"])] = None
    which = "; ".join(f"{model} on {', '.join(names)}" for model, names in datasets.items())
    return [
        f"- {len(lacking)} run(s) were not scored with views absent (finished without "
        f"`--missing-views`; the harness does not keep a model after scoring it, so only a "
        f"re-run fills them in): {which}."
    ]


def plot(runs: Sequence[dict[str, Any]], path: str) -> bool:
    """Bars: the relative loss (%) with each view absent, per dataset and model (positive =
    worse). Returns False, writing nothing, when no run has the field."""
    rows = summary_rows(runs)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = view_columns(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.0))
    x, width = np.arange(len(rows)), 0.8 / len(views)
    for j, view in enumerate(views):
        values = [
            100 * loss(r["metric"], r["absent"][view]["change"]) if view in r["absent"] else np.nan
            for r in rows
        ]
        ax.bar(x - 0.4 + width * (j + 0.5), values, width, label=f"{view} absent")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        x, [f"{DISPLAY.get(r['dataset'], r['dataset'])}\n{r['model']}" for r in rows], fontsize=7
    )
    ax.set_ylabel("test metric lost (% of all views)")
    ax.set_title("One view absent at inference (mean over seeds; positive = worse)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
