"""Evidential uncertainty of a model's outputs, and its way back through DeepChem transformers.

:meth:`~deepfuse_plugin.models.base.MultiModalTorchModel.predict_uncertainty` is built from
these: :func:`evidential_spread` turns an evidential head's output into a prediction and a
standard deviation (or vacuity), and :func:`untransform_std` carries a standard deviation through
the label transformers that ``undo_transforms`` undoes on the prediction.

Examples
--------
>>> import torch
>>> nig = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])  # gamma, nu, alpha, beta: (B=1, T=1, 4)
>>> mean, std = evidential_spread(nig, "regression", "aleatoric")
>>> mean.tolist(), std.tolist()
([[1.0]], [[1.4142135381698608]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepfuse_plugin.nn.heads import dirichlet_moments, nig_moments

__all__ = ["UNCERTAINTY_OUTPUTS", "check_uncertainty_kind", "evidential_spread", "untransform_std"]

#: ``predict_uncertainty(kind=...)`` values per mode (the first is the default).
UNCERTAINTY_OUTPUTS = {
    "regression": ("total", "aleatoric", "epistemic"),
    "classification": ("total", "vacuity"),
}


def check_uncertainty_kind(model_name: str, uncertainty: str | None, mode: str, kind: str) -> None:
    """Refuse a model without an uncertainty head, or a ``kind`` its mode has not.

    Parameters
    ----------
    model_name : str
        Named in the error.
    uncertainty : str or None
        The model's ``uncertainty`` setting.
    mode : str
        ``"regression"`` or ``"classification"``.
    kind : str
        The requested spread, one of :data:`UNCERTAINTY_OUTPUTS` ``[mode]``.

    Raises
    ------
    ValueError
        Without an uncertainty head (Monte-Carlo dropout is deliberately not offered), or for an
        unknown ``kind``.

    Examples
    --------
    >>> check_uncertainty_kind("M", "evidential", "classification", "vacuity")
    >>> check_uncertainty_kind(
    ...     "M", "evidential", "regression", "vacuity"
    ... )  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: kind must be one of ('total', 'aleatoric', 'epistemic') for regression,
    got 'vacuity'
    """
    if uncertainty is None:
        raise ValueError(
            f"{model_name} was built without an uncertainty head: "
            'construct it with uncertainty="evidential" (and train it) to use '
            "predict_uncertainty. Monte-Carlo dropout is deliberately not "
            "offered."
        )
    kinds = UNCERTAINTY_OUTPUTS[mode]
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds} for {mode}, got {kind!r}")


def evidential_spread(
    task_output: torch.Tensor, mode: str, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction, spread)`` of an evidential head's output.

    Parameters
    ----------
    task_output : torch.Tensor
        Regression: NIG parameters ``(B, T, 4)``; classification: Dirichlet ``alpha (B, T, C)``.
    mode : str
        ``"regression"`` or ``"classification"``.
    kind : str
        Regression ``"total"`` (``sqrt(aleatoric + epistemic)``), ``"aleatoric"`` or
        ``"epistemic"``; classification ``"total"`` (per-class Dirichlet std) or ``"vacuity"``.

    Returns
    -------
    tuple of torch.Tensor
        The prediction (``gamma (B, T)``, or the Dirichlet mean ``(B, T, C)``) and the spread
        (the prediction's shape; vacuity ``(B, T)``).

    Examples
    --------
    >>> import torch
    >>> mean, vacuity = evidential_spread(torch.ones(1, 1, 2), "classification", "vacuity")
    >>> mean.tolist(), vacuity.tolist()
    ([[[0.5, 0.5]]], [[1.0]])
    """
    if mode == "regression":
        mean, aleatoric, epistemic = nig_moments(task_output)
        variance = {"total": aleatoric + epistemic, "aleatoric": aleatoric, "epistemic": epistemic}[
            kind
        ]
        return mean, variance.sqrt()
    mean, std, vacuity = dirichlet_moments(task_output)
    return mean, std if kind == "total" else vacuity


def untransform_std(std: np.ndarray, z: np.ndarray, transformers: list[Any]) -> np.ndarray:
    """Carry ``std`` of the transformed-space values ``z`` through ``undo_transforms``.

    Parameters
    ----------
    std : numpy.ndarray
        Standard deviations in the transformed (training) space.
    z : numpy.ndarray
        The predictions they belong to, in the same space and shape.
    transformers : list of dc.trans.Transformer
        As given to ``undo_transforms``; only ``transform_y`` ones act.

    Returns
    -------
    numpy.ndarray
        ``std`` in the original units, in its own dtype.

    Raises
    ------
    ValueError
        When a ``transform_y`` transformer's inverse is not affine elementwise.

    Notes
    -----
    Each inverse must be ``a z + b`` elementwise; ``std`` is multiplied by ``|a|`` (for
    ``NormalizationTransformer``, ``a = y_stds``).

    Examples
    --------
    >>> class Scale:  # stands in for dc.trans.NormalizationTransformer(transform_y=True)
    ...     transform_y = True
    ...     def untransform(self, z):
    ...         return 3.0 * z + 1.0
    >>> untransform_std(np.array([0.5]), np.array([2.0]), [Scale()]).tolist()
    [1.5]
    """
    dtype = np.asarray(std).dtype
    std, z = np.asarray(std, dtype=np.float64), np.asarray(z, dtype=np.float64)
    for transformer in reversed(transformers):
        if not transformer.transform_y:
            continue
        f0, f1, f2 = (
            np.asarray(transformer.untransform(z + k), dtype=np.float64) for k in (0, 1, 2)
        )
        slope = f1 - f0
        if not np.allclose(f2 - f1, slope, rtol=1e-5, atol=1e-8):
            raise ValueError(
                "Cannot carry a standard deviation through "
                f"{type(transformer).__name__}: its inverse is not affine. Undo it "
                "yourself (e.g. sample the predictive distribution) or train "
                "without it."
            )
        std, z = std * np.abs(slope), f0
    return std.astype(dtype)
