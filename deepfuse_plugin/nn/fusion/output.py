"""What every fusion layer returns (:class:`FusionOutput`) and the check every layer runs on its
modality names.

A fusion layer is a ``torch.nn.Module`` with the call signature
``layer(embeddings: dict[str, EncodedModality], mask: Tensor (B, M)) -> FusionOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


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


def check_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` as a tuple; a fusion layer needs at least one modality."""
    names = tuple(names)
    if not names:
        raise ValueError("A fusion layer needs at least one modality")
    return names
