"""A pickle-free on-disk form of :class:`~deepfuse_plugin.modalities.MultiModalSample` rows.

One shard of rows is two files:

* ``<stem>.npz``, opened with ``np.load(allow_pickle=False)``: plain numeric arrays only. Per
  modality a presence mask ``(rows,)``; the present values either stacked (every value of the
  modality has one shape: vectors, embeddings) or, when their shapes differ (token ids, sets of
  vectors, sentence embeddings), one flat concatenation plus each value's shape. A graph
  (:class:`~deepfuse_plugin.modalities.GraphFeatures`) stores each of its three arrays that way.
  The labels ``y`` and weights ``w`` and each row's layout number are arrays of the same file.
* ``<stem>.json``: the ids, each row's missing reasons, the layouts (the order of a row's
  modality names and the fingerprints of the specs that made them) and, per modality, how its
  values are stored (dtype, number of dimensions).

Decoding gives back deep-equal samples: the same names in the same order, the same arrays (dtype
and shape), ``None`` for missing views with their reasons, the same fingerprints. A value that is
neither a numeric NumPy array nor a ``GraphFeatures`` (a string, a list, a tensor, an object
array) is refused with an error naming the modality, its kind and the row: storing it would need
pickle.

Examples
--------
>>> import numpy as np
>>> from deepfuse_plugin.modalities import MultiModalSample
>>> rows = [MultiModalSample({"fp": np.ones(3, np.uint8), "tokens": np.arange(4)}),
...         MultiModalSample({"fp": np.zeros(3, np.uint8), "tokens": np.arange(2)}),
...         MultiModalSample({"fp": np.zeros(3, np.uint8), "tokens": None},
...                          {"tokens": "too long"})]
>>> arrays, meta = encode_samples(rows)
>>> sorted(arrays)  # fp stacked (one shape), tokens ragged (flat data + shapes)
['layout', 'm0.data', 'm0.present', 'm1.data', 'm1.present', 'm1.shapes']
>>> back = decode_samples(arrays, meta)
>>> back[2].missing_reasons, back[2].values["tokens"], back[1].values["tokens"].tolist()
({'tokens': 'too long'}, None, [0, 1])
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.modalities import GraphFeatures, MultiModalSample

__all__ = ["CODEC_FORMAT", "decode_samples", "encode_samples", "read_shard", "write_shard_files"]

CODEC_FORMAT = "deepfuse-samples/1"
#: dtype kinds stored: bool, signed and unsigned integers, floats, complex numbers
_NUMERIC_KINDS = "biufc"
_GRAPH_FIELDS = tuple(f.name for f in dataclasses.fields(GraphFeatures))


# -- encoding --------------------------------------------------------------------------------------
def encode_samples(
    samples: Sequence[MultiModalSample], kinds: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON-ready description of ``samples`` (see the module docstring).

    Parameters
    ----------
    samples: sequence of MultiModalSample
    kinds: dict, optional
        Modality name -> kind (``"vector"``, ``"graph"``, ...), only to name the kind in errors.

    Raises
    ------
    InvalidInputError
        A row that is not a ``MultiModalSample``, a modality name that is not a string, or a value
        the format cannot store without pickle (named: modality, kind, row, type).
    """
    kinds = dict(kinds or {})
    layouts: list[dict[str, Any]] = []
    layout_numbers: dict[str, int] = {}
    row_layouts = np.zeros(len(samples), dtype=np.int32)
    reasons: dict[str, dict[str, str]] = {}
    names: dict[str, None] = {}  # every modality of the shard, in first-seen order
    for i, sample in enumerate(samples):
        _check_sample(sample, i)
        layout = {"names": list(sample.values), "fingerprints": dict(sample.fingerprints)}
        key = json.dumps(layout)
        if key not in layout_numbers:
            layout_numbers[key] = len(layouts)
            layouts.append(layout)
        row_layouts[i] = layout_numbers[key]
        if sample.missing_reasons:
            reasons[str(i)] = {str(k): str(v) for k, v in sample.missing_reasons.items()}
        names.update(dict.fromkeys(sample.values))
    arrays: dict[str, np.ndarray] = {"layout": row_layouts}
    modalities = []
    for j, name in enumerate(names):
        values = [s.values.get(name) for s in samples]
        present = np.array([v is not None for v in values], dtype=bool)
        arrays[f"m{j}.present"] = present
        kept = [v for v in values if v is not None]
        where = _Where(name, kinds.get(name), present)
        modalities.append({"name": name, **_encode_values(f"m{j}", kept, where, arrays)})
    meta = {
        "format": CODEC_FORMAT,
        "rows": len(samples),
        "layouts": layouts,
        "missing_reasons": reasons,
        "modalities": modalities,
    }
    return arrays, meta


@dataclasses.dataclass(frozen=True)
class _Where:
    """Which modality (and rows) a value belongs to, for error messages."""

    name: str
    kind: str | None
    present: np.ndarray

    def row(self, k: int) -> int:
        """Row of the ``k``-th present value."""
        return int(np.flatnonzero(self.present)[k])

    def refuse(self, k: int, problem: str) -> InvalidInputError:
        kind = f"kind {self.kind!r}" if self.kind else "kind unknown"
        return InvalidInputError(
            f"Modality {self.name!r} ({kind}), row {self.row(k)}: {problem}. The pickle-free "
            "shard format stores numeric NumPy arrays and GraphFeatures only: make the "
            "featurizer return one of those for this modality"
        )


def _check_sample(sample: Any, i: int) -> None:
    if type(sample) is not MultiModalSample:
        raise InvalidInputError(
            f"Row {i} is a {type(sample).__name__}, not a MultiModalSample: only featurized "
            "samples can be written to shards"
        )
    bad = [k for k in [*sample.values, *sample.missing_reasons] if not isinstance(k, str)]
    if bad:
        raise InvalidInputError(f"Row {i}: modality names must be strings, got {bad[:3]}")


def _encode_values(
    prefix: str, values: list[Any], where: _Where, arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Store the present ``values`` of one modality under ``prefix``; return how."""
    if not values:
        return {"value": "none"}
    for k, value in enumerate(values):
        if not _storable(value):
            raise where.refuse(k, f"the value is a {type(value).__name__}")
        if type(value) is not type(values[0]):
            raise where.refuse(
                k, f"a {type(value).__name__} where earlier rows hold {type(values[0]).__name__}"
            )
    if type(values[0]) is np.ndarray:
        return {"value": "array", **_encode_arrays(prefix, values, where, arrays)}
    fields = {}
    for field in _GRAPH_FIELDS:
        parts = [getattr(v, field) for v in values]
        for k, part in enumerate(parts):
            if type(part) is not np.ndarray:
                raise where.refuse(k, f"GraphFeatures.{field} is a {type(part).__name__}")
        fields[field] = _encode_arrays(f"{prefix}.{field}", parts, where, arrays)
    return {"value": "graph", "fields": fields}


def _storable(value: Any) -> bool:
    # exact types: a subclass (a masked array, a GraphFeatures with more fields) would come back
    # as its base class, not deep-equal
    return type(value) is np.ndarray or type(value) is GraphFeatures


def _encode_arrays(
    prefix: str, values: list[np.ndarray], where: _Where, arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Stacked when every value has one shape, else flat data plus shapes."""
    dtype, ndim = values[0].dtype, values[0].ndim
    for k, value in enumerate(values):
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise where.refuse(k, f"an array of dtype {value.dtype} (not numeric)")
        if value.dtype != dtype or value.ndim != ndim:
            raise where.refuse(
                k,
                f"an array of dtype {value.dtype} with {value.ndim} dimension(s) where the "
                f"first present row has {dtype} with {ndim}: one modality needs one dtype and "
                "number of dimensions",
            )
    shapes = np.array([v.shape for v in values], dtype=np.int64).reshape(len(values), ndim)
    if (shapes == shapes[0]).all():
        arrays[f"{prefix}.data"] = np.stack(values)
        return {"dtype": dtype.str, "ndim": ndim, "layout": "stacked"}
    arrays[f"{prefix}.data"] = np.concatenate([v.ravel() for v in values])
    arrays[f"{prefix}.shapes"] = shapes
    return {"dtype": dtype.str, "ndim": ndim, "layout": "ragged"}


# -- decoding --------------------------------------------------------------------------------------
def decode_samples(
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    rows: Sequence[int] | np.ndarray | None = None,
) -> list[MultiModalSample]:
    """The samples ``encode_samples`` stored (only those of ``rows``, in that order, if given).

    The arrays of the values are views into ``arrays`` (nothing is copied).
    """
    n = int(meta["rows"])
    wanted = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    columns = {
        m["name"]: _decode_modality(f"m{j}", m, arrays, wanted)
        for j, m in enumerate(meta["modalities"])
    }
    layouts = meta["layouts"]
    reasons = meta["missing_reasons"]
    row_layouts = arrays["layout"]
    out = []
    for k, row in enumerate(wanted.tolist()):
        layout = layouts[int(row_layouts[row])]
        out.append(
            MultiModalSample(
                {name: columns[name][k] for name in layout["names"]},
                dict(reasons.get(str(row), {})),
                dict(layout["fingerprints"]),
            )
        )
    return out


def _decode_modality(
    prefix: str, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], rows: np.ndarray
) -> list[Any]:
    """One modality's value for each of ``rows`` (``None`` where absent)."""
    present = arrays[f"{prefix}.present"]
    out: list[Any] = [None] * len(rows)
    if spec["value"] == "none":
        return out
    position = np.cumsum(present) - 1  # row -> index among the present values
    picked = [(k, int(position[row])) for k, row in enumerate(rows.tolist()) if present[row]]
    if spec["value"] == "array":
        values = _ArrayColumn(prefix, spec, arrays)
        for k, p in picked:
            out[k] = values[p]
        return out
    fields = {f: _ArrayColumn(f"{prefix}.{f}", spec["fields"][f], arrays) for f in _GRAPH_FIELDS}
    for k, p in picked:
        out[k] = GraphFeatures(**{f: column[p] for f, column in fields.items()})
    return out


class _ArrayColumn:
    """The ``p``-th present array of a stacked or ragged column."""

    def __init__(self, prefix: str, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        self.data = arrays[f"{prefix}.data"]
        if self.data.dtype != np.dtype(spec["dtype"]):
            raise InvalidInputError(
                f"{prefix}.data holds {self.data.dtype}, its description says {spec['dtype']}: "
                "the shard's two files do not belong together; featurize again"
            )
        self.shapes = None
        if spec["layout"] == "ragged":
            self.shapes = arrays[f"{prefix}.shapes"]
            sizes = np.prod(self.shapes, axis=1, dtype=np.int64)
            self.ends = np.cumsum(sizes)
            self.starts = self.ends - sizes

    def __getitem__(self, p: int) -> np.ndarray:
        if self.shapes is None:
            return self.data[p, ...]  # an array even for 0-d values (data[p] is a scalar)
        flat = self.data[self.starts[p] : self.ends[p]]
        return flat.reshape(tuple(self.shapes[p].tolist()))


# -- files -----------------------------------------------------------------------------------------
def write_shard_files(
    folder: str,
    stem: str,
    samples: Sequence[MultiModalSample],
    y: np.ndarray,
    w: np.ndarray,
    ids: Sequence[str],
    kinds: Mapping[str, str] | None = None,
) -> list[str]:
    """Write ``<stem>.npz`` and ``<stem>.json`` in ``folder``; return their names.

    Each file is written under a scratch name and renamed, so a reader never sees half a file.
    """
    if not len(samples) == len(y) == len(w) == len(ids):
        raise ValueError(
            f"{len(samples)} samples, {len(y)} labels, {len(w)} weights and {len(ids)} ids"
        )
    arrays, meta = encode_samples(samples, kinds)
    arrays["y"], arrays["w"] = np.asarray(y), np.asarray(w)
    meta["ids"] = [str(i) for i in ids]
    npz, sidecar = f"{stem}.npz", f"{stem}.json"
    scratch = os.path.join(folder, f"{npz}.tmp")
    with open(scratch, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    os.replace(scratch, os.path.join(folder, npz))
    scratch = os.path.join(folder, f"{sidecar}.tmp")
    with open(scratch, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    os.replace(scratch, os.path.join(folder, sidecar))
    return [npz, sidecar]


def read_arrays(folder: str, stem: str, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The arrays of ``<stem>.npz`` (only ``names`` if given), read without pickle."""
    with np.load(os.path.join(folder, f"{stem}.npz"), allow_pickle=False) as npz:
        return {name: npz[name] for name in (npz.files if names is None else names)}


def read_meta(folder: str, stem: str) -> dict[str, Any]:
    with open(os.path.join(folder, f"{stem}.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format") != CODEC_FORMAT:
        raise InvalidInputError(
            f"{os.path.join(folder, stem)}.json is not a deepfuse shard "
            f"(format {meta.get('format')!r}, expected {CODEC_FORMAT!r})"
        )
    return dict(meta)


def read_shard(
    folder: str, stem: str, rows: Sequence[int] | np.ndarray | None = None
) -> tuple[list[MultiModalSample], np.ndarray, np.ndarray, list[str]]:
    """``(samples, y, w, ids)`` of a shard (only ``rows``, in that order, if given)."""
    arrays, meta = read_arrays(folder, stem), read_meta(folder, stem)
    samples = decode_samples(arrays, meta, rows)
    if rows is None:
        return samples, arrays["y"], arrays["w"], list(meta["ids"])
    picked = np.asarray(rows, dtype=np.int64)
    ids = [meta["ids"][r] for r in picked.tolist()]
    return samples, arrays["y"][picked], arrays["w"][picked], ids
