"""Shared fixtures for deepfuse's tests.

Everything here is deliberately tiny (a couple of dozen molecules, 32-wide models) so the whole
suite runs in minutes on a 2-core CPU machine.

Shared benchmark data
---------------------
Tests that need the MoleculeNet files use the ``shared_data_dir`` / ``moleculenet_dir`` fixtures.
The data lives beside the checkout (``<repo>/../shared/data``); ``DEEPFUSE_DATA_DIR`` overrides the
location. When the data is missing such tests are skipped locally but FAIL under ``CI=true``, so CI
can never pass by silently skipping them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@contextlib.contextmanager
def killed_after_epoch(
    epoch: int,
    error: BaseException | type[BaseException] = KeyboardInterrupt,
    expected: type[BaseException] = KeyboardInterrupt,
    match: str | None = None,
) -> Iterator[None]:
    """Resumable training inside the block stops right after writing the resume point of
    ``epoch``, raising ``error`` (default ``KeyboardInterrupt``, as on Ctrl-C); the block must
    end with ``expected`` (on forked processes: the launcher's own error about them)."""
    from deepfuse_plugin.train import resume

    real = resume.save_resume_point

    def save_then_stop(model, directory, state):
        written = real(model, directory, state)
        if written.epochs_done == epoch:
            raise error
        return written

    with (
        mock.patch.object(resume, "save_resume_point", save_then_stop),
        pytest.raises(expected, match=match),
    ):
        yield


# 24 small, chemically varied, valid molecules (aromatics, heteroatoms, charges, stereo, rings).
SMILES = [
    "CCO",
    "CCN",
    "CCCC",
    "CC(=O)O",
    "c1ccccc1",
    "c1ccncc1",
    "c1ccccc1O",
    "CC(=O)Nc1ccc(O)cc1",
    "C[C@H](N)C(=O)O",
    "O=C(O)c1ccccc1O",
    "CN1CCC[C@H]1c1cccnc1",
    "C1CCCCC1",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "ClC(Cl)Cl",
    "OC1CCCCC1",
    "c1ccc2ccccc2c1",
    "CC#N",
    "C=CC=C",
    "CCOC(=O)C",
    "NC(=O)N",
    "c1ccsc1",
    "CC(C)(C)O",
    "C[N+](C)(C)C",
    "FC(F)(F)c1ccccc1",
]


def _data_dir() -> Path:
    return Path(os.environ.get("DEEPFUSE_DATA_DIR", DEFAULT_DATA_DIR)).expanduser().resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$DEEPFUSE_DATA_DIR``); fail under CI=true, skip otherwise."""
    path = _data_dir()
    if not (path / "moleculenet").is_dir():
        message = (
            f"shared benchmark data not found at {path} (expected {path / 'moleculenet'}); "
            "set DEEPFUSE_DATA_DIR"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def moleculenet_dir(shared_data_dir: Path) -> Path:
    return shared_data_dir / "moleculenet"


@pytest.fixture(scope="session")
def smiles() -> list[str]:
    return list(SMILES)


@pytest.fixture(scope="session")
def small_featurizer():
    """ecfp (128 bits) + graph + smiles (max 48 tokens), no progress bar."""
    import deepfuse_plugin as dfp

    return dfp.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=128, max_length=48, progress=False
    )


@pytest.fixture(scope="session")
def featurized(small_featurizer):
    """The featurized :data:`SMILES` (object array of samples), computed once per session."""
    return small_featurizer.featurize(SMILES)


def regression_labels(n: int, n_tasks: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_tasks))


@pytest.fixture
def tiny_dataset(featurized):
    """Labelled single-task regression ``NumpyDataset`` of the 24 molecules (ids = SMILES)."""
    import deepchem as dc

    return dc.data.NumpyDataset(featurized, regression_labels(len(SMILES)), ids=np.array(SMILES))


@pytest.fixture
def tiny_classification_dataset(featurized):
    import deepchem as dc

    y = (np.arange(len(SMILES)) % 2).astype(float).reshape(-1, 1)
    return dc.data.NumpyDataset(featurized, y, ids=np.array(SMILES))


TINY_MODEL_KWARGS = dict(
    encoder_dim=32,
    fused_dim=32,
    head_hidden=32,
    gate_hidden=16,
    attention_hidden=16,
    decoder_hidden=32,
    batch_size=8,
    learning_rate=3e-3,
    encoder_options={"graph": {"n_layers": 2}, "sequence": {"n_layers": 1, "n_heads": 2}},
    progress=False,
)


def _tiny_kwargs(**overrides) -> dict:
    kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_MODEL_KWARGS.items()}
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_model_kwargs() -> dict:
    """Constructor arguments of a fast model (32-wide, no progress bars); a fresh copy per test."""
    return _tiny_kwargs()


@pytest.fixture(scope="session")
def make_tiny_kwargs():
    """Tiny model kwargs for module/session-scoped fixtures: ``make_tiny_kwargs(**overrides)``."""
    return _tiny_kwargs


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    path = tmp_path / "model"
    path.mkdir()
    return str(path)


def pytest_configure(config):
    # Tiny models on a shared 2-core machine: one intra-op thread is faster and fairer.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ddp`` run first (in their collected order). They fork training processes,
    and a fork copies only the calling thread: a lock that another thread holds at that moment
    (thread pools, notebook kernels' ZeroMQ sockets and event loops that earlier tests leave
    behind) stays held in the child forever. Forking early, from a process that has started
    little, is what a user's script does."""
    items.sort(key=lambda item: item.get_closest_marker("ddp") is None)  # a stable sort


@pytest.fixture(autouse=True)
def _ddp_environment(request, monkeypatch):
    """Every ``ddp`` test starts its process groups on a port Lightning picks afresh (its
    launcher leaves ``MASTER_PORT`` in the environment, and later runs would reuse it), and its
    forked processes keep one intra-op thread (as this process: a child that starts an OpenMP
    thread team its parent's fork did not copy can wait on it forever)."""
    if request.node.get_closest_marker("ddp") is not None:
        monkeypatch.delenv("MASTER_PORT", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield


@pytest.fixture(autouse=True)
def _seed():
    """Deterministic torch/numpy state per test."""
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield
