"""Intermediate fusion by token/atom-level multi-head cross-attention between modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepfuse_plugin.nn.encoders import (
    EncodedModality,
    check_length_chunk,
    last_real_extents,
    length_sorted_chunks,
    mlp,
    reset_all,
)
from deepfuse_plugin.nn.fusion.masking import (
    masked_mean,
    masked_softmax,
    presence_weights,
    zero_missing,
)
from deepfuse_plugin.nn.fusion.output import FusionOutput, check_names


class CrossAttentionFusion(nn.Module):
    """Intermediate fusion with token/atom-level multi-head cross-attention (MCMPP-style).

    Every modality becomes a token sequence in the encoder width ``d``: sequence and graph encoders
    supply their token/atom states (``EncodedModality.tokens``); a vector modality (fingerprint,
    descriptors, embedding) is turned into ``vector_tokens`` learned tokens by a linear map of its
    pooled output reshaped into ``k`` chunks, plus a learned slot embedding per chunk, so that it
    offers several keys (with a single key the softmax is identically 1 and attention does nothing).
    A learned modality-type embedding is added to every token.

    Each block, for every modality m (queries = m's tokens):
    ``h_m <- h_m + MHA(LN(h_m), K=V=[null_m; LN(h_o) for o != m])``, then
    ``h_m <- h_m + FFN(LN(h_m))`` (pre-norm transformer block,
    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V`` per head). The key padding mask covers
    padded tokens *and* every token of a missing modality. ``null_m`` is a learned "attend to
    nothing" key, always valid: a sample whose other modalities are all missing attends to it alone
    instead of producing the NaN of an all-masked softmax, and a model can put weight on it when the
    other modalities are uninformative. With a single modality there is nothing to cross-attend to
    and the block degenerates to self-attention over the modality's own tokens (plus the null key).

    Each modality is pooled by a masked mean over its real tokens; modalities are then combined by a
    masked mean (``pooling="mean"``) or learned attention pooling (``pooling="attention"``,
    ``softmax_m(v^T tanh(U p_m))`` over present modalities) and projected to ``fused_dim``.
    Padded tokens and missing modalities are zeroed with ``torch.where`` at every block, so they
    carry no value and receive no gradient.

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

    def __init__(
        self,
        names: tuple[str, ...],
        in_dim: int,
        fused_dim: int = 128,
        vector_modalities: tuple[str, ...] | list[str] = (),
        n_heads: int = 4,
        n_layers: int = 1,
        vector_tokens: int = 4,
        dropout: float = 0.1,
        pooling: str = "attention",
        attention_hidden: int = 64,
        length_chunk: int = 16,
    ):
        super().__init__()
        self.names = check_names(names)
        check_length_chunk(length_chunk)
        self.length_chunk = length_chunk
        if in_dim % n_heads:
            raise ValueError(
                f"in_dim (encoder width) {in_dim} must be divisible by n_heads {n_heads}"
            )
        if pooling not in self.POOLING:
            raise ValueError(f"pooling must be one of {self.POOLING}, got {pooling!r}")
        if vector_tokens < 1 or n_layers < 1:
            raise ValueError("vector_tokens and n_layers must be >= 1")
        unknown = set(vector_modalities) - set(self.names)
        if unknown:
            raise ValueError(f"vector_modalities {sorted(unknown)} are not among {self.names}")
        self.vector_modalities = tuple(n for n in self.names if n in set(vector_modalities))
        self.in_dim, self.n_layers, self.vector_tokens, self.pooling = (
            in_dim,
            n_layers,
            vector_tokens,
            pooling,
        )
        m = len(self.names)
        self.to_tokens = nn.ModuleDict(
            {n: nn.Linear(in_dim, vector_tokens * in_dim) for n in self.vector_modalities}
        )
        self.slot_embedding = nn.Parameter(
            torch.empty(len(self.vector_modalities), vector_tokens, in_dim)
        )
        self.modality_embedding = nn.Parameter(torch.empty(m, in_dim))
        self.null_key = nn.Parameter(torch.empty(n_layers, m, in_dim))

        def per_modality(factory):
            return nn.ModuleList(
                nn.ModuleDict({n: factory() for n in self.names}) for _ in range(n_layers)
            )

        self.norms = per_modality(lambda: nn.LayerNorm(in_dim))
        self.attention = per_modality(
            lambda: nn.MultiheadAttention(in_dim, n_heads, dropout=dropout, batch_first=True)
        )
        self.ffn_norms = per_modality(lambda: nn.LayerNorm(in_dim))
        self.ffns = per_modality(lambda: mlp(in_dim, 2 * in_dim, in_dim, 2, dropout))
        self.dropout = nn.Dropout(dropout)
        self.scorer = (
            nn.Sequential(
                nn.Linear(in_dim, attention_hidden),
                nn.Tanh(),
                nn.Linear(attention_hidden, 1, bias=False),
            )
            if pooling == "attention"
            else None
        )
        self.out = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, fused_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_all(self)
        for layer in self.attention:
            for attention in layer.values():
                attention._reset_parameters()  # MultiheadAttention has no public reset_parameters
        for p in (self.slot_embedding, self.modality_embedding, self.null_key):
            nn.init.normal_(p, std=0.02 if p is not self.slot_embedding else 1.0 / self.in_dim**0.5)

    def _token_sequences(
        self, embeddings: dict[str, EncodedModality], mask: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        states, valid = {}, {}
        batch = mask.shape[0]
        for j, n in enumerate(self.names):
            e = embeddings[n]
            if n in self.to_tokens:
                v = self.vector_modalities.index(n)
                t = self.to_tokens[n](e.pooled).view(batch, self.vector_tokens, self.in_dim)
                t = t + self.slot_embedding[v]
                keep = mask[:, j : j + 1].expand(batch, self.vector_tokens)
            else:
                if e.tokens is None:
                    raise ValueError(
                        f"Modality {n!r} has no token states; list it in "
                        "vector_modalities to turn its pooled output into tokens"
                    )
                t = e.tokens
                token_mask = (
                    e.token_mask
                    if e.token_mask is not None
                    else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
                )
                keep = token_mask & mask[:, j : j + 1]
            states[n] = zero_missing(t + self.modality_embedding[j], keep)
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

    def _attend(
        self, states: dict[str, Tensor], valid: dict[str, Tensor]
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
                    normed[n],
                    keys,
                    keys,
                    key_padding_mask=~key_valid,
                    need_weights=True,
                    average_attn_weights=True,
                )
                h = states[n] + self.dropout(attended)
                h = h + self.dropout(self.ffns[layer][n](self.ffn_norms[layer][n](h)))
                updated[n] = zero_missing(h, valid[n])
                extras[self._map_key(n, layer)] = weights
                if layer == self.n_layers - 1:
                    extras[f"key_mask:{n}"], extras[f"query_mask:{n}"] = key_valid, valid[n]
            states = updated
        pooled = torch.stack([masked_mean(states[n], valid[n], dim=1) for n in self.names], dim=1)
        return pooled, extras

    def _attend_in_length_chunks(
        self, states: dict[str, Tensor], valid: dict[str, Tensor]
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
        map_keys = [
            (n, self._map_key(n, layer)) for n in self.names for layer in range(self.n_layers)
        ]
        pooled, maps = [], []
        for rows, widths in chunks:
            cut = dict(zip(self.names, widths))
            chunk_pooled, chunk_extras = self._attend(
                {n: states[n][rows, : cut[n]] for n in self.names},
                {n: valid[n][rows, : cut[n]] for n in self.names},
            )
            pooled.append(chunk_pooled)
            maps.append(
                {key: self._pad_map(n, chunk_extras[key], cut, states) for n, key in map_keys}
            )
        extras = {key: torch.cat([m[key] for m in maps])[back] for key in maps[0]}
        for n in self.names:
            extras[f"key_mask:{n}"], extras[f"query_mask:{n}"] = self._key_mask(n, valid), valid[n]
        return torch.cat(pooled)[back], extras

    def _pad_map(
        self, query: str, weights: Tensor, cut: dict[str, int], states: dict[str, Tensor]
    ) -> Tensor:
        """A chunk's attention map of ``query`` ``(b, cut_m, 1 + sum cut_o)`` in the batch's
        layout ``(b, L_m, 1 + sum L_o)``, zero at the cut-off positions."""
        others = self._key_modalities(query)
        segments = weights.split([1] + [cut[o] for o in others], dim=2)
        widths = [1] + [states[o].shape[1] for o in others]
        keys = torch.cat([F.pad(s, (0, w - s.shape[2])) for s, w in zip(segments, widths)], dim=2)
        return F.pad(keys, (0, 0, 0, states[query].shape[1] - cut[query]))
