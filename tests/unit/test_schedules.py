"""Training schedules of every deepfuse model: learning-rate schedules with warm-up, gradient
clipping, reduce-on-plateau and early stopping in the validation loop, and their resumption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import deepfuse_plugin as dfp
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.models._schedules import lr_factor, plateau_scale
from deepfuse_plugin.train import loop, resume
from tests.conftest import killed_after_epoch


def test_learning_rate_curves():
    assert [lr_factor("constant", p, 10, 4) for p in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [lr_factor("cosine", p, 100, 0) for p in (0, 50, 100)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor("cosine", 2, 100, 10) == pytest.approx(0.3)  # warm-up first
    onecycle = [lr_factor("onecycle", p, 100, 0) for p in (0, 29, 30, 100)]
    assert onecycle[0] == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)  # from lr/25 over 30% ...
    assert onecycle[1:3] == pytest.approx([1.0, 1.0])  # ... up to lr ...
    assert onecycle[3] == pytest.approx(1e-4)  # ... and down to lr/1e4
    assert lr_factor("plateau", 99, 100, 0) == 1.0  # plateau scales come from validation


def test_plateau_scale_halves_after_patience_validations_without_improvement():
    assert plateau_scale([], 2) == 1.0
    assert plateau_scale([1.0, 0.9, 0.8], 1) == 1.0
    assert plateau_scale([1.0, 1.1, 1.2], 2) == 0.5
    assert plateau_scale([1.0, 1.1, 1.2, 1.3, 1.4], 2) == 0.25
    assert plateau_scale([1.0, math.nan, math.nan], 2) == 0.5  # NaN never improves


@pytest.mark.parametrize(
    "setting, match",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"grad_clip": 0}, "grad_clip"),
        ({"grad_clip": math.inf}, "grad_clip"),
        ({"early_stopping": 0}, "early_stopping"),
        ({"plateau_patience": 1.5}, "plateau_patience"),
    ],
)
def test_bad_schedule_settings_are_refused_by_name(setting, match, tiny_model_kwargs):
    with pytest.raises(InvalidSettingError, match=match):
        dfp.EarlyFusionModel(1, ["ecfp"], **{**tiny_model_kwargs, **setting})


def test_a_deepchem_rate_schedule_and_lr_schedule_do_not_mix(tiny_model_kwargs):
    import deepchem as dc

    decay = dc.models.optimizers.ExponentialDecay(1e-3, 0.9, 10)
    with pytest.raises(InvalidSettingError, match="both set the rate"):
        dfp.EarlyFusionModel(1, ["ecfp"], lr_schedule="cosine", learning_rate=decay)


def _rates_during_fit(model, dataset, epochs: int) -> list[float]:
    rates: list[float] = []
    model.fit(
        dataset,
        nb_epoch=epochs,
        callbacks=[lambda m, step: rates.append(m._pytorch_optimizer.param_groups[0]["lr"])],
    )
    return rates


def test_fit_follows_warmup_then_cosine(tiny_dataset, small_featurizer, tiny_model_kwargs):
    kwargs = {**tiny_model_kwargs, "batch_size": 8, "learning_rate": 1e-2}
    model = dfp.EarlyFusionModel(
        1, small_featurizer.modalities, lr_schedule="cosine", warmup_epochs=1, **kwargs
    )
    steps = math.ceil(len(tiny_dataset) / 8)
    # the rate after each step is the one the next step uses
    rates = _rates_during_fit(model, tiny_dataset, 3)
    expected = [1e-2 * lr_factor("cosine", p + 1, 3 * steps, steps) for p in range(3 * steps)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    # a constant model keeps DeepChem's rate
    flat = dfp.EarlyFusionModel(1, small_featurizer.modalities, **kwargs)
    assert set(_rates_during_fit(flat, tiny_dataset, 1)) == {1e-2}


def test_pretrained_encoder_rate_keeps_its_scale_under_a_schedule(tmp_path):
    from deepfuse_plugin.models._schedules import StepwiseLR

    class Holder:  # the parts of a model StepwiseLR reads
        lr_schedule, lr_scale = "cosine", 1.0
        _pytorch_optimizer = torch.optim.Adam(
            [
                {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 1e-3},
                {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 1e-4},
            ]
        )

    holder = Holder()
    schedule = StepwiseLR(holder, start=0, total=10, warmup=0)
    for _ in range(5):
        schedule.step()
    first, second = (g["lr"] for g in holder._pytorch_optimizer.param_groups)
    assert first == pytest.approx(1e-3 * 0.5) and second == pytest.approx(1e-4 * 0.5)


def test_grad_clip_bounds_the_gradient_norm_of_every_step(
    tiny_dataset, small_featurizer, tiny_model_kwargs
):
    def grad_norm(model) -> float:
        grads = [p.grad for p in model.model.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    norms = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        model = dfp.EarlyFusionModel(
            1, small_featurizer.modalities, grad_clip=clip, **tiny_model_kwargs
        )
        model.fit(tiny_dataset, nb_epoch=1)
        norms[clip] = grad_norm(model)  # the last step's gradients, as the optimizer saw them
    assert norms[None] > 1e-2
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3)


def _scripted_validation(monkeypatch, scores: list[float]) -> list[float]:
    """The validation loop sees ``scores`` (RMSE) one after another; returns the learning rates
    the model trained at when each validation came."""
    remaining, rates = iter(scores), []

    def evaluate(model, dataset, transformers, mode):
        rates.append(model._pytorch_optimizer.param_groups[0]["lr"])
        return {"rmse": next(remaining)}, None

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return rates


def _train(model, dataset, folder, epochs: int = 6, resumable: bool = False):
    train, valid = dataset.select(list(range(16))), dataset.select(list(range(16, 24)))
    return loop.train_with_validation(
        model,
        train,
        valid,
        epochs,
        1,
        [],
        "regression",
        folder,
        progress=False,
        resumable=resumable,
    )


def test_early_stopping_ends_training_and_keeps_the_best_epoch(
    tiny_dataset, small_featurizer, tiny_model_kwargs, tmp_path, monkeypatch
):
    _scripted_validation(monkeypatch, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    model = dfp.EarlyFusionModel(
        1,
        small_featurizer.modalities,
        early_stopping=2,
        model_dir=str(tmp_path),
        **tiny_model_kwargs,
    )
    result = _train(model, tiny_dataset, str(tmp_path))
    assert (result.stopped_at, result.best_epoch, len(result.history)) == (4, 2, 4)
    assert model.epochs_started == 2  # the kept checkpoint is epoch 2's
    # without a patience every epoch trains
    _scripted_validation(monkeypatch, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    model = dfp.EarlyFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    result = _train(model, tiny_dataset, str(tmp_path / "all"))
    assert (result.stopped_at, result.best_epoch) == (None, 6)


def test_plateau_schedule_halves_the_rate_in_the_validation_loop(
    tiny_dataset, small_featurizer, tiny_model_kwargs, tmp_path, monkeypatch
):
    rates = _scripted_validation(monkeypatch, [1.0, 1.1, 1.2, 1.3])
    model = dfp.EarlyFusionModel(
        1,
        small_featurizer.modalities,
        lr_schedule="plateau",
        plateau_patience=1,
        **{**tiny_model_kwargs, "learning_rate": 1e-2},
    )
    _train(model, tiny_dataset, str(tmp_path), epochs=4)
    assert model.lr_scale == 0.125  # three validations in a row without improvement
    assert rates == pytest.approx([1e-2, 1e-2, 5e-3, 2.5e-3])  # halved from the next step on


def test_a_resumed_scheduled_run_matches_one_uninterrupted_run(
    tiny_dataset, small_featurizer, tiny_model_kwargs, tmp_path
):
    def build(folder):
        torch.manual_seed(0)
        return dfp.EarlyFusionModel(
            1,
            small_featurizer.modalities,
            lr_schedule="onecycle",
            grad_clip=1.0,
            model_dir=folder,
            **tiny_model_kwargs,
        )

    np.random.seed(1)
    whole = build(str(tmp_path / "whole"))
    expected = _train(whole, tiny_dataset, str(tmp_path / "whole"), epochs=4)
    folder = str(tmp_path / "resumed")
    np.random.seed(1)
    with killed_after_epoch(2):
        _train(build(folder), tiny_dataset, folder, epochs=4, resumable=True)
    assert resume.read_state(folder).epochs_done == 2
    result = _train(build(folder), tiny_dataset, folder, epochs=4, resumable=True)
    assert result.resumed_at == [2]
    np.testing.assert_allclose(
        [h["score"] for h in result.history], [h["score"] for h in expected.history], rtol=1e-5
    )


def test_schedule_settings_are_saved_and_restored(small_featurizer, tiny_model_kwargs, tmp_path):
    settings = {
        "lr_schedule": "cosine",
        "warmup_epochs": 0.5,
        "grad_clip": 2.0,
        "early_stopping": 5,
        "plateau_patience": 4,
    }
    model = dfp.DynamicFusionModel(
        1, small_featurizer.modalities, model_dir=str(tmp_path), **settings, **tiny_model_kwargs
    )
    model.save_checkpoint()
    loaded = dfp.MultiModalTorchModel.load(str(tmp_path))
    assert {k: getattr(loaded, k) for k in settings} == settings


def test_one_row_multitask_split_is_scored_in_original_units():
    """DeepChem's untransform turns one row of T > 1 tasks into (T, T); a one-row validation or
    test split crashed the scoring."""
    import deepchem as dc

    from deepfuse_plugin.data.datasets import untransform_labels
    from deepfuse_plugin.train import evaluate

    rng = np.random.default_rng(0)
    raw = dc.data.NumpyDataset(
        rng.normal(size=(10, 3)), rng.normal(size=(10, 2)) * 5 + 3, np.ones((10, 2))
    )
    normalizer = dc.trans.NormalizationTransformer(transform_y=True, dataset=raw)
    one = normalizer.transform(raw).select([4])
    np.testing.assert_allclose(untransform_labels(one.y, [normalizer]), raw.y[4:5])

    class Oracle:  # predicts the transformed labels exactly
        def predict(self, dataset, transformers=()):
            return untransform_labels(dataset.y, transformers) if transformers else dataset.y

    metrics, pred = evaluate(Oracle(), one, [normalizer], "regression")
    assert pred.shape == (1, 2) and metrics["rmse"] == pytest.approx(0.0, abs=1e-9)
