"""MatMMFuse on the command line: ``deepfuse train/predict/hpopt --model matmmfuse`` on a CIF folder
(20 tiny pymatgen-built crystals and a broken CIF, 1-2 epochs), like the other models: the same
run folder, validation selection, resume, per-row status, and predictions from the run folder
equal to those of the model in this process."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pymatgen.core")

from deepfuse_plugin.cli import main  # noqa: E402
from deepfuse_plugin.workflows import RUN_FILE  # noqa: E402
from tests.cli.test_crystal_cli import BROKEN_CIF, _labels, _structures  # noqa: E402
from tests.conftest import killed_after_epoch  # noqa: E402
from tests.unit.test_crystal_structures import needs_text_model  # noqa: E402

TASKS = ["volume_per_atom", "mean_z"]
TRAIN = ["--epochs", "2", "--eval-every", "1", "--batch-size", "4"]


@pytest.fixture(scope="module", autouse=True)
def text_cache(tmp_path_factory):
    """The offline MiniLM, and a cache of descriptions and embeddings in a temporary folder."""
    needs_text_model()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def cif_folder(tmp_path_factory) -> Path:
    """CGCNN's layout: 20 structures, two targets, and a broken CIF listed in ``id_prop.csv``."""
    folder = tmp_path_factory.mktemp("crystals") / "cifs"
    folder.mkdir()
    structures = _structures()
    volume, z = _labels(structures)
    ids = [f"{i:04d}" for i in range(len(structures))]
    for id_, structure in zip(ids, structures):
        structure.to(filename=str(folder / f"{id_}.cif"))
    (folder / "bad.cif").write_text(BROKEN_CIF)
    rows = [f"{i},{v:.4f},{n:.3f}" for i, v, n in zip(ids, volume, z)]
    (folder / "id_prop.csv").write_text("\n".join([*rows, "bad,12.0,20.0"]))
    return folder


def _train(data: Path, out: Path, *extra: str) -> int:
    argv = ["--no-progress", "train", "--data", str(data), "--tasks", ",".join(TASKS)]
    return main([*argv, "--model", "matmmfuse", *TRAIN, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def matmmfuse_run(cif_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "matmmfuse"
    assert _train(cif_folder, out) == 0
    return out


def test_train_matmmfuse_writes_a_run_folder_like_the_other_models(matmmfuse_run):
    record = json.loads((matmmfuse_run / RUN_FILE).read_text())
    assert (record["model"], record["model_class"]) == ("matmmfuse", "MatMMFuseModel")
    # MatMMFuse's own views by default: the structure graph and the description's sentences
    assert record["modalities"] == ["graph", "text_sentences"]
    assert record["featurizer"]["describer"] == "fast"
    assert record["input"]["format"] == "cif_folder" and record["data"]["split"] == "random"
    assert "bad.cif" in "\n".join(record["data"]["invalid_structures"])
    training = record["training"]
    assert training["selection"] == "validation rmse" and training["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert (matmmfuse_run / "metrics.json").exists()


def test_predict_from_the_run_folder_equals_the_model_in_process(
    matmmfuse_run, cif_folder, tmp_path
):
    """The CLI's predictions, the predictions of the model loaded and fed in this process, and the
    test metrics computed by the training process itself all agree."""
    import deepchem as dc
    from pymatgen.core import Structure

    from deepfuse_plugin import MatMMFuseModel
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.train.metrics import evaluate
    from deepfuse_plugin.training_data import prepare_training_data

    out = tmp_path / "pred.csv"
    argv = ["--no-progress", "predict", "--model-dir", str(matmmfuse_run)]
    assert main([*argv, "--data", str(cif_folder), "--out", str(out)]) == 0
    frame = pd.read_csv(out, dtype={"id": str}).set_index("id")
    assert frame.loc["bad", "deepfuse_status"].startswith("invalid structure")
    assert frame.loc["bad", [f"{t}_pred" for t in TASKS]].isna().all()
    ok = frame.drop(index="bad")
    assert (ok["deepfuse_status"] == "ok").all() and len(ok) == 20

    record = json.loads((matmmfuse_run / RUN_FILE).read_text())
    model = MatMMFuseModel.load(str(matmmfuse_run / "model"), progress=False)
    featurizer = CrystalMultiModalFeaturizer(["graph", "text_sentences"], progress=False)
    # the same CIF files read here (a CIF's rounded coordinates can shift a bond length in the
    # last digit that the text description prints, so the pymatgen objects themselves would not do)
    structures = [Structure.from_file(str(cif_folder / f"{i}.cif")) for i in ok.index]
    X = featurizer.featurize(structures)
    normalized = model.predict(dc.data.NumpyDataset(X)).reshape(len(X), len(TASKS))
    scale = record["normalization"]
    in_process = normalized * np.asarray(scale["y_stds"]) + np.asarray(scale["y_means"])
    from_cli = ok[[f"{t}_pred" for t in TASKS]].to_numpy()
    np.testing.assert_allclose(from_cli, in_process, rtol=1e-5, atol=1e-6)

    # the folder's model is the one the training process scored (its best epoch)
    data = prepare_training_data(
        str(cif_folder), None, TASKS, modalities=record["modalities"], progress=False
    )
    test_metrics = evaluate(model, data.test, data.transformers, "regression")[0]
    assert test_metrics["mae"] == pytest.approx(record["metrics"]["test"]["mae"], rel=1e-5)


def test_resume_continues_an_interrupted_matmmfuse_run(cif_folder, matmmfuse_run, tmp_path):
    out = tmp_path / "run"
    with killed_after_epoch(1):
        _train(cif_folder, out)
    assert not (out / RUN_FILE).exists()
    assert _train(cif_folder, out, "--resume") == 0
    training = json.loads((out / RUN_FILE).read_text())["training"]
    assert training["resumed_at_epochs"] == [1]
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    # the first epoch is the uninterrupted run's (same seed, same data): it was kept, not redone
    full = json.loads((matmmfuse_run / RUN_FILE).read_text())["training"]
    assert training["history"][0]["score"] == pytest.approx(full["history"][0]["score"])


def test_hpopt_matmmfuse_prints_a_train_command_that_runs(cif_folder, tmp_path, capsys):
    search = tmp_path / "search"
    argv = ["--no-progress", "hpopt", str(cif_folder), "--target-columns", ",".join(TASKS)]
    argv += ["--model", "matmmfuse", "--describer", "fast", "--trials", "1", "--epochs", "1"]
    assert main([*argv, "--batch-size", "4", "--out", str(search)]) == 0
    printed = capsys.readouterr().out
    assert "Search of matmmfuse (graph+text_sentences)" in printed
    command = shlex.split(printed.strip().splitlines()[-1])
    assert command[:2] == ["deepfuse", "train"]
    for option, value in (("--model", "matmmfuse"), ("--describer", "fast")):
        assert command[command.index(option) + 1] == value
    assert command[command.index("--modalities") + 1] == "graph,text_sentences"
    assert main(["--no-progress", *command[1:]]) == 0
    record = json.loads((search / "best_run" / RUN_FILE).read_text())
    assert record["model_class"] == "MatMMFuseModel" and record["training"]["epochs"] == 1


def test_chgnet_layers_choose_the_atom_view_and_predict_rebuilds_it(cif_folder, tmp_path):
    pytest.importorskip("chgnet")
    out = tmp_path / "layers"
    extra = ["--modalities", "graph,chgnet_atoms", "--chgnet-layers", "0,4", "--epochs", "1"]
    assert _train(cif_folder, out, *extra) == 0
    config = json.loads((out / "model" / "deepfuse_config.json").read_text())
    [atoms] = [m for m in config["config"]["modalities"] if m["name"] == "chgnet_atoms"]
    assert atoms["dim"] == 128 and atoms["params"]["provider_options"]["atom_layers"] == [0, 4]
    pred = tmp_path / "pred.csv"
    argv = ["predict", "--model-dir", str(out), "--data", str(cif_folder), "--out", str(pred)]
    assert main(argv) == 0
    assert (pd.read_csv(pred)["deepfuse_status"] == "ok").sum() == 20


def test_chgnet_layers_out_of_range_is_a_usage_error(cif_folder, tmp_path, capsys):
    assert _train(cif_folder, tmp_path / "run", "--chgnet-layers", "7") == 2
    assert "atom_layers must be distinct layers from 0" in capsys.readouterr().err


def test_backbone_megnet_reads_matgl_graphs_by_default(cif_folder, tmp_path):
    pytest.importorskip("matgl")
    out = tmp_path / "megnet"
    assert _train(cif_folder, out, "--backbone", "megnet", "--epochs", "1") == 0
    record = json.loads((out / RUN_FILE).read_text())
    assert record["modalities"] == ["matgl_graph", "text_sentences"]
    pred = tmp_path / "pred.csv"
    argv = ["predict", "--model-dir", str(out), "--data", str(cif_folder), "--out", str(pred)]
    assert main(argv) == 0
    assert (pd.read_csv(pred)["deepfuse_status"] == "ok").sum() == 20


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "matmmfuse"], "is a crystal-structure model"),
        (["--model", "dynamic", "--backbone", "megnet"], "applies to --model matmmfuse"),
        (["--model", "dynamic", "--describer", "robocrys"], "is a CSV of molecules"),
        (["--model", "dynamic", "--chgnet-layers", "0,4"], "is a CSV of molecules"),
    ],
)
def test_crystal_options_on_molecules_are_one_sentence(tmp_path, capsys, extra, message):
    smiles = tmp_path / "mols.csv"
    smiles.write_text("smi,y\nCCO,1.0\nCCN,2.0\nCCC,3.0\n")
    out = tmp_path / "run"
    argv = ["--no-progress", "train", "--data", str(smiles), "--smiles-column", "smi"]
    assert main([*argv, "--tasks", "y", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepfuse train: error:") and message in err
    assert not out.exists()


def test_default_modalities_follow_the_model_and_backbone():
    from deepfuse_plugin.training_data import default_modalities

    assert default_modalities("cif_folder", "matmmfuse") == ["graph", "text_sentences"]
    assert default_modalities("extxyz", "matmmfuse", "m3gnet") == ["matgl_graph", "text_sentences"]
    assert default_modalities("extxyz", "dynamic", "m3gnet") == ["graph", "composition"]
    assert default_modalities("smiles", "dynamic") == ["ecfp", "graph", "smiles"]
