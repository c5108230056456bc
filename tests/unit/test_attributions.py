"""Integrated-Gradients atom attributions for the graph modality, and their drawing."""

from __future__ import annotations

import deepchem as dc
import numpy as np
import pytest
import torch
from rdkit import Chem

import deepfuse_plugin
from deepfuse_plugin import (
    CrossAttentionFusionModel,
    DynamicFusionModel,
    EarlyFusionModel,
    GatedMoEFusionModel,
    LateFusionModel,
    UnimodalModel,
)
from deepfuse_plugin.analysis import AtomAttribution, atom_attributions, draw_atom_attributions

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)C", "ClC(Cl)Cl", "C"]
SMALL = dict(
    encoder_dim=32,
    fused_dim=32,
    head_hidden=32,
    batch_size=8,
    progress=False,
    encoder_options={"graph": {"n_layers": 2}, "sequence": {"n_layers": 1, "n_heads": 2}},
)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    feat = deepfuse_plugin.MultiModalFeaturizer(
        ["ecfp", "graph", "smiles"], ecfp_size=128, max_length=48, progress=False
    )
    y = np.random.default_rng(0).normal(size=(len(SMILES), 1))
    return dc.data.NumpyDataset(feat.featurize(SMILES), y, ids=np.array(SMILES)), feat.modalities


def build(cls, modalities, mode="regression", **kw):
    torch.manual_seed(0)
    if cls is UnimodalModel:
        return cls(1, modalities[1], mode, **SMALL, **kw)
    return cls(1, modalities, mode, **SMALL, **kw)


def check_completeness(results, predictions, rel=0.05, atol=2e-4):
    """IG completeness: sum of atom scores = f(x) - f(baseline), up to the quadrature error (ReLU
    kinks make it ~1% at 50-64 steps) and float32 noise (~1e-5 on outputs of ~0.1)."""
    for r, pred in zip(results, predictions):
        assert r.output == pytest.approx(float(pred), abs=1e-5)  # f(x) is the model's prediction
        gap = r.output - r.baseline_output
        assert abs(r.scores.sum() - gap) <= rel * abs(gap) + atol
        assert r.delta == pytest.approx(r.scores.sum() - gap, abs=1e-6)


def test_completeness_and_alignment_regression(data):
    dataset, modalities = data
    model = build(
        DynamicFusionModel, modalities, gate_hidden=16, attention_hidden=16, decoder_hidden=32
    )
    model.fit(dataset, nb_epoch=1)
    results = atom_attributions(model, dataset, n_steps=64)
    assert [r.id for r in results] == SMILES
    for r, smi in zip(results, SMILES):
        assert isinstance(r, AtomAttribution) and r.smiles == smi
        assert r.n_atoms == Chem.MolFromSmiles(smi).GetNumAtoms() == r.scores.shape[0]
        assert r.node_attributions.shape == (r.n_atoms, modalities[1].node_dim)
        assert np.allclose(r.node_attributions.sum(axis=1), r.scores)
        assert r.target == "task 0 prediction"
    check_completeness(results, model.predict(dataset)[:, 0])
    assert np.abs(results[2].scores).max() > 0


@pytest.mark.parametrize(
    "cls,kw",
    [
        (EarlyFusionModel, {}),
        (LateFusionModel, {"combine": "stacking"}),
        (CrossAttentionFusionModel, {"n_heads": 2}),
        (UnimodalModel, {}),
    ],
    ids=["early", "late", "cross", "unimodal"],
)
def test_completeness_classification(cls, kw, data):
    dataset, modalities = data
    model = build(cls, modalities, "classification", **kw)
    rows = [1, 2]
    probabilities = atom_attributions(model, dataset, indices=rows, n_steps=256)
    assert probabilities[0].target == "task 0 probability of class 1"
    check_completeness(probabilities, model.predict(dataset)[rows, 0, 1])
    logits = atom_attributions(
        model, dataset, indices=rows, target="logit", class_index=0, n_steps=256
    )
    assert logits[0].target == "task 0 logit of class 0"
    for r in logits:
        gap = r.output - r.baseline_output
        assert abs(r.scores.sum() - gap) <= 0.05 * abs(gap) + 2e-4


def test_moe_runs_and_reports_the_gap(data):
    dataset, modalities = data
    model = build(GatedMoEFusionModel, modalities, n_experts_shared=1, top_k=2)
    (result,) = atom_attributions(model, dataset, indices=[2], n_steps=16, internal_batch_size=8)
    assert result.n_atoms == 11 and np.isfinite(result.delta)
    assert result.delta == pytest.approx(
        result.scores.sum() - (result.output - result.baseline_output), abs=1e-4
    )


def test_other_modalities_held_fixed_or_dropped(data):
    dataset, modalities = data
    model = build(EarlyFusionModel, modalities)
    held = atom_attributions(model, dataset, indices=[1], n_steps=16)[0]
    alone = atom_attributions(
        model, dataset, indices=[1], n_steps=16, drop_modalities=["ecfp", "smiles"]
    )[0]
    assert alone.output == pytest.approx(
        float(model.predict(dataset, drop_modalities=["ecfp", "smiles"])[1, 0]), abs=1e-5
    )
    assert held.output != pytest.approx(alone.output)


def test_missing_graph_is_a_clear_error(data):
    dataset, modalities = data
    no_graph = build(EarlyFusionModel, [modalities[0], modalities[2]])
    with pytest.raises(ValueError, match="no graph modality"):
        atom_attributions(no_graph, dataset)
    model = build(EarlyFusionModel, modalities)
    with pytest.raises(ValueError, match="while dropping it"):
        atom_attributions(model, dataset, drop_modalities=["graph"])
    X = np.array(dataset.X, dtype=object)
    X[0] = X[0].without(["graph"])
    partial = dc.data.NumpyDataset(X, dataset.y, ids=dataset.ids)
    with pytest.raises(ValueError, match=r"have no 'graph' modality.*CCO"):
        atom_attributions(model, partial)
    skipped = atom_attributions(model, partial, indices=[0, 1], on_missing="skip", n_steps=8)
    assert skipped[0] is None and skipped[1].n_atoms == 7
    with pytest.raises(ValueError, match="target"):
        atom_attributions(model, dataset, target="logit")  # regression model


def test_smiles_override_and_unknown_ids(data):
    dataset, modalities = data
    model = build(EarlyFusionModel, modalities)
    anonymous = dc.data.NumpyDataset(dataset.X, dataset.y, ids=np.arange(len(SMILES)))
    result = atom_attributions(model, anonymous, indices=[0], n_steps=8)[0]
    assert result.smiles is None
    with pytest.raises(ValueError, match="No SMILES known"):
        result.draw()
    result = atom_attributions(model, anonymous, indices=[0], n_steps=8, smiles=SMILES)[0]
    assert result.smiles == "CCO" and result.draw()[:8] == PNG
    with pytest.raises(ValueError, match="does not parse"):
        atom_attributions(model, anonymous, indices=[0], n_steps=8, smiles=["CC"] * len(SMILES))


def test_draw_atom_attributions(tmp_path):
    path = tmp_path / "phenol.png"
    png = draw_atom_attributions(
        "c1ccccc1O", [0.1, 0.2, -0.3, 0.0, 0.0, 0.9, -1.0], path=path, size=(300, 250)
    )
    assert png[:8] == PNG and path.read_bytes() == png
    assert draw_atom_attributions(Chem.MolFromSmiles("CCO"), np.zeros(3))[:8] == PNG
    assert draw_atom_attributions("C", [0.5])[:8] == PNG  # one atom: highlighted, no map
    with pytest.raises(ValueError, match="3 scores for a molecule with 2 atoms"):
        draw_atom_attributions("CO", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="cannot parse"):
        draw_atom_attributions("not a smiles", [1.0])


def test_shared_colour_scale_makes_small_attributions_look_small():
    small = draw_atom_attributions("CCO", [0.001, -0.002, 0.001], vmax=1.0)
    same_as_large = draw_atom_attributions("CCO", [0.001, -0.002, 0.001])  # per-molecule scale
    large = draw_atom_attributions("CCO", [0.5, -1.0, 0.5], vmax=1.0)
    assert small != large  # on a shared scale the weak map is drawn fainter
    assert same_as_large == large  # the per-molecule default hides the difference


def test_matching_a_smiles_leaves_the_users_rdkit_logging_as_it_was():
    """Parsing candidate SMILES quietly must not re-enable RDKit logs a user turned off."""
    from rdkit import rdBase

    from deepfuse_plugin.analysis.attributions import _matching_smiles

    rdBase.DisableLog("rdApp.error")
    try:
        before = rdBase.LogStatus()
        assert _matching_smiles("CCO", 3) == "CCO"
        assert _matching_smiles("C1CC", 3) is None  # unparsable
        assert rdBase.LogStatus() == before
    finally:
        rdBase.EnableLog("rdApp.error")
