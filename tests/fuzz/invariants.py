"""Checks shared by the fuzz tests: one entry per input, a reason for each failure, every value
present finite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.modalities import GraphFeatures, MultiModalSample
from tests.fuzz.ledger import SilentResult, Violation, shown


def check_featurized(out: Any, points: Sequence[Any], failures: dict[int, str]) -> int:
    """The featurizer contract of issue 21; returns the number of refused inputs."""
    if not isinstance(out, np.ndarray) or len(out) != len(points):
        raise Violation(
            f"{len(points)} inputs gave {type(out).__name__} of length "
            f"{len(out) if hasattr(out, '__len__') else '?'}"
        )
    failed = {i for i, x in enumerate(out) if not isinstance(x, MultiModalSample)}
    if failed != set(failures):
        raise Violation(f"failed rows {sorted(failed)} but last_failures has {sorted(failures)}")
    for i in failed:
        if not (isinstance(out[i], np.ndarray) and out[i].size == 0):
            raise Violation(
                f"input {i} ({shown(points[i])}) gave {type(out[i]).__name__}, "
                "neither a sample nor an empty array"
            )
        if not (isinstance(failures[i], str) and failures[i].strip()):
            raise Violation(f"input {i} ({shown(points[i])}) failed without a reason")
    for i, sample in enumerate(out):
        if isinstance(sample, MultiModalSample):
            check_sample(sample, points[i])
    return len(failed)


def check_sample(sample: MultiModalSample, point: Any) -> None:
    for name, value in sample.values.items():
        if value is None:
            if not str(sample.missing_reasons.get(name, "")).strip():
                raise Violation(f"modality {name!r} missing without a reason for {shown(point)}")
            continue
        for label, array in _arrays(value):
            array = np.asarray(array)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise SilentResult(
                    f"modality {name!r} ({label}) has non-finite values with "
                    f"status ok for {shown(point)}"
                )
        if isinstance(value, GraphFeatures):
            _check_graph(name, value, point)


def _arrays(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, GraphFeatures):
        return [("node_features", value.node_features), ("edge_features", value.edge_features)]
    return [("value", value)]


def _check_graph(name: str, graph: GraphFeatures, point: Any) -> None:
    n, edges = graph.num_nodes, np.asarray(graph.edge_index)
    if edges.ndim != 2 or edges.shape[0] != 2 or edges.shape[1] != len(graph.edge_features):
        raise Violation(
            f"graph {name!r}: edge_index {edges.shape} does not match "
            f"{len(graph.edge_features)} edge features for {shown(point)}"
        )
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise Violation(
            f"graph {name!r}: edge_index points outside its {n} nodes for {shown(point)}"
        )
