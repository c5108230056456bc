"""``deepfuse bench`` and ``deepfuse_plugin.bench`` after the harness moved to ``deepfuse_bench``:
forwarded with a deprecation note when the harness is installed, a clear exit/ImportError when not.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from deepfuse_plugin.cli import main


def test_bench_command_forwards_to_the_harness(capsys):
    pytest.importorskip("deepfuse_bench")
    assert main(["bench", "featurize", "--help"]) == 0
    captured = capsys.readouterr()
    assert "usage: deepfuse-bench featurize" in captured.out and "--data-dir" in captured.out
    assert "deprecated, use `deepfuse-bench" in captured.err


def test_bench_command_forwards_global_options(monkeypatch):
    pytest.importorskip("deepfuse_bench")
    import deepfuse_bench.cli

    seen = []
    monkeypatch.setattr(deepfuse_bench.cli, "main", lambda argv: seen.append(argv) or 0)
    assert main(["--threads", "2", "--no-progress", "bench", "merge", "a", "--out", "b"]) == 0
    assert seen == [["--threads", "2", "--no-progress", "merge", "a", "--out", "b"]]


def test_bench_command_without_the_harness_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepfuse_bench.cli", None)  # import fails
    assert main(["bench", "featurize", "--data-dir", "x"]) == 2
    assert "pip install -e benchmarks" in capsys.readouterr().err


def test_old_harness_imports_still_resolve_with_a_warning(monkeypatch):
    pytest.importorskip("deepfuse_bench")
    for name in [m for m in sys.modules if m.startswith("deepfuse_plugin.bench")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.warns(FutureWarning, match="deepfuse_bench"):
        old = importlib.import_module("deepfuse_plugin.bench.moleculenet")
    from deepfuse_bench import datasets, merge, moleculenet

    assert old.run_moleculenet_bench is moleculenet.run_moleculenet_bench
    assert old.align is datasets.align and old.merge_results is merge.merge_results
    from deepfuse_plugin.bench.demo import run_demo
    from deepfuse_plugin.demo import run_demo as moved

    assert run_demo is moved
    with pytest.raises(AttributeError, match="goal_check"):
        old.goal_check  # noqa: B018 (removed, not moved)


def test_old_harness_import_without_the_harness_is_an_import_error(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("deepfuse_plugin.bench")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepfuse_bench" else _find(name, *a),
    )
    with pytest.raises(ImportError, match="pip install -e benchmarks"):
        importlib.import_module("deepfuse_plugin.bench")


_find = importlib.util.find_spec
