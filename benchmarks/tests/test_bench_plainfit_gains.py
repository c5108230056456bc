"""``deepfuse-bench plain-fit`` (the README's plain ``fit`` against the random forest) and
``deepfuse-bench gains`` (what the pretrained views bought)."""

from __future__ import annotations

import json

import pytest

from deepfuse_bench import gains
from deepfuse_bench.cli import main
from deepfuse_bench.plainfit import parse_variants, summary_rows
from deepfuse_plugin.errors import InvalidSettingError


def _plain_fit(data_dir, tmp_path, variants: dict, *extra: str) -> int:
    return main(
        [
            "--no-progress",
            "plain-fit",
            "--data-dir",
            str(data_dir),
            "--datasets",
            "delaney",
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--variants",
            json.dumps(variants),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "plain"),
            *extra,
        ]
    )


def test_plain_fit_trains_every_variant_and_the_forest(tiny_molnet_dir, tmp_path):
    out = tmp_path / "plain"
    variants = {"defaults": {}, "cosine": {"lr_schedule": "cosine"}}
    assert _plain_fit(tiny_molnet_dir, tmp_path, variants) == 0
    payload = json.loads((out / "plainfit.json").read_text())
    assert [r["variant"] for r in payload["runs"]] == ["rf_ecfp", "defaults", "cosine"]
    for run in payload["runs"]:
        assert run["valid"]["rmse"] > 0 and run["test"]["rmse"] > 0
    assert "| delaney | cosine | rmse |" in (out / "plainfit.md").read_text()

    # --resume keeps the finished runs and trains only what is new: a new variant, and the
    # variant whose settings changed (its old run no longer describes it)
    first = {r["variant"]: r for r in payload["runs"]}
    again = {"defaults": {}, "cosine": {"lr_schedule": "onecycle"}, "clip": {"grad_clip": 1.0}}
    assert _plain_fit(tiny_molnet_dir, tmp_path, again, "--resume") == 0
    resumed = json.loads((out / "plainfit.json").read_text())
    variants_run = [r["variant"] for r in resumed["runs"]]
    assert variants_run == ["rf_ecfp", "defaults", "cosine", "clip"]
    assert resumed["runs"][1] == first["defaults"]
    assert resumed["variants"]["cosine"] == {"lr_schedule": "onecycle"}
    assert len(resumed["commands"]) == 2


def test_plain_fit_resume_refuses_another_budget(tiny_molnet_dir, tmp_path):
    out = tmp_path / "plain"
    out.mkdir()
    (out / "plainfit.json").write_text(json.dumps({"model": "dynamic", "epochs": 5, "runs": []}))
    with pytest.raises(InvalidSettingError, match="epochs=5"):
        _plain_fit(tiny_molnet_dir, tmp_path, {"defaults": {}}, "--resume")


def test_variants_must_be_named_settings(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"a": {"grad_clip": 1.0}}')
    assert parse_variants(str(path)) == {"a": {"grad_clip": 1.0}}
    with pytest.raises(InvalidSettingError, match="--variants"):
        parse_variants('["cosine"]')


def test_summary_averages_seeds():
    runs = [
        {"dataset": "d", "variant": "v", "valid": {"rmse": v}, "test": {"rmse": t}}
        for v, t in ((1.0, 2.0), (3.0, 4.0))
    ]
    assert summary_rows(runs) == [("d", "v", "rmse", 2.0, 3.0, 2)]


def _run(dataset: str, model: str, seed: int, score: float, metric: str = "rmse") -> dict:
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "metric": metric,
        "test_metric": score,
    }


def test_gains_table_counts_the_targets(tmp_path):
    runs = [
        *(_run("esol", "dynamic", s, 1.0) for s in range(2)),
        *(_run("esol", "dynamic_ssl", s, 0.95) for s in range(2)),
        *(_run("esol", "dynamic_minimol", s, 0.9) for s in range(2)),
        *(_run("esol", "dynamic_pretrained", s, 0.8) for s in range(2)),
        *(_run("esol", "dc_rf", s, 0.85) for s in range(2)),
        *(_run("esol", "moe", s, 0.5) for s in range(2)),  # another fusion model: not a peer
        _run("bbbp", "dynamic", 0, 0.70, "roc_auc"),
        _run("bbbp", "dynamic_pretrained", 0, 0.68, "roc_auc"),
        _run("bbbp", "chemprop", 0, 0.72, "roc_auc"),
    ]
    path = tmp_path / "moleculenet.json"
    path.write_text(json.dumps({"runs": runs, "datasets": {}}))
    text = gains.run_gains([str(tmp_path)], str(tmp_path / "out"), seeds=2, echo=lambda _: None)
    rows = {r["dataset"]: r for r in gains.gains_table(runs)}
    assert rows["esol"]["gain"] == pytest.approx(0.2)
    assert rows["esol"]["beats_others"] and rows["esol"]["beats_scratch"]
    assert rows["esol"]["best_other"][0] == "dc_rf"
    # the self-supervised encoders without MiniMol are a stage of their own, between scratch and
    # the MiniMol stages (the table's column order)
    assert [c[0] if c else None for c in rows["esol"]["stages"]] == pytest.approx(
        [1.0, 0.95, 0.9, 0.8]
    )
    assert "| + pretrained encoders |" in text and "| 1.000 | 0.950 | 0.900 | 0.800 |" in text
    assert not rows["bbbp"]["beats_others"] and not rows["bbbp"]["beats_scratch"]
    assert "best model on 1 of 2 datasets (esol)" in text
    assert "| BBBP | dynamic | ROC-AUC |" in text  # display names, not loader names
    assert "0.680 (1 seed)" in text
    assert (tmp_path / "out" / "gains.png").stat().st_size > 0


def test_gains_warn_where_minimol_may_have_seen_the_labels():
    runs = [
        _run("tox21", "dynamic", 0, 0.74, "roc_auc"),
        _run("tox21", "dynamic_pretrained", 0, 0.83, "roc_auc"),
        _run("bbbp", "dynamic", 0, 0.70, "roc_auc"),
        _run("bbbp", "dynamic_pretrained", 0, 0.73, "roc_auc"),
    ]
    text = gains.format_markdown(gains.gains_table(runs), seeds=1, sources=["x"])
    (note,) = [line for line in text.splitlines() if "Possibly leaked" in line]
    assert "on Tox21." in note and "BBBP" not in note


def test_the_full_report_marks_minimol_rows_on_pubchem_assay_datasets():
    from deepfuse_bench.report import leakage_notes

    # HIV with a MiniMol row is named; Tox21 without one and BBBP (not an assay) are not
    runs = [
        _run("hiv", "minimol_mlp", 0, 0.80, "roc_auc"),
        _run("tox21", "dynamic", 0, 0.74, "roc_auc"),
        _run("bbbp", "dynamic_pretrained", 0, 0.73, "roc_auc"),
    ]
    (note,) = leakage_notes(runs)
    assert "MiniMol peer on HIV." in note and "Tox21" not in note and "BBBP" not in note
    assert leakage_notes([_run("tox21", "dynamic", 0, 0.74, "roc_auc")]) == []
