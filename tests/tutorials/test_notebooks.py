"""Execute every notebook in ``tutorials/`` end to end, with small settings.

Each notebook runs in a fresh Jupyter kernel started from *this* interpreter (a kernelspec written
into a temporary folder points at ``sys.executable``, so the test never picks up some other
``python3`` kernel registered on the machine). The notebooks read their settings from environment
variables: ``DEEPFUSE_TUTORIAL_SMALL=1`` subsamples every split, ``DEEPFUSE_TUTORIAL_EPOCHS=2``
shortens training, ``DEEPFUSE_TUTORIAL_RESULTS`` names a JSON file the notebook writes its results
to. The notebooks need ``../shared/data`` (moleculenet/, materials/): without it the tests skip
locally and fail under ``CI=true`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path

import pytest


def _require(module: str):
    """Import ``module`` (from the ``test`` extra); skip without it locally, fail under CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"{module} is needed to execute the tutorials (pip install -e '.[test]'): {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


nbformat = _require("nbformat")
nbclient = _require("nbclient")
_require("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the checks above)
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

TUTORIALS_DIR = Path(__file__).resolve().parents[2] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS_DIR.glob("*.ipynb"))
KERNEL_NAME = "deepfuse-tests"
CELL_TIMEOUT_S = 300
SMALL_SETTINGS = {
    "DEEPFUSE_TUTORIAL_SMALL": "1",
    "DEEPFUSE_TUTORIAL_EPOCHS": "2",
    "DEEPFUSE_TUTORIAL_PRETRAIN_EPOCHS": "1",
    "DEEPFUSE_TUTORIAL_THREADS": "1",
}


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS_DIR}"


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """Kernel managers for a kernelspec that runs ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels_dir = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels_dir / KERNEL_NAME, overrides={"display_name": "deepfuse tests"})
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    argv = spec_manager.get_kernel_spec(KERNEL_NAME).argv
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve(), argv

    def make() -> AsyncKernelManager:
        return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=spec_manager)

    return make


def run_notebook(path: Path, kernel_manager: AsyncKernelManager, env: dict[str, str]):
    """Run ``path`` in its own folder; raises ``CellExecutionError`` at the first failing cell."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=kernel_manager,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # cleanup_kc: shut the kernel down afterwards (nbclient leaves a kernel it was handed running:
    # four idle kernels, ~0.6 GiB each, outlived their tests)
    client.execute(env=env, cleanup_kc=True)
    return nb


def outputs_of_type(nb, mime: str) -> int:
    return sum(
        mime in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def check_dynamic_fusion_results(results: dict) -> None:
    """What ``01_dynamic_fusion_with_deepchem.ipynb`` must have computed."""
    assert results["settings"]["small"] is True and results["settings"]["epochs"] == 2
    bbbp, esol = results["bbbp"], results["esol"]
    assert bbbp["n_train"] == 200 and bbbp["n_test"] == 100 and esol["n_test"] == 100
    scenarios = {
        "all three",
        "no graph",
        "no smiles",
        "no ecfp",
        "ecfp only",
        "graph only",
        "smiles only",
    }
    for key in ("missing_modality_test_roc_auc", "missing_modality_valid_roc_auc"):
        assert set(bbbp[key]) == scenarios
    for key in ("missing_modality_test_rmse", "missing_modality_valid_rmse"):
        assert set(esol[key]) == scenarios
    for value in [
        *bbbp["roc_auc"].values(),
        bbbp["ecfp_only_test_roc_auc"],
        *bbbp["missing_modality_test_roc_auc"].values(),
        *bbbp["missing_modality_valid_roc_auc"].values(),
    ]:
        assert 0.0 <= value <= 1.0
    for value in [
        esol["test_rmse"],
        esol["pretrained_test_rmse"],
        esol["ecfp_only_test_rmse"],
        *esol["missing_modality_test_rmse"].values(),
        *esol["missing_modality_valid_rmse"].values(),
    ]:
        assert math.isfinite(value) and value > 0
    for weights in (bbbp["mean_modality_weights"], esol["mean_modality_weights"]):
        assert set(weights) == {"ecfp", "graph", "smiles"}
        assert all(0.0 < w < 1.0 for w in weights.values())
    for entry in bbbp["reconstruction_cosine"].values():
        assert all(-1.0 - 1e-5 <= v <= 1.0 + 1e-5 for v in entry.values())


def check_fusion_strategy_results(results: dict) -> None:
    """What ``02_choosing_a_fusion_strategy.ipynb`` must have computed."""
    assert results["settings"]["small"] is True and results["settings"]["epochs"] == 2
    assert (results["n_train"], results["n_valid"], results["n_test"]) == (200, 100, 100)
    fusion = {
        "early",
        "early + modality dropout",
        "cross-attention",
        "late (stacking)",
        "MoE",
        "dynamic",
    }
    assert set(results["models"]) == fusion | {"ecfp only", "graph only", "smiles only"}
    for entry in results["models"].values():
        assert math.isfinite(entry["test_rmse"]) and entry["test_rmse"] > 0
        assert 1 <= entry["best_epoch"] <= 2 and entry["n_parameters"] > 0
    scenarios = {
        "all three",
        "no graph",
        "no smiles",
        "no ecfp",
        "ecfp only",
        "graph only",
        "smiles only",
        "random 10%",
        "random 25%",
        "random 50%",
    }
    assert set(results["missing_modality_test_rmse"]) == fusion
    for table in results["missing_modality_test_rmse"].values():
        assert set(table) == scenarios
        assert all(math.isfinite(v) and v > 0 for v in table.values())
    # early fusion has no modality weights (NoModalityWeightsError); the others sum to 1
    assert set(results["mean_modality_weights"]) == fusion - {"early", "early + modality dropout"}
    for weights in results["mean_modality_weights"].values():
        assert set(weights) == {"ecfp", "graph", "smiles"}
        assert all(0.0 <= w <= 1.0 for w in weights.values())
        assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-4)
    assert math.isclose(sum(results["moe_expert_usage"].values()), 1.0, abs_tol=1e-4)
    n_atoms = results["attribution"]["n_atoms"]
    assert n_atoms > 0 and results["cross_attention_map_shape"][0] == n_atoms
    assert math.isfinite(results["attribution"]["delta"])
    if results["attribution"]["model"] != "MoE":  # top-k routing may switch along the IG path
        assert abs(results["attribution"]["delta"]) < 0.05
    evidential = results["evidential"]  # None when this deepfuse has no evidential option
    if evidential is not None:
        assert math.isfinite(evidential["test_rmse"])
        assert 0.0 <= evidential["within_1_std"] <= evidential["within_2_std"] <= 1.0
        assert set(evidential["by_condition"]) == {
            "all three",
            "no smiles",
            "ecfp only",
            "graph only",
            "smiles only",
        }
        for entry in evidential["by_condition"].values():
            assert entry["rms predicted std"] > 0 and math.isfinite(entry["actual RMSE"])
            assert entry["rms std, rescaled per input"] > 0
            assert 0.0 <= entry["within 1 std, rescaled"] <= 1.0


def check_crystal_results(results: dict) -> None:
    """What ``03_crystal_structure_text_fusion.ipynb`` must have computed."""
    assert results["settings"]["small"] is True and results["settings"]["epochs"] == 2
    sizes = results["sizes"]
    assert sizes["train"] == 200 and 0 < sizes["test"] <= 60 and sizes["sulfides (zero-shot)"] > 0
    assert set(results["deepchem"]) == {
        "CGCNN (graph only)",
        "text only",
        "MatMMFuse (graph + text)",
        "MatMMFuse + composition",
        "MatMMFuse + CHGNet atoms (leaked on MP)",
    }
    for row in results["deepchem"].values():
        assert math.isfinite(row["test MAE"]) and row["test MAE"] > 0
        assert 1 <= row["best epoch"] <= 2
    assert set(results["zero_shot_mae"]) == {"sulfides", "in-distribution test"}
    for row in results["zero_shot_mae"].values():
        assert row["n"] > 0 and all(math.isfinite(v) for v in row.values())
    n_atoms, n_keys = results["attention_shape"]
    assert n_atoms > 0 and n_keys >= 3  # null key + at least two sentences
    assert math.isfinite(results["matgl"]["test_mae"])
    assert results["matgl"]["restored_class"] == "MatMMFuse"


def check_pretrained_views_results(results: dict) -> None:
    """What ``04_pretrained_views.ipynb`` must have computed."""
    assert results["settings"]["small"] is True and results["settings"]["epochs"] == 2
    assert results["sizes"] == {"train": 200, "valid": 100, "test": 100}
    assert set(results["models"]) == {
        "from scratch",
        "MiniMol only",
        "+ MiniMol",
        "pretrained",
        "pretrained + MiniMol",
    }
    for row in results["models"].values():
        assert math.isfinite(row["test RMSE"]) and row["test RMSE"] > 0
        assert 1 <= row["best epoch"] <= 2
    assert len(results["missing_minimol"]) == 4  # full, no MiniMol, MiniMol only, random 25%
    assert all(math.isfinite(v) and v > 0 for v in results["missing_minimol"].values())
    assert len(results["pretraining_history"]) == 1
    assert results["checkpoint"] == "DeepFuse-MOSES40k-v1-Multiview"


RESULT_CHECKS = {
    "01_dynamic_fusion_with_deepchem": check_dynamic_fusion_results,
    "02_choosing_a_fusion_strategy": check_fusion_strategy_results,
    "03_crystal_structure_text_fusion": check_crystal_results,
    "04_pretrained_views": check_pretrained_views_results,
}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, shared_data_dir, kernel_manager_factory, tmp_path):
    results_file = tmp_path / "results.json"
    env = {
        **os.environ,
        **SMALL_SETTINGS,
        "DEEPFUSE_DATA_DIR": str(shared_data_dir),
        "DEEPFUSE_CACHE_DIR": str(tmp_path / "molnet_cache"),
        "DEEPFUSE_TUTORIAL_RESULTS": str(results_file),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    nb = run_notebook(path, kernel_manager_factory(), env)

    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    assert outputs_of_type(nb, "image/png") >= 1, "the notebook drew no figure"
    check = RESULT_CHECKS.get(path.stem)
    if check is not None:
        assert results_file.is_file(), "the notebook did not write DEEPFUSE_TUTORIAL_RESULTS"
        check(json.loads(results_file.read_text()))
