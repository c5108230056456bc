"""The MatGL route under DDP: deepfuse's MatGL Lightning module on 2 CPU processes (gloo,
``ddp_fork``) trains what one process does on the same global batch, and the model it leaves
saves, loads with ``matgl.load_model`` and predicts the same."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

pytest.importorskip("matgl")
pytest.importorskip("pymatgen.core")

import lightning as L  # noqa: E402
import matgl  # noqa: E402
import torch  # noqa: E402
from matgl.ext.pymatgen import Structure2Graph  # noqa: E402
from matgl.graph.data import MGLDataLoader  # noqa: E402

from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer  # noqa: E402
from deepfuse_plugin.matgl import (  # noqa: E402
    MatMMFuse,
    MultiModalLightningModule,
    MultiModalMGLDataset,
    collate_fn_targets,
)
from tests.unit.test_crystal_structures import cscl, nacl, silicon, srtio3  # noqa: E402

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(),
        reason="needs fork-started processes",
    ),
]

GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 crystals, 2 labels (a multi-target model: deepfuse's own loss, not MatGL's)."""
    structures = [build() for build in (nacl, cscl, silicon, srtio3)] * 4
    for i, structure in enumerate(structures):
        structure.perturb(0.02 * (i % 4))  # no two graphs alike
    elements = sorted({el.symbol for s in structures for el in s.composition})
    labels = {
        "eform": np.linspace(-2.0, 1.0, len(structures)).tolist(),
        "gap": np.cos(np.arange(len(structures))).tolist(),
    }
    featurizer = CrystalMultiModalFeaturizer(["composition"], progress=False, cache_dir=False)
    root = tmp_path_factory.mktemp("mgl") / "data"
    converter = Structure2Graph(elements, cutoff=4.0)
    return MultiModalMGLDataset(structures, labels, converter, featurizer, root=str(root))


def _model(dataset):
    """A tiny MEGNet + composition model, the same initial weights on every call, without
    dropout (each process would draw other masks)."""
    torch.manual_seed(0)
    return MatMMFuse.from_dataset(
        dataset,
        backbone="megnet",
        backbone_options={"nblocks": 1},
        encoder_dim=16,
        fused_dim=16,
        head_hidden=16,
        dropout=0.0,
        encoder_options={"vector": {"dropout": 0.0}},  # the composition encoder's
        data_mean=[-0.5, 0.0],
        data_std=[1.0, 0.7],
    )


def _train(dataset, devices):
    """One epoch (2 steps of the global batch) with plain SGD: Adam's first step moves every
    weight by about the learning rate whatever its gradient's size, so it would turn the
    rounding of a batch summed in another order into a visible difference."""
    model = _model(dataset)
    module = MultiModalLightningModule(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05)
    )
    # MGLDataLoader shuffles; under DDP Lightning swaps its sampler for a DistributedSampler
    # that permutes every row with the same seed on every process and deals the permutation
    # out (rank r: positions r, r + N, ...): N processes with GLOBAL_BATCH / N rows each take
    # the rows one process of the same strategy takes in a batch of GLOBAL_BATCH
    train, valid = MGLDataLoader(
        dataset,
        dataset,
        collate_fn=collate_fn_targets,
        batch_size=GLOBAL_BATCH // devices,
        num_workers=0,
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        # MatGL's own output layer (deepfuse reads the readout before it) and, with a
        # cross-attention fusion, the crystal readout take no part in the loss: plain "ddp"
        # refuses such a model, its find-unused-parameters variant trains it
        strategy="ddp_fork_find_unused_parameters_true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train, valid)
    return model


def test_two_processes_train_what_one_does_and_the_model_restores(dataset, tmp_path):
    initial = _model(dataset).state_dict()
    one = _train(dataset, 1)
    two = _train(dataset, 2)  # Lightning hands rank 0's weights back to this process
    moved = max(float((one.state_dict()[k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3  # training changed the weights: the match below is not trivial
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    structure = nacl()
    before = two.predict_targets(structure)
    two.save(tmp_path / "model")
    restored = matgl.load_model(tmp_path / "model")
    assert restored.predict_targets(structure) == pytest.approx(before, abs=1e-6)
    assert before == pytest.approx(one.predict_targets(structure), abs=1e-4)
