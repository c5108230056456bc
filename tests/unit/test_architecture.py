"""The house rules of the package layout, checked on the source with ``ast`` (nothing is imported).

- no import cycles among module-level imports;
- ``nn/`` is pure torch: it never imports DeepChem, nor the featurizers, data, models or workflows;
- ``feat/`` never imports ``nn/`` (the contracts both need live in ``deepfuse_plugin.modalities``);
- the library never imports the benchmark harness;
- no library module names the workspace's data folder (``"../shared"``);
- files stay readable in one sitting (at most :data:`MAX_LINES` lines).

Imports are classified by where they run: ``module`` (at import time), ``deferred`` (inside a
function: runs when the function is called) and ``typing`` (under ``if TYPE_CHECKING:``: never
runs). Layer rules count every kind; the cycle rule counts module-level imports, and a second test
reports the cycles that deferred and typing-only imports still close. Every assertion message lists
each violation as ``module:line -> imported module (kind)``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "deepfuse_plugin"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
MAX_LINES = 600
#: The benchmark harness: today's in-library ``bench`` package and its future stand-alone names.
HARNESS = ("deepfuse_bench", "benchmarks", f"{PACKAGE}.bench")
NN_FORBIDDEN = (
    "deepchem",
    f"{PACKAGE}.feat",
    f"{PACKAGE}.models",
    f"{PACKAGE}.workflows",
    f"{PACKAGE}.data",
)
WORKSPACE_PATH = "../shared"


@dataclass(frozen=True)
class Import:
    """One imported module: ``source:line -> target``, run ``kind`` (module, deferred, typing)."""

    source: str
    target: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target} ({self.kind})"


# -- reading the package -------------------------------------------------------------------------
def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every Python file of the package."""
    return {
        module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str | None, level: int, source: str, is_package: bool) -> str:
    """The absolute module of a (possibly relative) ``from ... import``."""
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(
    source: str,
    text: str,
    modules: set[str] | frozenset[str] = frozenset(),
    is_package: bool = False,
) -> list[Import]:
    """Every import in ``text`` (the code of module ``source``), resolved to module names.

    ``from a import b`` names the module ``a.b`` when that is one of ``modules``, else ``a``.
    """
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(source, alias.name, node.lineno, kind) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, source, is_package)
            targets = dict.fromkeys(
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            )
            found.extend(Import(source, t, node.lineno, kind) for t in targets)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, kind)
        else:
            inner = kind
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "typing" if kind == "typing" else "deferred"
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

    visit(ast.parse(text), "module")
    return found


@cache
def library_imports(root: Path = ROOT) -> tuple[Import, ...]:
    """Every import of every module of the package (parsed once per test session)."""
    files = library_files(root)
    modules = set(files)
    return tuple(
        imp
        for name, path in files.items()
        for imp in imports_of(
            name, path.read_text(encoding="utf-8"), modules, path.name == "__init__.py"
        )
    )


def within(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# -- cycles ----------------------------------------------------------------------------------------
def import_cycles(edges: list[Import]) -> list[list[Import]]:
    """The import cycles of ``edges``: for each strongly connected group of modules (two or more,
    or one importing itself), the edges inside it. Tarjan's algorithm, iterative."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    cycles = []
    for group in groups:
        inside = sorted(
            (e for e in edges if e.source in group and e.target in group),
            key=lambda e: (e.source, e.line),
        )
        if len(group) > 1 or inside:
            cycles.append(inside)
    return sorted(cycles, key=lambda c: c[0].source)


def _describe_cycles(cycles: list[list[Import]]) -> str:
    return "\n".join(
        f"cycle {i + 1}:\n  " + "\n  ".join(str(e) for e in cycle) for i, cycle in enumerate(cycles)
    )


def _intra(edges: tuple[Import, ...]) -> list[Import]:
    return [e for e in edges if within(e.target, PACKAGE)]


# -- the checker itself -----------------------------------------------------------------------
def test_imports_are_classified_and_resolved():
    text = (
        "from __future__ import annotations\n"
        "import deepchem as dc\n"
        "from typing import TYPE_CHECKING\n"
        "from . import encoders\n"
        "from .fusion import FusionOutput\n"
        "if TYPE_CHECKING:\n"
        "    from deepfuse_plugin.feat import text\n"
        "def build():\n"
        "    from ..models.base import X\n"
        "    return X\n"
    )
    modules = {"pkg.nn.encoders", "pkg.nn.fusion", "pkg.feat.text", "pkg.models.base"}
    found = {(i.target, i.kind, i.line) for i in imports_of("pkg.nn.crystal", text, modules)}
    assert ("deepchem", "module", 2) in found
    assert ("pkg.nn.encoders", "module", 4) in found
    assert ("pkg.nn.fusion", "module", 5) in found
    assert ("deepfuse_plugin.feat", "typing", 7) in found
    assert ("pkg.models.base", "deferred", 9) in found
    # a package's own relative imports resolve inside it
    package = imports_of(
        "pkg.nn.fusion",
        "from .output import FusionOutput\n",
        {"pkg.nn.fusion.output"},
        is_package=True,
    )
    assert [i.target for i in package] == ["pkg.nn.fusion.output"]


def test_cycle_finder_reports_every_edge_of_each_cycle():
    edges = [
        Import("a", "b", 1, "module"),
        Import("b", "c", 2, "module"),
        Import("c", "a", 3, "deferred"),
        Import("c", "d", 4, "module"),
        Import("e", "e", 5, "module"),
    ]
    cycles = import_cycles(edges)
    assert [[str(e) for e in c] for c in cycles] == [
        ["a:1 -> b (module)", "b:2 -> c (module)", "c:3 -> a (deferred)"],
        ["e:5 -> e (module)"],
    ]
    assert import_cycles(edges[:2] + edges[3:4]) == []


# -- the rules -------------------------------------------------------------------------------------
def test_package_is_found():
    files = library_files()
    assert f"{PACKAGE}.nn.network" in files and f"{PACKAGE}.modalities" in files, sorted(files)[:5]


def test_no_module_level_import_cycles():
    edges = [e for e in _intra(library_imports()) if e.kind == "module"]
    cycles = import_cycles(edges)
    assert not cycles, f"{len(cycles)} import cycle(s) at module level:\n" + _describe_cycles(
        cycles
    )


def test_no_import_cycles_through_deferred_or_typing_imports():
    """A function-level or ``TYPE_CHECKING`` import that closes a cycle is a cycle hidden, not
    gone: the two modules still depend on each other."""
    cycles = import_cycles(_intra(library_imports()))
    assert not cycles, (
        f"{len(cycles)} import cycle(s) counting deferred and typing-only "
        "imports:\n" + _describe_cycles(cycles)
    )


def test_nn_is_pure_torch():
    bad = [
        str(e)
        for e in library_imports()
        if within(e.source, f"{PACKAGE}.nn") and within(e.target, NN_FORBIDDEN)
    ]
    assert not bad, (
        "nn/ must not import DeepChem, feat, data, models or workflows (shared "
        "contracts live in deepfuse_plugin.modalities):\n  " + "\n  ".join(bad)
    )


def test_feat_does_not_import_nn():
    bad = [
        str(e)
        for e in library_imports()
        if within(e.source, f"{PACKAGE}.feat") and within(e.target, f"{PACKAGE}.nn")
    ]
    assert not bad, (
        "feat/ must not import nn/ (shared contracts live in "
        "deepfuse_plugin.modalities):\n  " + "\n  ".join(bad)
    )


#: Deprecation shims that forward to the harness when it is installed (deferred imports only).
HARNESS_SHIMS = (f"{PACKAGE}.bench", f"{PACKAGE}.cli")


def test_library_does_not_import_the_benchmark_harness():
    bad = [
        str(e)
        for e in library_imports()
        if within(e.target, HARNESS)
        and not (within(e.source, HARNESS_SHIMS) and e.kind == "deferred")
        and not within(e.source, f"{PACKAGE}.bench")
    ]
    assert not bad, "the library must not import the benchmark harness:\n  " + "\n  ".join(bad)


def test_no_workspace_path_in_the_library():
    bad = [
        f"{name}:{n}: {line.strip()}"
        for name, path in library_files().items()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if WORKSPACE_PATH in line
    ]
    assert not bad, (
        f"library modules name the workspace path {WORKSPACE_PATH!r} (data folders "
        "are arguments):\n  " + "\n  ".join(bad)
    )


def test_files_stay_readable():
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in library_files().items()
    }
    long = [
        f"{name}: {n} lines"
        for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])
        if n > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(long)


def test_moved_names_still_import_from_their_old_homes():
    """Layout moves keep the old import paths working (no behaviour change for users)."""
    from deepfuse_plugin import modalities
    from deepfuse_plugin.nn import cgcnn, crystal, fusion, matgl_backbone
    from deepfuse_plugin.nn.fusion import (
        cross_attention,
        dynamic,
        early,
        late,
        masking,
        moe,
        output,
        projection,
    )

    homes = {
        "FusionOutput": output,
        "masked_softmax": masking,
        "sample_modality_drop": masking,
        "curriculum_rate": masking,
        "masked_mean": masking,
        "masked_concat": masking,
        "present_pooled": masking,
        "presence_weights": masking,
        "cv_squared": moe,
        "DynamicFusion": dynamic,
        "ProjectionFusion": projection,
        "EarlyFusion": early,
        "LateFusion": late,
        "CrossAttentionFusion": cross_attention,
        "GatedMoEFusion": moe,
    }
    for name, home in homes.items():
        assert getattr(fusion, name) is getattr(home, name), name
        assert name in fusion.__all__, name
    for name in ("CGCNNEncoder", "CGCNNConv", "SafeBatchNorm1d"):
        assert getattr(crystal, name) is getattr(cgcnn, name), name
    for name in ("MATGL_FORMAT", "default_element_types"):
        assert getattr(matgl_backbone, name) is getattr(modalities, name), name


#: Layers of the training stack, bottom to top: a module never imports one above its own layer.
TRAINING_LAYERS = (
    f"{PACKAGE}.train",
    f"{PACKAGE}.run_folder",
    f"{PACKAGE}.prediction",
    f"{PACKAGE}.workflows",
)


def test_training_layers_only_import_downwards():
    """``train/`` (metrics, loop, resume) is below the run-folder code, which is below
    ``prediction``, which is below ``workflows``; nothing in them reaches up (no hidden cycles)."""

    def layer(module: str) -> int | None:
        return next((i for i, p in enumerate(TRAINING_LAYERS) if within(module, p)), None)

    bad = [
        str(e)
        for e in _intra(library_imports())
        if layer(e.source) is not None
        and layer(e.target) is not None
        and layer(e.target) > layer(e.source)
    ]
    assert not bad, "training modules import a layer above their own:\n  " + "\n  ".join(bad)


def test_the_library_never_imports_its_deprecated_aliases():
    """``deepfuse_plugin.resume`` is a shim for users' old imports; the library itself must not
    import it (every import of the library would warn)."""
    bad = [str(e) for e in _intra(library_imports()) if e.target == f"{PACKAGE}.resume"]
    assert not bad, "import deepfuse_plugin.train.resume instead:\n  " + "\n  ".join(bad)


#: Every public name ``deepfuse_plugin.workflows`` had before training moved to ``train/``.
WORKFLOWS_NAMES = (
    "BINARY_SIGNATURES",
    "BestCheckpointCallback",
    "CORRUPT_OUTPUT_FRACTION",
    "CorruptCheckpointError",
    "FEATURIZER_KEYS",
    "InvalidSettingError",
    "MAX_ABS_LABEL",
    "METRICS_FILE",
    "MISSING_LABELS",
    "MODELS",
    "MODES",
    "RUN_FILE",
    "RUN_FORMAT",
    "RunFolderError",
    "SPLITS",
    "STD_SCALES_FILE",
    "TrainingResult",
    "WorkflowError",
    "calibrate_run",
    "check_training_settings",
    "classification_metrics",
    "denormalize",
    "evaluate",
    "fit_normalizer",
    "fresh_model_dir",
    "labels_and_weights",
    "load_run",
    "make_dataset",
    "normalizer_to_dict",
    "parse_labels",
    "predict_from_csv",
    "predict_original_units",
    "predict_with_std",
    "rdkit_log_disabled",
    "read_csv_checked",
    "register_model",
    "regression_metrics",
    "resolve_model_class",
    "selection_score",
    "set_seed",
    "smiles_problems",
    "split_indices",
    "train_from_csv",
    "train_with_validation",
    "valid_smiles_mask",
    "write_json",
)


def test_moved_training_names_still_import_from_workflows():
    import warnings

    from deepfuse_plugin import train, workflows
    from deepfuse_plugin.train import resume

    missing = [
        n for n in WORKFLOWS_NAMES if n not in workflows.__all__ or not hasattr(workflows, n)
    ]
    assert not missing, f"workflows lost {missing}"
    for name in set(train.__all__) & set(WORKFLOWS_NAMES):
        assert getattr(workflows, name) is getattr(train, name), name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import importlib

        import deepfuse_plugin.resume as shim

        importlib.reload(shim)
    assert any(
        issubclass(w.category, DeprecationWarning) and "train.resume" in str(w.message)
        for w in caught
    )
    for name in (
        "read_state",
        "save_resume_point",
        "ResumeState",
        "ResumeMismatchError",
        "STATE_FILE",
        "SLOTS",
        "clear",
        "training_plan",
        "restore_resume_point",
    ):
        assert getattr(shim, name) is getattr(resume, name), name
