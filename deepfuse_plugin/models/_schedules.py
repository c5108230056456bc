"""Training schedules of every deepfuse model: learning-rate schedules with warm-up, reduce-on-
plateau, gradient clipping and the early-stopping patience read by the validation loop.

The learning rate is a pure function of the position in the run (and, for ``"plateau"``, of the
validation history), so a resumed run continues on the same curve without any extra saved state:
the position comes from ``epochs_started`` (saved in every checkpoint) and the plateau scale is
recomputed from the run's validation history by :func:`plateau_scale`.

Examples
--------
>>> round(lr_factor("cosine", position=50, total=100, warmup=0), 3)
0.5
>>> lr_factor("constant", position=5, total=100, warmup=10)  # linear warm-up: 6 of 10 steps
0.6
>>> plateau_scale([1.0, 0.9, 0.95, 0.95, 0.95], patience=3)  # 3 evaluations without improvement
0.5
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.models._pretrained import parameter_groups
from deepfuse_plugin.models._settings import (
    non_negative_float,
    one_of,
    positive_float,
    positive_int,
)

logger = logging.getLogger(__name__)

#: Constructor arguments of the schedule, saved in a model's configuration (training settings).
SCHEDULE_SETTINGS = (
    "lr_schedule",
    "warmup_epochs",
    "grad_clip",
    "early_stopping",
    "plateau_patience",
)
#: Learning-rate schedules (``lr_schedule=``). Each may start with a linear warm-up.
LR_SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
#: One-cycle: warm-up from ``lr / ONECYCLE_DIV`` (torch's ``OneCycleLR`` default) over this share of
#: the run when ``warmup_epochs`` is 0, then a cosine descent to ``lr / ONECYCLE_FINAL_DIV``.
ONECYCLE_DIV, ONECYCLE_WARMUP, ONECYCLE_FINAL_DIV = 25.0, 0.3, 1e4
#: ``"plateau"`` halves the rate after ``plateau_patience`` validations without improvement, down
#: to ``PLATEAU_MIN_SCALE`` times the initial rate.
PLATEAU_FACTOR, PLATEAU_MIN_SCALE = 0.5, 1e-3


def lr_factor(schedule: str, position: int, total: int, warmup: int) -> float:
    """Multiplier of the initial learning rate for optimizer step ``position`` (0-based) of a
    run of ``total`` steps whose first ``warmup`` steps warm up linearly."""
    if schedule == "onecycle":
        warmup = warmup or round(ONECYCLE_WARMUP * total)
        start = 1.0 / ONECYCLE_DIV
    else:
        start = 0.0
    if position < warmup:
        return start + (1.0 - start) * (position + 1) / warmup
    if schedule not in ("cosine", "onecycle"):
        return 1.0
    progress = min(1.0, (position - warmup) / max(1, total - warmup))
    floor = 1.0 / ONECYCLE_FINAL_DIV if schedule == "onecycle" else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def plateau_scale(scores: Sequence[float], patience: int) -> float:
    """The ``"plateau"`` scale after the validation ``scores`` so far (lower is better): halved
    whenever ``patience`` evaluations in a row fail to improve on the best (NaN never improves)."""
    best, waited, scale = math.inf, 0, 1.0
    for score in scores:
        if score < best:
            best, waited = score, 0
            continue
        waited += 1
        if waited >= patience:
            scale, waited = max(PLATEAU_MIN_SCALE, scale * PLATEAU_FACTOR), 0
    return scale


def check_schedule_settings(
    lr_schedule: str,
    warmup_epochs: float,
    grad_clip: float | None,
    early_stopping: int | None,
    plateau_patience: int,
    learning_rate: Any,
) -> None:
    """Refuse a bad schedule setting, naming it
    (:class:`~deepfuse_plugin.errors.InvalidSettingError`)."""
    one_of("lr_schedule", lr_schedule, LR_SCHEDULES)
    non_negative_float("warmup_epochs", warmup_epochs)
    positive_int("plateau_patience", plateau_patience)
    if grad_clip is not None:
        positive_float("grad_clip", grad_clip)
    if early_stopping is not None:
        positive_int("early_stopping", early_stopping)
    if lr_schedule != "constant" and hasattr(learning_rate, "_create_pytorch_schedule"):
        raise InvalidSettingError(
            f"lr_schedule={lr_schedule!r} and a DeepChem LearningRateSchedule as learning_rate "
            "both set the rate: give learning_rate as a number, or lr_schedule='constant'"
        )


class StepwiseLR:
    """Sets every parameter group's rate before each optimizer step: DeepChem's ``fit`` calls
    :meth:`step` after each step, as it would a torch scheduler. A group's own initial rate
    (``initial_lr``, e.g. a pretrained encoder's scaled rate) is kept as its reference."""

    def __init__(self, model: Any, start: int, total: int, warmup: int) -> None:
        self.model, self.position, self.total, self.warmup = model, start, total, warmup
        for group in model._pytorch_optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.apply()

    def apply(self) -> None:
        factor = lr_factor(self.model.lr_schedule, self.position, self.total, self.warmup)
        factor *= self.model.lr_scale
        for group in self.model._pytorch_optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def step(self) -> None:
        self.position += 1
        self.apply()

    # resume points save a schedule's state; this one is recomputed from ``epochs_started``
    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to load: ``fit`` places the schedule from the restored ``epochs_started``."""


class ScheduleMixin:
    """Optimizer set-up, learning-rate schedule, gradient clipping and early-stopping settings of
    :class:`~deepfuse_plugin.models.base.MultiModalTorchModel` (documented there)."""

    lr_schedule: str
    warmup_epochs: float
    grad_clip: float | None
    early_stopping: int | None
    plateau_patience: int
    #: the ``"plateau"`` scale of the rate, set by the validation loop (1 without one)
    lr_scale: float = 1.0
    #: epochs the schedule runs over; None = each ``fit`` call runs the whole schedule
    _schedule_epochs: int | None = None
    #: ``epochs_started`` when the schedule's run began (epochs of an earlier ``pretrain``)
    _schedule_origin: int = 0

    def _init_schedule(self, settings: dict[str, Any], learning_rate: Any) -> None:
        """Check and keep the schedule settings (``settings``: the constructor's locals)."""
        schedule, warmup, grad_clip, patience, plateau = (settings[n] for n in SCHEDULE_SETTINGS)
        check_schedule_settings(schedule, warmup, grad_clip, patience, plateau, learning_rate)
        self.lr_schedule, self.warmup_epochs = schedule, float(warmup)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.early_stopping, self.plateau_patience = patience, plateau

    def _ensure_built(self) -> None:
        """DeepChem's optimizer set-up, with parameter groups (pretrained encoders train at
        ``learning_rate * encoder_lr_scale``, frozen ones are left out) and gradient clipping."""
        model: Any = self
        if model._built:
            return
        super()._ensure_built()  # type: ignore[misc]
        if model.pretrained_modalities and (model.freeze_encoders or model.encoder_lr_scale != 1):
            rate = model.optimizer.learning_rate
            rate = getattr(rate, "initial_rate", rate)
            groups = parameter_groups(
                model.model, model.pretrained_modalities, rate, model.encoder_lr_scale
            )
            model._pytorch_optimizer = model.optimizer._create_pytorch_optimizer(groups)
            if model._lr_schedule is not None:
                model._lr_schedule = model.optimizer.learning_rate._create_pytorch_schedule(
                    model._pytorch_optimizer
                )
        self._install_grad_clip(model._pytorch_optimizer)

    def _install_grad_clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the global gradient norm of every trained parameter before each step."""
        if self.grad_clip is None:
            return
        max_norm = self.grad_clip

        def clip(opt: torch.optim.Optimizer, *_: Any) -> None:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, max_norm)

        optimizer.register_step_pre_hook(clip)

    def _start_schedule(self, n_samples: int, nb_epoch: int) -> None:
        """Before a ``fit`` call of ``nb_epoch`` epochs over ``n_samples`` samples: put the
        per-step learning-rate schedule in place of DeepChem's (none for a constant rate)."""
        model: Any = self
        if self.lr_schedule == "constant" and not self.warmup_epochs and self.lr_scale == 1:
            return
        if self.lr_schedule == "plateau" and self._schedule_epochs is None:
            logger.warning(
                "lr_schedule='plateau' needs validation scores: a plain fit keeps the rate "
                "constant; train with deepfuse_plugin.train.train_with_validation or "
                "`deepfuse train` to reduce it on plateaus"
            )
        steps = max(1, math.ceil(n_samples / model.batch_size))
        if self._schedule_epochs is None:  # this call runs the whole schedule
            start, total = 0, nb_epoch * steps
        else:  # counted over the run, across fit calls (a resumed run continues its curve)
            start = (model.epochs_started - self._schedule_origin) * steps
            total = self._schedule_epochs * steps
        model._lr_schedule = StepwiseLR(model, start, total, round(self.warmup_epochs * steps))

    def report_validation(self, scores: Sequence[float]) -> None:
        """Called by the validation loop with every score so far: sets the plateau scale."""
        if self.lr_schedule == "plateau":
            self.lr_scale = plateau_scale(scores, self.plateau_patience)
