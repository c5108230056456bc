"""Fusion layers. One layer per idea, one call signature for all:

``layer(embeddings: dict[str, EncodedModality], mask: Tensor (B, M)) -> FusionOutput``

``embeddings`` are the encoder outputs in the model's modality order; ``mask`` is the presence mask
(True = the modality exists for that sample). Layers never read a missing modality's values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepfuse_plugin.nn import losses
from deepfuse_plugin.nn.encoders import (EncodedModality, check_length_chunk, last_real_extents,
                                         length_sorted_chunks, mlp, reset_all)
from deepfuse_plugin.nn.heads import combine_dirichlet, combine_nig, make_head


@dataclass
class FusionOutput:
    """What every fusion layer returns.

    Attributes
    ----------
    fused: Tensor ``(B, D)``
        The fused embedding.
    weights: Tensor ``(B, M)`` or None
        Per-sample modality weights (0 for missing modalities), for layers that have them.
    aux_losses: dict name -> scalar Tensor
        Unweighted auxiliary loss terms; ``loss_weights`` of the layer say how they are summed.
        Empty under ``torch.no_grad()``: nothing can optimise them there, and computing them took
        about 8% of a one-molecule ``predict``.
    extras: dict
        Anything else worth inspecting (gates, reconstructions, the dropped mask).
    task_outputs: tuple of Tensor, optional
        ``(prediction, loss_input)`` in the :class:`~deepfuse_plugin.nn.heads.TaskHead` convention,
        for layers that predict themselves (late fusion). When set, the network uses it instead of
        its head; ``fused`` is still the embedding reported by ``output_types=["embedding"]``.
    """

    fused: Tensor
    weights: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    task_outputs: tuple[Tensor, Tensor] | None = None


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where masked-out entries get exactly 0; an all-masked row is all 0."""
    # A finite fill (not -inf) keeps an all-masked row finite in forward *and* backward; the
    # multiplication by the mask then makes masked entries exactly 0.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.to(scores.dtype)


def sample_modality_drop(mask: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Random ``(B, M)`` drop mask: each present modality dropped with probability ``rate``.

    Never drops every present modality of a sample: where that happens, one present modality chosen
    uniformly at random is kept.
    """
    if rate <= 0.0:
        return torch.zeros_like(mask)
    u = torch.rand(mask.shape, device=mask.device, generator=generator)
    dropped = (u < rate) & mask
    emptied = mask.any(dim=1) & ~(mask & ~dropped).any(dim=1)
    if emptied.any():
        # keep the present modality with the largest uniform draw (a uniform choice among present)
        keep = torch.where(mask, u, torch.full_like(u, -1.0)).argmax(dim=1)
        restore = torch.zeros_like(mask)
        restore[torch.arange(mask.shape[0], device=mask.device), keep] = True
        dropped &= ~(restore & emptied.unsqueeze(1))
    return dropped


def curriculum_rate(progress: float, start: float, end: float) -> float:
    """Linear masking curriculum: ``start`` at progress 0, ``end`` at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


class DynamicFusion(nn.Module):
    """Dynamic gated fusion (Priyadarsini et al., "Learning Resilient Molecular Representations with
    Dynamic Multi-Modal Fusion").

    For every modality m with encoder output ``x_m (B, d)``:

    1. intra-modal gate ``g_m = sigmoid(MLP_m(x_m))`` in ``(0, 1)^d``, gated ``x~_m = g_m * x_m``;
    2. projection into the shared space ``z_m = W_m x~_m`` ``(B, D)``;
    3. inter-modal attention ``alpha = softmax_m(v^T tanh(U z_m))`` over the *visible* modalities
       (missing and masked ones get exactly 0);
    4. fused embedding ``f = sum_m alpha_m z_m``;
    5. decoders ``D_m(f)`` reconstruct every modality's ``x_m``.

    During training each present modality is dropped with probability :attr:`mask_rate` (progressive
    modality masking; the model wrapper raises it over epochs), never all of a sample's modalities.

    Reconstruction target. The paper fuses frozen foundation-model embeddings, so ``x_m`` is fixed.
    Here encoders may be trained end to end; the target is the encoder output with the gradient
    stopped (``x_m = stopgrad(encoder_m(input_m))``). The decoder is then a predictor against a
    stop-gradient target, the arrangement SimSiam showed avoids representation collapse, and the
    encoder is not pulled towards embeddings that are merely easy to reconstruct.

    Parameters
    ----------
    names: tuple of str
        Modality names, in mask-column order.
    in_dim: int
        Encoder output width ``d`` (shared by all modalities so gates can be compared in L_div).
    fused_dim: int
        Width ``D`` of the shared latent space.
    gate_hidden, attention_hidden, decoder_hidden: int
        Hidden widths of the gate MLPs, the attention scorer and the decoders.
    mask_rate: float
        Current training-time drop probability.
    loss_weights: dict
        Weights of ``rec`` (1.0 in the paper's objective), ``align``, ``div``, ``ent``, ``sparse``.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``.
    """

    DEFAULT_LOSS_WEIGHTS = {"rec": 1.0, "align": 0.1, "div": 0.01, "ent": 0.01, "sparse": 0.001}

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128,
                 gate_hidden: int = 64, attention_hidden: int = 64, decoder_hidden: int = 128,
                 mask_rate: float = 0.0, loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.names = tuple(names)
        self.gates = nn.ModuleDict({n: mlp(in_dim, gate_hidden, in_dim, 2) for n in self.names})
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})
        self.scorer = nn.Sequential(nn.Linear(fused_dim, attention_hidden), nn.Tanh(),
                                    nn.Linear(attention_hidden, 1, bias=False))
        self.decoders = nn.ModuleDict({n: mlp(fused_dim, decoder_hidden, in_dim, 2) for n in self.names})
        self.mask_rate = mask_rate
        self.loss_weights = {**self.DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        # zero-fill missing rows (torch.where): alpha = 0 alone would let NaN/inf leak (0 * nan)
        x = {n: torch.where(mask[:, j:j + 1], embeddings[n].pooled,
                            torch.zeros_like(embeddings[n].pooled))
             for j, n in enumerate(self.names)}
        dropped = sample_modality_drop(mask, self.mask_rate) if self.training else torch.zeros_like(mask)
        visible = mask & ~dropped
        gates = torch.stack([torch.sigmoid(self.gates[n](x[n])) for n in self.names], dim=1)
        z = torch.stack([self.projections[n](gates[:, j] * x[n]) for j, n in enumerate(self.names)],
                        dim=1)
        alpha = masked_softmax(self.scorer(z).squeeze(-1), visible)
        fused = (alpha.unsqueeze(-1) * z).sum(dim=1)
        reconstructed = {n: self.decoders[n](fused) for n in self.names}
        aux = {}
        if torch.is_grad_enabled():
            targets = {n: x[n].detach() for n in self.names}
            aux = {
                "rec": losses.reconstruction_loss(reconstructed, targets, dropped, self.names),
                "align": losses.alignment_loss(fused, z, visible),
                "div": losses.diversity_loss(gates, visible),
                "ent": losses.negative_entropy(alpha, visible),
                "sparse": losses.sparsity_loss(gates, visible),
            }
        extras = {"gates": gates, "dropped": dropped, "projections": z,
                  "encoded": torch.stack([x[n] for n in self.names], dim=1),
                  **{f"reconstructed:{n}": r for n, r in reconstructed.items()}}
        return FusionOutput(fused, alpha, aux, extras)


# -- the fusion family: shared helpers ---------------------------------------------------------------
def _zero_missing(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` where ``keep`` (broadcast over trailing dims), exact zeros elsewhere.

    ``torch.where`` rather than a multiplication: no gradient reaches the dropped entries and a NaN
    or inf there cannot leak into the result.
    """
    while keep.dim() < x.dim():
        keep = keep.unsqueeze(-1)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def present_pooled(embeddings: dict[str, EncodedModality], names: tuple[str, ...],
                   mask: Tensor) -> Tensor:
    """Pooled encoder outputs ``(B, M, d)``, missing modalities zero-filled."""
    return _zero_missing(torch.stack([embeddings[n].pooled for n in names], dim=1), mask)


def masked_concat(embeddings: dict[str, EncodedModality], names: tuple[str, ...],
                  mask: Tensor) -> Tensor:
    """``(B, M * d + M)``: zero-filled pooled outputs, concatenated, then the presence bits."""
    x = present_pooled(embeddings, names, mask)
    return torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)


def masked_mean(x: Tensor, keep: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` where ``keep`` (same leading shape); zeros where nothing is kept."""
    weight = keep.to(x.dtype)
    while weight.dim() < x.dim():
        weight = weight.unsqueeze(-1)
    return _zero_missing(x, keep).sum(dim) / weight.sum(dim).clamp(min=1.0)


def presence_weights(mask: Tensor) -> Tensor:
    """Uniform weights over the present modalities ``(B, M)`` (rows sum to 1, or 0 if none)."""
    m = mask.to(torch.get_default_dtype())
    return m / m.sum(dim=1, keepdim=True).clamp(min=1.0)


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``Var(x) / mean(x)^2`` (population variance); 0 for one value.

    The importance and load-balancing losses of Shazeer et al. (2017) are ``CV(importance)^2`` and
    ``CV(load)^2`` over experts: 0 when every expert gets the same share.
    """
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var(correction=0) / (x.mean().pow(2) + eps)


def _check_names(names: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise ValueError("A fusion layer needs at least one modality")
    return names


class ProjectionFusion(nn.Module):
    """The simplest fusion: each modality's pooled encoder output projected to ``fused_dim``, averaged
    over the present modalities.

    With one modality this is "the encoder output, projected": the unimodal baseline
    (:class:`~deepfuse_plugin.models.unimodal.UnimodalModel`). A sample with no modality at all gets
    a zero embedding.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``
    (uniform over present modalities).
    """

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128):
        super().__init__()
        self.names = _check_names(names)
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        z = torch.stack([self.projections[n](embeddings[n].pooled) for n in self.names], dim=1)
        return FusionOutput(masked_mean(z, mask, dim=1), presence_weights(mask).to(z.dtype))


class EarlyFusion(nn.Module):
    """Early (feature-level) fusion: the naive concatenation baseline.

    The pooled encoder outputs of all modalities are concatenated, followed by the ``M`` presence
    bits, and an MLP maps the ``M * d + M`` features to the fused embedding. A missing modality is
    **zero-filled** and its presence bit is 0, so the MLP can tell "absent" from "all-zero features"
    (e.g. an empty fingerprint) and learn a separate offset for it. The zeros are written with
    ``torch.where``, so no gradient reaches a missing modality's encoder.

    Early fusion has no modality weights (``weights`` is None; the network then reports the presence
    mask).

    Parameters
    ----------
    names: tuple of str
        Modality names, in mask-column order.
    in_dim: int
        Encoder output width ``d``.
    fused_dim: int
        Output width ``D``.
    hidden_dim: int
        Hidden width of the MLP.
    n_layers: int
        Linear layers in the MLP.
    dropout: float
        Dropout between the MLP's layers.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``.
    """

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128,
                 hidden_dim: int = 256, n_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.names = _check_names(names)
        self.net = mlp(len(self.names) * (in_dim + 1), hidden_dim, fused_dim, n_layers, dropout)

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        return FusionOutput(self.net(masked_concat(embeddings, self.names, mask)))


class LateFusion(nn.Module):
    """Late (decision-level) fusion: one complete predictor per modality, predictions combined.

    For each modality m: ``z_m = W_m x_m`` ``(B, D)`` and its own
    :class:`~deepfuse_plugin.nn.heads.TaskHead` ``h_m(z_m)`` (so predictor m is exactly the unimodal
    baseline's architecture). Per-sample weights ``w (B, M)`` over the *present* modalities (missing
    ones get exactly 0, the rest renormalised to sum to 1) combine the predictions:

    - ``combine="mean"``: uniform over the present modalities;
    - ``combine="learned"``: one learned logit per modality, masked softmax;
    - ``combine="stacking"``: a stacking meta-learner (small MLP) reads the present predictors'
      outputs (regression values / class probabilities, gradient stopped, as fixed features like
      classic stacking) and the presence bits and outputs per-sample logits; masked softmax. The
      meta-learner chooses *weights*, not a free prediction, so a missing modality is excluded
      exactly and the output stays within the range of the unimodal predictions.

    Regression: ``y = sum_m w_m y_m``. Classification: the **probabilities** are combined (linear
    opinion pool, ``p = sum_m w_m p_m``), as deep ensembles do: the result is a proper mixture whose
    weights are the modality weights, one over-confident unimodal predictor cannot dominate through
    large logits, and the pool of calibrated members stays calibrated far better than a logit average
    (a product of experts, which sharpens). The loss input is ``log p`` (computed with logsumexp),
    which ``cross_entropy`` treats as logits, so the task loss is the mixture's NLL.

    The layer predicts itself: ``FusionOutput.task_outputs`` holds ``(prediction, loss_input)`` and
    the network's head is not used. ``fused = sum_m w_m z_m`` is the embedding reported by
    ``predict(output_types=["embedding"])``. ``extras`` hold each predictor's outputs
    (``"unimodal_prediction"``, ``"unimodal_task_output"``, ``(B, M, T)`` or ``(B, M, T, C)``) and
    the mask the layer saw (``"mask"``), from which the model wrapper adds one supervised loss per
    predictor so that every unimodal predictor is good on its own.

    Parameters
    ----------
    names: tuple of str
    in_dim: int
        Encoder output width ``d``.
    n_tasks, mode, n_classes, head_hidden, dropout:
        Of each per-modality :class:`~deepfuse_plugin.nn.heads.TaskHead`.
    fused_dim: int
        Width ``D`` of each predictor's projection (and of ``fused``).
    combine: str
        ``"mean"``, ``"learned"`` or ``"stacking"``.
    stacking_hidden: int
        Hidden width of the stacking meta-learner.
    uncertainty: str or None
        ``"evidential"``: every predictor has an evidential head
        (:func:`~deepfuse_plugin.nn.heads.make_head`) and the members' distributions are combined
        with the same weights: NIGs by moment matching
        (:func:`~deepfuse_plugin.nn.heads.combine_nig`, the members' disagreement becomes
        epistemic variance), Dirichlets by weighted evidence
        (:func:`~deepfuse_plugin.nn.heads.combine_dirichlet`). The loss input is then the combined
        distribution's parameters, ``(B, T, 4)`` or ``alpha (B, T, C)``.

    Shapes
    ------
    ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``, ``task_outputs``: regression
    ``(B, T)`` twice; classification probabilities ``(B, T, C)`` and log-probabilities ``(B, T, C)``.
    """

    COMBINE = ("mean", "learned", "stacking")

    def __init__(self, names: tuple[str, ...], in_dim: int, n_tasks: int,
                 mode: str = "regression", n_classes: int = 2, fused_dim: int = 128,
                 head_hidden: int = 128, dropout: float = 0.1, combine: str = "mean",
                 stacking_hidden: int = 32, uncertainty: str | None = None):
        super().__init__()
        if combine not in self.COMBINE:
            raise ValueError(f"combine must be one of {self.COMBINE}, got {combine!r}")
        self.names, self.combine, self.mode = _check_names(names), combine, mode
        self.n_tasks, self.n_classes, self.uncertainty = n_tasks, n_classes, uncertainty
        self.projections = nn.ModuleDict({n: nn.Linear(in_dim, fused_dim) for n in self.names})
        self.heads = nn.ModuleDict({n: make_head(fused_dim, n_tasks, mode, n_classes, head_hidden,
                                                 dropout, uncertainty) for n in self.names})
        n_modalities = len(self.names)
        self.modality_logits = nn.Parameter(torch.zeros(n_modalities)) if combine == "learned" else None
        per_prediction = n_tasks * (n_classes if mode == "classification" else 1)
        self.stacker = (mlp(n_modalities * (per_prediction + 1), stacking_hidden, n_modalities, 2)
                        if combine == "stacking" else None)

    def reset_parameters(self) -> None:
        reset_all(self)
        if self.modality_logits is not None:
            nn.init.zeros_(self.modality_logits)

    def combination_weights(self, predictions: Tensor, mask: Tensor) -> Tensor:
        """``(B, M)`` weights, 0 for missing modalities, rows summing to 1 (0 if nothing present)."""
        if self.combine == "mean":
            return presence_weights(mask).to(predictions.dtype)
        if self.combine == "learned":
            return masked_softmax(self.modality_logits.expand(mask.shape[0], -1), mask)
        features = _zero_missing(predictions.detach().flatten(2), mask).flatten(1)
        return masked_softmax(self.stacker(torch.cat([features, mask.to(features.dtype)], 1)), mask)

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        z = _zero_missing(torch.stack([self.projections[n](embeddings[n].pooled)
                                       for n in self.names], dim=1), mask)
        outs = [self.heads[n](z[:, j]) for j, n in enumerate(self.names)]
        predictions = torch.stack([o[0] for o in outs], dim=1)   # (B, M, T) or (B, M, T, C)
        task_outputs = torch.stack([o[1] for o in outs], dim=1)
        w = self.combination_weights(predictions, mask)
        if self.uncertainty is not None:
            if self.mode == "regression":
                params = combine_nig(task_outputs, w)
                result = (params[..., 0], params)
            else:
                alpha = combine_dirichlet(task_outputs, w)
                result = (alpha / alpha.sum(dim=-1, keepdim=True), alpha)
        elif self.mode == "regression":
            combined = (_zero_missing(predictions, mask) * w.view(*w.shape, 1)).sum(dim=1)
            result = (combined, combined)
        else:
            # log p = logsumexp_m(log w_m + log p_m); missing modalities get a finite -huge log-weight,
            # hence exactly zero weight (and gradient) in the logsumexp.
            neg = torch.finfo(w.dtype).min
            log_w = torch.where(mask, w.clamp(min=torch.finfo(w.dtype).tiny).log(),
                                torch.full_like(w, neg))
            log_p = torch.logsumexp(log_w.view(*w.shape, 1, 1) +
                                    torch.log_softmax(task_outputs, dim=-1), dim=1)
            result = (log_p.exp(), log_p)
        fused = (z * w.unsqueeze(-1)).sum(dim=1)
        extras = {"unimodal_prediction": predictions, "unimodal_task_output": task_outputs,
                  "mask": mask}
        return FusionOutput(fused, w, {}, extras, task_outputs=result)


class CrossAttentionFusion(nn.Module):
    """Intermediate fusion with token/atom-level multi-head cross-attention (MCMPP-style).

    Every modality becomes a token sequence in the encoder width ``d``: sequence and graph encoders
    supply their token/atom states (``EncodedModality.tokens``); a vector modality (fingerprint,
    descriptors, embedding) is turned into ``vector_tokens`` learned tokens by a linear map of its
    pooled output reshaped into ``k`` chunks, plus a learned slot embedding per chunk, so that it offers
    several keys (with a single key the softmax is identically 1 and attention does nothing). A
    learned modality-type embedding is added to every token.

    Each block, for every modality m (queries = m's tokens):
    ``h_m <- h_m + MHA(LN(h_m), K=V=[null_m; LN(h_o) for o != m])``, then
    ``h_m <- h_m + FFN(LN(h_m))`` (pre-norm transformer block,
    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V`` per head). The key padding mask covers padded
    tokens *and* every token of a missing modality. ``null_m`` is a learned "attend to nothing" key,
    always valid: a sample whose other modalities are all missing attends to it alone instead of
    producing the NaN of an all-masked softmax, and a model can put weight on it when the other
    modalities are uninformative. With a single modality there is nothing to cross-attend to and the
    block degenerates to self-attention over the modality's own tokens (plus the null key).

    Each modality is pooled by a masked mean over its real tokens; modalities are then combined by a
    masked mean (``pooling="mean"``) or learned attention pooling (``pooling="attention"``,
    ``softmax_m(v^T tanh(U p_m))`` over present modalities) and projected to ``fused_dim``.
    Padded tokens and missing modalities are zeroed with ``torch.where`` at every block, so they carry
    no value and receive no gradient.

    ``extras["attention:<m>"]`` is the last block's head-averaged attention map of query modality m,
    ``(B, L_m, 1 + sum_{o != m} L_o)``; key 0 is the null key, then the other modalities' tokens in
    model order (``extras["key_mask:<m>"]`` marks the valid keys, ``extras["query_mask:<m>"]`` the
    real query tokens). Earlier blocks:
    ``"attention:<m>:<layer>"``.

    Parameters
    ----------
    names: tuple of str
    in_dim: int
        Encoder width ``d`` (the attention width; must be divisible by ``n_heads``).
    fused_dim: int
    vector_modalities: iterable of str
        Modalities whose encoder gives no tokens (turned into ``vector_tokens`` tokens).
    n_heads, n_layers: int
        Attention heads and cross-attention blocks.
    vector_tokens: int
        Tokens per vector modality (``k``).
    dropout: float
    pooling: str
        ``"attention"`` or ``"mean"`` (across modalities).
    attention_hidden: int
        Hidden width of the modality-pooling scorer.
    length_chunk: int
        A batch larger than this runs the blocks in chunks of ``length_chunk`` samples of similar
        token counts, each cut to its own longest sequence (0: one padded pass). The outputs are
        those of one pass (only dropout's random masks differ). A batch of 64 HIV molecules is
        padded to about 114 SMILES tokens and 70 atoms, for means of 45 and 25; the chunks skip
        most of that padding.

    Shapes
    ------
    ``tokens (B, L_m, d)``, ``token_mask (B, L_m)`` (or ``pooled (B, d)`` for vector modalities),
    ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``.
    """

    POOLING = ("attention", "mean")

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128,
                 vector_modalities: tuple[str, ...] | list[str] = (), n_heads: int = 4,
                 n_layers: int = 1, vector_tokens: int = 4, dropout: float = 0.1,
                 pooling: str = "attention", attention_hidden: int = 64, length_chunk: int = 16):
        super().__init__()
        self.names = _check_names(names)
        check_length_chunk(length_chunk)
        self.length_chunk = length_chunk
        if in_dim % n_heads:
            raise ValueError(f"in_dim (encoder width) {in_dim} must be divisible by n_heads {n_heads}")
        if pooling not in self.POOLING:
            raise ValueError(f"pooling must be one of {self.POOLING}, got {pooling!r}")
        if vector_tokens < 1 or n_layers < 1:
            raise ValueError("vector_tokens and n_layers must be >= 1")
        unknown = set(vector_modalities) - set(self.names)
        if unknown:
            raise ValueError(f"vector_modalities {sorted(unknown)} are not among {self.names}")
        self.vector_modalities = tuple(n for n in self.names if n in set(vector_modalities))
        self.in_dim, self.n_layers, self.vector_tokens, self.pooling = (in_dim, n_layers,
                                                                        vector_tokens, pooling)
        m = len(self.names)
        self.to_tokens = nn.ModuleDict({n: nn.Linear(in_dim, vector_tokens * in_dim)
                                        for n in self.vector_modalities})
        self.slot_embedding = nn.Parameter(torch.empty(len(self.vector_modalities), vector_tokens,
                                                       in_dim))
        self.modality_embedding = nn.Parameter(torch.empty(m, in_dim))
        self.null_key = nn.Parameter(torch.empty(n_layers, m, in_dim))

        def per_modality(factory):
            return nn.ModuleList(nn.ModuleDict({n: factory() for n in self.names})
                                 for _ in range(n_layers))

        self.norms = per_modality(lambda: nn.LayerNorm(in_dim))
        self.attention = per_modality(lambda: nn.MultiheadAttention(in_dim, n_heads, dropout=dropout,
                                                                    batch_first=True))
        self.ffn_norms = per_modality(lambda: nn.LayerNorm(in_dim))
        self.ffns = per_modality(lambda: mlp(in_dim, 2 * in_dim, in_dim, 2, dropout))
        self.dropout = nn.Dropout(dropout)
        self.scorer = (nn.Sequential(nn.Linear(in_dim, attention_hidden), nn.Tanh(),
                                     nn.Linear(attention_hidden, 1, bias=False))
                       if pooling == "attention" else None)
        self.out = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, fused_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self)
        for layer in self.attention:
            for attention in layer.values():
                attention._reset_parameters()  # MultiheadAttention has no public reset_parameters
        for p in (self.slot_embedding, self.modality_embedding, self.null_key):
            nn.init.normal_(p, std=0.02 if p is not self.slot_embedding else 1.0 / self.in_dim ** 0.5)

    def _token_sequences(self, embeddings: dict[str, EncodedModality], mask: Tensor
                         ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        states, valid = {}, {}
        batch = mask.shape[0]
        for j, n in enumerate(self.names):
            e = embeddings[n]
            if n in self.to_tokens:
                v = self.vector_modalities.index(n)
                t = self.to_tokens[n](e.pooled).view(batch, self.vector_tokens, self.in_dim)
                t = t + self.slot_embedding[v]
                keep = mask[:, j:j + 1].expand(batch, self.vector_tokens)
            else:
                if e.tokens is None:
                    raise ValueError(f"Modality {n!r} has no token states; list it in "
                                     "vector_modalities to turn its pooled output into tokens")
                t = e.tokens
                token_mask = (e.token_mask if e.token_mask is not None else
                              torch.ones(t.shape[:2], dtype=torch.bool, device=t.device))
                keep = token_mask & mask[:, j:j + 1]
            states[n] = _zero_missing(t + self.modality_embedding[j], keep)
            valid[n] = keep
        return states, valid

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        states, valid = self._token_sequences(embeddings, mask)
        if 0 < self.length_chunk < mask.shape[0]:
            pooled, extras = self._attend_in_length_chunks(states, valid)
        else:
            pooled, extras = self._attend(states, valid)
        if self.scorer is None:
            alpha = presence_weights(mask).to(pooled.dtype)
        else:
            alpha = masked_softmax(self.scorer(pooled).squeeze(-1), mask)
        fused = self.out((alpha.unsqueeze(-1) * pooled).sum(dim=1))
        extras["pooled"] = pooled
        return FusionOutput(fused, alpha, {}, extras)

    def _key_modalities(self, name: str) -> list[str]:
        return [o for o in self.names if o != name] or [name]  # one modality: self-attention

    def _key_mask(self, name: str, valid: dict[str, Tensor]) -> Tensor:
        """``(B, 1 + sum L_o)``: the null key (always valid), then the key modalities' tokens."""
        rows = valid[name].shape[0]
        null = torch.ones(rows, 1, dtype=torch.bool, device=valid[name].device)
        return torch.cat([null] + [valid[o] for o in self._key_modalities(name)], dim=1)

    def _map_key(self, name: str, layer: int) -> str:
        """``extras`` key of a block's attention map: the last block's is ``attention:<m>``."""
        return f"attention:{name}" if layer == self.n_layers - 1 else f"attention:{name}:{layer}"

    def _attend(self, states: dict[str, Tensor], valid: dict[str, Tensor]
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """The attention blocks on padded token states: per-modality pooled states ``(B, M, d)``
        and the attention maps (``extras``)."""
        batch = next(iter(states.values())).shape[0]
        extras: dict[str, Tensor] = {}
        for layer in range(self.n_layers):
            normed = {n: self.norms[layer][n](states[n]) for n in self.names}
            updated = {}
            for j, n in enumerate(self.names):
                others = self._key_modalities(n)
                null = self.null_key[layer, j].expand(batch, 1, self.in_dim)
                keys = torch.cat([null] + [normed[o] for o in others], dim=1)
                key_valid = self._key_mask(n, valid)
                attended, weights = self.attention[layer][n](
                    normed[n], keys, keys, key_padding_mask=~key_valid, need_weights=True,
                    average_attn_weights=True)
                h = states[n] + self.dropout(attended)
                h = h + self.dropout(self.ffns[layer][n](self.ffn_norms[layer][n](h)))
                updated[n] = _zero_missing(h, valid[n])
                extras[self._map_key(n, layer)] = weights
                if layer == self.n_layers - 1:
                    extras[f"key_mask:{n}"], extras[f"query_mask:{n}"] = key_valid, valid[n]
            states = updated
        pooled = torch.stack([masked_mean(states[n], valid[n], dim=1) for n in self.names], dim=1)
        return pooled, extras

    def _attend_in_length_chunks(self, states: dict[str, Tensor], valid: dict[str, Tensor]
                                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`_attend` on chunks of ``length_chunk`` samples of similar token counts, each
        modality cut to the chunk's last real token; results put back in the input order.

        The blocks never mix samples (attention stays within a sample, norms and feed-forward nets
        act per token), so outputs and gradients are those of one padded pass; only dropout's random
        masks differ. Attention maps are padded back to the batch's key layout; their rows at
        padding queries are zero where a chunk was cut (one pass gives them a distribution), and
        like the padded keys they carry no meaning.
        """
        extents = torch.stack([last_real_extents(valid[n]) for n in self.names])  # (M, B)
        chunks, back = length_sorted_chunks(extents, self.length_chunk)
        map_keys = [(n, self._map_key(n, layer)) for n in self.names
                    for layer in range(self.n_layers)]
        pooled, maps = [], []
        for rows, widths in chunks:
            cut = dict(zip(self.names, widths))
            chunk_pooled, chunk_extras = self._attend(
                {n: states[n][rows, :cut[n]] for n in self.names},
                {n: valid[n][rows, :cut[n]] for n in self.names})
            pooled.append(chunk_pooled)
            maps.append({key: self._pad_map(n, chunk_extras[key], cut, states)
                         for n, key in map_keys})
        extras = {key: torch.cat([m[key] for m in maps])[back] for key in maps[0]}
        for n in self.names:
            extras[f"key_mask:{n}"], extras[f"query_mask:{n}"] = self._key_mask(n, valid), valid[n]
        return torch.cat(pooled)[back], extras

    def _pad_map(self, query: str, weights: Tensor, cut: dict[str, int],
                 states: dict[str, Tensor]) -> Tensor:
        """A chunk's attention map of ``query`` ``(b, cut_m, 1 + sum cut_o)`` in the batch's
        layout ``(b, L_m, 1 + sum L_o)``, zero at the cut-off positions."""
        others = self._key_modalities(query)
        segments = weights.split([1] + [cut[o] for o in others], dim=2)
        widths = [1] + [states[o].shape[1] for o in others]
        keys = torch.cat([F.pad(s, (0, w - s.shape[2])) for s, w in zip(segments, widths)], dim=2)
        return F.pad(keys, (0, 0, 0, states[query].shape[1] - cut[query]))


class GatedMoEFusion(nn.Module):
    """Sparse mixture of experts with noisy top-k gating (Shazeer et al., 2017).

    Experts (each an MLP to ``fused_dim``):

    - ``n_experts_per_modality`` per-modality experts per modality, each reading only that modality's
      pooled embedding ``x_m``; an expert is *unavailable* for a sample whose modality is missing;
    - ``n_experts_shared`` shared experts reading the zero-filled concatenation of all modalities plus
      the presence bits (the early-fusion input ``u``); always available.

    Gating on ``u``: ``H = u W_g + eps * softplus(u W_noise)``, ``eps ~ N(0, 1)`` during training only
    (``noisy_gating``); unavailable experts are masked out; the ``top_k`` largest (among available
    experts; all of them if fewer) are kept and a softmax over the kept ones gives the gates ``g``,
    exactly ``min(top_k, n_available)`` non-zero per sample. ``fused = sum_e g_e E_e``. ``W_g`` and
    ``W_noise`` start at zero (as in the paper), so gating starts uniform and noisy. All experts are
    evaluated densely (cheap at these sizes; sparsity is in the gates, not the compute).

    Auxiliary losses (``aux_losses``): ``"importance"`` = ``CV(importance)^2`` and ``"load"`` =
    ``CV(load)^2``, where importance is the gate mass per expert and load the smooth estimate of the
    number of samples routing to it (``P(expert in top-k)`` under re-sampled noise, via the normal
    CDF, as in the paper; the hard count in evaluation). Because per-modality experts cannot be chosen
    for samples missing their modality, both are averaged over the samples where the expert is
    available (a per-availability usage rate), and the CV is taken over experts available somewhere in
    the batch: an expert is not pushed to compensate for samples it can never serve. Both terms are
    weighted ``balance_weight`` (``loss_weights``).

    Modality weights: a per-modality expert's gate counts for its modality; the shared experts' total
    gate is split evenly among the sample's present modalities. Rows sum to 1. The shared share is
    also reported separately in ``extras["shared_gate"]`` ``(B,)``, the per-expert gates in
    ``extras["gates"]`` ``(B, E)`` (expert order: :attr:`expert_names`), availability in
    ``extras["expert_available"]`` and the selection in ``extras["selected"]``.

    Parameters
    ----------
    names: tuple of str
    in_dim: int
    fused_dim: int
    n_experts_shared: int
    n_experts_per_modality: int
    top_k: int
        Experts kept per sample (``1 <= top_k <= number of experts``).
    expert_hidden: int
        Hidden width of every expert MLP.
    dropout: float
    noisy_gating: bool
        Add the learned gating noise during training.
    balance_weight: float
        Weight of each of the importance and load losses.

    Shapes
    ------
    ``embeddings[name].pooled (B, d)``, ``mask (B, M)`` -> ``fused (B, D)``, ``weights (B, M)``.
    """

    def __init__(self, names: tuple[str, ...], in_dim: int, fused_dim: int = 128,
                 n_experts_shared: int = 2, n_experts_per_modality: int = 1, top_k: int = 2,
                 expert_hidden: int = 128, dropout: float = 0.1, noisy_gating: bool = True,
                 balance_weight: float = 0.01, noise_epsilon: float = 1e-2):
        super().__init__()
        self.names = _check_names(names)
        if n_experts_shared < 0 or n_experts_per_modality < 0:
            raise ValueError("Expert counts must be >= 0")
        self.expert_names = tuple(f"{n}:{i}" for n in self.names for i in range(n_experts_per_modality)
                                  ) + tuple(f"shared:{i}" for i in range(n_experts_shared))
        n_experts = len(self.expert_names)
        if n_experts == 0:
            raise ValueError("GatedMoEFusion needs at least one expert")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, {n_experts}] (the number of experts), got {top_k}")
        self.top_k, self.noisy_gating, self.noise_epsilon = top_k, noisy_gating, noise_epsilon
        owner = [j for j in range(len(self.names)) for _ in range(n_experts_per_modality)]
        self.register_buffer("expert_modality",
                             torch.tensor(owner + [-1] * n_experts_shared, dtype=torch.long),
                             persistent=False)
        joint_dim = len(self.names) * (in_dim + 1)
        self.experts = nn.ModuleList(
            [mlp(in_dim, expert_hidden, fused_dim, 2, dropout) for _ in owner] +
            [mlp(joint_dim, expert_hidden, fused_dim, 2, dropout) for _ in range(n_experts_shared)])
        self.w_gate = nn.Linear(joint_dim, n_experts)
        self.w_noise = nn.Linear(joint_dim, n_experts)
        self.loss_weights = {"importance": balance_weight, "load": balance_weight}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self)
        for layer in (self.w_gate, self.w_noise):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def available(self, mask: Tensor) -> Tensor:
        """``(B, E)``: per-modality experts need their modality; shared experts are always available."""
        owner = self.expert_modality
        return torch.where(owner >= 0, mask[:, owner.clamp(min=0)], torch.ones_like(mask[:, :1]))

    def forward(self, embeddings: dict[str, EncodedModality], mask: Tensor) -> FusionOutput:
        x = present_pooled(embeddings, self.names, mask)
        joint = torch.cat([x.flatten(1), mask.to(x.dtype)], dim=1)
        available = self.available(mask)
        clean = self.w_gate(joint)
        noisy_std = None
        if self.training and self.noisy_gating:
            noisy_std = nn.functional.softplus(self.w_noise(joint)) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * noisy_std
        else:
            logits = clean
        neg = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~available, neg)
        n_experts, k = logits.shape[1], self.top_k
        top_values, top_index = logits.topk(min(k + 1, n_experts), dim=1)
        selected = torch.zeros_like(available).scatter(1, top_index[:, :k], True) & available
        gates = masked_softmax(logits, selected)

        outputs = torch.stack(
            [expert(x[:, int(owner)] if owner >= 0 else joint)
             for expert, owner in zip(self.experts, self.expert_modality.tolist())], dim=1)
        fused = (gates.unsqueeze(-1) * _zero_missing(outputs, selected)).sum(dim=1)

        aux = {}
        if torch.is_grad_enabled():
            load = self._load(clean, logits, noisy_std, top_values, available, selected)
            aux = self._balance_losses(gates, load, available)

        shared_gate = (gates * (self.expert_modality < 0).to(gates.dtype)).sum(dim=1)
        owner_one_hot = nn.functional.one_hot(self.expert_modality.clamp(min=0), len(self.names)).to(
            gates.dtype) * (self.expert_modality >= 0).to(gates.dtype).unsqueeze(1)
        weights = gates @ owner_one_hot + shared_gate.unsqueeze(1) * presence_weights(mask).to(
            gates.dtype)
        extras = {"gates": gates, "selected": selected, "expert_available": available,
                  "shared_gate": shared_gate}
        return FusionOutput(fused, weights, aux, extras)

    @staticmethod
    def _balance_losses(gates: Tensor, load: Tensor, available: Tensor) -> dict[str, Tensor]:
        """``CV^2`` of per-expert importance and load, each normalised by how many samples could
        use the expert; experts available nowhere in the batch are left out."""
        n_available = available.to(gates.dtype).sum(dim=0)
        somewhere = n_available > 0
        importance = gates.sum(dim=0) / n_available.clamp(min=1.0)
        load = load / n_available.clamp(min=1.0)
        return {"importance": cv_squared(importance[somewhere]),
                "load": cv_squared(load[somewhere])}

    def _load(self, clean: Tensor, logits: Tensor, noisy_std: Tensor | None, top_values: Tensor,
              available: Tensor, selected: Tensor) -> Tensor:
        """Per-expert load ``(E,)``: smooth ``sum_b P(e in top-k)`` with noise, else the hard count."""
        k, n_experts = self.top_k, logits.shape[1]
        if noisy_std is None or k >= n_experts:
            return selected.to(clean.dtype).sum(dim=0)
        neg_half = torch.finfo(logits.dtype).min / 2
        threshold_in = top_values[:, k:k + 1]       # (k+1)-th largest: to beat when already in
        threshold_out = top_values[:, k - 1:k]      # k-th largest: to beat when out
        valid_in, valid_out = threshold_in > neg_half, threshold_out > neg_half
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        prob_in = normal.cdf((clean - torch.where(valid_in, threshold_in, 0.0)) / noisy_std)
        prob_out = normal.cdf((clean - torch.where(valid_out, threshold_out, 0.0)) / noisy_std)
        # fewer than k+1 available experts: every available one is in the top k with certainty
        prob_in = torch.where(valid_in, prob_in, torch.ones_like(prob_in))
        prob = torch.where(logits > threshold_in, prob_in, prob_out)
        return _zero_missing(prob, available).sum(dim=0)
