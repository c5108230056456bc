"""Run records: the JSON fields every benchmarked model gets, whichever library trained it.

Examples
--------
>>> from deepfuse_bench.records import fmt
>>> fmt(0.12345), fmt(None), fmt(float("nan"))
('0.123', 'nan', 'nan')
"""

from __future__ import annotations

import logging
import math
from typing import Any

from deepfuse_bench.datasets import PreparedDataset, primary_metric
from deepfuse_bench.environment import PeakRSS
from deepfuse_bench.missing_views import summary_text as missing_views_text
from deepfuse_bench.models import model_features, model_kind, model_label

logger = logging.getLogger(__name__)


def run_header(name: str, data: PreparedDataset, seed: int) -> dict[str, Any]:
    """The identifying fields of a run record."""
    import torch

    return {
        "dataset": data.name,
        "split": data.info["split"],
        "split_seed": data.info["split_seed"],
        "seed": seed,
        "model": name,
        "label": model_label(name),
        "kind": model_kind(name),
        "features": model_features(name),
        "metric": primary_metric(data.mode)[0],
        "torch_threads": torch.get_num_threads(),
    }


def finish_record(
    record: dict[str, Any],
    valid_m: dict[str, Any],
    test_m: dict[str, Any],
    fit_s: float | None,
    wall_s: float | None,
    peak_mib: float | None,
    delta_mib: float | None,
    memory_method: str | None,
) -> dict[str, Any]:
    """Add the metrics, times and memory to ``record`` (the same fields for every model)."""
    metric = record["metric"]
    if memory_method is None:
        memory_method = "unavailable (psutil not installed)" if peak_mib is None else PeakRSS.method
    record.update(
        valid=valid_m,
        test=test_m,
        valid_metric=valid_m.get(metric),
        test_metric=test_m.get(metric),
        train_time_s=fit_s,
        wall_time_s=wall_s,
        peak_rss_mib=peak_mib,
        peak_rss_delta_mib=delta_mib,
        memory_method=memory_method,
    )
    return record


def skipped_record(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """A run that did not happen: null metrics, times and memory, and ``skipped`` = why."""
    logger.warning(
        "%s %s seed %s skipped: %s", record["dataset"], record["model"], record["seed"], reason
    )
    finish_record(record, {}, {}, None, None, None, None, "not measured (skipped)")
    record["skipped"] = reason
    return record


def run_key(run: dict[str, Any]) -> tuple:
    """What identifies a run: dataset, split, split seed, seed, model."""
    return (run["dataset"], run["split"], run.get("split_seed"), run["seed"], run["model"])


def run_summary(record: dict[str, Any]) -> str:
    """One line about a finished (or skipped) run, for the progress log."""
    if record.get("skipped"):
        return f"skipped ({record['skipped'].splitlines()[0]})"
    return (
        f"valid {record['metric']} {fmt(record['valid_metric'])}, test "
        f"{fmt(record['test_metric'])}, best epoch {record['best_epoch']}, "
        f"{record['train_time_s']:.1f} s, peak RSS +{fmt(record['peak_rss_delta_mib'], 0)} "
        "MiB" + missing_views_text(record)
    )


def fmt(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``"nan"`` for None, NaN and non-numbers."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "nan"
    return f"{value:.{digits}f}"
