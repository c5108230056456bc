"""Every loss term of nn/losses.py on hand-made tensors, values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deepfuse_plugin.nn import losses
from deepfuse_plugin.nn.fusion import masked_softmax

T = torch.tensor


def approx(x, value, tol=1e-6):
    return abs(float(x) - value) < tol


# -- L_rec -----------------------------------------------------------------------------------------
def test_reconstruction_loss_counts_only_dropped_modalities():
    names = ("a", "b")
    recon = {"a": T([[1.0, 3.0], [2.0, 2.0]]), "b": T([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])}
    target = {"a": T([[0.0, 0.0], [0.0, 0.0]]), "b": T([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    dropped = T([[True, False], [False, True]])
    # sample 0: a dropped, mean((1,3)^2) = 5; sample 1: b dropped, mean((3,0,0)^2) = 3 -> (5+3)/2
    assert approx(losses.reconstruction_loss(recon, target, dropped, names), 4.0)
    # what is not dropped is ignored, however wrong
    recon_bad = {"a": T([[1.0, 3.0], [1e6, 1e6]]), "b": T([[1e6, 1e6, 1e6], [3.0, 0.0, 0.0]])}
    assert approx(losses.reconstruction_loss(recon_bad, target, dropped, names), 4.0)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert float(losses.reconstruction_loss(recon, target, none, names)) == 0.0


def test_reconstruction_loss_sums_modalities_of_a_sample():
    names = ("a", "b")
    recon = {"a": T([[2.0]]), "b": T([[1.0]])}
    target = {"a": T([[0.0]]), "b": T([[0.0]])}
    assert approx(losses.reconstruction_loss(recon, target, T([[True, True]]), names), 5.0)


# -- L_align ---------------------------------------------------------------------------------------
def test_alignment_loss_is_mean_softplus_of_negative_cosine_over_visible():
    fused = T([[1.0, 0.0]])
    z = T([[[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]])  # cos = 1, 0, -1
    visible = T([[True, True, False]])
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert approx(losses.alignment_loss(fused, z, visible), expected)
    all_visible = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.e)) / 3
    assert approx(losses.alignment_loss(fused, z, torch.ones(1, 3, dtype=torch.bool)), all_visible)


def test_alignment_loss_ignores_invisible_modalities():
    fused = T([[1.0, 0.0], [0.0, 1.0]])
    z = T([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, -2.0]]])
    visible = T([[True, False], [True, False]])
    garbage = z.clone()
    garbage[:, 1] = T([[-7.0, 5.0], [100.0, -1.0]])
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-1 / math.sqrt(2)))) / 2
    assert approx(losses.alignment_loss(fused, z, visible), expected)
    assert approx(losses.alignment_loss(fused, garbage, visible), expected)


def test_alignment_loss_decreases_when_projections_align():
    fused = T([[1.0, 1.0]])
    aligned = losses.alignment_loss(fused, T([[[1.0, 1.0]]]), T([[True]]))
    opposed = losses.alignment_loss(fused, T([[[-1.0, -1.0]]]), T([[True]]))
    assert aligned < opposed


# -- L_div -----------------------------------------------------------------------------------------
def test_diversity_loss_is_mean_squared_cosine_over_visible_pairs():
    g = T([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # pairs: (0,1) cos 0, (0,2) cos 1/sqrt2 -> 0.5, (1,2) -> 0.5; mean = 1/3
    assert approx(losses.diversity_loss(g, torch.ones(1, 3, dtype=torch.bool)), 1 / 3)
    # modality 2 not visible: only the orthogonal pair (0,1) counts
    assert approx(losses.diversity_loss(g, T([[True, True, False]])), 0.0)
    identical = T([[[0.3, 0.7], [0.3, 0.7]]])
    assert approx(losses.diversity_loss(identical, T([[True, True]])), 1.0)


def test_diversity_loss_single_modality_or_no_visible_pairs_is_zero():
    one = losses.diversity_loss(torch.rand(3, 1, 4), torch.ones(3, 1, dtype=torch.bool))
    assert float(one) == 0
    g = torch.rand(2, 2, 4)
    assert float(losses.diversity_loss(g, T([[True, False], [False, True]]))) == 0


# -- L_ent -----------------------------------------------------------------------------------------
def test_negative_entropy_values():
    visible = T([[True, True, False], [True, True, True], [True, False, False]])
    alpha = T([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    per_sample = [-math.log(2), -math.log(3), 0.0]
    assert approx(losses.negative_entropy(alpha, visible), sum(per_sample) / 3)
    # the sign: spread attention scores lower (better) than collapsed attention
    peaked = losses.negative_entropy(T([[0.98, 0.01, 0.01]]), torch.ones(1, 3, dtype=torch.bool))
    uniform = losses.negative_entropy(T([[1 / 3] * 3]), torch.ones(1, 3, dtype=torch.bool))
    assert uniform < peaked


def test_negative_entropy_ignores_masked_entries():
    visible = T([[True, True, False]])
    clean = losses.negative_entropy(T([[0.5, 0.5, 0.0]]), visible)
    garbage = losses.negative_entropy(T([[0.5, 0.5, 0.7]]), visible)
    assert approx(clean, garbage)


@pytest.mark.parametrize(
    "visible,expected",
    [
        ([True, True, True, True], [0.25, 0.25, 0.25, 0.25]),
        ([True, False, True, True], [1 / 3, 0.0, 1 / 3, 1 / 3]),
    ],
)
def test_minimising_negative_entropy_drives_attention_to_uniform(visible, expected):
    """L_ent prevents attention collapse: gradient descent from a collapsed start spreads alpha."""
    scores = T([[6.0, -2.0, 0.5, -1.0]], requires_grad=True)
    mask = T([visible])
    optimiser = torch.optim.SGD([scores], lr=2.0)
    start = masked_softmax(scores, mask).detach()
    assert start.max() > 0.9  # collapsed
    for _ in range(400):
        optimiser.zero_grad()
        losses.negative_entropy(masked_softmax(scores, mask), mask).backward()
        optimiser.step()
    alpha = masked_softmax(scores, mask).detach()
    assert torch.allclose(alpha, T([expected]), atol=1e-2)
    assert alpha[~mask].eq(0).all()


# -- L_sparse --------------------------------------------------------------------------------------
def test_sparsity_loss_is_mean_l1_over_visible():
    gates = T([[[0.5, 0.5], [1.0, 0.0]], [[0.2, 0.4], [9.0, 9.0]]])
    visible = T([[True, True], [True, False]])
    # per-modality mean |g|: 0.5, 0.5, 0.3, (9 ignored) -> (0.5+0.5+0.3)/3
    assert approx(losses.sparsity_loss(gates, visible), 1.3 / 3)


# -- supervised terms ------------------------------------------------------------------------------
def test_masked_regression_loss_weights_and_nan_labels():
    pred = T([[1.0, 2.0], [3.0, 4.0]])
    labels = T([[0.0, float("nan")], [1.0, 4.0]])
    weights = T([[1.0, 1.0], [0.5, 1.0]])
    # entries: (1-0)^2*1, NaN -> weight 0, (3-1)^2*0.5 = 2, 0 -> sum 3, mean over 4 entries
    loss = losses.masked_regression_loss(pred, labels, weights)
    assert torch.isfinite(loss) and approx(loss, 3 / 4)


def test_masked_regression_loss_gradient_ignores_weight_zero_entries():
    pred = T([[1.0, 2.0]], requires_grad=True)
    losses.masked_regression_loss(pred, T([[0.0, float("nan")]]), T([[1.0, 1.0]])).backward()
    assert pred.grad[0, 1] == 0 and pred.grad[0, 0] != 0
    assert torch.isfinite(pred.grad).all()


def test_masked_regression_loss_broadcasts_per_sample_weights_and_empty_weights():
    pred = T([[1.0, 1.0], [1.0, 1.0]])
    labels = torch.zeros(2, 2)
    assert approx(losses.masked_regression_loss(pred, labels, T([[1.0], [0.0]])), 0.5)
    assert approx(losses.masked_regression_loss(pred, labels, torch.zeros(0)), 1.0)


def test_masked_classification_loss():
    logits = torch.zeros(2, 2, 2)  # uniform: CE = log 2 everywhere
    labels = T([[0.0, 1.0], [1.0, float("nan")]])
    weights = T([[1.0, 0.0], [2.0, 1.0]])
    # contributing: log2*1 + log2*2 = 3 log2, mean over 4 entries
    assert approx(losses.masked_classification_loss(logits, labels, weights), 3 * math.log(2) / 4)
    confident = T([[[5.0, -5.0]]])
    right = losses.masked_classification_loss(confident, T([[0.0]]), T([[1.0]]))
    wrong = losses.masked_classification_loss(confident, T([[1.0]]), T([[1.0]]))
    assert right < 0.01 < 9 < wrong
