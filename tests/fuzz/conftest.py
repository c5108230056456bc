"""Hypothesis profiles of the fuzz suite (issue 21, item 6).

``HYPOTHESIS_PROFILE`` picks one (default ``ci``):

- ``ci``: a few dozen inputs per target, so ``tests/fuzz`` stays around a minute on 2 CPU cores;
- ``fuzz``: thousands of inputs (``make fuzz`` / ``tests/fuzz/run_fuzz.py``, 10-30 minutes);
- ``dev``: a handful, for editing the tests.

Each test multiplies its profile's ``max_examples`` by its own cost factor (:func:`examples`):
featurizing a string is cheap, a train-and-predict run is not. Deadlines are off in the profiles
(a loaded shared machine makes hypothesis' per-example deadline flaky); every target checks its
own time budget instead and counts an input over it as a hang (:mod:`tests.fuzz.ledger`).
No example database is written (nothing lands in the checkout); a failure prints its input.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("dev", max_examples=8, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(factor: float, minimum: int = 1) -> int:
    """``max_examples`` for a test that costs ``1 / factor`` of a cheap one."""
    return max(minimum, int(settings.default.max_examples * factor))
