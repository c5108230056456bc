"""Multimodal pretraining: objectives, the resumable loop, checkpoints and loading them."""

import json

import numpy as np
import pytest
import torch

from deepfuse_plugin import MultiModalFeaturizer
from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError
from deepfuse_plugin.nn.encoders import build_encoder
from deepfuse_plugin.nn.pretraining import (
    PretrainingNetwork,
    cross_view_info_nce,
    masked_view_prediction,
    relational_loss,
)
from deepfuse_plugin.pretrained import (
    PretrainingConfig,
    load_encoders,
    load_pretrained_encoders,
    pretrain_encoders,
)

SMILES = [
    "CCO",
    "CCN",
    "c1ccccc1",
    "CC(=O)O",
    "CCCl",
    "c1ccncc1",
    "CCOC",
    "CC(C)O",
    "C1CCCCC1",
    "CC#N",
    "OCCO",
    "c1ccc(O)cc1",
    "CNC",
    "CCCC",
    "CC(=O)N",
    "c1ccsc1",
] * 3


@pytest.fixture(scope="module")
def corpus():
    feat = MultiModalFeaturizer(
        ["ecfp", "graph", "smiles", "descriptors"], ecfp_size=256, max_length=32, progress=False
    )
    return feat, feat.featurize(SMILES)


def test_info_nce_prefers_aligned_views():
    torch.manual_seed(0)
    z = torch.randn(8, 1, 16)
    present = torch.ones(8, 2, dtype=torch.bool)
    aligned = cross_view_info_nce(torch.cat([z, z], 1), present)
    shuffled = cross_view_info_nce(torch.cat([z, z[torch.randperm(8)]], 1), present)
    assert aligned < shuffled


def test_info_nce_skips_missing_views_and_pairs_without_molecules():
    z = torch.randn(4, 2, 8)
    present = torch.tensor([[True, False]] * 4)
    assert cross_view_info_nce(z, present) == 0


def test_relational_loss_is_zero_when_the_view_matches_its_teacher():
    teacher = torch.randn(6, 5)
    projections = teacher[:, None, :]
    present, teacher_present = torch.ones(6, 1, dtype=torch.bool), torch.ones(6, dtype=torch.bool)
    assert relational_loss(projections, present, teacher, teacher_present) == pytest.approx(
        0, abs=1e-5
    )
    other = relational_loss(torch.randn(6, 1, 5), present, teacher, teacher_present)
    assert other > 1e-3


def test_masked_view_prediction_has_no_gradient_into_its_target():
    projections = torch.randn(3, 2, 4, requires_grad=True)
    predicted = torch.randn(3, 2, 4, requires_grad=True)
    hidden = torch.tensor([[True, False], [False, False], [False, True]])
    masked_view_prediction(predicted, projections, hidden).backward()
    assert projections.grad is None and predicted.grad.abs().sum() > 0


def test_network_reports_every_term_and_learns(corpus):
    feat, X = corpus
    from deepfuse_plugin.data.collate import collate_samples

    net = PretrainingNetwork(
        feat.modalities[:3], feat.modalities[3:], encoder_dim=16, projection_dim=8
    )
    net.mask_rate = 0.3
    batch = collate_samples(list(X[:16]), feat.modalities)
    out = net(batch)
    assert set(out.terms) == {"contrastive", "targets", "relational", "masked"}
    assert torch.isfinite(out.loss)


def test_unknown_loss_term_is_refused(corpus):
    feat, _ = corpus
    with pytest.raises(ValueError, match="Unknown loss terms"):
        PretrainingNetwork(feat.modalities[:3], [], loss_weights={"contrastiv": 1.0})


def _config(**overrides):
    return PretrainingConfig(
        **{
            "epochs": 2,
            "batch_size": 8,
            "encoder_dim": 16,
            "projection_dim": 8,
            "valid_fraction": 0.2,
            **overrides,
        }
    )


def test_pretraining_writes_a_checkpoint_that_loads_into_a_fusion_network(corpus, tmp_path):
    feat, X = corpus
    out = pretrain_encoders(
        X,
        feat.modalities[:3],
        feat.modalities[3:],
        tmp_path / "ckpt",
        name="tiny",
        config=_config(),
        progress=False,
    )
    assert {p.name for p in out.iterdir()} >= {
        "encoders.safetensors",
        "model.json",
        "history.json",
        "loss_curve.png",
        "README.md",
    }
    config = json.loads((out / "model.json").read_text())
    assert len(config["history"]) == 2 and config["objective"]["terms"]
    encoders = load_encoders(out)
    fresh = torch.nn.ModuleDict({m.name: build_encoder(m, 16) for m in feat.modalities[:3]})
    loaded = load_pretrained_encoders(fresh, feat.modalities[:3], encoders, encoder_dim=16)
    assert loaded == ["ecfp", "graph", "smiles"]
    for name in loaded:
        for key, value in fresh[name].state_dict().items():
            assert torch.equal(value, encoders.state[name][key])


def test_resumed_run_equals_uninterrupted_run(corpus, tmp_path, monkeypatch):
    feat, X = corpus
    args = (X, feat.modalities[:3], feat.modalities[3:])
    whole = load_encoders(
        pretrain_encoders(*args, tmp_path / "a", config=_config(), progress=False)
    )
    from deepfuse_plugin.pretrained import _loop

    original = _loop._Run.train_epoch

    def interrupted(self, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt  # the machine went away during the second epoch
        return original(self, epoch, progress)

    monkeypatch.setattr(_loop._Run, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoders(*args, tmp_path / "b", config=_config(), progress=False)
    assert (tmp_path / "b" / "resume_state.pt").is_file()
    monkeypatch.setattr(_loop._Run, "train_epoch", original)
    resumed = load_encoders(
        pretrain_encoders(*args, tmp_path / "b", config=_config(), progress=False)
    )
    assert not (tmp_path / "b" / "resume_state.pt").exists()
    assert resumed.info["history"] == whole.info["history"]
    for name in whole.state:
        for key, value in whole.state[name].items():
            assert torch.equal(value, resumed.state[name][key]), (name, key)


def test_resume_with_other_settings_is_refused(corpus, tmp_path):
    feat, X = corpus
    out = tmp_path / "c"
    out.mkdir()
    net_state = {
        "network": {},
        "optimizer": {},
        "schedule": {},
        "epoch": 1,
        "history": "[]",
        "config": json.dumps({"epochs": 99}),
        "elapsed": 0.0,
    }
    torch.save(net_state, out / "resume_state.pt")
    with pytest.raises(InvalidSettingError, match="other settings"):
        pretrain_encoders(X, feat.modalities[:3], [], out, config=_config(), progress=False)


def test_damaged_weights_are_refused(corpus, tmp_path):
    feat, X = corpus
    out = pretrain_encoders(
        X, feat.modalities[:2], [], tmp_path / "d", config=_config(epochs=1), progress=False
    )
    data = bytearray((out / "encoders.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (out / "encoders.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_encoders(out)


def test_a_covered_modality_with_another_spec_is_an_error(corpus, tmp_path):
    feat, X = corpus
    out = pretrain_encoders(
        X, feat.modalities[:2], [], tmp_path / "e", config=_config(epochs=1), progress=False
    )
    other = MultiModalFeaturizer(["ecfp"], ecfp_size=512, progress=False).modalities
    fresh = torch.nn.ModuleDict({m.name: build_encoder(m, 16) for m in other})
    with pytest.raises(InvalidSettingError, match="params.size"):
        load_pretrained_encoders(fresh, other, load_encoders(out), encoder_dim=16)


@pytest.mark.parametrize(
    "field, value",
    [("batch_size", 2), ("epochs", 0), ("learning_rate", float("nan")), ("mask_rate", (0, 1.5))],
)
def test_invalid_pretraining_settings_name_the_field(field, value):
    with pytest.raises(InvalidSettingError, match=field):
        PretrainingConfig(**{field: value})


def test_corpus_sampling_is_seeded_and_keeps_file_order(tmp_path):
    from deepfuse_plugin.data.corpora import read_smiles_file

    path = tmp_path / "corpus.csv"
    path.write_text("SMILES\n" + "\n".join(f"{'C' * (i + 1)}" for i in range(50)) + "\n")
    a = read_smiles_file(path, n=10, seed=3)
    assert a == read_smiles_file(path, n=10, seed=3) and a == sorted(a, key=len)
    assert np.unique(a).size == 10
