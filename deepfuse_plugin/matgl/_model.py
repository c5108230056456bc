"""MatMMFuse as a MatGL model: a MatGL graph backbone fused with text/composition encoders."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matgl.models import MatGLModel
from torch import Tensor, nn

from deepfuse_plugin.errors import CorruptCheckpointError, InvalidSettingError
from deepfuse_plugin.matgl._data import attach_modalities, modality_inputs
from deepfuse_plugin.modalities import Modality, as_modalities
from deepfuse_plugin.nn.fusion import (
    CrossAttentionFusion,
    DynamicFusion,
    EarlyFusion,
    GatedMoEFusion,
    LateFusion,
    ProjectionFusion,
    curriculum_rate,
)
from deepfuse_plugin.nn.heads import make_head
from deepfuse_plugin.nn.matgl_backbone import (
    MATGL_BACKBONES,
    MATGL_FORMAT,
    attach_positions,
    default_element_types,
)
from deepfuse_plugin.nn.network import MultiModalNetwork

#: Fusion layers available in the MatGL route (one modality always uses ``projection``).
FUSIONS = ("cross_attention", "dynamic", "early", "late", "moe", "projection")
GRAPH = "graph"
_VECTOR_KINDS = ("vector", "embedding")


def target_scaling(value: float | Sequence[float], n_tasks: int, name: str) -> float | list[float]:
    """``data_mean``/``data_std`` as saved: one float for every target, or one per target."""
    if isinstance(value, int | float) or (hasattr(value, "ndim") and value.ndim == 0):
        return float(value)  # type: ignore[arg-type]
    values = [float(v) for v in value]
    if len(values) != n_tasks:
        raise InvalidSettingError(
            f"{name} has {len(values)} values for {n_tasks} targets: give one per target "
            "(in target_names order) or one number for all"
        )
    return values[0] if n_tasks == 1 else values  # one target: the float MatGL scales by


def _resolve_targets(
    n_tasks: int | None, target_names: Sequence[str] | None
) -> tuple[int, list[str]]:
    if target_names is None:
        n = 1 if n_tasks is None else int(n_tasks)
        names = ["y"] if n == 1 else [f"task_{i}" for i in range(n)]
    else:
        names = [str(t) for t in target_names]
        n = len(names) if n_tasks is None else int(n_tasks)
        if n != len(names):
            raise InvalidSettingError(
                f"n_tasks={n_tasks} but {len(names)} target_names {names}: leave n_tasks out "
                "(it follows target_names)"
            )
    if n < 1 or len(set(names)) != len(names) or not all(names):
        raise InvalidSettingError(
            f"target_names must be distinct, non-empty names, at least one: got {names}"
        )
    return n, names


def _saved_version(path: Any) -> int | None:
    """``@model_version`` of a local saved model (``None`` where it cannot be read here)."""
    json_path: Any = path.get("model.json") if isinstance(path, dict) else Path(path) / "model.json"
    try:
        version = json.loads(Path(json_path).read_text()).get("@model_version", 0)
    except (OSError, TypeError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) else None


class _Inputs:
    """What :class:`~deepfuse_plugin.nn.network.MultiModalNetwork` reads from a batch."""

    def __init__(self, inputs: dict[str, Any], mask: Tensor):
        self.inputs, self.mask = inputs, mask


class MatMMFuse(MatGLModel):
    """Structure + text (+ composition) fusion as a MatGL model (MatMMFuse, arXiv 2505.04634).

    A MatGL graph backbone (MEGNet, M3GNet, or CGCNN convolutions on MatGL's graph) encodes the
    crystal graph into a crystal vector and atom states; deepfuse encoders encode the other
    modalities carried by :class:`~deepfuse_plugin.matgl.MultiModalMGLDataset` (per-sentence text
    embeddings, token ids, composition); a deepfuse fusion layer combines them (default: multi-head
    cross-attention between atoms and text sentences) and a head predicts one value per target
    (``target_names``; :meth:`from_dataset` takes them from the dataset's labels).

    It is a ``matgl.models.MatGLModel``: ``model.save(path)`` writes MatGL's ``model.pt`` /
    ``state.pt`` / ``model.json`` and ``matgl.load_model(path)`` restores it (versioned by
    ``__version__``); MatGL's ``ModelLightningModule`` trains it (use
    :class:`~deepfuse_plugin.matgl.MultiModalLightningModule` to add the fusion layer's auxiliary
    losses and masking curriculum); :meth:`predict_structure` predicts a pymatgen ``Structure``.

    With ``modalities=[]`` it is the graph-only baseline (backbone -> projection -> head).

    Parameters
    ----------
    modalities: sequence of Modality or dict
        Specs of the extra modalities, as in the dataset (``dataset.modalities``).
    backbone: str
        ``"megnet"``, ``"m3gnet"`` or ``"cgcnn"``.
    element_types: sequence of str, optional
        The converter's element list (default MatGL's ``DEFAULT_ELEMENTS``).
    cutoff: float
        The converter's neighbour cutoff (Å).
    fusion: str
        One of :data:`FUSIONS`.
    n_tasks: int, optional
        Number of targets (default ``len(target_names)``, else 1).
    target_names: sequence of str, optional
        The targets, in the order of the labels batched by
        :func:`~deepfuse_plugin.matgl.collate_fn_targets` (default ``["y"]`` for one target,
        ``task_0, task_1, ...`` otherwise); saved with the model.
    encoder_dim, fused_dim, head_hidden: int
    dropout: float
    backbone_options, encoder_options, fusion_options: dict, optional
        Passed to the backbone (e.g. ``{"nblocks": 3}``), the other encoders by kind, and the
        fusion layer (e.g. ``{"n_heads": 4}``; dynamic: ``{"mask_start": 0.3, "mask_end": 0.6}``).
    featurizer_options: dict, optional
        :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` keyword arguments
        (``describer``, ``text_model``, ...) that :meth:`predict_structure` uses to compute the
        extra modalities of a new structure.
    data_mean, data_std: float or sequence of float
        Target scaling used in training (as given to the Lightning module): one number for
        every target or one per target; :meth:`predict_structure` returns
        ``output * data_std + data_mean``. With several targets in different units, give one
        per target (e.g. the training labels' means and standard deviations): the multi-target
        loss is computed on the standardized targets, so each counts alike.

    Notes
    -----
    Saved format (``@model_version``): 1, one target, no names; 2, ``target_names`` and
    per-target scaling. :meth:`load` (and ``matgl.load_model``) reads both; a version-1 model
    loads as the single-target model it was.

    Examples
    --------
    >>> from deepfuse_plugin.matgl import MatMMFuse  # doctest: +SKIP
    >>> model = MatMMFuse.from_dataset(train_set, backbone="megnet")  # doctest: +SKIP
    >>> module = MultiModalLightningModule(model)  # doctest: +SKIP
    >>> lightning.Trainer(max_epochs=10).fit(module, train_loader, val_loader)  # doctest: +SKIP
    >>> model.save("my_model"); matgl.load_model("my_model").predict_structure(s)  # doctest: +SKIP
    >>> model.predict_targets(s)  # {"eform": ..., "band_gap": ...}  # doctest: +SKIP
    """

    #: saved format: 1 one unnamed target; 2 ``target_names`` and per-target scaling (Notes)
    __version__ = 2
    #: the featurizer ``predict_structure`` uses: the dataset's (``from_dataset``; a custom
    #: describer too), else a ``CrystalMultiModalFeaturizer`` built on first use
    _featurizer: Any

    def __init__(
        self,
        modalities: Sequence[Any] = (),
        backbone: str = "megnet",
        element_types: Sequence[str] | None = None,
        cutoff: float = 4.0,
        fusion: str = "cross_attention",
        n_tasks: int | None = None,
        target_names: Sequence[str] | None = None,
        encoder_dim: int = 128,
        fused_dim: int = 128,
        head_hidden: int = 128,
        dropout: float = 0.1,
        backbone_options: dict | None = None,
        encoder_options: dict | None = None,
        fusion_options: dict | None = None,
        featurizer_options: dict | None = None,
        data_mean: float | Sequence[float] = 0.0,
        data_std: float | Sequence[float] = 1.0,
        **kwargs: Any,
    ):
        super().__init__()
        if backbone not in MATGL_BACKBONES:
            raise ValueError(f"backbone must be one of {MATGL_BACKBONES}, got {backbone!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        # plain types only: MatGL stores the constructor arguments with torch.save(weights_only)
        modalities = [m.to_dict() for m in as_modalities(modalities)] if modalities else []
        element_types = tuple(element_types or default_element_types())
        n_tasks, target_names = _resolve_targets(n_tasks, target_names)
        data_mean = target_scaling(data_mean, n_tasks, "data_mean")
        data_std = target_scaling(data_std, n_tasks, "data_std")
        self.save_args(locals(), kwargs)
        self.extra_modalities = as_modalities(modalities) if modalities else []
        if GRAPH in {m.name for m in self.extra_modalities}:
            raise ValueError("'graph' is the MatGL graph; name the other modalities otherwise")
        self.element_types, self.cutoff, self.n_tasks = element_types, float(cutoff), n_tasks
        self.target_names = tuple(target_names)
        self.fusion_kind = fusion if self.extra_modalities else "projection"
        self.fusion_options = dict(fusion_options or {})
        self.featurizer_options = dict(featurizer_options or {})
        self.data_mean, self.data_std = data_mean, data_std
        self.aux_loss: Tensor | None = None
        graph_spec = Modality(
            GRAPH,
            "crystal_graph",
            params={
                "format": MATGL_FORMAT,
                "cutoff": self.cutoff,
                "element_types": list(element_types),
            },
        )
        specs = [graph_spec, *self.extra_modalities]
        options = {k: dict(v) for k, v in (encoder_options or {}).items()}
        options["crystal_graph"] = {
            "backbone": backbone,
            "dropout": 0.0,
            **(backbone_options or {}),
        }
        fusion_layer = self._build_fusion(
            tuple(m.name for m in specs), specs, encoder_dim, fused_dim, dropout
        )
        head = (
            None
            if self.fusion_kind == "late"
            else make_head(fused_dim, n_tasks, "regression", 2, head_hidden, dropout)
        )
        self.network = MultiModalNetwork(specs, fusion_layer, head, encoder_dim, options)

    def _build_fusion(
        self,
        names: tuple[str, ...],
        specs: list[Modality],
        encoder_dim: int,
        fused_dim: int,
        dropout: float,
    ) -> nn.Module:
        options = dict(self.fusion_options)
        kind = self.fusion_kind
        if kind == "projection":
            return ProjectionFusion(names, encoder_dim, fused_dim)
        if kind == "cross_attention":
            vectors = tuple(m.name for m in specs if m.kind in _VECTOR_KINDS)
            return CrossAttentionFusion(
                names, encoder_dim, fused_dim, vectors, dropout=dropout, **options
            )
        if kind == "dynamic":
            self.mask_start = float(options.pop("mask_start", 0.3))
            self.mask_end = float(options.pop("mask_end", 0.6))
            return DynamicFusion(
                names, encoder_dim, fused_dim, mask_rate=self.mask_start, **options
            )
        if kind == "early":
            return EarlyFusion(names, encoder_dim, fused_dim, dropout=dropout, **options)
        if kind == "moe":
            return GatedMoEFusion(names, encoder_dim, fused_dim, dropout=dropout, **options)
        return LateFusion(
            names, encoder_dim, self.n_tasks, fused_dim=fused_dim, dropout=dropout, **options
        )

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> MatMMFuse:
        """A model for a :class:`~deepfuse_plugin.matgl.MultiModalMGLDataset`: its modalities,
        its converter's element types and cutoff, its featurizer's settings, and its labels as
        ``target_names`` (one output per label)."""
        targets = list(getattr(dataset, "target_names", None) or [])
        if targets and "target_names" not in kwargs:
            kwargs["target_names"] = targets
            if kwargs.get("n_tasks", len(targets)) != len(targets):
                raise InvalidSettingError(
                    f"n_tasks={kwargs['n_tasks']} but the dataset has {len(targets)} labels "
                    f"{targets}: the model predicts one value per label; leave n_tasks out, or "
                    "build the dataset with only the labels to learn"
                )
        converter = getattr(dataset, "converter", None)
        if converter is not None:
            kwargs.setdefault("element_types", tuple(converter.element_types))
            kwargs.setdefault("cutoff", float(converter.cutoff))
        featurizer = getattr(dataset, "featurizer", None)
        if featurizer is not None:
            options = {
                "text_model": featurizer.text_model,
                "text_max_length": featurizer.text_max_length,
            }
            if featurizer.describer.name in ("fast", "robocrys"):
                options["describer"] = featurizer.describer.name
            kwargs.setdefault("featurizer_options", options)
        model = cls(list(getattr(dataset, "modalities", [])), **kwargs)
        model._featurizer = featurizer  # reused by predict_structure (a custom describer too)
        return model

    # -- MatGL interface ---------------------------------------------------------------------------
    def forward(self, g: Any, state_attr: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Prediction for a batch of MatGL graphs with ``pos``/``pbc_offshift`` set (MatGL's
        ``ModelLightningModule`` sets them): ``(B,)`` for one task, ``(B, n_tasks)`` otherwise.
        The fusion layer's auxiliary loss of this pass is kept in ``self.aux_loss``."""
        if state_attr is not None:
            g.state_attr = state_attr.reshape(int(getattr(g, "num_graphs", 1)), -1)
        inputs, extra_mask = modality_inputs(g, self.extra_modalities)
        inputs[GRAPH] = g
        graph_present = torch.ones(
            extra_mask.shape[0], 1, dtype=torch.bool, device=extra_mask.device
        )
        out = self.network(_Inputs(inputs, torch.cat([graph_present, extra_mask], dim=1)))
        self.aux_loss = out.aux_loss
        self.feature_dict = {"fused": out.embedding, "modality_weights": out.modality_weights}
        prediction = out.prediction
        return prediction.squeeze(-1) if self.n_tasks == 1 else prediction

    def set_curriculum(self, progress: float) -> None:
        """Masking curriculum of a dynamic fusion layer (``progress`` in [0, 1]); else a no-op."""
        fusion = self.network.fusion
        if isinstance(fusion, DynamicFusion):
            fusion.mask_rate = curriculum_rate(progress, self.mask_start, self.mask_end)

    def featurizer(self) -> Any:
        """The :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer` of the extra
        modalities (from the saved specs and ``featurizer_options``)."""
        from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

        if getattr(self, "_featurizer", None) is None:
            options = {"progress": False, **self.featurizer_options}
            self._featurizer = CrystalMultiModalFeaturizer(self.extra_modalities, **options)
        return self._featurizer

    def predict_structure(
        self,
        structure: Any,
        state_attr: Tensor | None = None,
        featurizer: Any = None,
        **kwargs: Any,
    ) -> Tensor:
        """Predict the property of one pymatgen ``Structure`` (original units): a 0-d tensor
        for one target, ``(n_tasks,)`` in ``target_names`` order otherwise.

        ``featurizer`` computes the extra modalities (default :meth:`featurizer`, rebuilt from the
        saved specs and ``featurizer_options``)."""
        from matgl.ext.pymatgen import Structure2Graph
        from torch_geometric.data import Batch

        graph, lattice, _ = Structure2Graph(self.element_types, self.cutoff).get_graph(structure)
        if self.extra_modalities:
            sample = (featurizer or self.featurizer()).featurize([structure])[0]
            attach_modalities(
                graph, sample if hasattr(sample, "values") else None, self.extra_modalities
            )
        device = next(self.parameters()).device
        batch = Batch.from_data_list([graph]).to(device)
        attach_positions(batch, lattice.to(device))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(batch, state_attr=state_attr)
        self.train(was_training)
        mean = torch.as_tensor(self.data_mean, dtype=out.dtype, device=out.device)
        std = torch.as_tensor(self.data_std, dtype=out.dtype, device=out.device)
        return (out * std + mean).squeeze(0)  # (n_tasks,) scaling broadcasts over (1, n_tasks)

    def predict_targets(self, structure: Any, **kwargs: Any) -> dict[str, float]:
        """:meth:`predict_structure` by target name, e.g. ``{"eform": -1.2, "band_gap": 0.8}``.

        Examples
        --------
        >>> model.predict_targets(structure)  # doctest: +SKIP
        {'eform': -1.21, 'band_gap': 0.83}
        """
        values = self.predict_structure(structure, **kwargs).reshape(-1).tolist()
        return dict(zip(self.target_names, values, strict=True))

    @classmethod
    def load(cls, path: Any, **kwargs: Any) -> MatMMFuse:
        """MatGL's ``load`` (``matgl.load_model`` calls it) for every saved format this class
        reads (class Notes); a model saved by a newer deepfuse is refused, not misread.

        Raises
        ------
        CorruptCheckpointError
            The model was saved in a newer format (``matgl.load_model`` reports it as a
            ``ValueError`` caused by this one).
        """
        version = _saved_version(path)
        if version is not None and version > cls.__version__:
            where = path.get("model.json") if isinstance(path, dict) else path
            raise CorruptCheckpointError(
                f"{where} holds a MatMMFuse saved in format {version}; this deepfuse reads up "
                f"to {cls.__version__}: upgrade deepfuse to load it"
            )
        with warnings.catch_warnings():
            if version is not None:
                # MatGL warns on any older version; every older MatMMFuse format loads as it was
                warnings.filterwarnings(
                    "ignore", message="Incompatible model version", category=UserWarning
                )
            return super().load(path, **kwargs)
