"""The table of ``deepfuse-bench speed``: comparison rows (``rows`` of ``speed.json``) and
``speed.md`` (the table, the machine, the load and the method notes)."""

from __future__ import annotations

import math
import os
from typing import Any

from deepfuse_bench.speed_runs import BUCKET_POOL, LABELS, MEMORY_TASKS


def _row(
    measurement: str,
    unit: str,
    ours: str,
    peer: str,
    ours_value: float | None,
    peer_value: float | None,
    kind: str,
    status: str = "measured",
    cpu_ratio: float | None = None,
) -> dict[str, Any]:
    """One comparison. ``kind``: ``throughput`` (ratio ours / peer), ``latency`` (peer / ours),
    ``memory`` (ours / peer)."""
    ratio = None
    if ours_value and peer_value:
        ratio = peer_value / ours_value if kind == "latency" else ours_value / peer_value
    return {
        "measurement": measurement,
        "unit": unit,
        "deepfuse": ours,
        "peer": peer,
        "deepfuse_value": ours_value,
        "peer_value": peer_value,
        "ratio": ratio,
        "ratio_kind": kind,
        "cpu_ratio": cpu_ratio,
        "status": status,
    }


def _cpu_ratio(ours: dict[str, Any], peer: dict[str, Any], key: str) -> float | None:
    if key in ours and key in peer and ours[key] and peer[key]:
        return ours[key] / peer[key] if key.startswith("mol_per") else peer[key] / ours[key]
    return None


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison table (``rows`` of the JSON) from the section records."""
    rows = _featurization_rows(result["featurization"])
    rows += _training_rows(result["training"])
    rows += _inference_rows(result["inference"])
    if "status" not in result["memory"]:
        rows += _memory_rows(result["memory"])
    return rows


def _featurization_rows(feat: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in (k for k in feat if k.startswith("n_jobs_")):
        ours, peer = feat[key]["deepfuse"], feat[key]["deepchem"]
        jobs = key.rsplit("_", 1)[1]
        rows.append(
            _row(
                f"featurization, n_jobs={jobs}",
                "molecules/s",
                LABELS["deepfuse"],
                LABELS["deepchem"] + ("" if jobs == "1" else f", {jobs} processes"),
                ours["mol_per_s"],
                peer["mol_per_s"],
                "throughput",
                cpu_ratio=_cpu_ratio(ours, peer, "mol_per_cpu_s"),
            )
        )
    return rows


def _training_rows(train: dict[str, Any]) -> list[dict[str, Any]]:
    ours = train["dynamic"]
    rows = [
        _row(
            "training",
            "molecules/s per epoch",
            LABELS["dynamic"],
            LABELS["dmpnn"],
            ours["mol_per_s"],
            train["dmpnn"]["mol_per_s"],
            "throughput",
            cpu_ratio=_cpu_ratio(ours, train["dmpnn"], "mol_per_cpu_s"),
        )
    ]
    chemprop = train["chemprop"]
    measured = chemprop.get("status") == "measured"
    rows.append(
        _row(
            "training",
            "molecules/s per epoch",
            LABELS["dynamic"],
            LABELS["chemprop"],
            ours["mol_per_s"],
            chemprop["mol_per_s"] if measured else None,
            "throughput",
            status=chemprop["status"],
        )
    )
    bucketed = train.get("dynamic_bucketed")
    if bucketed:  # JSON from before length bucketing has none
        for peer in ("dynamic", "dmpnn"):
            rows.append(
                _row(
                    "training, length-bucketed batches",
                    "molecules/s per epoch",
                    LABELS["dynamic_bucketed"],
                    LABELS[peer],
                    bucketed["mol_per_s"],
                    train[peer]["mol_per_s"],
                    "throughput",
                    cpu_ratio=_cpu_ratio(bucketed, train[peer], "mol_per_cpu_s"),
                )
            )
    return rows


def _inference_rows(inference: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in (k for k in inference if k.startswith("batch_")):
        ours, peer = inference[key]["dynamic"], inference[key]["dmpnn"]
        what = f"inference, batch of {ours['batch_size']}"
        rows.append(
            _row(
                what,
                "molecules/s",
                LABELS["dynamic"],
                LABELS["dmpnn"],
                ours["mol_per_s"],
                peer["mol_per_s"],
                "throughput",
            )
        )
        for stat in ("median_ms", "p90_ms"):
            rows.append(
                _row(
                    what,
                    f"latency {stat.split('_')[0]} (ms)",
                    LABELS["dynamic"],
                    LABELS["dmpnn"],
                    ours[stat],
                    peer[stat],
                    "latency",
                    cpu_ratio=(
                        _cpu_ratio(ours, peer, "median_cpu_ms") if stat == "median_ms" else None
                    ),
                )
            )
    return rows


def _memory_rows(memory: dict[str, Any]) -> list[dict[str, Any]]:
    n = memory["n_molecules"]
    pairs = {
        "featurize": ("deepfuse", "deepchem", "featurizing"),
        "train": (
            "dynamic",
            "dmpnn",
            f"training ({memory['epochs']} epoch(s), featurization included)",
        ),
    }
    rows = []
    for task, (ours, peer, what) in pairs.items():
        rows.append(
            _row(
                f"peak memory, {what} {n:,} HIV molecules",
                "MiB (peak RSS)",
                LABELS[ours],
                LABELS[peer],
                memory[f"{task}_{ours}"]["peak_rss_mib"],
                memory[f"{task}_{peer}"]["peak_rss_mib"],
                "memory",
            )
        )
    return rows


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ratio_text(row: dict[str, Any]) -> str:
    ratio = row["ratio"]
    if ratio is None:
        return row["status"] if row["status"] != "measured" else "n/a"
    if row["ratio_kind"] == "memory":
        return f"{ratio:.2f}x the memory"
    return f"**{ratio:.2f}x** ({'faster' if ratio >= 1 else 'slower'})"


def _device_text(machine_info: dict[str, Any], devices: dict[str, str]) -> str:
    """Which device trained and ran the models (host RSS only in the memory rows)."""
    used = sorted({d for d in devices.values() if d.startswith("cuda")})
    if used:
        return (
            f", GPU {machine_info.get('gpu') or 'CUDA'}: training and inference ran on "
            f"{', '.join(used)} (featurization on CPU; the memory rows are host RSS, not GPU "
            "memory)"
        )
    return ", CUDA available (not used)" if machine_info.get("cuda") else ", no GPU"


def format_markdown(result: dict[str, Any], out_dir: str | None = None) -> str:
    """The table and the method notes (plus ``<out_dir>/profiles/SUMMARY.md`` when present)."""
    m = result["machine"]
    loads = result["load_average"]
    lines = [
        "# Speed and memory: deepfuse vs peers",
        "",
        f"One run on one machine: {m['cpu']}, {m['cpu_count']} CPU cores"
        + (f", {m['memory_gib']} GiB RAM" if "memory_gib" in m else "")
        + f", {m['platform']}, torch threads {m['torch_threads']}"
        + _device_text(m, result.get("training", {}).get("devices", {}))
        + ".",
        "Load average (1/5/15 min) before each section: "
        + "; ".join(f"{k} {'/'.join(f'{x:.2f}' for x in v)}" for k, v in loads.items() if v)
        + ". The machine is shared with other jobs: treat the figures as noisy.",
        "",
        "| measurement | unit | deepfuse | peer | deepfuse value | peer value | ratio |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['measurement']} | {row['unit']} | {row['deepfuse']} | {row['peer']}"
            f" | {_fmt(row['deepfuse_value'])} | {_fmt(row['peer_value'])} | "
            f"{_ratio_text(row)} |"
        )
    lines += ["", *_method_notes(result), ""]
    summary = os.path.join(out_dir or "", "profiles", "SUMMARY.md")
    if out_dir and os.path.exists(summary):
        with open(summary) as fh:
            lines += [fh.read().strip(), ""]
    return "\n".join(lines)


def _method_notes(result: dict[str, Any]) -> list[str]:
    s, train = result["settings"], result["training"]
    cpu = [
        f"{r['measurement']} {r['unit']} {r['cpu_ratio']:.2f}x"
        for r in result["rows"]
        if r.get("cpu_ratio")
    ]
    notes = [
        "Ratios: throughput deepfuse / peer, latency peer / deepfuse (both > 1 when deepfuse is "
        "faster); memory deepfuse / peer.",
        f"- Featurization: first {result['featurization']['n_molecules']:,} molecules of "
        "HIV.csv; DeepChem side CircularFingerprint(size=1024) then "
        "MolGraphConvFeaturizer(use_edges=True); one warm-up call, best of "
        f"{s['repeats']} interleaved repeats; n_jobs=2 includes starting the worker processes "
        "(both sides; DeepChem's pair in a fork pool, chunked like deepfuse's).",
        f"- Training: first {train['n_molecules']:,} HIV molecules accepted by both featurizers "
        f"(HIV_active, classification), batch {s['batch_size']}, learning rate "
        f"{s['learning_rate']}, featurized input (DynamicFusionModel: MultiModalFeaturizer; "
        "DMPNNModel: DMPNNFeaturizer; both with their libraries' default sizes); one warm-up "
        f"epoch excluded, best of {train['epochs_timed']} interleaved epochs, no checkpoints "
        "written. The length-bucketed DynamicFusionModel pools every "
        f"{BUCKET_POOL} shuffled batches, sorts them by SMILES token count and re-cuts them "
        "(less padding for the SMILES Transformer; an opt-in training setting, not the default "
        "of the accuracy tables).",
        "- Inference: `model.predict` on featurized datasets of 1 and of 256 molecules "
        "(featurization excluded), calls interleaved between the models; molecules/s = batch "
        "size / median latency.",
    ]
    if "status" not in result["memory"]:
        notes.append(
            f"- Memory: {result['memory']['method']}. " + _memory_details(result["memory"])
        )
    start, cores = result["load_average"].get("start"), result["machine"]["cpu_count"]
    if start and cores and start[0] >= cores:
        notes.append(
            f"- The 1-minute load average ({start[0]:.1f}) was at or above the "
            f"{cores} CPU cores: other jobs kept every core busy, so worker processes "
            "(n_jobs=2) could not run in parallel and wall times are inflated."
        )
    if cpu:
        notes.append(
            "- Same ratios by CPU time of this process (less disturbed by other jobs): "
            + "; ".join(cpu)
            + "."
        )
    chemprop = train["chemprop"]
    if chemprop.get("status") == "measured":
        notes.append(f"- chemprop: {chemprop['note']}.")
    return notes


def _memory_details(memory: dict[str, Any]) -> str:
    parts = []
    for task, side in MEMORY_TASKS:
        rec = memory[f"{task}_{side}"]
        extra = (
            f", fit {rec['fit_s']:.0f} s for {rec['n_trained']:,} molecules"
            if "fit_s" in rec
            else ""
        )
        parts.append(
            f"{task} {side}: peak {rec['peak_rss_mib']:,.0f} MiB (baseline "
            f"{_fmt(rec.get('baseline_rss_mib'))} MiB), {rec['seconds']:.0f} s{extra}"
        )
    return "; ".join(parts) + "."
