"""``deepfuse pretrain``, ``deepfuse pretrained`` and ``deepfuse train --pretrained`` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from deepfuse_plugin.cli import main
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.pretrained import load_encoders
from tests.cli.conftest import CLI_SMILES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus.csv"
    pd.DataFrame({"SMILES": CLI_SMILES}).to_csv(corpus, index=False)
    out = root / "ckpt"
    assert (
        main(
            [
                "--no-progress",
                "pretrain",
                "--corpus",
                str(corpus),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--modalities",
                "ecfp,smiles",
                "--targets",
                "descriptors",
                "--name",
                "Tiny-v1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_pretrain_writes_a_loadable_checkpoint(checkpoint: Path):
    encoders = load_encoders(checkpoint)
    assert encoders.name == "Tiny-v1" and encoders.modality_names == ["ecfp", "smiles"]
    config = json.loads((checkpoint / "model.json").read_text())
    assert config["corpus"]["molecules"] == len(CLI_SMILES)
    assert config["objective"]["targets"][0]["name"] == "descriptors"


def test_train_from_the_checkpoint_uses_its_modalities_and_predicts_without_it(
    checkpoint: Path, regression_csv: Path, query_csv: Path, tmp_path: Path
):
    run = tmp_path / "run"
    local = tmp_path / "ckpt-copy"
    shutil.copytree(checkpoint, local)
    assert (
        main(
            [
                "--no-progress",
                "train",
                "--csv",
                str(regression_csv),
                "--smiles-column",
                "smi",
                "--tasks",
                "T1,T2",
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--pretrained",
                str(local),
                "--encoder-lr-scale",
                "0.1",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    record = json.loads((run / "deepfuse_run.json").read_text())
    assert record["modalities"] == ["ecfp", "smiles"]
    shutil.rmtree(local)  # the fine-tuned weights live in the run folder
    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "--no-progress",
                "predict",
                "--model-dir",
                str(run),
                "--csv",
                str(query_csv),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (pd.read_csv(out)["deepfuse_status"] == "ok").any()


def test_freeze_encoders_keeps_the_pretrained_weights(checkpoint: Path, regression_csv: Path):
    from deepfuse_plugin import DynamicFusionModel, MultiModalDataset, MultiModalFeaturizer

    feat = MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    frame = pd.read_csv(regression_csv).dropna()
    data = MultiModalDataset.from_smiles(frame["smi"], feat, y=frame[["T1"]].to_numpy())
    model = DynamicFusionModel(
        1, feat.modalities, pretrained=str(checkpoint), freeze_encoders=True, progress=False
    )
    assert model.pretrained_modalities == ["ecfp", "smiles"]
    before = {k: v.clone() for k, v in model.model.encoders.state_dict().items()}
    head_before = [p.clone() for p in model.model.fusion.parameters()]
    model.fit(data, nb_epoch=1)
    for key, value in model.model.encoders.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.model.fusion.parameters()))


def test_encoder_lr_scale_gives_the_encoders_their_own_learning_rate(checkpoint: Path):
    from deepfuse_plugin import LateFusionModel, MultiModalFeaturizer

    feat = MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    model = LateFusionModel(
        1,
        feat.modalities,
        pretrained=str(checkpoint),
        encoder_lr_scale=0.1,
        learning_rate=1e-3,
        progress=False,
    )
    model._ensure_built()
    rates = sorted(group["lr"] for group in model._pytorch_optimizer.param_groups)
    assert rates == pytest.approx([1e-4, 1e-3])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"freeze_encoders": True}, "pass pretrained"),
        ({"encoder_lr_scale": 0.0}, "encoder_lr_scale"),
        ({"pretrained": "no-such-checkpoint"}, "No pretrained checkpoint"),
    ],
)
def test_fine_tuning_settings_are_checked(kwargs, fragment):
    from deepfuse_plugin import EarlyFusionModel

    with pytest.raises(ValueError, match=fragment):
        EarlyFusionModel(1, ["ecfp"], progress=False, **kwargs)


def test_encoder_dim_must_match_the_checkpoint(checkpoint: Path):
    from deepfuse_plugin import EarlyFusionModel, MultiModalFeaturizer

    feat = MultiModalFeaturizer(["ecfp"], progress=False)
    with pytest.raises(ValueError, match="encoder_dim"):
        EarlyFusionModel(
            1, feat.modalities, pretrained=str(checkpoint), encoder_dim=64, progress=False
        )


def test_pretrained_lists_nothing_or_the_shipped_checkpoints(capsys):
    assert main(["pretrained"]) == 0
    assert capsys.readouterr().out.strip()


def test_a_loaded_fine_tuned_model_does_not_need_the_checkpoint(checkpoint: Path, tmp_path: Path):
    from deepfuse_plugin import EarlyFusionModel, MultiModalFeaturizer

    local = tmp_path / "ckpt"
    shutil.copytree(checkpoint, local)
    feat = MultiModalFeaturizer(["ecfp"], progress=False)
    model = EarlyFusionModel(
        1, feat.modalities, pretrained=str(local), progress=False, model_dir=str(tmp_path / "model")
    )
    model.save_checkpoint()
    shutil.rmtree(local)
    restored = MultiModalTorchModel.load(str(tmp_path / "model"))
    assert restored.pretrained == str(local)
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key])
