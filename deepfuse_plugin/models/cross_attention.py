"""CrossAttentionFusionModel: token/atom-level cross-attention between modalities."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from torch import nn

from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.registry import register_model
from deepfuse_plugin.nn.fusion import CrossAttentionFusion

#: Modality kinds whose encoder gives one pooled vector and no token states.
VECTOR_KINDS = ("vector", "embedding")


@register_model("crossattention", kind="fusion")
class CrossAttentionFusionModel(MultiModalTorchModel):
    """Intermediate fusion with multi-head cross-attention between modalities (MCMPP-style).

    SMILES Transformer token states, GNN atom states and the fingerprint MLP output (reshaped into
    ``vector_tokens`` learned tokens) attend to each other at token/atom level: each modality's
    tokens query the concatenation of the other modalities' tokens (plus a learned null key), with
    key padding masks covering padded tokens and missing modalities; each modality is then
    mean-pooled over its tokens and the modalities are combined (learned attention pooling or mean)
    into the fused embedding (:class:`~deepfuse_plugin.nn.fusion.CrossAttentionFusion`). The
    modality weights are the pooling weights. :meth:`attention_maps` returns the token-level
    attention.

    A sample whose other modalities are all missing attends only to the null key (no NaN); with a
    single modality the blocks are self-attention.

    Parameters
    ----------
    n_tasks, modalities, mode, ...:
        See :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`. ``encoder_dim`` is the
        attention width and must be divisible by ``n_heads``.
    n_heads: int
        Attention heads.
    n_attention_layers: int
        Cross-attention blocks (attention + feed-forward, pre-norm, residual).
    vector_tokens: int
        Tokens per vector modality (``k``; each is a learned chunk of an MLP output).
    pooling: str
        ``"attention"`` (learned, per sample) or ``"mean"`` across modalities.
    attention_hidden: int
        Hidden width of the modality-pooling scorer.
    length_chunk: int
        Batches larger than this run the cross-attention blocks in chunks of ``length_chunk``
        samples of similar size, each cut to its own longest sequence in every modality (0: one
        padded pass). Results are those of one pass; only dropout's random masks differ. An HIV
        training epoch runs 1.5x faster with the default 16.

    Shapes
    ------
    Predictions ``(N, n_tasks)`` or ``(N, n_tasks, n_classes)``; embeddings ``(N, fused_dim)``;
    modality weights ``(N, M)``; attention maps per batch ``(B, L_query, 1 + L_keys)``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin
    >>> feat = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dc.models.CrossAttentionFusionModel(
    ...     1, feat.modalities, encoder_dim=32, fused_dim=32, progress=False
    ... )
    >>> _ = model.fit(ds, nb_epoch=2)
    >>> model.predict(ds).shape, model.modality_weights(ds).shape
    ((6, 1), (6, 3))
    >>> maps = model.attention_maps(ds, "graph")  # graph atoms attend to SMILES + ECFP tokens
    >>> len(maps) == 6 and maps[0].shape[0] == 3  # ethanol: 3 heavy atoms (queries)
    True
    """

    # a subclass (MatMMFuseModel) extends the list, so the type is any tuple of names
    _config_extra: ClassVar[tuple[str, ...]] = (
        "n_heads",
        "n_attention_layers",
        "vector_tokens",
        "pooling",
        "attention_hidden",
        "length_chunk",
    )
    _training_settings = MultiModalTorchModel._training_settings | {"length_chunk"}

    def __init__(
        self,
        n_tasks: int,
        modalities: Any,
        mode: str = "regression",
        n_heads: int = 4,
        n_attention_layers: int = 1,
        vector_tokens: int = 4,
        pooling: str = "attention",
        attention_hidden: int = 64,
        length_chunk: int = 16,
        **kwargs: Any,
    ):
        check.check_all(
            [
                *(
                    (check.positive_int, k, v)
                    for k, v in (
                        ("n_heads", n_heads),
                        ("n_attention_layers", n_attention_layers),
                        ("vector_tokens", vector_tokens),
                        ("attention_hidden", attention_hidden),
                    )
                ),
                (check.non_negative_int, "length_chunk", length_chunk),
            ]
        )
        check.one_of("pooling", pooling, CrossAttentionFusion.POOLING)
        encoder_dim = kwargs.get("encoder_dim", 128)
        if check._is_int(encoder_dim) and encoder_dim % n_heads:
            raise check.InvalidSettingError(
                f"encoder_dim ({encoder_dim}) must be divisible by n_heads ({n_heads})"
            )
        self.n_heads, self.n_attention_layers = n_heads, n_attention_layers
        self.vector_tokens, self.pooling, self.attention_hidden = (
            vector_tokens,
            pooling,
            attention_hidden,
        )
        self.length_chunk = length_chunk
        super().__init__(n_tasks, modalities, mode, **kwargs)

    def _build_fusion(self) -> nn.Module:
        vectors = tuple(m.name for m in self.modalities if m.kind in VECTOR_KINDS)
        return CrossAttentionFusion(
            tuple(self.modality_names),
            self.encoder_dim,
            self.fused_dim,
            vectors,
            self.n_heads,
            self.n_attention_layers,
            self.vector_tokens,
            self.dropout,
            self.pooling,
            self.attention_hidden,
            self.length_chunk,
        )

    def attention_maps(self, dataset: Any, modality: str) -> list[np.ndarray]:
        """Per sample, the last block's head-averaged attention of ``modality``'s real tokens over
        the valid keys: ``(n_query_tokens, n_valid_keys)``, key 0 = null key, then the other
        modalities' real tokens in model order. Empty for a sample missing ``modality``."""
        if modality not in self.modality_names:
            raise ValueError(f"Unknown modality {modality!r}; the model has {self.modality_names}")
        maps: list[np.ndarray] = []
        for outputs in self.iterate_outputs(dataset):
            extras = outputs.fusion.extras
            attention, key_mask, query_mask = (
                extras[f"{key}:{modality}"].cpu().numpy()
                for key in ("attention", "key_mask", "query_mask")
            )
            for b in range(attention.shape[0]):
                maps.append(attention[b][query_mask[b]][:, key_mask[b]])
        return maps
