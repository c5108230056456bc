"""Fuzzing ``MultiModalFeaturizer.featurize`` with hostile strings (issue 21, item 6): it never
raises, gives one entry per input, a reason for every refused input, and only finite values."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.fuzz.invariants import check_featurized
from tests.fuzz.ledger import record
from tests.fuzz.strategies import smiles_inputs, smiles_like

ALL_MODALITIES = ["ecfp", "graph", "smiles", "selfies", "descriptors"]
#: seconds per input (a 200-atom molecule's descriptors take ~2 s on a loaded 2-core machine)
BUDGET_PER_INPUT_S = 10.0


@functools.cache
def featurizer(n_jobs: int = 1):
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    return MultiModalFeaturizer(ALL_MODALITIES, progress=False, n_jobs=n_jobs)


@settings(max_examples=examples(1.5))
@given(st.lists(smiles_inputs, min_size=1, max_size=6))
def test_featurize_never_raises_and_accounts_for_every_input(points):
    feat = featurizer()
    with record(
        "smiles", points, n_inputs=len(points), budget_s=BUDGET_PER_INPUT_S * len(points)
    ) as outcome:
        out = feat.featurize(points)
        outcome["refused"] = check_featurized(out, points, feat.last_failures) > 0


@settings(max_examples=examples(0.01), deadline=None)
@given(st.lists(smiles_like, min_size=64, max_size=80))
def test_parallel_featurization_matches_serial(points):
    """Through two worker processes (featurize goes parallel from 64 inputs): the same contract,
    and the same rows fail as in one process."""
    parallel = featurizer(n_jobs=2)
    with record(
        "smiles_parallel", points, n_inputs=len(points), budget_s=BUDGET_PER_INPUT_S * len(points)
    ) as outcome:
        out = parallel.featurize(points)
        refused = check_featurized(out, points, parallel.last_failures)
        serial = featurizer()
        serial.featurize(points)
        assert set(parallel.last_failures) == set(serial.last_failures), (
            f"parallel failures {parallel.last_failures} != serial {serial.last_failures}"
        )
        outcome["refused"] = refused > 0
