"""Fuzzing ``CrystalMultiModalFeaturizer(["graph", "composition"])`` with hostile structures
(issue 21, item 6): degenerate/huge/tiny/NaN lattices, NaN or 1e9 coordinates, occupancies over 1
or partial, 0-20 sites. It never raises, gives one entry per input, a reason for every refused
input, only finite values, within a time budget per structure.

Text modalities are left out (a transformer per example would make the suite slow); the
describer's own input check is the same ``structure_problem`` that guards the graph.
"""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.fuzz.invariants import check_featurized
from tests.fuzz.ledger import record
from tests.fuzz.strategies import structure_dicts

#: seconds per structure (20 sites, 8 A neighbour search, on a loaded 2-core machine)
BUDGET_PER_STRUCTURE_S = 10.0


@functools.cache
def featurizer():
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

    return CrystalMultiModalFeaturizer(["graph", "composition"], progress=False, cache_dir=False)


def _as_input(data: dict, form: str):
    """The same structure as a dict, a ``Structure`` or an ``IStructure`` (when pymatgen can
    build one from it: construction errors are the featurizer's to report for dicts)."""
    if form == "dict":
        return data
    from pymatgen.core import IStructure, Structure

    try:
        return (Structure if form == "Structure" else IStructure).from_dict(data)
    except Exception:
        return data


@settings(max_examples=examples(1.0))
@given(
    st.lists(structure_dicts(), min_size=1, max_size=3),
    st.sampled_from(["dict", "Structure", "IStructure"]),
)
def test_crystal_featurize_never_raises_and_accounts_for_every_input(structures, form):
    points = [_as_input(s, form) for s in structures]
    feat = featurizer()
    with record(
        "crystal", structures, n_inputs=len(points), budget_s=BUDGET_PER_STRUCTURE_S * len(points)
    ) as outcome:
        out = feat.featurize(points)
        outcome["refused"] = check_featurized(out, points, feat.last_failures) > 0
