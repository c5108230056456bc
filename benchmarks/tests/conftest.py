"""Fixtures of the harness tests: the library's tiny data and settings, shared with its tests.

The harness is tested with the library (``make test``): the same one torch thread, the same seeds
per test, the same policy for the shared benchmark data (skipped locally, failing under CI when
missing) and the same tiny CSV files.
"""

from tests.cli.conftest import tiny_hiv_data_dir  # noqa: F401 (fixture)
from tests.conftest import _seed, pytest_configure  # noqa: F401 (fixture, hook)
