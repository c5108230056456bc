"""``MultiModalTorchModel``: the DeepChem plumbing every deepfuse fusion model shares.

A concrete model only implements :meth:`MultiModalTorchModel._build_fusion` (and, if it has
constructor arguments of its own, stores them under the same attribute names). Construction,
configuration, checkpoints and training are here; the prediction methods (``predict``,
``iterate_outputs``, ``predict_uncertainty``, ...) come from
:class:`~deepfuse_plugin.models.inference.InferenceMixin`. The work behind them lives in smaller
modules: batching (``_batching``), losses (``_losses``), data checks (``_data_checks``),
configuration files (:mod:`~deepfuse_plugin.models.checkpoints`), row checks
(:mod:`~deepfuse_plugin.models.predictions`) and evidential uncertainty
(:mod:`~deepfuse_plugin.models.uncertainty`).
"""

from __future__ import annotations

import json
import logging
import os
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from deepchem.data import Dataset
from deepchem.models import TorchModel
from torch import nn

from deepfuse_plugin.data.collate import collate_samples
from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError
from deepfuse_plugin.modalities import Modality
from deepfuse_plugin.models import _losses
from deepfuse_plugin.models import _settings as check
from deepfuse_plugin.models._batching import autocast_dtype, batch_to_device, multimodal_batches
from deepfuse_plugin.models._data_checks import (
    check_featurizer_matches,
    check_training_data,
    refusing_non_finite,
)
from deepfuse_plugin.models._losses import DEFAULT_EVIDENTIAL_LAMBDA  # noqa: F401 (re-export)
from deepfuse_plugin.models._losses import released_after_backward as _released_after_backward
from deepfuse_plugin.models._pretrained import (
    check_fine_tuning_settings,
    pretrained_covers,
    start_from_pretrained,
)
from deepfuse_plugin.models._schedules import SCHEDULE_SETTINGS, ScheduleMixin
from deepfuse_plugin.models.checkpoints import (  # noqa: F401
    CONFIG_FILE,
    CONFIG_FORMAT,
    MissingCheckpointError,
    build_from_config,
    check_saved_config,
    jsonable,
    latest_checkpoint,
    load_weights,
    read_config,
    require_config,
    write_config,
)
from deepfuse_plugin.models.inference import NAMED_OUTPUTS, BatchOutputs, InferenceMixin  # noqa: F401
from deepfuse_plugin.models.uncertainty import UNCERTAINTY_OUTPUTS  # noqa: F401
from deepfuse_plugin.nn.heads import make_head
from deepfuse_plugin.nn.network import MultiModalNetwork

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ["prediction", "loss", "loss", "embedding", "modality_weights", "loss", "loss"]

#: Model classes by name, for :meth:`MultiModalTorchModel.load`.
MODEL_CLASSES: dict[str, type[MultiModalTorchModel]] = {}


class MultiModalTorchModel(InferenceMixin, ScheduleMixin, TorchModel):
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
        Dropout in the task head(s) and, where a layer takes it, the fusion layer. Encoders keep
        their own dropout (0.1); set it per kind with ``encoder_options={"graph": {"dropout": x}}``.
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
    lr_schedule: str
        Learning rate over a run: ``"constant"``, ``"cosine"`` (cosine decay to 0),
        ``"onecycle"`` (warm-up from ``lr/25``, 30% of the run unless ``warmup_epochs`` is set,
        then cosine to ``lr/1e4``) or ``"plateau"`` (halved after ``plateau_patience``
        validations without improvement; needs the validation loop). A plain ``fit`` call runs
        the whole schedule; ``train_with_validation`` runs it once over all its epochs.
    warmup_epochs: float
        Linear warm-up of the learning rate over this many epochs (0 = none).
    grad_clip: float, optional
        Clip the global gradient norm to this value before every step (None = no clipping).
    early_stopping: int, optional
        Patience of the validation loop (``train_with_validation``, ``deepfuse train``): stop
        after this many validations without improvement. None = train every epoch.
    plateau_patience: int
        Validations without improvement before ``"plateau"`` halves the rate.
    **kwargs
        Passed to ``dc.models.TorchModel`` (``batch_size``, ``learning_rate``, ``model_dir``,
        ``device``, ...). The device defaults to the GPU when one is present (DeepChem's rule).

    Notes
    -----
    Output conventions follow DeepChem: regression predictions ``(N, n_tasks)``, classification
    probabilities ``(N, n_tasks, n_classes)``; ``predict(..., output_types=["embedding"])`` gives
    the fused embedding and ``["modality_weights"]`` the per-sample modality weights.

    The prediction methods (``predict``, ``predict_checked``, ``predict_uncertainty``,
    ``modality_weights``, ``collect_extras``) and the public way to the network's outputs
    (``iterate_outputs``, ``inference_network``, ``fusion_layer``) are documented on
    :class:`~deepfuse_plugin.models.inference.InferenceMixin`, a base of this class.
    """

    #: ``restore`` loads weights only and checks the configuration (see ``restore_safely``).
    restores_safely: ClassVar[bool] = True
    #: Extra constructor arguments of a subclass that belong in its saved configuration.
    _config_extra: ClassVar[tuple[str, ...]] = ()
    #: Configuration keys that change training only, not the architecture: a checkpoint restores
    #: across a difference in these (with a warning); any other difference is an error.
    _training_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "dropout",
            "fusion_loss_weight",
            "modality_dropout",
            "batch_size",
            "learning_rate",
            "evidential_lambda",
            "evidential_anneal_epochs",
            "length_bucket_pool",
            "unimodal_loss_weight",
            "pretrained",
            "freeze_encoders",
            "encoder_lr_scale",
            "pretrained_modalities",
            *SCHEDULE_SETTINGS,
        }
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    def __init__(
        self,
        n_tasks: int,
        modalities: Sequence[Modality | dict | str],
        mode: str = "regression",
        n_classes: int = 2,
        encoder_dim: int = 128,
        fused_dim: int = 128,
        head_hidden: int = 128,
        dropout: float = 0.1,
        encoder_options: dict[str, dict[str, Any]] | None = None,
        fusion_loss_weight: float = 1.0,
        modality_dropout: float = 0.0,
        unimodal_loss_weight: float = 0.0,
        uncertainty: str | None = None,
        evidential_lambda: float | None = None,
        evidential_anneal_epochs: int = 10,
        progress: bool = True,
        mixed_precision: bool | str = "auto",
        length_bucket_pool: int = 0,
        pretrained: str | os.PathLike | None = None,
        freeze_encoders: bool = False,
        encoder_lr_scale: float = 1.0,
        load_pretrained_weights: bool = True,
        pretrained_modalities: Sequence[str] | None = None,
        lr_schedule: str = "constant",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = None,
        early_stopping: int | None = None,
        plateau_patience: int = 3,
        **kwargs: Any,
    ):
        check.check_base_settings(locals(), kwargs)
        self._init_schedule(locals(), kwargs.get("learning_rate"))
        check_fine_tuning_settings(pretrained, freeze_encoders, encoder_lr_scale)
        self.length_bucket_pool = int(length_bucket_pool)
        self.uncertainty, self.evidential_lambda = uncertainty, evidential_lambda
        self.evidential_anneal_epochs = evidential_anneal_epochs
        self._kl_anneal = 1.0
        self.n_tasks, self.mode, self.n_classes = n_tasks, mode, n_classes
        self.modalities = check.resolve_modalities(modalities)
        self.encoder_dim, self.fused_dim, self.head_hidden = encoder_dim, fused_dim, head_hidden
        self.dropout, self.encoder_options = dropout, dict(encoder_options or {})
        self.fusion_loss_weight, self.progress = fusion_loss_weight, progress
        self.modality_dropout = modality_dropout
        self.unimodal_loss_weight = unimodal_loss_weight
        network = MultiModalNetwork(
            self.modalities,
            self._build_fusion(),
            self._build_head(),
            encoder_dim,
            self._effective_encoder_options(),
            modality_dropout,
            unimodal_heads=self._build_unimodal_heads(),
        )
        kwargs.setdefault("batch_size", 64)
        super().__init__(
            network, loss=self._supervised_loss, output_types=list(OUTPUT_TYPES), **kwargs
        )
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
                network.encoders,
                self.modalities,
                self.pretrained,
                encoder_dim,
                self.freeze_encoders,
            )
        elif self.pretrained is not None:  # rebuilt by load(): the weights come from a checkpoint
            self.pretrained_modalities = (
                list(pretrained_modalities)
                if pretrained_modalities is not None
                else pretrained_covers(self.pretrained, self.modalities)
            )
            for name in self.pretrained_modalities if self.freeze_encoders else ():
                network.encoders[name].requires_grad_(False)

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
        return make_head(
            self.fused_dim,
            self.n_tasks,
            self.mode,
            self.n_classes,
            self.head_hidden,
            self.dropout,
            self.uncertainty,
        )

    def _build_unimodal_heads(self) -> nn.ModuleDict | None:
        """A head per modality on its encoder output when ``unimodal_loss_weight > 0``; None for
        fusion layers whose per-modality predictors provide the unimodal outputs (late fusion)."""
        if self.unimodal_loss_weight == 0:
            return None
        return nn.ModuleDict(
            {
                name: make_head(
                    self.encoder_dim,
                    self.n_tasks,
                    self.mode,
                    self.n_classes,
                    self.head_hidden,
                    self.dropout,
                    self.uncertainty,
                )
                for name in self.modality_names
            }
        )

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
        follows the schedule of one call: the learning-rate schedule here (the evidential KL
        anneal already counts over all calls); subclasses with a per-call schedule extend this."""
        self._schedule_epochs, self._schedule_origin = total_epochs, self.epochs_started

    @property
    def epochs_started(self) -> int:
        """Training epochs begun over every ``fit`` call, saved in each checkpoint: a restored or
        loaded model continues its evidential KL anneal and masking curriculum where it was."""
        return int(self.model.epochs_started)

    # -- configuration -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Every constructor argument (JSON-serialisable), enough to rebuild the model."""
        keys = [
            "n_tasks",
            "modalities",
            "mode",
            "n_classes",
            "encoder_dim",
            "fused_dim",
            "head_hidden",
            "dropout",
            "encoder_options",
            "fusion_loss_weight",
            "modality_dropout",
            "unimodal_loss_weight",
            "uncertainty",
            "evidential_lambda",
            "evidential_anneal_epochs",
            *self._config_extra,
            "batch_size",
            "learning_rate",
            "length_bucket_pool",
            "pretrained",
            "freeze_encoders",
            "encoder_lr_scale",
            "pretrained_modalities",
            *SCHEDULE_SETTINGS,
        ]
        config = {k: getattr(self, k) for k in keys}
        config["modalities"] = [m.to_dict() for m in self.modalities]
        if not isinstance(config["learning_rate"], (int, float)):
            config["learning_rate"] = None  # a schedule object: not part of the architecture
        return json.loads(json.dumps(config, default=jsonable))

    def save_checkpoint(
        self, max_checkpoints_to_keep: int = 5, model_dir: str | None = None
    ) -> None:
        super().save_checkpoint(max_checkpoints_to_keep, model_dir)
        if max_checkpoints_to_keep:
            write_config(model_dir or self.model_dir, type(self).__name__, self.get_config())

    def restore(
        self,
        checkpoint: str | None = None,
        model_dir: str | None = None,
        strict: bool | None = True,
    ) -> None:
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
            check_saved_config(
                saved,
                self.get_config(),
                type(self).__name__,
                self._training_settings,
                directory,
                logger,
            )
        self._ensure_built()
        load_weights(self, checkpoint, directory, bool(strict))

    @classmethod
    def load(cls, model_dir: str, **overrides: Any) -> MultiModalTorchModel:
        """Rebuild a model from ``model_dir`` (configuration + latest checkpoint).

        Errors name the folder or file: a missing folder or configuration raises
        :class:`MissingCheckpointError` (a ``FileNotFoundError``); a configuration that is not
        valid JSON, lacks a key or holds a value of the wrong type, and a damaged checkpoint,
        raise :class:`~deepfuse_plugin.errors.CorruptCheckpointError`.

        Examples
        --------
        >>> model = MultiModalTorchModel.load("results/demo/model")  # doctest: +SKIP
        """
        saved = require_config(model_dir)
        model_cls = MODEL_CLASSES.get(saved["model_class"])
        if model_cls is None:
            raise CorruptCheckpointError(
                f"Unknown model class {saved['model_class']!r} in "
                f"{os.path.join(model_dir, CONFIG_FILE)}"
                f" (known: {sorted(MODEL_CLASSES)})"
            )
        if cls is not MultiModalTorchModel and not issubclass(model_cls, cls):
            raise ValueError(f"{model_dir!r} holds a {saved['model_class']}, not a {cls.__name__}")
        model = build_from_config(model_cls, saved, model_dir, overrides)
        model.restore()
        return model

    # -- batching ------------------------------------------------------------------------------
    def default_generator(
        self,
        dataset: Dataset,
        epochs: int = 1,
        mode: str = "fit",
        deterministic: bool = True,
        pad_batches: bool = False,
    ) -> Iterator[tuple[list, list, list]]:
        """Batches ``([MultiModalBatch], [y], [w])``; calls the curriculum hook once per epoch.

        Training batches are regrouped by length when ``length_bucket_pool`` is set (and the order
        is not ``deterministic``); prediction keeps the dataset's order.
        """
        return multimodal_batches(
            dataset,
            self.modalities,
            self.batch_size,
            lambda samples: collate_samples(samples, self.modalities, self._drop_modalities),
            self._on_epoch_start,
            epochs=epochs,
            mode=mode,
            deterministic=deterministic,
            bucket_pool=self.length_bucket_pool,
            progress=self.progress,
            desc=type(self).__name__,
        )

    def _prepare_batch(self, batch: tuple[Any, Any, Any]) -> tuple[list, list, list]:
        return batch_to_device(batch, self.device)

    # -- losses ----------------------------------------------------------------------------------
    def _task_loss(
        self, task_output: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        return _losses.task_loss(
            task_output,
            labels,
            weights,
            self.mode,
            self.uncertainty,
            self.evidential_lambda,
            self._kl_anneal,
        )

    def _supervised_loss(self, outputs: list, labels: list, weights: list) -> torch.Tensor:
        return _losses.supervised_loss(
            outputs,
            labels,
            weights,
            self._task_loss,
            self.fusion_loss_weight,
            self.unimodal_loss_weight,
        )

    _fusion_only_loss = staticmethod(_losses.fusion_only_loss)

    # -- training --------------------------------------------------------------------------------
    def fit(self, dataset: Dataset, nb_epoch: int = 10, *args: Any, **kwargs: Any) -> float:
        """DeepChem ``fit`` after checking the dataset (empty data, labels, modalities)."""
        if not check._is_int(nb_epoch) or nb_epoch < 1:
            raise InvalidSettingError(f"nb_epoch must be a whole number >= 1, got {nb_epoch!r}")
        check_training_data(
            dataset,
            self.modalities,
            self.n_tasks,
            self.mode,
            self.n_classes,
            labelled=kwargs.get("loss") is None,
            log=logger,
        )
        if len(args) < 6:  # ``loss`` is DeepChem's 8th parameter; not given positionally
            kwargs["loss"] = _released_after_backward(
                refusing_non_finite(kwargs.get("loss") or self._loss_fn, self)
            )
        self._ensure_built()
        self._start_schedule(len(dataset), nb_epoch)
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
        check_featurizer_matches(self.modalities, featurizer)
