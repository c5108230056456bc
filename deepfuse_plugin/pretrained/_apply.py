"""Start a model's encoders from a pretrained checkpoint (the fine-tuning side of pretraining)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.pretrained._checkpoints import PretrainedEncoders

logger = logging.getLogger(__name__)

#: Spec fields that change an encoder's input or shapes: a pretrained encoder is reused only when
#: all of them agree.
_SPEC_FIELDS = ("kind", "dim", "vocab", "max_length", "node_dim", "edge_dim")


def spec_differences(model_spec: Modality, pretrained_spec: Modality) -> list[str]:
    """Fields (``vocab``, ``dim``, ``params.radius``, ...) on which two specs disagree."""
    diffs = [f for f in _SPEC_FIELDS if getattr(model_spec, f) != getattr(pretrained_spec, f)]
    keys = set(model_spec.params) | set(pretrained_spec.params)
    diffs += [
        f"params.{k}"
        for k in sorted(keys)
        if model_spec.params.get(k) != pretrained_spec.params.get(k)
    ]
    return diffs


def load_pretrained_encoders(
    encoders: nn.ModuleDict,
    modalities: Sequence[Modality],
    pretrained: PretrainedEncoders,
    encoder_dim: int,
) -> list[str]:
    """Copy the checkpoint's encoder weights into ``encoders`` for every modality it covers.

    A modality the checkpoint does not cover keeps its fresh initialisation (e.g. a MiniMol view
    next to pretrained graph and SMILES encoders). A covered modality whose spec or encoder shape
    differs is an error naming the differences: silently training it from scratch would make
    "pretrained" mean nothing.

    Returns
    -------
    list of str: the modalities that were loaded.
    """
    if encoder_dim != pretrained.encoder_dim:
        raise InvalidSettingError(
            f"encoder_dim={encoder_dim} but the pretrained checkpoint "
            f"{pretrained.name!r} has encoder_dim={pretrained.encoder_dim}: "
            "build the model with the checkpoint's encoder_dim"
        )
    by_name = {m.name: m for m in pretrained.inputs}
    loaded = []
    for spec in modalities:
        if spec.name not in by_name:
            continue
        diffs = spec_differences(spec, by_name[spec.name])
        if diffs:
            raise InvalidSettingError(
                f"Modality {spec.name!r} differs from the pretrained checkpoint "
                f"{pretrained.name!r} in {diffs}: featurize with the checkpoint's modalities "
                f"(deepfuse_plugin.pretrained.load_encoders({pretrained.name!r}).inputs)"
            )
        try:
            encoders[spec.name].load_state_dict(pretrained.state[spec.name], strict=True)
        except RuntimeError as err:
            raise InvalidSettingError(
                f"The {spec.name!r} encoder does not fit the pretrained checkpoint "
                f"{pretrained.name!r} (encoder_options differ? the checkpoint used "
                f"{pretrained.encoder_options}): {str(err).splitlines()[0]}"
            ) from err
        loaded.append(spec.name)
    if not loaded:
        raise InvalidSettingError(
            f"The pretrained checkpoint {pretrained.name!r} covers "
            f"{pretrained.modality_names}; the model has none of them "
            f"({[m.name for m in modalities]})"
        )
    logger.info("Encoders %s start from the pretrained checkpoint %s", loaded, pretrained.name)
    return loaded
