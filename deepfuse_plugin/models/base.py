"""``MultiModalTorchModel``: the DeepChem plumbing every deepfuse fusion model shares.

A concrete model only implements :meth:`MultiModalTorchModel._build_fusion` (and, if it has
constructor arguments of its own, stores them under the same attribute names). Batching, losses,
output types, checkpoints, configuration checks and named predictions live here.
"""
from __future__ import annotations

import json
import logging
import math
import os
from abc import abstractmethod
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from deepchem.data import Dataset
from deepchem.models import TorchModel
from deepchem.trans import undo_transforms
from torch import nn
from tqdm.auto import tqdm

from deepfuse_plugin._version import __version__
from deepfuse_plugin.data.collate import (PADDED_KINDS, MultiModalBatch, collate_samples,
                                          length_bucketed)
from deepfuse_plugin.errors import (CorruptCheckpointError, InvalidSettingError)
from deepfuse_plugin.modalities import Modality, as_modalities
from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models._pretrained import (check_fine_tuning_settings, parameter_groups,
                                                pretrained_covers, start_from_pretrained)
from deepfuse_plugin.models._data_checks import (check_label_range, check_labelled_tasks,
                                                 check_token_lengths, numeric_labels,
                                                 refusing_non_finite, spec_differences)
from deepfuse_plugin.models.checkpoints import (CONFIG_FILE, CONFIG_FORMAT,  # noqa: F401
                                                MissingCheckpointError, checkpoint_digest,
                                                config_diff,
                                                latest_checkpoint, load_checkpoint_file,
                                                read_config, verify_checkpoint_digest)
from deepfuse_plugin.models.predictions import (NON_FINITE, CheckedPredictions, drop_names,
                                                mark_failed_rows, non_finite_rows, row_problems,
                                                warn_failed_rows)
from deepfuse_plugin.nn import losses
from deepfuse_plugin.nn.heads import dirichlet_moments, make_head, nig_moments
from deepfuse_plugin.nn.network import MultiModalNetwork, NetworkOutput

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ["prediction", "loss", "loss", "embedding", "modality_weights", "loss", "loss"]
NAMED_OUTPUTS = ("prediction", "embedding", "modality_weights")
#: ``predict_uncertainty(kind=...)`` values per mode (the first is the default).
UNCERTAINTY_OUTPUTS = {"regression": ("total", "aleatoric", "epistemic"),
                       "classification": ("total", "vacuity")}
#: Default ``evidential_lambda`` per mode (Amini et al. use 0.01-0.2; Sensoy et al. anneal to 1).
DEFAULT_EVIDENTIAL_LAMBDA = {"regression": 0.1, "classification": 1.0}

#: Model classes by name, for :meth:`MultiModalTorchModel.load`.
MODEL_CLASSES: dict[str, type["MultiModalTorchModel"]] = {}


def _resolve_modalities(modalities: Sequence[Modality | dict | str]) -> list[Modality]:
    """Specs from specs, dicts, or built-in names (default featurizer settings).

    Molecule names come first (``"graph"`` is the molecular graph); the crystal-only names
    (``"text_sentences"``, ``"composition"``, ``"matgl_graph"``, ...) resolve with the crystal
    featurizer's defaults."""
    from deepfuse_plugin.feat.molecule import BUILTIN_MODALITIES, MultiModalFeaturizer

    molecular = [m for m in modalities if isinstance(m, str) and m in BUILTIN_MODALITIES]
    crystal = [m for m in modalities if isinstance(m, str) and m not in BUILTIN_MODALITIES]
    defaults: dict[str, Modality] = {}
    if molecular:
        defaults.update((m.name, m) for m in
                        MultiModalFeaturizer(molecular, progress=False).modalities)
    if crystal:
        from deepfuse_plugin.feat.crystal import BUILTIN_CRYSTAL_MODALITIES, crystal_modality_specs

        unknown = [m for m in crystal if m not in BUILTIN_CRYSTAL_MODALITIES]
        if unknown:
            raise ValueError(f"Unknown modality names {unknown}; built-in molecule modalities: "
                             f"{list(BUILTIN_MODALITIES)}, crystal modalities: "
                             f"{list(BUILTIN_CRYSTAL_MODALITIES)}")
        defaults.update((m.name, m) for m in crystal_modality_specs(crystal))
    return as_modalities([defaults[m] if isinstance(m, str) else m for m in modalities])


def autocast_dtype(mixed_precision: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision`` on ``device`` (see MultiModalTorchModel)."""
    if mixed_precision not in ("auto", True, False):
        raise ValueError(f"mixed_precision must be 'auto', True or False, got {mixed_precision!r}")
    if mixed_precision is False:
        return None
    if mixed_precision == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else None
    return torch.bfloat16


class MultiModalTorchModel(TorchModel):
    """Base class of deepfuse's fusion models (a DeepChem ``TorchModel``).

    Parameters
    ----------
    n_tasks: int
        Number of prediction tasks.
    modalities: list of Modality (or their dicts / built-in names)
        The featurizer's ``modalities``.
    mode: str
        ``"regression"`` or ``"classification"``.
    n_classes: int
        Classes per task (classification).
    encoder_dim: int
        Width of every modality encoder's output.
    fused_dim: int
        Width of the fused embedding.
    head_hidden: int
        Hidden width of the task head.
    dropout: float
        Dropout in encoders and head.
    encoder_options: dict, optional
        Per-kind encoder keyword arguments, e.g. ``{"graph": {"n_layers": 4}}``.
    fusion_loss_weight: float
        Weight of the fusion layer's auxiliary losses in ``fit`` (task loss has weight 1).
    unimodal_loss_weight: float
        Weight of auxiliary per-modality losses: every encoder gets its own task head (the kind of
        the main head) and ``fit`` adds ``unimodal_loss_weight * mean_m task loss(head m)``, each
        head's loss counting only samples where its modality is present. It trains each encoder to
        predict on its own, so a fusion layer cannot leave one untrained while it leans on the
        modality that fits the training set fastest. 0 (default) builds no heads. The heads are
        used in training only.
    modality_dropout: float
        Training-time modality dropout in [0, 1): each present modality is hidden from the fusion
        layer with this probability per sample and batch (never all of a sample's modalities), so
        any fusion model can be trained to cope with missing modalities. 0 (default) = off.
    uncertainty: str, optional
        None (default) or ``"evidential"``: an evidential head (Normal-Inverse-Gamma for
        regression, Amini et al. 2020; Dirichlet for classification, Sensoy et al. 2018) and its
        loss, so that :meth:`predict_uncertainty` returns analytic uncertainties in one forward
        pass.
        Predictions keep DeepChem's shapes. Part of the architecture.
    evidential_lambda: float, optional
        Weight of the evidential regulariser: regression ``|y - gamma| (2 nu + alpha)``,
        classification ``KL(Dir(alpha~) || Dir(1))`` (annealed). None = 0.1 (regression) or 1.0
        (classification).
    evidential_anneal_epochs: int
        Classification: the KL weight rises linearly from 0 to ``evidential_lambda`` over this many
        training epochs (counted across ``fit`` calls of this model object; Sensoy et al. use 10).
        0 = no annealing.
    progress: bool
        Show tqdm progress bars while training and predicting.
    mixed_precision: bool or "auto"
        ``"auto"`` (default): bfloat16 autocast on a CUDA GPU that supports it, float32 otherwise;
        ``True``: bfloat16 autocast on any device (CPU included); ``False``: float32. Losses and
        outputs stay float32 (bfloat16 needs no loss scaling). A runtime choice, not saved in the
        configuration.
    length_bucket_pool: int
        Training only. 0 (default): DeepChem's shuffled batches. ``k >= 2``: every ``k``
        consecutive shuffled batches are pooled, sorted by token count of the sequence modalities
        (SMILES/SELFIES/text) and cut again into batches, served in random order
        (:func:`~deepfuse_plugin.data.collate.length_bucketed`). Batches then pad far less, so a
        sequence encoder trains faster (``deepfuse bench speed`` measures it); batch composition
        is less random, so results differ from the default's. 32 is a good start.
    pretrained: str or path, optional
        A pretrained checkpoint (a shipped name from ``deepfuse pretrained`` /
        :func:`~deepfuse_plugin.pretrained.list_pretrained`, or a folder written by
        ``deepfuse pretrain``). Encoders of the modalities it covers start from its weights; other
        modalities (e.g. a MiniMol view) start fresh. ``encoder_dim`` and the covered modalities'
        specs must match the checkpoint's (an error names any difference).
    freeze_encoders: bool
        Keep the pretrained encoders fixed: only fusion, heads and fresh encoders train.
    encoder_lr_scale: float
        Learning rate of the pretrained encoders relative to ``learning_rate``, in (0, 1].
    load_pretrained_weights: bool
        False when the weights come from a checkpoint anyway (:meth:`load` passes it), so the
        pretrained checkpoint need not be on the machine. Not saved.
    pretrained_modalities: sequence of str, optional
        Set by :meth:`load` from the saved configuration (which encoders started pretrained).
    **kwargs:
        Passed to ``dc.models.TorchModel`` (``batch_size``, ``learning_rate``, ``model_dir``,
        ``device``, ...). The device defaults to the GPU when one is present (DeepChem's rule).

    Notes
    -----
    Output conventions follow DeepChem: regression predictions ``(N, n_tasks)``, classification
    probabilities ``(N, n_tasks, n_classes)``; ``predict(..., output_types=["embedding"])`` gives
    the fused embedding and ``["modality_weights"]`` the per-sample modality weights.
    """

    #: ``restore`` loads weights only and checks the configuration (see ``restore_safely``).
    restores_safely: ClassVar[bool] = True
    #: Extra constructor arguments of a subclass that belong in its saved configuration.
    _config_extra: ClassVar[tuple[str, ...]] = ()
    #: Configuration keys that change training only, not the architecture: a checkpoint restores
    #: across a difference in these (with a warning); any other difference is an error.
    _training_settings: ClassVar[frozenset[str]] = frozenset(
        {"dropout", "fusion_loss_weight", "modality_dropout", "batch_size", "learning_rate",
         "evidential_lambda", "evidential_anneal_epochs", "length_bucket_pool",
         "unimodal_loss_weight", "pretrained", "freeze_encoders", "encoder_lr_scale",
         "pretrained_modalities"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    def __init__(self, n_tasks: int, modalities: Sequence[Modality | dict | str],
                 mode: str = "regression", n_classes: int = 2, encoder_dim: int = 128,
                 fused_dim: int = 128, head_hidden: int = 128, dropout: float = 0.1,
                 encoder_options: dict[str, dict[str, Any]] | None = None,
                 fusion_loss_weight: float = 1.0, modality_dropout: float = 0.0,
                 unimodal_loss_weight: float = 0.0, uncertainty: str | None = None,
                 evidential_lambda: float | None = None,
                 evidential_anneal_epochs: int = 10, progress: bool = True,
                 mixed_precision: bool | str = "auto", length_bucket_pool: int = 0,
                 pretrained: str | os.PathLike | None = None, freeze_encoders: bool = False,
                 encoder_lr_scale: float = 1.0, load_pretrained_weights: bool = True,
                 pretrained_modalities: Sequence[str] | None = None, **kwargs: Any):
        check.check_base_settings(locals(), kwargs)
        check_fine_tuning_settings(pretrained, freeze_encoders, encoder_lr_scale)
        self.length_bucket_pool = int(length_bucket_pool)
        self.uncertainty, self.evidential_lambda = uncertainty, evidential_lambda
        self.evidential_anneal_epochs = evidential_anneal_epochs
        self._kl_anneal = 1.0
        self.n_tasks, self.mode, self.n_classes = n_tasks, mode, n_classes
        self.modalities = _resolve_modalities(modalities)
        self.encoder_dim, self.fused_dim, self.head_hidden = encoder_dim, fused_dim, head_hidden
        self.dropout, self.encoder_options = dropout, dict(encoder_options or {})
        self.fusion_loss_weight, self.progress = fusion_loss_weight, progress
        self.modality_dropout = modality_dropout
        self.unimodal_loss_weight = unimodal_loss_weight
        network = MultiModalNetwork(self.modalities, self._build_fusion(), self._build_head(),
                                    encoder_dim, self._effective_encoder_options(),
                                    modality_dropout,
                                    unimodal_heads=self._build_unimodal_heads())
        kwargs.setdefault("batch_size", 64)
        super().__init__(network, loss=self._supervised_loss, output_types=list(OUTPUT_TYPES),
                         **kwargs)
        self.mixed_precision = mixed_precision
        network.autocast_dtype = autocast_dtype(mixed_precision, self.device)
        self._drop_modalities: tuple[str, ...] = ()
        self._fitting = False
        self._row_reasons = np.zeros(0, dtype=object)
        self.pretrained = None if pretrained is None else str(pretrained)
        self.freeze_encoders, self.encoder_lr_scale = bool(freeze_encoders), encoder_lr_scale
        #: modalities whose encoders started from ``pretrained`` (empty without one)
        self.pretrained_modalities: list[str] = []
        if self.pretrained is not None and load_pretrained_weights:
            self.pretrained_modalities = start_from_pretrained(
                network.encoders, self.modalities, self.pretrained, encoder_dim,
                self.freeze_encoders)
        elif self.pretrained is not None:  # rebuilt by load(): the weights come from a checkpoint
            self.pretrained_modalities = list(pretrained_modalities) \
                if pretrained_modalities is not None \
                else pretrained_covers(self.pretrained, self.modalities)
            for name in self.pretrained_modalities if self.freeze_encoders else ():
                network.encoders[name].requires_grad_(False)

    def _ensure_built(self) -> None:
        """DeepChem's optimizer set-up, with parameter groups: pretrained encoders train at
        ``learning_rate * encoder_lr_scale`` and frozen ones are left out."""
        if self._built:
            return
        super()._ensure_built()
        if self.pretrained_modalities and (self.freeze_encoders or self.encoder_lr_scale != 1):
            rate = self.optimizer.learning_rate
            rate = getattr(rate, "initial_rate", rate)
            self._pytorch_optimizer = self.optimizer._create_pytorch_optimizer(parameter_groups(
                self.model, self.pretrained_modalities, rate, self.encoder_lr_scale))
            if self._lr_schedule is not None:
                self._lr_schedule = self.optimizer.learning_rate._create_pytorch_schedule(
                    self._pytorch_optimizer)

    # -- what a subclass supplies ----------------------------------------------------------------
    @abstractmethod
    def _build_fusion(self) -> nn.Module:
        """The fusion layer: ``(embeddings, mask) -> FusionOutput``, output width ``fused_dim``."""

    def _effective_encoder_options(self) -> dict[str, dict[str, Any]]:
        """Encoder options used to build the network; subclasses add their defaults under the
        user's ``encoder_options`` (which stays what the user passed, for the saved config)."""
        return self.encoder_options

    def _build_head(self) -> nn.Module | None:
        """The task head on the fused embedding; None if the fusion layer predicts itself."""
        return make_head(self.fused_dim, self.n_tasks, self.mode, self.n_classes, self.head_hidden,
                         self.dropout, self.uncertainty)

    def _build_unimodal_heads(self) -> nn.ModuleDict | None:
        """A head per modality on its encoder output when ``unimodal_loss_weight > 0``; None for
        fusion layers whose per-modality predictors provide the unimodal outputs (late fusion)."""
        if self.unimodal_loss_weight == 0:
            return None
        return nn.ModuleDict({name: make_head(self.encoder_dim, self.n_tasks, self.mode,
                                              self.n_classes, self.head_hidden, self.dropout,
                                              self.uncertainty)
                              for name in self.modality_names})

    def _on_epoch_start(self, progress: float) -> None:
        """Hook called before each training epoch with ``progress`` in [0, 1] (curricula).

        Subclasses that override it call ``super()._on_epoch_start(progress)``: the base keeps the
        evidential KL annealing state here.
        """
        self._epoch_progress = progress
        anneal = self.evidential_anneal_epochs
        self._kl_anneal = min(1.0, self.epochs_started / anneal) if anneal > 0 else 1.0
        self.model.epochs_started += 1

    def count_schedules_over(self, total_epochs: int) -> None:
        """Run every schedule that is counted per ``fit`` call over ``total_epochs`` epochs in all
        instead, across ``fit`` calls: training split into several calls (a resumed run) then
        follows the schedule of one call. The base's evidential KL anneal already counts over
        all calls; subclasses with a per-call schedule override this."""

    @property
    def epochs_started(self) -> int:
        """Training epochs begun over every ``fit`` call, saved in each checkpoint: a restored or
        loaded model continues its evidential KL anneal and masking curriculum where it was."""
        return int(self.model.epochs_started)

    # -- configuration -------------------------------------------------------------------------
    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument (JSON-serialisable), enough to rebuild the model."""
        keys = ["n_tasks", "modalities", "mode", "n_classes", "encoder_dim", "fused_dim",
                "head_hidden", "dropout", "encoder_options", "fusion_loss_weight",
                "modality_dropout", "unimodal_loss_weight", "uncertainty", "evidential_lambda",
                "evidential_anneal_epochs",
                *self._config_extra, "batch_size", "learning_rate", "length_bucket_pool",
                "pretrained", "freeze_encoders", "encoder_lr_scale", "pretrained_modalities"]
        config = {k: getattr(self, k) for k in keys}
        config["modalities"] = [m.to_dict() for m in self.modalities]
        if not isinstance(config["learning_rate"], (int, float)):
            config["learning_rate"] = None  # a schedule object: not part of the architecture
        return json.loads(json.dumps(config, default=_jsonable))

    def _write_config(self, model_dir: str) -> None:
        os.makedirs(model_dir, exist_ok=True)
        payload = {"format": CONFIG_FORMAT, "deepfuse_version": __version__,
                   "model_class": type(self).__name__, "config": self.get_config()}
        with open(os.path.join(model_dir, CONFIG_FILE), "w") as fh:
            json.dump(payload, fh, indent=1)

    def save_checkpoint(self, max_checkpoints_to_keep: int = 5, model_dir: str | None = None) -> None:
        super().save_checkpoint(max_checkpoints_to_keep, model_dir)
        if max_checkpoints_to_keep:
            self._write_config(model_dir or self.model_dir)

    def restore(self, checkpoint: str | None = None, model_dir: str | None = None,
                strict: bool | None = True) -> None:
        """Restore weights, first checking the saved configuration matches this model's.

        The checkpoint is read with ``torch.load(weights_only=True)``: nothing in the file is run.
        A missing folder or checkpoint raises :class:`MissingCheckpointError` (a
        ``FileNotFoundError``); an empty, truncated, unreadable checkpoint, one with NaN/inf
        weights, or an invalid configuration file raises
        :class:`~deepfuse_plugin.errors.CorruptCheckpointError`; a configuration that differs in
        the architecture raises :class:`~deepfuse_plugin.errors.InvalidSettingError` naming the
        settings.
        """
        directory = model_dir or (os.path.dirname(checkpoint) if checkpoint else self.model_dir)
        if checkpoint is None:
            checkpoint = latest_checkpoint(directory)
        saved = read_config(directory)
        if saved is not None:
            self._check_saved_config(saved, directory)
        self._ensure_built()
        data = load_checkpoint_file(checkpoint, self.device)
        try:
            self.model.load_state_dict(data["model_state_dict"], strict=bool(strict))
        except RuntimeError as err:
            raise InvalidSettingError(
                f"Checkpoint in {directory!r} does not fit this model's architecture: "
                f"{str(err).splitlines()[0]}") from err
        try:
            self._pytorch_optimizer.load_state_dict(data["optimizer_state_dict"])
            self._global_step = int(data["global_step"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"Checkpoint {checkpoint!r} has an unusable optimizer "
                                         f"state or step ({err}): retrain the model, or restore "
                                         "the folder from a backup copy") from err

    def _check_saved_config(self, saved: dict[str, Any], directory: str) -> None:
        try:
            mismatched, training_only = config_diff(saved["config"], self.get_config(),
                                                     self._training_settings)
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{os.path.join(directory, CONFIG_FILE)} is not a valid deepfuse configuration "
                f"({type(err).__name__}: {err}): retrain the model, or restore the folder from a "
                "backup copy") from err
        if saved["model_class"] != type(self).__name__:
            mismatched.insert(0, f"model_class: saved {saved['model_class']}, "
                                 f"this {type(self).__name__}")
        if mismatched:
            raise InvalidSettingError(
                f"Cannot restore checkpoint from {directory!r} into this model: its "
                "configuration differs:\n  " + "\n  ".join(mismatched) +
                f"\nRebuild with {type(self).__name__}.load({directory!r}).")
        if training_only:
            logger.warning("Restoring from %r with different training settings: %s", directory,
                           "; ".join(training_only))

    @classmethod
    def load(cls, model_dir: str, **overrides: Any) -> "MultiModalTorchModel":
        """Rebuild a model from ``model_dir`` (configuration + latest checkpoint).

        Errors name the folder or file: a missing folder or configuration raises
        :class:`MissingCheckpointError` (a ``FileNotFoundError``); a configuration that is not
        valid JSON, lacks a key or holds a value of the wrong type, and a damaged checkpoint,
        raise :class:`~deepfuse_plugin.errors.CorruptCheckpointError`.

        Examples
        --------
        >>> model = MultiModalTorchModel.load("results/demo/model")  # doctest: +SKIP
        """
        saved = read_config(model_dir)
        if saved is None:
            if not os.path.isdir(model_dir):
                raise MissingCheckpointError(f"Model folder {model_dir!r} does not exist: give "
                                             "the folder a trained model was saved in")
            raise MissingCheckpointError(f"No {CONFIG_FILE} in {model_dir!r}: not a deepfuse "
                                         "model folder")
        path = os.path.join(model_dir, CONFIG_FILE)
        model_cls = MODEL_CLASSES.get(saved["model_class"])
        if model_cls is None:
            raise CorruptCheckpointError(f"Unknown model class {saved['model_class']!r} in {path}"
                                         f" (known: {sorted(MODEL_CLASSES)})")
        if cls is not MultiModalTorchModel and not issubclass(model_cls, cls):
            raise ValueError(f"{model_dir!r} holds a {saved['model_class']}, not a {cls.__name__}")
        config = {k: v for k, v in saved["config"].items() if v is not None}
        try:
            # the weights come from the checkpoint: a pretrained start need not be re-read
            model = model_cls(**{**config, "model_dir": model_dir, "load_pretrained_weights": False,
                                 **overrides})
        except (TypeError, ValueError) as err:
            given = f" with the overrides {sorted(overrides)}" if overrides else ""
            raise CorruptCheckpointError(
                f"The configuration in {path} cannot rebuild a {saved['model_class']}{given}: "
                f"{err}. Retrain the model, or restore the file from a backup copy") from err
        model.restore()
        return model

    # -- batching ------------------------------------------------------------------------------
    def default_generator(self, dataset: Dataset, epochs: int = 1, mode: str = "fit",
                          deterministic: bool = True, pad_batches: bool = False
                          ) -> Iterator[tuple[list, list, list]]:
        """Batches ``([MultiModalBatch], [y], [w])``; calls the curriculum hook once per epoch.

        Training batches are regrouped by length when ``length_bucket_pool`` is set (and the order
        is not ``deterministic``); prediction keeps the dataset's order.
        """
        n_batches = math.ceil(len(dataset) / self.batch_size) * epochs
        bucketed = (mode == "fit" and not deterministic and self.length_bucket_pool > 1
                    and any(m.kind in PADDED_KINDS for m in self.modalities))
        show = self.progress and mode == "fit"
        with tqdm(total=n_batches, desc=f"{type(self).__name__} {mode}", disable=not show,
                  unit="batch", leave=False) as bar:
            for epoch in range(epochs):
                if mode == "fit":
                    self._on_epoch_start(epoch / max(1, epochs - 1))
                batches = dataset.iterbatches(batch_size=self.batch_size,
                                              deterministic=deterministic, pad_batches=False)
                if bucketed:  # seeded from numpy's global state, like DeepChem's shuffling
                    rng = np.random.default_rng(np.random.randint(2**31 - 1))
                    batches = length_bucketed(batches, self.modalities, self.length_bucket_pool,
                                              rng)
                for X_b, y_b, w_b, _ in batches:
                    batch = collate_samples(list(X_b), self.modalities, self._drop_modalities)
                    bar.update(1)
                    yield [batch], [y_b], [w_b]

    def _prepare_batch(self, batch: tuple[Any, Any, Any]) -> tuple[list, list, list]:
        inputs, labels, weights = batch
        inputs = [x.to(self.device) if isinstance(x, MultiModalBatch) else x for x in inputs]

        def to_tensors(arrays: Any) -> list[torch.Tensor]:
            if arrays is None:
                return []
            return [torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)
                    for a in arrays if a is not None]

        return inputs, to_tensors(labels), to_tensors(weights)

    # -- losses ----------------------------------------------------------------------------------
    def _task_loss(self, task_output: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
        if self.uncertainty == "evidential":
            coefficient = (DEFAULT_EVIDENTIAL_LAMBDA[self.mode] if self.evidential_lambda is None
                           else self.evidential_lambda)
            if self.mode == "classification":
                return losses.masked_dirichlet_loss(task_output, labels, weights,
                                                    coefficient * self._kl_anneal)
            return losses.masked_evidential_regression_loss(task_output, labels, weights,
                                                            coefficient)
        if self.mode == "classification":
            return losses.masked_classification_loss(task_output, labels, weights)
        return losses.masked_regression_loss(task_output, labels, weights)

    def _supervised_loss(self, outputs: list, labels: list, weights: list) -> torch.Tensor:
        task_output, aux, unimodal, unimodal_mask = outputs
        if not labels:
            raise ValueError("fit() needs labels; use pretrain() for self-supervised training")
        weight = weights[0] if weights and weights[0].numel() else torch.ones_like(labels[0])
        loss = self._task_loss(task_output, labels[0], weight) + self.fusion_loss_weight * aux
        if self.unimodal_loss_weight == 0 or unimodal.shape[1] == 0:
            return loss
        weight = weight.reshape(unimodal_mask.shape[0], -1)
        per_modality = [self._task_loss(unimodal[:, j], labels[0],
                                        weight * unimodal_mask[:, j:j + 1].to(weight.dtype))
                        for j in range(unimodal_mask.shape[1])]
        return loss + self.unimodal_loss_weight * torch.stack(per_modality).mean()

    @staticmethod
    def _fusion_only_loss(outputs: list, labels: list, weights: list) -> torch.Tensor:
        if not outputs[1].requires_grad:
            raise ValueError("This model's fusion layer has no self-supervised objective to "
                             "pretrain on (e.g. DynamicFusionModel has one); use fit()")
        return outputs[1]

    # -- training --------------------------------------------------------------------------------
    def fit(self, dataset: Dataset, nb_epoch: int = 10, *args: Any, **kwargs: Any) -> float:
        """DeepChem ``fit`` after checking the dataset (empty data, labels, modalities)."""
        if not check._is_int(nb_epoch) or nb_epoch < 1:
            raise InvalidSettingError(f"nb_epoch must be a whole number >= 1, got {nb_epoch!r}")
        self._check_dataset(dataset, labelled=kwargs.get("loss") is None)
        if len(args) < 6:  # ``loss`` is DeepChem's 8th parameter; not given positionally
            kwargs["loss"] = _released_after_backward(
                refusing_non_finite(kwargs.get("loss") or self._loss_fn, self))
        return super().fit(dataset, nb_epoch, *args, **kwargs)

    def fit_generator(self, *args: Any, **kwargs: Any) -> float:
        """DeepChem ``fit_generator``; a prediction made inside it (a validation callback) hands
        the network back in training mode."""
        self._fitting = True
        try:
            return super().fit_generator(*args, **kwargs)
        finally:
            self._fitting = False

    def pretrain(self, dataset: Dataset, nb_epoch: int = 10, **kwargs: Any) -> float:
        """Self-supervised training on the fusion objective only (labels are not used)."""
        return self.fit(dataset, nb_epoch, loss=self._fusion_only_loss, **kwargs)

    def _check_dataset(self, dataset: Dataset, labelled: bool) -> None:
        if len(dataset) == 0:
            raise ValueError("The dataset has no rows: every input failed to featurize or the "
                             "split is empty (see the featurizer's warnings for the failed inputs)")
        # not dataset.X: that loads every shard. DiskDataset yields a map per sample: unpack it.
        first, *_ = next(iter(dataset.itersamples()))
        collate_samples([first], self.modalities)  # clear error if modalities differ
        check_token_lengths(dataset, self.modalities)
        if not labelled:
            return
        if len(dataset.get_task_names()) == 0:  # e.g. CSVLoader(tasks=[]): DiskDataset.y fails
            raise ValueError("The dataset has no labels (no tasks): fit() needs labels; use "
                             "pretrain() for self-supervised training")
        y = numeric_labels(dataset)
        if y.shape[1] != self.n_tasks:
            raise ValueError(f"The model has n_tasks={self.n_tasks} but the labels have {y.shape[1]} "
                             "column(s)")
        check_label_range(y, dataset)
        check_labelled_tasks(y, dataset)
        bad_rows = np.flatnonzero(~np.isfinite(y).all(axis=1))
        if len(bad_rows):
            ids = [str(dataset.ids[i]) for i in bad_rows[:10]]
            logger.warning("%d row(s) have NaN/inf labels; those entries get weight 0 (ids: %s%s)",
                           len(bad_rows), ids, " ..." if len(bad_rows) > 10 else "")
        if self.mode == "classification":
            finite = y[np.isfinite(y)]
            invalid = finite[(finite < 0) | (finite >= self.n_classes) | (finite != np.round(finite))]
            if invalid.size:
                rows = np.flatnonzero(((y < 0) | (y >= self.n_classes) | (y != np.round(y))) &
                                      np.isfinite(y))[:10]
                raise ValueError(f"Classification labels must be integers in [0, {self.n_classes}); "
                                 f"found {sorted(set(invalid.tolist()))[:5]} (ids: "
                                 f"{[str(dataset.ids[r]) for r in rows]})")

    def check_featurizer(self, featurizer: Any) -> None:
        """Raise if ``featurizer`` (or its ``modalities``) would give this model other inputs.

        Every input-changing field of each of the model's modality specs is compared: ``kind``,
        ``dim``, ``vocab``, ``max_length``, ``node_dim``, ``edge_dim`` and the featurizer
        ``params`` (ECFP size and radius, ...). Extra modalities of the featurizer are allowed
        (a unimodal model reads one of several).

        Parameters
        ----------
        featurizer: featurizer or sequence of Modality / dict
            Anything with a ``modalities`` attribute (e.g. ``MultiModalFeaturizer``), or specs.

        Raises
        ------
        InvalidSettingError
            Naming the modality, the field and both values.

        Examples
        --------
        >>> import deepfuse_plugin as dfp
        >>> model = dfp.EarlyFusionModel(1, ["ecfp"], encoder_dim=8, fused_dim=8, progress=False)
        >>> model.check_featurizer(dfp.MultiModalFeaturizer(["ecfp"], progress=False))
        >>> model.check_featurizer(dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=64,
        ...                                                 progress=False))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deepfuse_plugin.errors.InvalidSettingError: The featurizer does not match the model: ...
        """
        specs = getattr(featurizer, "modalities", featurizer)
        theirs = {m.name: m for m in as_modalities(list(specs))}
        missing = [n for n in self.modality_names if n not in theirs]
        if missing:
            raise InvalidSettingError(f"The featurizer does not compute the model's modalities "
                                      f"{missing} (it has {list(theirs)}): build it with "
                                      "MultiModalFeaturizer(modalities=model.modalities)")
        problems = [line for m in self.modalities for line in spec_differences(m, theirs[m.name])]
        if problems:
            raise InvalidSettingError("The featurizer does not match the model: " +
                                      "; ".join(problems) + ". Build it with "
                                      "MultiModalFeaturizer(modalities=model.modalities)")

    # -- inference -------------------------------------------------------------------------------
    def _iterate_outputs(self, dataset: Dataset, drop_modalities: Iterable[str] = ()
                         ) -> Iterator[tuple[NetworkOutput, MultiModalBatch]]:
        """Evaluation-mode network outputs batch by batch, with ``drop_modalities`` made missing."""
        if len(dataset) == 0:
            raise ValueError("The dataset has no rows: nothing to predict (every input failed to "
                             "featurize or the split is empty)")
        self._ensure_built()
        # Inside fit (a validation callback) training mode comes back afterwards, or dropout and
        # modality masking would stay off for the rest of training. Outside fit the network stays
        # in eval mode, as DeepChem leaves it: switching every module twice per call took about a
        # fifth of a one-molecule predict.
        drop = drop_names(drop_modalities, self.modality_names)
        restore = self._fitting and self.model.training
        if self.model.training:
            self.model.eval()
        previous, self._drop_modalities = self._drop_modalities, drop
        reasons: list[np.ndarray] = []
        try:
            with torch.no_grad():
                for (batch,), _, _ in self.default_generator(dataset, mode="predict"):
                    batch = batch.to(self.device)
                    out = self.model(batch)
                    reasons.append(row_problems(out.prediction, batch.mask))
                    yield out, batch
            self._set_row_problems(np.concatenate(reasons) if reasons else np.zeros(0, object),
                                   dataset.ids)
        finally:
            self._drop_modalities = previous
            if restore:
                self.model.train()

    def predict(self, dataset: Dataset, transformers: list = [],  # noqa: B006 (DeepChem signature)
                output_types: str | list[str] | None = None,
                drop_modalities: Iterable[str] = ()) -> np.ndarray | list[np.ndarray]:
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
        names = [output_types] if isinstance(output_types, str) else list(output_types or ["prediction"])
        unknown = [n for n in names if n not in NAMED_OUTPUTS]
        if unknown:
            raise ValueError(f"Unknown output types {unknown}; available: {list(NAMED_OUTPUTS)}")
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for out, _ in self._iterate_outputs(dataset, drop_modalities):
            for n in names:
                chunks[n].append(getattr(out, n).detach().cpu().numpy())
        results = []
        for n in names:
            values = np.concatenate(chunks[n]) if chunks[n] else np.zeros((0,))
            if n == "prediction" and transformers:
                values = undo_transforms(values, transformers)
                self._add_row_problems(non_finite_rows(values), dataset.ids)
            results.append(values)
        reasons = self._row_reasons
        results = [mark_failed_rows(v, reasons) if n != "modality_weights" else v
                   for n, v in zip(names, results)]
        return results[0] if len(results) == 1 else results

    def predict_checked(self, dataset: Dataset, transformers: list = [],  # noqa: B006
                        drop_modalities: Iterable[str] = ()) -> CheckedPredictions:
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

    def predict_uncertainty(self, dataset: Dataset, masks: int | None = None,
                            transformers: list = [],  # noqa: B006 (DeepChem signature)
                            kind: str = "total", drop_modalities: Iterable[str] = ()
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

        Failed rows (non-finite output or spread, no modality present) are NaN in both arrays,
        as in :meth:`predict`; :attr:`last_row_problems` names them.
        """
        if self.uncertainty is None:
            raise ValueError(f"{type(self).__name__} was built without an uncertainty head: "
                             "construct it with uncertainty=\"evidential\" (and train it) to use "
                             "predict_uncertainty. Monte-Carlo dropout is deliberately not "
                             "offered.")
        kinds = UNCERTAINTY_OUTPUTS[self.mode]
        if kind not in kinds:
            raise ValueError(f"kind must be one of {kinds} for {self.mode}, got {kind!r}")
        predictions, spreads = [], []
        for out, _ in self._iterate_outputs(dataset, drop_modalities):
            if self.mode == "regression":
                mean, aleatoric, epistemic = nig_moments(out.task_output)
                variance = {"total": aleatoric + epistemic, "aleatoric": aleatoric,
                            "epistemic": epistemic}[kind]
                spread = variance.sqrt()
            else:
                mean, std, vacuity = dirichlet_moments(out.task_output)
                spread = std if kind == "total" else vacuity
            predictions.append(mean.cpu().numpy())
            spreads.append(spread.cpu().numpy())
        prediction, spread = np.concatenate(predictions), np.concatenate(spreads)
        if transformers:
            if kind != "vacuity":
                spread = _untransform_std(spread, prediction, transformers)
            prediction = undo_transforms(prediction, transformers)
        self._add_row_problems(non_finite_rows(prediction) | non_finite_rows(spread),
                               dataset.ids)
        reasons = self._row_reasons
        return mark_failed_rows(prediction, reasons), mark_failed_rows(spread, reasons)

    def predict_embedding(self, dataset: Dataset) -> np.ndarray:
        return self.predict(dataset, output_types="embedding")

    def modality_weights(self, dataset: Dataset, drop_modalities: Iterable[str] = ()) -> pd.DataFrame:
        """Per-sample modality weights (rows = dataset ids, columns = modalities; 0 = missing)."""
        weights = self.predict(dataset, output_types="modality_weights",
                               drop_modalities=drop_modalities)
        return pd.DataFrame(weights, index=pd.Index(dataset.ids, name="id"),
                            columns=self.modality_names)

    def collect_extras(self, dataset: Dataset, key: str,
                       drop_modalities: Iterable[str] = ()) -> np.ndarray:
        """Concatenate a fusion layer's ``FusionOutput.extras[key]`` over ``dataset``."""
        parts = []
        for _, _ in self._iterate_outputs(dataset, drop_modalities):
            extras = self.model.last_fusion.extras
            if key not in extras:
                raise KeyError(f"{type(self).__name__}'s fusion layer has no {key!r}; available: "
                               f"{sorted(extras)}")
            parts.append(extras[key].detach().cpu().numpy())
        return np.concatenate(parts)


def _released_after_backward(loss_fn: Any) -> Any:
    """``loss_fn`` whose loss tensor drops its autograd graph once backward has passed it.

    DeepChem's fit loop adds every batch loss to a running sum (``avg_loss += batch_loss``) and
    turns the sum into a float only every ``log_frequency`` (100) batches. Until then the sum keeps
    every batch's graph alive, and PyTorch's Transformer layers keep tensors in their graph nodes
    after backward: about 35 MB per batch of 64 HIV molecules, which made one epoch on HIV peak at
    4.7 GB. Detaching the loss once its gradient is taken frees each graph at once; the loss
    value and the gradients are unchanged.
    """
    def loss(outputs: list, labels: list, weights: list) -> Any:
        value = loss_fn(outputs, labels, weights)
        if isinstance(value, torch.Tensor) and value.requires_grad and not value._is_view():
            def detach(grad: torch.Tensor) -> torch.Tensor:
                value.detach_()
                return grad

            value.register_hook(detach)
        return value

    return loss


def _jsonable(value: Any) -> Any:
    if isinstance(value, Modality):
        return value.to_dict()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{value!r} is not JSON-serialisable")


def _untransform_std(std: np.ndarray, z: np.ndarray, transformers: list) -> np.ndarray:
    """Carry ``std`` of the transformed-space values ``z`` through ``undo_transforms``: each
    ``transform_y`` inverse must be affine elementwise, ``a z + b``; ``std`` is multiplied by
    ``|a|`` (for ``NormalizationTransformer``, ``a = y_stds``)."""
    dtype = np.asarray(std).dtype
    std, z = np.asarray(std, dtype=np.float64), np.asarray(z, dtype=np.float64)
    for transformer in reversed(transformers):
        if not transformer.transform_y:
            continue
        f0, f1, f2 = (np.asarray(transformer.untransform(z + k), dtype=np.float64)
                      for k in (0, 1, 2))
        slope = f1 - f0
        if not np.allclose(f2 - f1, slope, rtol=1e-5, atol=1e-8):
            raise ValueError("Cannot carry a standard deviation through "
                             f"{type(transformer).__name__}: its inverse is not affine. Undo it "
                             "yourself (e.g. sample the predictive distribution) or train "
                             "without it.")
        std, z = std * np.abs(slope), f0
    return std.astype(dtype)
