"""Prediction heads on the fused embedding (pure torch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import mlp, reset_all


class TaskHead(nn.Module):
    """MLP from the fused embedding to task outputs.

    Regression: ``(B, D) -> prediction (B, T)``. Classification: ``(B, D) -> logits (B, T, C)`` and
    softmax probabilities ``(B, T, C)`` (DeepChem's output convention).
    """

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        mode: str = "regression",
        n_classes: int = 2,
        hidden_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        if mode not in ("regression", "classification"):
            raise ValueError(f"mode must be 'regression' or 'classification', got {mode!r}")
        self.n_tasks, self.mode, self.n_classes = n_tasks, mode, n_classes
        width = n_tasks * (n_classes if mode == "classification" else 1)
        self.net = nn.Sequential(nn.Dropout(dropout), mlp(in_dim, hidden_dim, width, 2, dropout))

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(prediction, loss_input)``: probabilities and logits, or twice the values."""
        out = self.net(fused)
        if self.mode == "regression":
            return out, out
        logits = out.view(-1, self.n_tasks, self.n_classes)
        return torch.softmax(logits, dim=-1), logits


#: Values of the ``uncertainty`` option that change the head.
UNCERTAINTY_KINDS = (None, "evidential")
#: Margin keeping the evidential parameters strictly inside their domain in float32.
EVIDENCE_EPS = 1e-6


class EvidentialRegressionHead(nn.Module):
    """Deep evidential regression head (Amini et al., 2020): a Normal-Inverse-Gamma per task.

    ``(B, D) -> prediction gamma (B, T)`` and ``params (B, T, 4)`` = ``(gamma, nu, alpha, beta)``
    with ``nu = softplus(.) + eps > 0``, ``alpha = softplus(.) + 1 + eps > 1``,
    ``beta = softplus(.) + eps > 0``. The NIG is the prior over the ``(mu, sigma^2)`` of a Gaussian
    likelihood; :func:`nig_moments` turns the parameters into the prediction and the aleatoric and
    epistemic variances.
    """

    def __init__(self, in_dim: int, n_tasks: int, hidden_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        self.n_tasks, self.mode = n_tasks, "regression"
        self.net = nn.Sequential(
            nn.Dropout(dropout), mlp(in_dim, hidden_dim, 4 * n_tasks, 2, dropout)
        )

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        raw = self.net(fused).view(-1, self.n_tasks, 4)
        params = nig_constrain(raw)
        return params[..., 0], params


class DirichletHead(nn.Module):
    """Evidential classification head (Sensoy et al., 2018): a Dirichlet per task.

    ``(B, D) -> probabilities (B, T, C)`` and ``alpha (B, T, C)``. Evidence is
    ``softplus(logits)`` (not ``exp``: softplus grows linearly, so one large logit cannot produce
    astronomically confident Dirichlets, and training is stable without clipping);
    ``alpha = evidence + 1`` and the probabilities are the Dirichlet mean ``alpha / S``,
    ``S = sum_k alpha_k``.
    """

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        n_classes: int = 2,
        hidden_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.n_tasks, self.n_classes, self.mode = n_tasks, n_classes, "classification"
        self.net = nn.Sequential(
            nn.Dropout(dropout), mlp(in_dim, hidden_dim, n_tasks * n_classes, 2, dropout)
        )

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(fused).view(-1, self.n_tasks, self.n_classes)
        alpha = torch.nn.functional.softplus(logits) + 1.0
        return alpha / alpha.sum(dim=-1, keepdim=True), alpha


def make_head(
    in_dim: int,
    n_tasks: int,
    mode: str = "regression",
    n_classes: int = 2,
    hidden_dim: int = 128,
    dropout: float = 0.1,
    uncertainty: str | None = None,
) -> nn.Module:
    """The task head for ``mode`` and ``uncertainty`` (None: :class:`TaskHead`; ``"evidential"``:
    :class:`EvidentialRegressionHead` or :class:`DirichletHead`). All return
    ``(prediction, loss_input)``; for the evidential heads the loss input is the distribution's
    parameters."""
    if uncertainty not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {uncertainty!r}")
    if uncertainty is None:
        return TaskHead(in_dim, n_tasks, mode, n_classes, hidden_dim, dropout)
    if mode == "regression":
        return EvidentialRegressionHead(in_dim, n_tasks, hidden_dim, dropout)
    if mode == "classification":
        return DirichletHead(in_dim, n_tasks, n_classes, hidden_dim, dropout)
    raise ValueError(f"mode must be 'regression' or 'classification', got {mode!r}")


# -- evidential distributions: constraints, moments, combination ---------------------------------
def nig_constrain(raw: Tensor) -> Tensor:
    """Unconstrained ``(..., 4)`` -> NIG parameters ``(gamma, nu, alpha, beta)`` in their domain."""
    softplus = torch.nn.functional.softplus
    gamma, nu, alpha, beta = raw.unbind(-1)
    return torch.stack(
        [
            gamma,
            softplus(nu) + EVIDENCE_EPS,
            softplus(alpha) + 1.0 + EVIDENCE_EPS,
            softplus(beta) + EVIDENCE_EPS,
        ],
        dim=-1,
    )


def nig_moments(params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(..., 4)`` NIG parameters -> ``(mean, aleatoric_var, epistemic_var)``, each ``(...)``.

    ``E[mu] = gamma``, aleatoric ``E[sigma^2] = beta / (alpha - 1)``, epistemic
    ``Var[mu] = beta / (nu (alpha - 1))`` (Amini et al., 2020, eq. 5).
    """
    gamma, nu, alpha, beta = params.unbind(-1)
    aleatoric = beta / (alpha - 1.0)
    return gamma, aleatoric, aleatoric / nu


def combine_nig(params: Tensor, weights: Tensor) -> Tensor:
    """Moment-matched NIG of a weighted mixture of NIGs (late fusion of evidential predictors).

    ``params (B, M, T, 4)``, ``weights (B, M)`` (rows sum to 1, 0 for missing members) ->
    ``(B, T, 4)``. The mixture's moments are matched exactly:

    - mean ``gamma = sum_m w_m gamma_m``;
    - aleatoric ``E[sigma^2] = sum_m w_m beta_m / (alpha_m - 1)``;
    - epistemic ``Var[mu] = sum_m w_m (v_m + (gamma_m - gamma)^2)`` (law of total variance: the
      members' disagreement is epistemic);

    and the one remaining degree of freedom is fixed by ``alpha = 1 + sum_m w_m (alpha_m - 1)``
    (pooled evidence), then ``beta = aleatoric (alpha - 1)``, ``nu = aleatoric / epistemic``.
    A row with no member (all weights 0) gets ``gamma = 0`` and a vague NIG (``alpha ~ 1``).
    """
    w = weights.to(params.dtype).view(*weights.shape, 1)  # (B, M, 1)
    gamma_m, aleatoric_m, epistemic_m = nig_moments(params)  # (B, M, T)
    gamma = (w * gamma_m).sum(1)
    aleatoric = (w * aleatoric_m).sum(1).clamp(min=EVIDENCE_EPS)
    epistemic = (w * (epistemic_m + (gamma_m - gamma.unsqueeze(1)).pow(2))).sum(1)
    epistemic = epistemic.clamp(min=EVIDENCE_EPS)
    alpha = 1.0 + EVIDENCE_EPS + (w * (params[..., 2] - 1.0)).sum(1)
    beta = aleatoric * (alpha - 1.0)
    return torch.stack([gamma, aleatoric / epistemic, alpha, beta], dim=-1)


def dirichlet_moments(alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``alpha (..., C)`` -> ``(mean (..., C), std (..., C), vacuity (...))``.

    ``mean_k = alpha_k / S``; ``std_k`` is the Dirichlet standard deviation of the class probability
    ``p_k``, ``sqrt(alpha_k (S - alpha_k) / (S^2 (S + 1)))``; vacuity ``u = C / S`` in (0, 1]
    (1 = no evidence at all).
    """
    strength = alpha.sum(dim=-1, keepdim=True)
    mean = alpha / strength
    var = alpha * (strength - alpha) / (strength.pow(2) * (strength + 1.0))
    return mean, var.sqrt(), alpha.shape[-1] / strength.squeeze(-1)


def combine_dirichlet(alpha: Tensor, weights: Tensor) -> Tensor:
    """Late fusion of Dirichlets: ``alpha = 1 + sum_m w_m (alpha_m - 1)`` (weighted evidence).

    ``alpha (B, M, T, C)``, ``weights (B, M)`` -> ``(B, T, C)``. A row with no member is the uniform
    Dirichlet (vacuity 1).
    """
    w = weights.to(alpha.dtype).view(*weights.shape, 1, 1)
    return 1.0 + (w * (alpha - 1.0)).sum(1)
