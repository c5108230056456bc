"""``deepfuse-bench featurize-disk`` (deepfuse_bench.scaling): a tiny run writes its record with
a memory and a throughput figure per (size, process count), and the CLI reaches it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepfuse_bench.cli import build_parser
from deepfuse_bench.scaling import format_markdown, ratios, run_scaling_bench, write_subset
from deepfuse_plugin.data.corpora import read_smiles_file
from tests.cli.conftest import CLI_SMILES


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.csv"
    path.write_text("SMILES\n" + "\n".join(CLI_SMILES) + "\n")
    return path


@pytest.mark.slow  # each run is a child of a forkserver that imports torch and DeepChem
def test_tiny_run_writes_json_and_markdown(corpus: Path, tmp_path: Path):
    lines: list[str] = []
    result = run_scaling_bench(
        sizes=[12, 30],
        jobs=[1, 2],
        out=str(tmp_path / "out"),
        shard_size=5,
        corpus=str(corpus),
        scratch=str(tmp_path),
        echo=lines.append,
    )
    record = json.loads((tmp_path / "out" / "featurize_disk.json").read_text())
    assert [(r["n"], r["n_jobs"]) for r in record["runs"]] == [(12, 1), (12, 2), (30, 1), (30, 2)]
    for run in record["runs"]:
        assert run["kept"] + run["failed"] == run["n"] and run["mol_per_s"] > 0
        assert run["shards"] == -(-run["kept"] // 5)
        assert run["peak_tree_pss_mib"] >= run["start_tree_pss_mib"] > 0
        assert run["disk_kib_per_molecule"] > 0
    assert [(r["n"], r["n_jobs"]) for r in record["ratios"]] == [(12, 2), (30, 2)]
    markdown = (tmp_path / "out" / "featurize_disk.md").read_text()
    assert "| 30 | 2 |" in markdown and "throughput vs 1 process" in markdown
    assert lines[-1] == markdown and result["runs"] == record["runs"]
    # the scratch folder (subsets, featurized data) is removed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("featurize-disk-")]


def test_subset_csv_holds_the_seeded_subset(corpus: Path, tmp_path: Path):
    path = write_subset(str(corpus), 10, 4, str(tmp_path / "s.csv"))
    assert read_smiles_file(path, column="smiles") == read_smiles_file(corpus, n=10, seed=4)


def test_ratios_are_against_one_process():
    runs = [
        {"n": 10, "n_jobs": 1, "mol_per_s": 100.0},
        {"n": 10, "n_jobs": 2, "mol_per_s": 180.0},
        {"n": 20, "n_jobs": 2, "mol_per_s": 50.0},  # no one-process run: no ratio
    ]
    assert ratios(runs) == [{"n": 10, "n_jobs": 2, "speedup": 1.8}]
    text = format_markdown(
        {
            "modalities": ["ecfp"],
            "shard_size": 8,
            "runs": [],
            "ratios": ratios(runs),
            "environment": {"cpu_count": 2, "nice": 0},
        }
    )
    assert "| 10 | 2 | 1.80x |" in text


def test_cli_parses_sizes_and_jobs():
    args = build_parser().parse_args(["featurize-disk", "--sizes", "10000,100000", "--jobs", "1,2"])
    assert (args.sizes, args.jobs, args.out) == ([10000, 100000], [1, 2], "benchmarks")
    assert build_parser().parse_args(["featurize-disk"]).sizes == [10_000, 100_000, 1_000_000]
