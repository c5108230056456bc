"""The pickle-free shard codec (``deepfuse_plugin.data._codec``): every value kind deepfuse makes
comes back deep-equal (missing views and their reasons included), and what it cannot store without
pickle is refused, naming the modality, its kind and the row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepfuse_plugin.data import _codec
from deepfuse_plugin.errors import InvalidInputError
from deepfuse_plugin.modalities import GraphFeatures, MultiModalSample


def assert_same_sample(got: MultiModalSample, want: MultiModalSample) -> None:
    """Deep equality: names in order, values (type, dtype, shape, data), reasons, fingerprints."""
    assert type(got) is MultiModalSample
    assert list(got.values) == list(want.values)
    assert got.missing_reasons == want.missing_reasons
    assert list(got.missing_reasons) == list(want.missing_reasons)
    assert got.fingerprints == want.fingerprints
    for name, value in want.values.items():
        other = got.values[name]
        if value is None:
            assert other is None, name
            continue
        assert type(other) is type(value), name
        arrays = (
            [(getattr(value, f), getattr(other, f)) for f in _codec._GRAPH_FIELDS]
            if isinstance(value, GraphFeatures)
            else [(value, other)]
        )
        for a, b in arrays:
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name


def _graph(rng: np.random.Generator, n: int, node_dim: int, edge_dim: int) -> GraphFeatures:
    e = 2 * max(n - 1, 0)
    return GraphFeatures(
        rng.normal(size=(n, node_dim)).astype(np.float32),
        rng.integers(0, max(n, 1), size=(2, e)).astype(np.int64),
        rng.normal(size=(e, edge_dim)).astype(np.float32),
    )


def every_kind(n: int = 5, seed: int = 0) -> list[MultiModalSample]:
    """Rows holding a value of each kind deepfuse's featurizers make (with their dtypes), some
    missing with a reason; one row lacks a modality altogether and one has other fingerprints."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        values = {
            "ecfp": (rng.random(16) < 0.2).astype(np.uint8),  # vector (bits)
            "descriptors": rng.normal(size=7).astype(np.float32),  # vector
            "minimol": rng.normal(size=4).astype(np.float32),  # embedding
            "smiles": rng.integers(0, 30, size=3 + i).astype(np.int64),  # sequence
            "graph": _graph(rng, 2 + i, 5, 3),  # graph
            "crystal": _graph(rng, 1 + i, 4, 3),  # crystal_graph (MatGL format: an isolated atom)
            "text": rng.integers(0, 100, size=6 + 2 * i).astype(np.int32),  # text tokens
            "sentences": rng.normal(size=(1 + i, 8)).astype(np.float16),  # text, sentence level
            "chgnet_atoms": rng.normal(size=(2 + i, 6)).astype(np.float16),  # vector_set
            "flag": np.array(i % 2 == 0),  # a 0-d bool array
        }
        reasons = {}
        if i % 2:
            for name in ("graph", "sentences", "smiles"):
                values[name] = None
                reasons[name] = f"row {i}: RDKit could not kekulize ☹"
        rows.append(MultiModalSample(values, reasons, {k: f"fp-{k}" for k in values}))
    rows[2].values.pop("chgnet_atoms")  # a row without that modality at all
    rows[3].fingerprints["ecfp"] = "other settings"
    rows[4].missing_reasons["note"] = "a reason for a view it does not hold"
    return rows


def _round_trip(rows, rows_wanted=None):
    arrays, meta = _codec.encode_samples(rows)
    meta = json.loads(json.dumps(meta))  # what the sidecar file gives back
    return arrays, meta, _codec.decode_samples(arrays, meta, rows_wanted)


def test_every_kind_round_trips_exactly_with_missing_views_and_reasons():
    rows = every_kind()
    arrays, meta, back = _round_trip(rows)
    assert len(back) == len(rows)
    for got, want in zip(back, rows):
        assert_same_sample(got, want)
    assert all(a.dtype != object for a in arrays.values())
    layouts = {m["name"]: m.get("layout") for m in meta["modalities"]}
    assert layouts["ecfp"] == "stacked" and layouts["smiles"] == "ragged"


def test_a_subset_of_rows_decodes_alone_in_the_order_asked():
    rows = every_kind(6)
    _, _, back = _round_trip(rows, [5, 0, 3])
    for got, want in zip(back, [rows[5], rows[0], rows[3]]):
        assert_same_sample(got, want)


def test_a_modality_missing_in_every_row_and_an_empty_shard():
    rows = [
        MultiModalSample({"a": np.ones(2), "b": None}, {"b": "never computed"}) for _ in range(3)
    ]
    _, meta, back = _round_trip(rows)
    assert meta["modalities"][1]["value"] == "none"
    for got, want in zip(back, rows):
        assert_same_sample(got, want)
    assert _round_trip([])[2] == []


def test_real_featurizer_samples_round_trip(featurized):
    _, _, back = _round_trip(list(featurized))
    for got, want in zip(back, featurized):
        assert_same_sample(got, want)


def test_real_crystal_samples_round_trip_with_a_missing_graph(tmp_path):
    pytest.importorskip("pymatgen.core")
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from tests.unit.test_crystal_structures import disordered, nacl, silicon

    feat = CrystalMultiModalFeaturizer(["graph", "composition"], progress=False, cache_dir=tmp_path)
    rows = list(feat.featurize([nacl(), disordered(), silicon()]))
    assert rows[1].values["graph"] is None and rows[1].missing_reasons["graph"]
    kinds = {m.name: m.kind for m in feat.modalities}
    assert kinds["graph"] == "crystal_graph"
    arrays, meta = _codec.encode_samples(rows, kinds)
    for got, want in zip(_codec.decode_samples(arrays, json.loads(json.dumps(meta))), rows):
        assert_same_sample(got, want)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a description", "the value is a str"),
        ([1, 2, 3], "the value is a list"),
        (np.array(["a", "b"], dtype=object), "dtype object"),
        (np.array(["ab", "c"]), "dtype <U2"),
        (np.ma.masked_array([1.0, 2.0]), "the value is a MaskedArray"),
        (np.ones(2, np.float64), "float64 with 1 dimension"),  # other dtype than row 0's
    ],
)
def test_values_that_need_pickle_are_refused_naming_modality_kind_and_row(value, problem):
    rows = [
        MultiModalSample({"ecfp": np.ones(2, np.float32), "text": np.ones(2, np.float32)}),
        MultiModalSample({"ecfp": np.ones(2, np.float32), "text": None}),
        MultiModalSample({"ecfp": np.ones(2, np.float32), "text": value}),
    ]
    with pytest.raises(InvalidInputError, match=r"Modality 'text' \(kind 'text'\), row 2") as err:
        _codec.encode_samples(rows, {"text": "text"})
    assert problem in str(err.value)


def test_a_graph_with_a_non_array_field_or_a_graph_subclass_is_refused():
    good = _graph(np.random.default_rng(0), 3, 2, 1)
    bad = GraphFeatures(good.node_features, good.edge_index.tolist(), good.edge_features)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"row 1: GraphFeatures.edge_index is a list"):
        _codec.encode_samples(
            [MultiModalSample({"g": good}), MultiModalSample({"g": bad})], {"g": "graph"}
        )

    class Bigger(GraphFeatures):
        pass

    other = Bigger(good.node_features, good.edge_index, good.edge_features)
    with pytest.raises(InvalidInputError, match=r"'g' \(kind unknown\), row 0: the value is"):
        _codec.encode_samples([MultiModalSample({"g": other})])


def test_rows_that_are_not_samples_are_refused():
    with pytest.raises(InvalidInputError, match="Row 1 is a NoneType, not a MultiModalSample"):
        _codec.encode_samples([MultiModalSample({"a": np.ones(1)}), None])  # type: ignore[list-item]


def test_shard_files_are_read_without_pickle(tmp_path, monkeypatch):
    rows = every_kind()
    y, w = np.arange(5.0).reshape(-1, 1), np.ones((5, 1))
    names = _codec.write_shard_files(str(tmp_path), "shard-0", rows, y, w, list("abcde"))
    assert names == ["shard-0.npz", "shard-0.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no scratch file left
    _refuse_pickle(monkeypatch)
    samples, y_back, w_back, ids = _codec.read_shard(str(tmp_path), "shard-0", [4, 1])
    assert ids == ["e", "b"] and y_back.ravel().tolist() == [4.0, 1.0] and w_back.shape == (2, 1)
    assert_same_sample(samples[0], rows[4])


def _refuse_pickle(monkeypatch) -> None:
    """Any unpickling (pickle itself, or NumPy asked to allow it) fails the test."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was loaded with pickle")

    real_load = np.load

    def load(*args, **kwargs):
        if kwargs.get("allow_pickle"):
            raise AssertionError("np.load(allow_pickle=True)")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(np, "load", load)
