"""GatedMoEFusionModel: a sparse mixture of per-modality and shared experts, noisy top-k gating."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.registry import register_model
from deepfuse_plugin.nn.fusion import GatedMoEFusion


@register_model("moe", kind="fusion")
class GatedMoEFusionModel(MultiModalTorchModel):
    """Mixture-of-experts fusion with noisy top-k gating (Shazeer et al., 2017).

    Per-modality experts read one modality's embedding (and are unavailable to the gate when that
    modality is missing); shared experts read the zero-filled concatenation of all modalities plus
    the presence bits. A noisy top-k gate picks ``top_k`` experts per sample and mixes their outputs
    into the fused embedding (:class:`~deepfuse_plugin.nn.fusion.GatedMoEFusion`). The importance
    and load-balancing losses (``CV^2`` of per-expert gate mass and load) are added with weight
    ``balance_weight`` each (times ``fusion_loss_weight``).

    Modality weights: a per-modality expert's gate counts for its modality, the shared experts' gate
    is split evenly among the present modalities (:meth:`expert_usage` reports shared experts
    separately). :meth:`expert_usage` summarises how the experts are used on a dataset.

    Parameters
    ----------
    n_tasks, modalities, mode, ...:
        See :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`.
    n_experts_shared: int
        Shared experts.
    n_experts_per_modality: int
        Experts per modality.
    top_k: int
        Experts kept per sample.
    expert_hidden: int
        Hidden width of every expert MLP.
    noisy_gating: bool
        Learned gating noise during training (the "noisy" of noisy top-k).
    balance_weight: float
        Weight of each of the importance and load losses (Shazeer et al. use 0.1 on language
        modelling; 0.01 here because MoleculeNet-sized data has ~100x fewer samples per expert).

    Shapes
    ------
    Predictions ``(N, n_tasks)`` or ``(N, n_tasks, n_classes)``; embeddings ``(N, fused_dim)``;
    modality weights ``(N, M)``; ``collect_extras(ds, "gates")`` ``(N, n_experts)``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin
    >>> feat = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dc.models.GatedMoEFusionModel(1, feat.modalities, n_experts_shared=2, top_k=2,
    ...                                       encoder_dim=32, fused_dim=32, progress=False)
    >>> _ = model.fit(ds, nb_epoch=2)
    >>> usage = model.expert_usage(ds)
    >>> list(usage.index)
    ['ecfp:0', 'graph:0', 'smiles:0', 'shared:0', 'shared:1']
    >>> round(float(usage["mean_gate"].sum()), 4)  # the gates of a sample sum to 1
    1.0
    """

    _config_extra = (
        "n_experts_shared",
        "n_experts_per_modality",
        "top_k",
        "expert_hidden",
        "noisy_gating",
        "balance_weight",
    )
    _training_settings = MultiModalTorchModel._training_settings | {"balance_weight"}

    def __init__(
        self,
        n_tasks: int,
        modalities: Any,
        mode: str = "regression",
        n_experts_shared: int = 2,
        n_experts_per_modality: int = 1,
        top_k: int = 2,
        expert_hidden: int = 128,
        noisy_gating: bool = True,
        balance_weight: float = 0.01,
        **kwargs: Any,
    ):
        check.check_all(
            [
                (check.non_negative_int, "n_experts_shared", n_experts_shared),
                (check.non_negative_int, "n_experts_per_modality", n_experts_per_modality),
                (check.positive_int, "top_k", top_k),
                (check.positive_int, "expert_hidden", expert_hidden),
                (check.non_negative_float, "balance_weight", balance_weight),
            ]
        )
        check.one_of("noisy_gating", noisy_gating, (True, False))
        self.n_experts_shared, self.n_experts_per_modality = (
            n_experts_shared,
            n_experts_per_modality,
        )
        self.top_k, self.expert_hidden = top_k, expert_hidden
        self.noisy_gating, self.balance_weight = noisy_gating, balance_weight
        super().__init__(n_tasks, modalities, mode, **kwargs)

    def _build_fusion(self) -> nn.Module:
        return GatedMoEFusion(
            tuple(self.modality_names),
            self.encoder_dim,
            self.fused_dim,
            self.n_experts_shared,
            self.n_experts_per_modality,
            self.top_k,
            self.expert_hidden,
            self.dropout,
            self.noisy_gating,
            self.balance_weight,
        )

    @property
    def expert_names(self) -> list[str]:
        layer = self.fusion_layer
        assert isinstance(layer, GatedMoEFusion)  # the layer _build_fusion made
        return list(layer.expert_names)

    def expert_usage(self, dataset: Any) -> pd.DataFrame:
        """Expert usage on ``dataset`` (evaluation mode: no gating noise).

        Returns
        -------
        pandas.DataFrame indexed by expert name (``"<modality>:<i>"``, ``"shared:<i>"``) with
        columns ``modality`` (``"shared"`` for shared experts), ``mean_gate`` (mean gate weight over
        all samples; sums to 1 over experts), ``selection_frequency`` (fraction of samples for which
        the expert is in the top k) and ``availability`` (fraction of samples where it could be
        chosen).
        """
        parts: dict[str, list[np.ndarray]] = {"gates": [], "selected": [], "expert_available": []}
        for outputs in self.iterate_outputs(dataset):
            for key, chunks in parts.items():
                chunks.append(outputs.fusion.extras[key].detach().cpu().numpy())
        gates, selected, available = (
            np.concatenate(chunks).astype(float) for chunks in parts.values()
        )
        names = self.expert_names
        return pd.DataFrame(
            {
                "modality": [n.rsplit(":", 1)[0] for n in names],
                "mean_gate": gates.mean(axis=0),
                "selection_frequency": selected.mean(axis=0),
                "availability": available.mean(axis=0),
            },
            index=pd.Index(names, name="expert"),
        )
