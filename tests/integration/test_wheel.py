"""The package works from its wheel: everything it loads at run time is package data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-2000:]}")
    (path,) = out.glob("deepfuse_plugin-*.whl")
    return path


def test_the_wheel_ships_every_pretrained_checkpoint_intact(wheel: Path):
    shipped = sorted(
        p.parent.name for p in (REPO / "deepfuse_plugin" / "pretrained_models").glob("*/model.json")
    )
    assert shipped, "no shipped checkpoint found in the source tree"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in shipped:
            folder = f"deepfuse_plugin/pretrained_models/{name}/"
            for part in ("encoders.safetensors", "model.json", "README.md", "loss_curve.png"):
                assert folder + part in names, f"{folder + part} is missing from {wheel.name}"
            config = json.loads(archive.read(folder + "model.json"))
            weights = archive.read(folder + "encoders.safetensors")
            assert hashlib.sha256(weights).hexdigest() == config["weights_sha256"]


def test_the_wheel_holds_the_library_and_not_the_harness(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "deepfuse_plugin/feat/tokenizers.py" in names
    assert not any(n.startswith(("deepfuse_bench/", "benchmarks/", "tests/")) for n in names)
