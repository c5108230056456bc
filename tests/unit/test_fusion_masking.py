"""Masking invariants of DynamicFusion, modality drop sampling and the masking curriculum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.nn.encoders import EncodedModality
from deepfuse_plugin.nn.fusion import (
    DynamicFusion,
    FusionOutput,
    curriculum_rate,
    masked_softmax,
    sample_modality_drop,
)

NAMES = ("a", "b", "c")
MASK = torch.tensor(
    [
        [True, True, True],
        [True, False, True],
        [False, False, True],
        [True, True, False],
        [False, True, False],
    ]
)


def make_inputs(batch=5, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    pooled = {n: torch.randn(batch, dim, generator=g).requires_grad_(True) for n in NAMES}
    return pooled, {n: EncodedModality(p) for n, p in pooled.items()}


def fusion_layer(mask_rate=0.0):
    return DynamicFusion(
        NAMES,
        in_dim=8,
        fused_dim=6,
        gate_hidden=8,
        attention_hidden=8,
        decoder_hidden=8,
        mask_rate=mask_rate,
    )


def total_loss(out: FusionOutput, layer) -> torch.Tensor:
    aux = sum(layer.loss_weights[k] * v for k, v in out.aux_losses.items())
    return (out.fused**2).sum() + out.fused.sum() + aux


def test_output_shapes_and_aux_terms():
    layer = fusion_layer().eval()
    _, embeddings = make_inputs()
    out = layer(embeddings, MASK)
    assert out.fused.shape == (5, 6) and out.weights.shape == (5, 3)
    assert set(out.aux_losses) == {"rec", "align", "div", "ent", "sparse"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.aux_losses.values())
    assert out.extras["gates"].shape == (5, 3, 8)
    assert ((out.extras["gates"] > 0) & (out.extras["gates"] < 1)).all()
    assert out.extras["reconstructed:a"].shape == (5, 8)


def test_missing_modality_weight_is_exactly_zero_and_rest_sum_to_one():
    layer = fusion_layer().eval()
    _, embeddings = make_inputs()
    alpha = layer(embeddings, MASK).weights
    assert (alpha[~MASK] == 0).all()  # exactly 0, not small
    assert (alpha[MASK] > 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(5))


@pytest.mark.parametrize("garbage", [1e4, float("nan"), float("inf")])
def test_missing_modality_values_do_not_change_the_output(garbage):
    """The fusion contract: layers never read a missing modality's values (not even NaN/inf)."""
    layer = fusion_layer().eval()
    _, embeddings = make_inputs()
    out = layer(embeddings, MASK)
    poisoned = {n: EncodedModality(e.pooled.detach().clone()) for n, e in embeddings.items()}
    for j, n in enumerate(NAMES):
        poisoned[n].pooled[~MASK[:, j]] = garbage  # garbage where missing
    out2 = layer(poisoned, MASK)
    torch.testing.assert_close(out.fused, out2.fused)
    torch.testing.assert_close(out.weights, out2.weights)
    for key in out.aux_losses:
        torch.testing.assert_close(out.aux_losses[key], out2.aux_losses[key])
    for j in range(len(NAMES)):
        rows = MASK[:, j]
        torch.testing.assert_close(out.extras["gates"][rows, j], out2.extras["gates"][rows, j])


@pytest.mark.parametrize("training", [False, True])
def test_no_gradient_flows_into_a_masked_modality(training):
    layer = fusion_layer(mask_rate=0.5 if training else 0.0)
    layer.train(training)
    torch.manual_seed(3)
    pooled, embeddings = make_inputs(batch=64)
    mask = torch.rand(64, 3) < 0.7
    mask[~mask.any(1), 0] = True
    out = layer(embeddings, mask)
    total_loss(out, layer).backward()
    visible = mask & ~out.extras["dropped"]
    if training:
        assert out.extras["dropped"].any()  # masking really happened
        assert out.aux_losses["rec"] > 0
    for j, n in enumerate(NAMES):
        grad = pooled[n].grad
        assert grad is not None
        assert (grad[~visible[:, j]] == 0).all(), n  # masked or dropped: no gradient at all
        assert (grad[visible[:, j]].abs().sum(1) > 0).all(), n  # visible: gradient flows


def test_no_gradient_into_missing_rows_through_a_full_network(small_featurizer, tiny_model_kwargs):
    """Same invariant end to end: encoder input rows of missing samples get zero gradient."""
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    model = DynamicFusionModel(
        1, small_featurizer.modalities, mask_start=0.3, mask_end=0.3, **tiny_model_kwargs
    )
    samples = list(
        small_featurizer.featurize(
            ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1", "CCOC", "OCCO"]
        )
    )
    samples[1] = samples[1].without(["ecfp"])
    samples[4] = samples[4].without(["ecfp", "graph"])
    batch = collate_samples(samples, small_featurizer.modalities)
    batch.inputs["ecfp"].requires_grad_(True)
    network = model.model
    network.train()
    out = network(batch)
    (out.prediction.sum() + out.aux_loss).backward()
    dropped = network.last_fusion.extras["dropped"]
    visible = batch.mask & ~dropped
    grad = batch.inputs["ecfp"].grad
    assert (grad[~visible[:, 0]] == 0).all()
    assert (grad[visible[:, 0]].abs().sum(1) > 0).all()


def test_masked_softmax_all_masked_row_is_zero_and_finite_gradient():
    scores = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    alpha = masked_softmax(scores, mask)
    assert (alpha[0] == 0).all()
    torch.testing.assert_close(alpha[1].sum(), torch.tensor(1.0))
    alpha.sum().backward()
    assert torch.isfinite(scores.grad).all()


# -- sample_modality_drop --------------------------------------------------------------------------
def random_mask(batch, m, p, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, m, generator=g) < p
    return mask


@pytest.mark.parametrize("rate", [0.3, 0.7, 0.99])
def test_drop_never_removes_all_present_modalities(rate):
    mask = random_mask(4000, 4, 0.6, seed=1)
    g = torch.Generator().manual_seed(2)
    dropped = sample_modality_drop(mask, rate, generator=g)
    assert dropped.dtype == torch.bool and dropped.shape == mask.shape
    assert not (dropped & ~mask).any()  # only present modalities are dropped
    remaining = mask & ~dropped
    np.testing.assert_array_equal(remaining.any(1).numpy(), mask.any(1).numpy())
    # rows with nothing present stay untouched
    assert not dropped[~mask.any(1)].any()


def test_drop_rate_is_about_the_requested_rate():
    mask = torch.ones(20000, 4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    for rate in (0.1, 0.3, 0.5):
        dropped = sample_modality_drop(mask, rate, generator=g)
        # P(all 4 dropped) = rate^4 is restored (one kept), so the rate is slightly below `rate`
        expected = rate - rate**4 / 4
        assert abs(dropped.float().mean().item() - expected) < 0.01, rate
    assert not sample_modality_drop(mask, 0.0).any()


def test_kept_modality_is_chosen_uniformly_when_everything_would_be_dropped():
    mask = torch.tensor([[True, False, True, True]]).repeat(6000, 1)
    g = torch.Generator().manual_seed(5)
    dropped = sample_modality_drop(mask, 0.999999, generator=g)
    kept = (mask & ~dropped).float()
    assert (kept.sum(1) == 1).all()
    freq = kept.mean(0)
    assert freq[1] == 0
    torch.testing.assert_close(freq[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_training_mode_drops_eval_mode_never_drops():
    layer = fusion_layer(mask_rate=0.5)
    _, embeddings = make_inputs(batch=5)
    layer.train()
    torch.manual_seed(0)
    train_out = layer(embeddings, torch.ones(5, 3, dtype=torch.bool))
    layer.eval()
    eval_out = layer(embeddings, MASK)
    assert not eval_out.extras["dropped"].any()
    assert float(eval_out.aux_losses["rec"]) == 0.0  # nothing dropped, nothing to reconstruct
    dropped = train_out.extras["dropped"]
    assert (train_out.weights[dropped] == 0).all()  # dropped modalities get alpha exactly 0
    torch.testing.assert_close(train_out.weights.sum(1), torch.ones(5))


# -- curriculum ------------------------------------------------------------------------------------
def test_curriculum_rate_endpoints_and_linearity():
    assert curriculum_rate(0.0, 0.1, 0.4) == pytest.approx(0.1)
    assert curriculum_rate(1.0, 0.1, 0.4) == pytest.approx(0.4)
    assert curriculum_rate(0.5, 0.1, 0.4) == pytest.approx(0.25)
    assert curriculum_rate(-1.0, 0.1, 0.4) == pytest.approx(0.1)  # clamped
    assert curriculum_rate(2.0, 0.1, 0.4) == pytest.approx(0.4)
    rates = [curriculum_rate(p, 0.0, 0.6) for p in np.linspace(0, 1, 7)]
    assert rates == sorted(rates)


def test_fit_raises_mask_rate_from_start_to_end_across_epochs(
    small_featurizer, featurized, tiny_model_kwargs
):
    import deepchem as dc

    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    kwargs = {**tiny_model_kwargs, "batch_size": 8}
    model = DynamicFusionModel(
        1, small_featurizer.modalities, mask_start=0.1, mask_end=0.5, **kwargs
    )
    seen = []
    model.model.fusion.register_forward_pre_hook(
        lambda module, args: seen.append(module.mask_rate) if module.training else None
    )
    model.fit(ds, nb_epoch=5)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # one batch per epoch
    seen.clear()
    model.predict(ds)
    assert seen == []  # inference never masks
    seen.clear()
    model.pretrain(ds, nb_epoch=2)
    assert seen == pytest.approx([0.1, 0.5])  # by default it restarts with every fit/pretrain call


def test_curriculum_epochs_spans_fit_calls(small_featurizer, featurized, tiny_model_kwargs):
    import deepchem as dc

    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    model = DynamicFusionModel(
        1,
        small_featurizer.modalities,
        mask_start=0.1,
        mask_end=0.5,
        curriculum_epochs=5,
        **{**tiny_model_kwargs, "batch_size": 8},
    )
    seen = []
    model.model.fusion.register_forward_pre_hook(
        lambda module, args: seen.append(module.mask_rate) if module.training else None
    )
    for _ in range(6):  # DeepChem's loop: one epoch per fit call
        model.fit(ds, nb_epoch=1)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])  # held at mask_end afterwards
    assert model.get_config()["curriculum_epochs"] == 5
    with pytest.raises(ValueError, match="curriculum_epochs"):
        DynamicFusionModel(1, small_featurizer.modalities, curriculum_epochs=0)


def test_count_schedules_over_spans_a_per_fit_curriculum(
    small_featurizer, featurized, tiny_model_kwargs
):
    import deepchem as dc

    from deepfuse_plugin.models.dynamic import DynamicFusionModel
    from deepfuse_plugin.models.late import LateFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    kwargs = {**tiny_model_kwargs, "batch_size": 8}
    model = DynamicFusionModel(
        1, small_featurizer.modalities, mask_start=0.1, mask_end=0.5, **kwargs
    )
    model.count_schedules_over(5)  # what a resumable run does before its first fit call
    seen = []
    model.model.fusion.register_forward_pre_hook(
        lambda module, args: seen.append(module.mask_rate) if module.training else None
    )
    model.fit(ds, nb_epoch=2)
    model.fit(ds, nb_epoch=3)  # a restart: continues the schedule instead of starting over
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    explicit = DynamicFusionModel(1, small_featurizer.modalities, curriculum_epochs=7, **kwargs)
    explicit.count_schedules_over(5)
    assert explicit.curriculum_epochs == 7  # a user's own count wins
    late = LateFusionModel(1, small_featurizer.modalities, **kwargs)
    before = late.get_config()
    late.count_schedules_over(5)  # no per-fit schedule: nothing changes
    assert late.get_config() == before


def test_a_loaded_model_continues_its_curriculum(
    small_featurizer, featurized, tiny_model_kwargs, tmp_path
):
    import deepchem as dc
    import torch

    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    model = DynamicFusionModel(
        1,
        small_featurizer.modalities,
        mask_start=0.1,
        mask_end=0.5,
        curriculum_epochs=5,
        model_dir=str(tmp_path),
        **{**tiny_model_kwargs, "batch_size": 8},
    )
    for _ in range(3):
        model.fit(ds, nb_epoch=1)  # each fit call ends with a checkpoint
    loaded = DynamicFusionModel.load(str(tmp_path))
    assert loaded.epochs_started == 3
    seen = []
    loaded.model.fusion.register_forward_pre_hook(
        lambda module, args: seen.append(module.mask_rate) if module.training else None
    )
    loaded.fit(ds, nb_epoch=1)
    loaded.fit(ds, nb_epoch=1)
    assert seen == pytest.approx([0.4, 0.5])  # where the saved model left off, not at 0.1
    # a checkpoint written before the counter existed still restores, as "no epoch started"
    (checkpoint,) = loaded.get_checkpoints()[:1]
    data = torch.load(checkpoint)
    del data["model_state_dict"]["epochs_started"]
    torch.save(data, checkpoint)
    loaded.restore(checkpoint)
    assert loaded.epochs_started == 0


def test_repeated_single_epoch_fits_warn_about_the_curriculum(
    small_featurizer, featurized, tiny_model_kwargs, caplog
):
    import deepchem as dc

    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    model = DynamicFusionModel(1, small_featurizer.modalities, **tiny_model_kwargs)
    with caplog.at_level("WARNING", logger="deepfuse_plugin.models.dynamic"):
        for _ in range(3):
            model.fit(ds, nb_epoch=1)
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "deepfuse_plugin.models.dynamic"
    ]
    assert len(warnings) == 1 and "curriculum_epochs" in warnings[0]  # once, from the second fit


def test_validation_predictions_inside_fit_keep_training_mode(
    small_featurizer, featurized, tiny_model_kwargs
):
    import deepchem as dc

    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    ds = dc.data.NumpyDataset(featurized[:8], np.zeros((8, 1)))
    model = DynamicFusionModel(
        1, small_featurizer.modalities, **{**tiny_model_kwargs, "batch_size": 4}
    )
    modes = []
    model.model.fusion.register_forward_pre_hook(lambda module, args: modes.append(module.training))

    def validate(model_, step):  # a DeepChem callback: called after every training batch
        model_.predict(ds)

    model.fit(ds, nb_epoch=2, callbacks=[validate])
    # per step: one training batch, then two prediction batches; training never runs in eval mode
    assert modes == [True, False, False] * 4
    modes.clear()
    model.predict(ds)
    assert not model.model.training  # outside fit, predict leaves eval mode, as DeepChem does
    model.fit(ds, nb_epoch=1)  # and DeepChem's fit switches training mode back on
    assert modes == [False, False, True, True]
