"""LateFusionModel: one predictor per modality, predictions combined."""

from __future__ import annotations

from typing import Any

from torch import nn

from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models.base import MultiModalTorchModel
from deepfuse_plugin.models.registry import register_model
from deepfuse_plugin.nn.fusion import LateFusion


@register_model("late", kind="fusion")
class LateFusionModel(MultiModalTorchModel):
    """Late (decision-level) fusion as a DeepChem ``TorchModel``.

    Every modality has a complete predictor (its encoder, a projection and its own task head: the
    :class:`~deepfuse_plugin.models.unimodal.UnimodalModel` architecture); the predictions are
    combined with per-sample weights over the present modalities
    (:class:`~deepfuse_plugin.nn.fusion.LateFusion`):

    - ``combine="mean"``: plain average;
    - ``combine="learned"``: one learned weight per modality (softmax);
    - ``combine="stacking"``: a stacking meta-learner reads the predictors' outputs and the presence
      bits and outputs per-sample weights.

    A missing modality's predictor is excluded and the remaining weights are renormalised to sum to
    1; the weights are the model's ``modality_weights``. Classification combines **probabilities**
    (linear opinion pool), not logits; see the layer for why. The model has no shared head: the
    layer returns the combined prediction itself.

    Loss: ``task loss(combined) + unimodal_loss_weight * mean_m task loss(predictor m)``, where
    predictor m's loss only counts samples on which modality m is present (and labelled). The second
    term trains every unimodal predictor to be good on its own, which is what makes the combination
    robust when modalities go missing; 0 trains the combination only.

    ``predict(output_types=["embedding"])`` returns the weighted mean of the predictors' projected
    embeddings (what each head reads), ``(N, fused_dim)``; :meth:`predict_unimodal` returns each
    predictor's own prediction.

    Parameters
    ----------
    n_tasks, modalities, mode, ...:
        See :class:`~deepfuse_plugin.models.base.MultiModalTorchModel` (``head_hidden`` and
        ``dropout`` configure every per-modality head).
    combine: str
        ``"mean"``, ``"learned"`` or ``"stacking"``.
    unimodal_loss_weight: float
        Weight of the per-predictor supervised losses.
    stacking_hidden: int
        Hidden width of the stacking meta-learner.

    Shapes
    ------
    Predictions ``(N, n_tasks)`` or ``(N, n_tasks, n_classes)``; embeddings ``(N, fused_dim)``;
    modality weights ``(N, M)``; :meth:`predict_unimodal` ``(N, M, n_tasks[, n_classes])``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin
    >>> feat = dc.feat.MultiModalFeaturizer(["ecfp", "graph", "smiles"], progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dc.models.LateFusionModel(1, feat.modalities, combine="learned", encoder_dim=32,
    ...                                   fused_dim=32, progress=False)
    >>> _ = model.fit(ds, nb_epoch=2)
    >>> model.predict(ds).shape, model.predict_unimodal(ds).shape
    ((6, 1), (6, 3, 1))
    >>> bool(np.allclose(model.modality_weights(ds).sum(axis=1), 1.0))
    True
    """

    _config_extra = ("combine", "stacking_hidden")

    def __init__(
        self,
        n_tasks: int,
        modalities: Any,
        mode: str = "regression",
        combine: str = "mean",
        unimodal_loss_weight: float = 1.0,
        stacking_hidden: int = 32,
        **kwargs: Any,
    ):
        check.one_of("combine", combine, LateFusion.COMBINE)
        check.positive_int("stacking_hidden", stacking_hidden)
        self.combine, self.stacking_hidden = combine, stacking_hidden
        super().__init__(
            n_tasks, modalities, mode, unimodal_loss_weight=unimodal_loss_weight, **kwargs
        )

    def _build_fusion(self) -> nn.Module:
        return LateFusion(
            tuple(self.modality_names),
            self.encoder_dim,
            self.n_tasks,
            self.mode,
            self.n_classes,
            self.fused_dim,
            self.head_hidden,
            self.dropout,
            self.combine,
            self.stacking_hidden,
            self.uncertainty,
        )

    def _build_head(self) -> None:
        return None  # the layer predicts: FusionOutput.task_outputs

    def _build_unimodal_heads(self) -> None:
        return None  # the layer's own per-modality predictors are the unimodal outputs

    def predict_unimodal(self, dataset: Any) -> Any:
        """Each modality's own prediction, ``(N, M, n_tasks)`` or ``(N, M, n_tasks, n_classes)``
        (probabilities). A missing modality's entry is its predictor's output on zero features."""
        return self.collect_extras(dataset, "unimodal_prediction")
