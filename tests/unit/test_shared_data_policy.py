"""Tests that need ../shared/data must FAIL (not skip) when it is missing under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


@pytest.fixture
def probe_project(tmp_path):
    """A throw-away test project: this suite's conftest and one test needing the shared data."""
    (tmp_path / "conftest.py").write_text(
        f"exec(compile(open({str(CONFTEST)!r}).read(), {str(CONFTEST)!r}, 'exec'))\n"
    )
    (tmp_path / "test_needs_data.py").write_text(
        "def test_needs_data(moleculenet_dir):\n"
        "    assert (moleculenet_dir / 'BBBP.csv').exists()\n"
    )
    return tmp_path


def run_probe(project, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "DEEPFUSE_DATA_DIR")}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_missing_data_fails_under_ci_and_skips_otherwise(probe_project, tmp_path):
    missing = str(tmp_path / "no_such_dir")
    rc, out = run_probe(probe_project, CI="true", DEEPFUSE_DATA_DIR=missing)
    assert rc != 0, out
    assert "shared benchmark data not found" in out and "1 error" in out
    rc, out = run_probe(probe_project, DEEPFUSE_DATA_DIR=missing)
    assert rc == 0, out
    assert "1 skipped" in out and "shared benchmark data not found" in out


def test_data_dir_override_is_used(probe_project, tmp_path):
    data = tmp_path / "data" / "moleculenet"
    data.mkdir(parents=True)
    (data / "BBBP.csv").write_text("smiles,p_np\nCCO,1\n")
    rc, out = run_probe(probe_project, CI="true", DEEPFUSE_DATA_DIR=str(tmp_path / "data"))
    assert rc == 0 and "1 passed" in out, out
