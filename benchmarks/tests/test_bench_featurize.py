"""The featurization benchmark function on a tiny HIV.csv (the real run is `make bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepfuse_bench.featurize import format_markdown, run_featurize_bench


def test_featurize_bench_tiny(tiny_hiv_data_dir: Path, tmp_path: Path):
    printed: list[str] = []
    result = run_featurize_bench(
        data_dir=str(tiny_hiv_data_dir),
        n=70,
        repeats=1,
        out_dir=str(tmp_path / "bench"),
        echo=printed.append,
    )
    assert result["n_molecules"] == 70
    for side in ("deepfuse", "deepchem", "deepfuse_n_jobs_2"):
        assert result["results"][side]["mol_per_s"] > 0
    assert result["results"]["deepfuse"]["tracemalloc_peak_mib"] > 0
    assert result["speedup"] == pytest.approx(
        result["results"]["deepchem"]["best_s"] / result["results"]["deepfuse"]["best_s"]
    )
    saved = json.loads((tmp_path / "bench" / "featurize.json").read_text())
    assert saved["results"]["deepfuse"]["best_s"] == pytest.approx(
        result["results"]["deepfuse"]["best_s"]
    )
    markdown = (tmp_path / "bench" / "featurize.md").read_text()
    assert "molecules/s" in markdown and "Speedup" in markdown
    assert printed == [format_markdown(result)]


def test_featurize_bench_missing_data(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="HIV.csv not found"):
        run_featurize_bench(data_dir=str(tmp_path), n=10, out_dir=None)
