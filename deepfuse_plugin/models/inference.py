"""The prediction side of every deepfuse model: outputs batch by batch, predictions with row
checks, evidential uncertainty, modality weights and a fusion layer's extras.

:class:`InferenceMixin` is a base of
:class:`~deepfuse_plugin.models.base.MultiModalTorchModel`; its methods are called on the model
(``model.predict(dataset)``, ``model.iterate_outputs(dataset)``).
:meth:`InferenceMixin.iterate_outputs` and :meth:`InferenceMixin.inference_network` are the public
way to reach the network's outputs (the analyses in :mod:`deepfuse_plugin.analysis` use nothing
else).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, overload

import numpy as np
import pandas as pd
import torch
from deepchem.data import Dataset
from torch import nn

from deepfuse_plugin.data.collate import MultiModalBatch
from deepfuse_plugin.data.datasets import untransform_labels
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.models.predictions import (
    NON_FINITE,
    CheckedPredictions,
    drop_names,
    mark_failed_rows,
    non_finite_rows,
    row_problems,
    warn_failed_rows,
)
from deepfuse_plugin.models.uncertainty import (
    check_uncertainty_kind,
    evidential_spread,
    untransform_std,
)
from deepfuse_plugin.nn.fusion import FusionOutput
from deepfuse_plugin.nn.network import MultiModalNetwork, NetworkOutput

__all__ = ["NAMED_OUTPUTS", "BatchOutputs", "InferenceMixin"]

# the name users filter the model's row warnings by (they were logged from base.py before)
logger = logging.getLogger("deepfuse_plugin.models.base")

#: The outputs ``predict(output_types=...)`` names.
NAMED_OUTPUTS = ("prediction", "embedding", "modality_weights")


class BatchOutputs(NamedTuple):
    """One batch of :meth:`InferenceMixin.iterate_outputs`.

    Attributes
    ----------
    network : NetworkOutput
        The network's outputs (prediction, task output, embedding, modality weights, ...).
    fusion : FusionOutput
        The fusion layer's output for the same batch (fused embedding, weights, ``extras``).
    batch : MultiModalBatch
        The collated inputs on the model's device (``batch.mask``: the modalities present once
        the dropped ones are removed).
    ids : numpy.ndarray
        The dataset ids of the batch's rows, in order.
    """

    network: NetworkOutput
    fusion: FusionOutput
    batch: MultiModalBatch
    ids: np.ndarray


class InferenceMixin:
    """Prediction methods of :class:`~deepfuse_plugin.models.base.MultiModalTorchModel`.

    Not used on its own: the model provides the network (``model``), its ``device``,
    ``modalities``, ``mode``, ``uncertainty``, DeepChem's ``default_generator`` and
    ``_ensure_built``.
    """

    # provided by MultiModalTorchModel and DeepChem's TorchModel (annotations only: nothing
    # here shadows them in the method resolution order)
    model: MultiModalNetwork
    device: torch.device
    mode: str
    uncertainty: str | None
    _fitting: bool
    _drop_modalities: tuple[str, ...]
    _row_reasons: np.ndarray
    _ensure_built: Callable[[], None]
    default_generator: Callable[..., Iterator[tuple[list, list, list]]]
    modalities: list[Modality]

    @property
    def modality_names(self) -> list[str]:
        """Names of the model's modalities, in input order."""
        return [m.name for m in self.modalities]

    @property
    def fusion_layer(self) -> nn.Module:
        """The network's fusion layer (e.g. ``DynamicFusion``, ``GatedMoEFusion``)."""
        return self.model.fusion

    @contextmanager
    def inference_network(self, restore_training: bool = True) -> Iterator[MultiModalNetwork]:
        """The built network in evaluation mode, for a forward pass of your own.

        Builds the model if needed (DeepChem builds it lazily), switches the network (on
        :attr:`device`) to evaluation mode, so dropout and training-time modality masking are off,
        and hands it back in training mode afterwards if it was training. Gradients stay on
        (attribution methods need them); wrap the forward pass in ``torch.no_grad()`` otherwise.

        Parameters
        ----------
        restore_training : bool
            False leaves the network in evaluation mode afterwards, as DeepChem's ``predict``
            does (switching every module twice costs time on small calls).

        Yields
        ------
        MultiModalNetwork
            ``model.model``: ``network(batch)`` gives a ``NetworkOutput`` and
            ``network.last_fusion`` the fusion layer's ``FusionOutput`` of that batch.

        Examples
        --------
        >>> import deepfuse_plugin as dfp
        >>> model = dfp.EarlyFusionModel(1, ["ecfp"], encoder_dim=8, fused_dim=8, progress=False)
        >>> with model.inference_network() as network:
        ...     network.training
        False
        >>> model.model.training
        True
        """
        self._ensure_built()
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            yield self.model
        finally:
            if was_training and restore_training:
                self.model.train()

    def iterate_outputs(
        self, dataset: Dataset, drop_modalities: str | Iterable[str] = ()
    ) -> Iterator[BatchOutputs]:
        """Network and fusion outputs batch by batch, in evaluation mode, without gradients.

        What :meth:`predict`, :meth:`predict_uncertainty` and the analyses read; use it for any
        output they do not return (a fusion layer's ``extras``, the task head's raw output).

        Parameters
        ----------
        dataset : dc.data.Dataset
            Featurized with the model's modalities (in its order: batches follow it).
        drop_modalities : str or iterable of str
            Modalities to treat as missing for every sample.

        Yields
        ------
        BatchOutputs
            ``(network, fusion, batch, ids)`` per batch of ``batch_size`` rows.

        Notes
        -----
        Inside ``fit`` (a validation callback) the network goes back to training mode afterwards;
        outside it stays in evaluation mode, as DeepChem leaves it. Once every batch was read,
        :attr:`last_row_problems` names the rows whose output is not finite or that have no
        modality present.

        Examples
        --------
        >>> import deepchem as dc, numpy as np
        >>> import deepfuse_plugin as dfp
        >>> feat = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=32, progress=False)
        >>> ds = dc.data.NumpyDataset(feat.featurize(["CCO", "CCN", "CCC"]), np.zeros((3, 1)),
        ...                           ids=["a", "b", "c"])
        >>> model = dfp.EarlyFusionModel(1, feat.modalities, encoder_dim=8, fused_dim=8,
        ...                              batch_size=2, progress=False)
        >>> [(out.network.prediction.shape[0], list(out.ids)) for out in model.iterate_outputs(ds)]
        [(2, ['a', 'b']), (1, ['c'])]
        """
        if len(dataset) == 0:
            raise ValueError(
                "The dataset has no rows: nothing to predict (every input failed to "
                "featurize or the split is empty)"
            )
        drop = drop_names(drop_modalities, self.modality_names)
        ids = np.asarray(dataset.ids)
        # Inside fit (a validation callback) training mode comes back afterwards, or dropout and
        # modality masking would stay off for the rest of training. Outside fit the network stays
        # in eval mode, as DeepChem leaves it: switching every module twice per call took about a
        # fifth of a one-molecule predict.
        with self.inference_network(restore_training=self._fitting) as network:
            previous, self._drop_modalities = self._drop_modalities, drop
            reasons: list[np.ndarray] = []
            start = 0
            try:
                with torch.no_grad():
                    for (batch,), _, _ in self.default_generator(dataset, mode="predict"):
                        batch = batch.to(self.device)
                        out = network(batch)
                        fusion = network.last_fusion
                        assert fusion is not None  # every forward pass sets it
                        reasons.append(row_problems(out.prediction, batch.mask))
                        rows = len(batch.mask)
                        yield BatchOutputs(out, fusion, batch, ids[start : start + rows])
                        start += rows
                self._set_row_problems(
                    np.concatenate(reasons) if reasons else np.zeros(0, object), dataset.ids
                )
            finally:
                self._drop_modalities = previous

    # one output type gives one array; a list of several gives a list of arrays
    @overload
    def predict(
        self,
        dataset: Dataset,
        transformers: list = ...,
        output_types: str | None = ...,
        drop_modalities: Iterable[str] = ...,
    ) -> np.ndarray: ...

    @overload
    def predict(
        self,
        dataset: Dataset,
        transformers: list = ...,
        output_types: list[str] = ...,
        drop_modalities: Iterable[str] = ...,
    ) -> np.ndarray | list[np.ndarray]: ...

    def predict(
        self,
        dataset: Dataset,
        transformers: list = [],  # noqa: B006 (DeepChem signature)
        output_types: str | list[str] | None = None,
        drop_modalities: Iterable[str] = (),
    ) -> np.ndarray | list[np.ndarray]:
        """Predictions (or other named outputs) for ``dataset``.

        Parameters
        ----------
        dataset: dc.data.Dataset
            Featurized with the model's modalities.
        transformers: list of dc.trans.Transformer
            Undone on ``"prediction"`` outputs.
        output_types: str or list of str, optional
            Any of ``"prediction"`` (default), ``"embedding"``, ``"modality_weights"``.
        drop_modalities: str or iterable of str
            Modalities to treat as missing for every sample (a string is one name; unknown
            names, or all of the model's modalities, are refused).

        Notes
        -----
        Rows whose output is not finite, or that have no modality present, come back as NaN
        (in the prediction and the embedding) with a warning naming their ids; every other
        entry is finite. :meth:`predict_checked` also says which rows failed and why, and
        :attr:`last_row_problems` keeps that for the latest call.
        """
        names = (
            [output_types]
            if isinstance(output_types, str)
            else list(output_types or ["prediction"])
        )
        unknown = [n for n in names if n not in NAMED_OUTPUTS]
        if unknown:
            raise ValueError(f"Unknown output types {unknown}; available: {list(NAMED_OUTPUTS)}")
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for outputs in self.iterate_outputs(dataset, drop_modalities):
            for n in names:
                chunks[n].append(getattr(outputs.network, n).detach().cpu().numpy())
        results = []
        for n in names:
            values = np.concatenate(chunks[n]) if chunks[n] else np.zeros((0,))
            if n == "prediction" and transformers:
                values = untransform_labels(values, transformers)
                self._add_row_problems(non_finite_rows(values), dataset.ids)
            results.append(values)
        reasons = self._row_reasons
        results = [
            mark_failed_rows(v, reasons) if n != "modality_weights" else v
            for n, v in zip(names, results)
        ]
        return results[0] if len(results) == 1 else results

    def predict_checked(
        self,
        dataset: Dataset,
        transformers: list = [],  # noqa: B006
        drop_modalities: Iterable[str] = (),
    ) -> CheckedPredictions:
        """:meth:`predict` (the ``"prediction"`` output) with the rows that failed and why.

        Returns
        -------
        CheckedPredictions
            ``values`` (as :meth:`predict`; failed rows all NaN, every other entry finite),
            ``reasons`` (``(N,)`` str: ``""`` for a good row, ``"non-finite model output"`` or
            ``"no modality present"``), ``ids``, and the properties ``ok`` (``(N,)`` bool) and
            ``failed_ids``.

        Examples
        --------
        >>> checked = model.predict_checked(dataset)  # doctest: +SKIP
        >>> checked.values.shape, checked.failed_ids  # doctest: +SKIP
        ((24, 1), [])
        """
        values = self.predict(dataset, transformers, drop_modalities=drop_modalities)
        return CheckedPredictions(values, self._row_reasons.copy(), np.asarray(dataset.ids))

    @property
    def last_row_problems(self) -> dict[int, str]:
        """Rows of the latest prediction call (``predict``, ``predict_uncertainty``,
        ``modality_weights``, ...) that failed, as ``{row index: reason}`` (empty: all good)."""
        reasons = getattr(self, "_row_reasons", None)
        if reasons is None:
            return {}
        return {int(i): str(reasons[i]) for i in np.flatnonzero(reasons != "")}

    def _set_row_problems(self, reasons: np.ndarray, ids: Any) -> None:
        self._row_reasons = reasons
        warn_failed_rows(reasons, ids, logger)

    def _add_row_problems(self, failed: np.ndarray, ids: Any) -> None:
        """Mark more rows as non-finite (found after undoing transformers, or in a spread)."""
        new = failed & (self._row_reasons == "")
        if new.any():
            reasons = self._row_reasons.copy()
            reasons[new] = NON_FINITE
            warn_failed_rows(np.where(new, reasons, ""), ids, logger)
            self._row_reasons = reasons

    def predict_uncertainty(
        self,
        dataset: Dataset,
        masks: int | None = None,
        transformers: list = [],  # noqa: B006 (DeepChem signature)
        kind: str = "total",
        drop_modalities: Iterable[str] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(prediction, std)`` from the evidential head, analytically, in one forward pass.

        DeepChem's convention (``TorchModel.predict_uncertainty``): ``std`` has the shape of the
        prediction and estimates the standard deviation of each predicted value. Models built
        without ``uncertainty="evidential"`` raise a ValueError rather than falling back to
        DeepChem's Monte-Carlo dropout: that would be ``masks`` times slower, is not what the model
        was trained for, and silently mixes two different notions of uncertainty.

        Regression (NIG ``gamma, nu, alpha, beta``; Amini et al., 2020): the prediction is
        ``gamma``; ``kind="total"`` (default) gives ``sqrt(aleatoric + epistemic)``, the standard
        deviation of the predictive Student-t; ``"aleatoric"`` ``sqrt(beta / (alpha - 1))`` (noise
        in the data); ``"epistemic"`` ``sqrt(beta / (nu (alpha - 1)))`` (uncertainty of the
        model's mean). Note: a single evidential head's epistemic part is not a reliable novelty
        score (it grows with the aleatoric scale, Meinert et al. 2023); a late-fusion model adds
        the per-modality predictors' disagreement, which does rise off-distribution.

        Classification (Dirichlet ``alpha``): the prediction is the Dirichlet mean
        ``alpha / S``, ``(N, n_tasks, n_classes)``; ``kind="total"`` gives, per class, the Dirichlet
        standard deviation of that class probability (for binary tasks the positive class's
        std is ``std[..., 1]``; both columns are equal); ``"vacuity"`` gives ``u = n_classes / S``
        in (0, 1], ``(N, n_tasks)`` (1 = no evidence).

        Parameters
        ----------
        dataset: dc.data.Dataset
            Featurized with the model's modalities.
        masks: int, optional
            Accepted for DeepChem compatibility and ignored (no dropout sampling).
        transformers: list of dc.trans.Transformer
            Undone on the prediction, as in :meth:`predict`. The std is scaled by the slope of each
            ``transform_y`` transformer's inverse, which must be affine (e.g.
            ``NormalizationTransformer``: std times ``y_stds``); a non-affine one raises.
        kind: str
            See above; regression ``"total" | "aleatoric" | "epistemic"``, classification
            ``"total" | "vacuity"``.
        drop_modalities: str or iterable of str
            Modalities to treat as missing for every sample.

        Notes
        -----
        Failed rows (non-finite output or spread, no modality present) are NaN in both arrays,
        as in :meth:`predict`; :attr:`last_row_problems` names them.
        """
        check_uncertainty_kind(type(self).__name__, self.uncertainty, self.mode, kind)
        predictions: list[np.ndarray] = []
        spreads: list[np.ndarray] = []
        for outputs in self.iterate_outputs(dataset, drop_modalities):
            batch_mean, batch_spread = evidential_spread(
                outputs.network.task_output, self.mode, kind
            )
            predictions.append(batch_mean.cpu().numpy())
            spreads.append(batch_spread.cpu().numpy())
        prediction, spread = np.concatenate(predictions), np.concatenate(spreads)
        if transformers:
            if kind != "vacuity":
                spread = untransform_std(spread, prediction, transformers)
            prediction = untransform_labels(prediction, transformers)
        self._add_row_problems(non_finite_rows(prediction) | non_finite_rows(spread), dataset.ids)
        reasons = self._row_reasons
        return mark_failed_rows(prediction, reasons), mark_failed_rows(spread, reasons)

    def predict_embedding(self, dataset: Dataset) -> np.ndarray:
        return self.predict(dataset, output_types="embedding")

    def modality_weights(
        self, dataset: Dataset, drop_modalities: Iterable[str] = ()
    ) -> pd.DataFrame:
        """Per-sample modality weights (rows = dataset ids, columns = modalities; 0 = missing)."""
        weights = self.predict(
            dataset, output_types="modality_weights", drop_modalities=drop_modalities
        )
        return pd.DataFrame(
            weights, index=pd.Index(dataset.ids, name="id"), columns=self.modality_names
        )

    def collect_extras(
        self, dataset: Dataset, key: str, drop_modalities: Iterable[str] = ()
    ) -> np.ndarray:
        """Concatenate a fusion layer's ``FusionOutput.extras[key]`` over ``dataset``."""
        parts = []
        for outputs in self.iterate_outputs(dataset, drop_modalities):
            extras = outputs.fusion.extras
            if key not in extras:
                raise KeyError(
                    f"{type(self).__name__}'s fusion layer has no {key!r}; available: "
                    f"{sorted(extras)}"
                )
            parts.append(extras[key].detach().cpu().numpy())
        return np.concatenate(parts)
