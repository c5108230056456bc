"""Pretrained encoder checkpoints: a folder with ``encoders.safetensors``, ``model.json``, a README.

The layout follows MatGL's ``pretrained_models/<name>/``: the name says architecture, corpus,
version and objective (``DeepFuse-MOSES50k-v1-Contrastive``). Weights are safetensors (plain
tensors, nothing executes on load); ``model.json`` holds the format version, the input modality
specs (vocabularies included, so a featurizer can be rebuilt), the encoder settings, the
objective, the corpus, the training history and the SHA-256 of the weights file, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError
from deepfuse_plugin.modalities import Modality

FORMAT_VERSION = 1
WEIGHTS_FILE = "encoders.safetensors"
CONFIG_FILE = "model.json"


@dataclass
class PretrainedEncoders:
    """Encoder weights of a pretraining run and everything needed to reuse them.

    Attributes
    ----------
    name: str
    inputs: list of Modality
        Specs of the encoded views (a featurizer built from them produces matching inputs).
    encoder_dim: int
    encoder_options: dict kind -> dict
    state: dict modality name -> encoder state dict
    info: dict
        The rest of ``model.json`` (objective, corpus, epochs, history, hardware).
    """

    name: str
    inputs: list[Modality]
    encoder_dim: int
    encoder_options: dict[str, dict[str, Any]]
    state: dict[str, dict[str, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.inputs]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_encoders(
    directory: str | os.PathLike,
    name: str,
    inputs: list[Modality],
    state: dict[str, torch.Tensor],
    encoder_dim: int,
    encoder_options: dict[str, dict[str, Any]],
    info: dict[str, Any],
) -> Path:
    """Write ``state`` (keys ``<modality>.<parameter>``) and ``model.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(weights))
    config = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "inputs": [m.to_dict() for m in inputs],
        "encoder_dim": int(encoder_dim),
        "encoder_options": encoder_options,
        "weights_sha256": sha256_of(weights),
        **info,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
    return directory


def shipped_dir() -> Path:
    """The package's ``pretrained_models`` folder (package data, present in the wheel)."""
    return Path(str(resources.files("deepfuse_plugin") / "pretrained_models"))


def list_pretrained() -> list[dict[str, Any]]:
    """Shipped checkpoints: name, input modalities, weights size (MB), corpus, objective."""
    rows = []
    for config_path in sorted(shipped_dir().glob(f"*/{CONFIG_FILE}")):
        config = json.loads(config_path.read_text())
        weights = config_path.parent / WEIGHTS_FILE
        rows.append(
            {
                "name": config["name"],
                "modalities": [m["name"] for m in config["inputs"]],
                "size_mb": round(weights.stat().st_size / 1e6, 2) if weights.exists() else None,
                "corpus": config.get("corpus", {}).get("description", ""),
                "objective": ", ".join(config.get("objective", {}).get("terms", [])),
            }
        )
    return rows


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    """A shipped checkpoint's folder by name, or a folder path."""
    path = Path(name_or_path)
    if (path / CONFIG_FILE).is_file():
        return path
    shipped = shipped_dir() / str(name_or_path)
    if (shipped / CONFIG_FILE).is_file():
        return shipped
    names = [row["name"] for row in list_pretrained()]
    raise InvalidSettingError(
        f"No pretrained checkpoint {str(name_or_path)!r}: not a folder with "
        f"{CONFIG_FILE} and not a shipped name (shipped: {names})"
    )


def pretrained_input_names(name_or_path: str | os.PathLike) -> list[str]:
    """Names of the views a checkpoint encodes, from its ``model.json`` (weights not read)."""
    config_path = resolve_pretrained(name_or_path) / CONFIG_FILE
    try:
        return [m["name"] for m in json.loads(config_path.read_text())["inputs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(
            f"{config_path} is not a valid pretrained-model config ({type(err).__name__}: {err})"
        ) from err


def load_encoders(name_or_path: str | os.PathLike) -> PretrainedEncoders:
    """Load a checkpoint (weights via safetensors; the SHA-256 in ``model.json`` must match)."""
    from safetensors.torch import load_file

    directory = resolve_pretrained(name_or_path)
    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
        version = config["format_version"]
        inputs = [Modality.from_dict(m) for m in config["inputs"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"{config_path} is not a valid pretrained-model config ({type(err).__name__}: {err})"
        ) from err
    if version > FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{config_path} has format version {version}; this deepfuse "
            f"reads up to {FORMAT_VERSION}: upgrade deepfuse"
        )
    if not weights.is_file() or sha256_of(weights) != config.get("weights_sha256"):
        raise CorruptCheckpointError(
            f"{weights} is missing or does not match the SHA-256 recorded "
            f"in {config_path}: the file is damaged or was replaced"
        )
    flat = load_file(str(weights))
    state: dict[str, dict[str, torch.Tensor]] = {m.name: {} for m in inputs}
    for key, tensor in flat.items():
        modality, _, parameter = key.partition(".")
        state.setdefault(modality, {})[parameter] = tensor
    info = {
        k: v
        for k, v in config.items()
        if k not in ("inputs", "encoder_dim", "encoder_options", "name")
    }
    return PretrainedEncoders(
        config["name"],
        inputs,
        int(config["encoder_dim"]),
        config.get("encoder_options", {}),
        state,
        info,
    )


def render_readme(directory: str | os.PathLike, downstream: str = "") -> str:
    """The checkpoint's README (model card) from its ``model.json``: corpus, subset, objective,
    epochs, hardware, cost, the command that regenerates it, the loss curve, and ``downstream``
    (markdown with fine-tuning results, written by whoever measured them)."""
    config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    training, corpus = config.get("training", {}), config.get("corpus", {})
    hardware, objective = config.get("hardware", {}), config.get("objective", {})
    last = (config.get("history") or [{}])[-1]
    inputs = ", ".join(f"`{m['name']}` ({m['kind']})" for m in config["inputs"])
    targets = ", ".join(f"`{t['name']}`" for t in objective.get("targets", [])) or "none"
    weights = Path(directory) / WEIGHTS_FILE
    size = f"{weights.stat().st_size / 1e6:.1f} MB" if weights.exists() else "?"
    sha256_head = config.get("weights_sha256", "")[:16]
    lines = [
        f"# {config['name']}",
        "",
        "Encoders pretrained by deepfuse's multimodal self-supervised objective; load them with "
        f'`DynamicFusionModel(..., pretrained="{config["name"]}")` (any deepfuse model) or '
        f"`deepfuse train --pretrained {config['name']}`.",
        "",
        "| | |",
        "|---|---|",
        f"| encoded views (shipped) | {inputs} |",
        f"| pretraining-only targets / teacher | {targets} |",
        f"| objective terms | {', '.join(objective.get('terms', []))} "
        f"(weights {objective.get('loss_weights', {})}) |",
        f"| corpus | {corpus.get('description', '?')}; {corpus.get('subset', '')}; "
        f"{corpus.get('train', '?')} train / {corpus.get('valid', '?')} validation molecules |",
        f"| epochs, batch, learning rate | {training.get('epochs')}, {training.get('batch_size')}, "
        f"{training.get('learning_rate')} (warm-up + cosine) |",
        f"| encoder width | {config.get('encoder_dim')} |",
        f"| final loss (train / validation) | {last.get('train_loss', float('nan')):.3f} / "
        f"{last.get('valid_loss', float('nan')):.3f} |",
        f"| hardware | {hardware.get('device', '?')}, {hardware.get('torch_threads', '?')} torch "
        f"thread(s), {hardware.get('processor') or hardware.get('machine', '?')} |",
        f"| cost | {training.get('seconds', 0) / 3600:.2f} h, "
        f"{training.get('molecules_per_second', '?')} molecules/s, peak memory "
        f"{hardware.get('peak_rss_mb', '?')} MB |",
        f"| weights | `{WEIGHTS_FILE}`, {size}, SHA-256 `{sha256_head}...` |",
        f"| deepfuse | {config.get('deepfuse_version', '?')}, "
        f"format {config.get('format_version')} |",
        "",
        "## Regenerate",
        "",
        "```bash",
        config.get("command", "(command not recorded)"),
        "```",
        "",
        "![loss curve](loss_curve.png)",
        "",
    ]
    if downstream:
        lines += ["## Downstream", "", downstream.strip(), ""]
    return "\n".join(lines)
