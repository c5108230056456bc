"""``deepfuse-bench moleculenet --missing-views``: the test metric with each view absent at
inference, recorded per run, tabled and plotted, kept through ``--resume``, ``merge`` and
``gains``.

Tiny data (the 41 molecules of ``tiny_molnet_dir``), one epoch; the report helpers on records
written by hand.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deepfuse_bench import gains, merge
from deepfuse_bench import missing_views as mv
from deepfuse_bench import moleculenet as mn
from deepfuse_bench.cli import build_parser
from deepfuse_plugin.train.metrics import classification_metrics, regression_metrics
from tests.conftest import killed_after_epoch

MODELS = ["dynamic_minimol", "unimodal_ecfp", "dc_rf"]
VIEWS = ["ecfp", "graph", "smiles", "minimol"]


def _strip(folder, model: str) -> None:
    """``model``'s runs in ``folder`` as a run finished without ``--missing-views`` has them."""
    path = folder / "moleculenet.json"
    payload = json.loads(path.read_text())
    for run in payload["runs"]:
        if run["model"] == model:
            run.pop(mv.FIELD)
    path.write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def scored(tiny_molnet_dir, tmp_path_factory):
    """ESOL, seed 0: a four-view fusion model, a one-view model and a peer, with the flag and
    the shared featurization and embedding caches."""
    root = tmp_path_factory.mktemp("missing_views")
    printed: list[str] = []
    payload = mn.run_moleculenet_bench(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=1,
        models=MODELS,
        out=str(root / "out"),
        cache_dir=str(root / "cache"),
        embedding_cache_dir=str(root / "embeddings"),
        missing_views=True,
        progress=False,
        echo=printed.append,
    )
    return payload, root / "out", printed


def test_flag_is_off_by_default_and_parsed():
    args = ["moleculenet", "--models", "dynamic_pretrained", "--seeds", "0", "--out", "x"]
    assert build_parser().parse_args(args).missing_views is False
    assert build_parser().parse_args([*args, "--missing-views"]).missing_views is True


def test_each_view_absent_is_recorded_for_multiview_models_only(scored):
    payload, _, printed = scored
    runs = {r["model"]: r for r in payload["runs"]}
    field = runs["dynamic_minimol"][mv.FIELD]
    assert field["metric"] == "rmse" and field["split"] == "test"
    assert list(field["absent"]) == VIEWS
    # the same metric code as the run's test metric
    assert field["all_views"] == pytest.approx(runs["dynamic_minimol"]["test_metric"], rel=1e-9)
    assert all(np.isfinite(v) and v > 0 for v in field["absent"].values())
    assert len(set(field["absent"].values())) > 1  # each view removed changes the predictions
    assert field["n_samples"] == payload["datasets"]["delaney"]["n_test"]
    assert field["n_excluded"] == dict.fromkeys(VIEWS, 0) and field["reasons"] == {}
    # a one-view model and a peer have no view to lose: no field, no error
    assert mv.FIELD not in runs["unimodal_ecfp"] and mv.FIELD not in runs["dc_rf"]
    line = next(p for p in printed if "dynamic_minimol" in p and "seed 0:" in p)
    assert "; views absent: ecfp " in line and " minimol " in line


def test_report_has_the_table_and_the_plot(scored):
    payload, out, _ = scored
    text = (out / "moleculenet.md").read_text()
    lines = text.splitlines()
    start, end = lines.index("## Missing views at inference (test)"), lines.index("## Settings")
    header = next(line for line in lines[start:end] if line.startswith("| dataset | model"))
    assert header.endswith(" | ".join(f"{v} absent" for v in VIEWS) + " |")
    rows = [line for line in lines[start:end] if line.startswith("| ESOL")]
    assert len(rows) == 1 and rows[0].startswith(
        "| ESOL (delaney) | dynamic_minimol | RMSE ↓ | 1 |"
    )
    field = next(r for r in payload["runs"] if r["model"] == "dynamic_minimol")[mv.FIELD]
    assert f"| {field['all_views']:.3f} |" in rows[0]
    assert "Largest loss with the MiniMol view absent:" in text
    assert (out / mv.PLOT_NAME).stat().st_size > 0


def test_resume_keeps_the_field_and_names_runs_finished_without_it(
    scored, tiny_molnet_dir, tmp_path
):
    _, source, _ = scored
    out = tmp_path / "out"
    shutil.copytree(source, out)
    common = dict(
        datasets=["delaney"],
        data_dir=str(tiny_molnet_dir),
        epochs=1,
        out=str(out),
        cache_dir=str(source.parent / "cache"),  # the fixture's featurized data, reused
        resume=True,
        progress=False,
    )
    # another seed of the peer, without the flag: the finished runs keep their scores
    payload = mn.run_moleculenet_bench(
        seeds=[0, 1], models=["dc_rf"], echo=lambda _: None, **common
    )
    kept = next(r for r in payload["runs"] if r["model"] == "dynamic_minimol")
    assert set(kept[mv.FIELD]["absent"]) == set(VIEWS)
    assert "## Missing views at inference" in (out / "moleculenet.md").read_text()

    # a run finished without the flag cannot get it: its model was not kept
    _strip(out, "dynamic_minimol")
    printed: list[str] = []
    payload = mn.run_moleculenet_bench(
        seeds=[0],
        models=MODELS,
        embedding_cache_dir=str(source.parent / "embeddings"),
        missing_views=True,
        echo=printed.append,
        **common,
    )
    assert all(mv.FIELD not in r for r in payload["runs"])
    assert any(
        "--missing-views: 1 finished run(s)" in p and "delaney dynamic_minimol seed 0" in p
        for p in printed
    )
    assert mv.markdown_section(payload["runs"]) == []  # no run scored: no table
    assert "Missing views" not in (out / "moleculenet.md").read_text()


def test_an_interrupted_run_resumed_with_the_flag_is_scored(tiny_molnet_dir, tmp_path):
    kwargs = dict(
        datasets=["bbbp"],
        data_dir=str(tiny_molnet_dir),
        seeds=[0],
        epochs=2,
        models=["late"],
        out=str(tmp_path),
        progress=False,
        echo=lambda _: None,
    )
    with killed_after_epoch(1):
        mn.run_moleculenet_bench(**kwargs)
    payload = mn.run_moleculenet_bench(**kwargs, resume=True, missing_views=True)
    (run,) = payload["runs"]
    assert run["resumed_at_epochs"] == [1]
    assert run[mv.FIELD]["metric"] == "roc_auc"  # classification: probabilities of class 1
    assert run[mv.FIELD]["all_views"] == pytest.approx(run["test_metric"], abs=1e-12)
    assert list(run[mv.FIELD]["absent"]) == ["ecfp", "graph", "smiles"]


def test_merge_and_gains_keep_the_field(scored, tmp_path):
    _, source, _ = scored
    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    _strip(bare, "dynamic_minimol")
    # the same run in both folders, scored in one only: the merge keeps the scores
    merged = merge.merge_results([str(source)], str(bare), echo=lambda _: None)
    run = next(r for r in merged["runs"] if r["model"] == "dynamic_minimol")
    assert set(run[mv.FIELD]["absent"]) == set(VIEWS)
    assert "## Missing views at inference" in (bare / "moleculenet.md").read_text()

    _strip(bare, "dynamic_minimol")
    for order in ([bare, source], [source, bare]):  # whichever file comes last
        out = tmp_path / f"gains_{order[0].name}"
        text = gains.run_gains([str(p) for p in order], str(out), seeds=1, echo=lambda _: None)
        assert "| ESOL (delaney) | dynamic_minimol | RMSE ↓ | 1 |" in text
        assert (out / "gains_missing_views.png").stat().st_size > 0


def test_primary_metric_is_the_harness_metric():
    rng = np.random.default_rng(0)
    y = np.column_stack([rng.integers(0, 2, 20), np.ones(20)])  # task 2: one class only
    prob = rng.random((20, 2))
    w = np.ones_like(y)
    w[:3, 0] = 0
    metric = mv.PrimaryMetric("classification")
    value = metric.compute_metric(y, np.stack([1 - prob, prob], axis=-1), w, n_tasks=2)
    assert metric.name == "roc_auc"
    assert value == pytest.approx(classification_metrics(y, prob, w)["roc_auc"])
    assert np.isfinite(value)  # the one-class task is skipped, as in the tables
    y_reg, pred = rng.normal(size=(20, 1)), rng.normal(size=(20, 1))
    assert mv.PrimaryMetric("regression").compute_metric(y_reg, pred) == pytest.approx(
        regression_metrics(y_reg, pred)["rmse"]
    )


def _run(dataset, model, seed, metric, full, absent, **extra) -> dict:
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "metric": metric,
        "kind": "deepfuse fusion",
        "test": {metric: full},
        "hyperparameters": {"modalities": list(absent)},
        mv.FIELD: {"metric": metric, "all_views": full, "absent": absent},
        **extra,
    }


def test_table_means_over_seeds_and_marks_what_is_missing(tmp_path):
    runs = [
        _run("delaney", "dynamic_minimol", 0, "rmse", 1.0, {"ecfp": 1.2, "minimol": 1.1}),
        _run("delaney", "dynamic_minimol", 1, "rmse", 2.0, {"ecfp": 2.2, "minimol": None}),
        _run("bbbp", "dynamic", 0, "roc_auc", 0.8, {"ecfp": 0.76, "graph": 0.7}),
        {"dataset": "bbbp", "model": "dc_rf", "seed": 0, "metric": "roc_auc", "kind": "deepchem"},
    ]
    rows = {r["dataset"]: r for r in mv.summary_rows(runs)}
    assert set(rows) == {"bbbp", "delaney"}
    esol = rows["delaney"]
    assert esol["all_views"] == pytest.approx(1.5) and esol["n"] == 2
    assert esol["absent"]["ecfp"]["change"] == pytest.approx(0.2 / 1.5)
    # minimol scored in one seed: compared with that seed's all-views metric only
    assert esol["absent"]["minimol"] == {"mean": 1.1, "change": pytest.approx(0.1), "n": 1}
    lines = mv.markdown_section(runs)
    header = next(line for line in lines if line.startswith("| dataset"))
    assert header.endswith("| ecfp absent | graph absent | minimol absent |")
    bbbp = next(line for line in lines if line.startswith("| BBBP"))
    esol_line = next(line for line in lines if line.startswith("| ESOL"))
    assert lines.index(bbbp) < lines.index(esol_line)  # the suite's order
    assert bbbp.endswith("| 0.760 (-5.0%) | 0.700 (-12.5%) | – |")  # no minimol view
    assert esol_line.endswith("| 1.700 (+13.3%) | – | 1.100 (+10.0%) (n=1) |")
    assert (
        "- Largest loss with any single view absent: 13.3% of the all-views metric "
        "(dynamic_minimol on ESOL (delaney), ecfp absent)."
    ) in lines
    assert any("the MiniMol view absent: 10.0%" in line for line in lines)
    assert mv.plot(runs, str(tmp_path / "p.png")) and (tmp_path / "p.png").stat().st_size > 0
    assert not mv.plot(runs[-1:], str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()

    # a fusion run without scores is named, grouped by model
    lacking = {**runs[2], "seed": 1}
    lacking.pop(mv.FIELD)
    note = mv.markdown_section([*runs, lacking])[-2]
    assert note.startswith("- 1 run(s) were not scored with views absent")
    assert note.endswith(": dynamic on BBBP.")


def test_field_is_carried_only_between_copies_of_one_result():
    scored = _run("bbbp", "dynamic", 0, "roc_auc", 0.8, {"ecfp": 0.7, "graph": 0.75})
    bare = {k: v for k, v in scored.items() if k != mv.FIELD}
    assert mv.carry_field(bare, scored)[mv.FIELD] == scored[mv.FIELD]
    assert mv.carry_field(scored, bare) is scored
    rerun = {**bare, "test": {"roc_auc": 0.5}}
    assert mv.FIELD not in mv.carry_field(rerun, scored)  # another result: its scores do not fit


def test_a_zero_all_views_metric_has_no_relative_change(tmp_path):
    # a tiny test split can score ROC-AUC 0 with all views: the change relative to 0 is undefined
    runs = [_run("bbbp", "dynamic", 0, "roc_auc", 0.0, {"ecfp": 0.25, "graph": 0.0})]
    row = next(line for line in mv.markdown_section(runs) if line.startswith("| BBBP"))
    assert row.endswith("| 0.000 | 0.250 | 0.000 |")
    assert mv.plot(runs, str(tmp_path / "p.png"))
