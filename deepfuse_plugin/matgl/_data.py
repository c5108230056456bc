"""Multimodal MatGL data: a MatGL ``MGLDataset`` whose graphs also carry text and composition.

MatGL batches graphs with PyG (``Batch.from_data_list``), which concatenates every per-graph tensor
along its first dimension. The extra modalities therefore ride on each graph as rows:

- ``df_<name>``: a vector/embedding modality ``(1, d)`` (zeros when missing); a sentence-embedding
  text ``(S, d)``; a ``vector_set`` (e.g. CHGNet's atom states, ``chgnet_atoms``) ``(n_atoms, d)``;
  token ids ``(L,)``;
- ``df_<name>_n``: ``(1,)`` the number of rows (sentences/atoms/tokens; 0 when missing);
- ``df_mask``: ``(1, M)`` presence of the extra modalities, in the dataset's order.

so a batch holds ``(B, d)`` vectors, ``(sum S, d)`` sentence rows with ``(B,)`` counts and a
``(B, M)`` mask, and :func:`modality_inputs` turns that back into deepfuse's padded inputs. The
graph itself is MatGL's, unchanged: MatGL's converter, loader, collate and Lightning module work
as they are. For more than one target, batch with :func:`collate_fn_targets` (MatGL's
``collate_fn_graph`` keeps the first label only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matgl.graph.data import MGLDataset
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from deepfuse_plugin.errors import CorruptCheckpointError, InvalidInputError
from deepfuse_plugin.modalities import Modality, MultiModalSample, as_modalities

PREFIX = "df_"
MASK = "df_mask"
METADATA_FILE = "deepfuse_modalities.json"
#: 2: graphs saved as plain tensors (read with ``weights_only=True``); 1 pickled PyG objects.
FORMAT_VERSION = 2
#: The cache files, in place of MatGL's (which MatGL reads with ``weights_only=False``).
CACHE_FILES = {
    "filename": "deepfuse_graphs.pt",
    "filename_lattice": "deepfuse_lattices.pt",
    "filename_state_attr": "deepfuse_state_attr.pt",
}
#: What MatGL (and deepfuse format 1) wrote: their presence is reported, never loaded.
LEGACY_CACHE_FILES = ("pyg_graph.pt", "lattice.pt", "state_attr.pt")
_ROW_KINDS = ("text", "sequence", "vector_set")


def _is_rows(spec: Modality) -> bool:
    """Modalities stored as a variable number of rows per graph (sentences, tokens, atom states)."""
    return spec.kind in _ROW_KINDS


def _as_rows(value: Any, spec: Modality) -> Tensor:
    if spec.kind in ("vector", "embedding"):
        out = np.zeros((1, spec.require("dim")), dtype=np.float32)
        if value is not None:
            value = np.asarray(value, dtype=np.float32).reshape(-1)
            if value.shape[0] != spec.dim:
                raise ValueError(
                    f"Modality {spec.name!r}: width {value.shape[0]}, spec says {spec.dim}"
                )
            out[0] = value
        return torch.from_numpy(out)
    if spec.kind == "vector_set" or (
        spec.kind == "text" and spec.params.get("representation") == "sentence_embeddings"
    ):
        if value is None:
            return torch.zeros(0, spec.require("dim"))
        rows = np.asarray(value, dtype=np.float32).reshape(-1, spec.require("dim"))
        return torch.as_tensor(rows)
    if _is_rows(spec):
        if value is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.as_tensor(np.asarray(value, dtype=np.int64).reshape(-1))
    raise ValueError(
        f"Modality {spec.name!r} of kind {spec.kind!r} cannot ride on a MatGL graph "
        "(the graph is MatGL's own)"
    )


def attach_modalities(
    graph: Any, sample: MultiModalSample | None, specs: Sequence[Modality]
) -> Any:
    """Store ``sample``'s values of ``specs`` on a MatGL graph (see the module docstring)."""
    present = []
    for spec in specs:
        value = None if sample is None else sample.values.get(spec.name)
        fingerprint = None if sample is None else sample.fingerprints.get(spec.name)
        if value is not None and fingerprint not in (None, spec.fingerprint):
            raise ValueError(
                f"Modality {spec.name!r} was featurized with other settings than the dataset's spec"
            )
        rows = _as_rows(value, spec)
        setattr(graph, PREFIX + spec.name, rows)
        setattr(
            graph, f"{PREFIX}{spec.name}_n", torch.tensor([0 if value is None else rows.shape[0]])
        )
        present.append(value is not None)
    setattr(graph, MASK, torch.tensor([present], dtype=torch.bool).reshape(1, len(specs)))
    return graph


def modality_inputs(batch: Any, specs: Sequence[Modality]) -> tuple[dict[str, Any], Tensor]:
    """Deepfuse inputs and ``(B, M)`` presence of ``specs`` from a (batched) MatGL graph."""
    from deepfuse_plugin.data.collate import TokenBatch
    from deepfuse_plugin.data.crystal import SentenceBatch

    n_graphs = int(getattr(batch, "num_graphs", 1))
    inputs: dict[str, Any] = {}
    for spec in specs:
        if not hasattr(batch, PREFIX + spec.name):
            raise ValueError(
                f"The MatGL graphs carry no {spec.name!r} modality: build them with "
                "MultiModalMGLDataset and a featurizer that computes it"
            )
        rows = getattr(batch, PREFIX + spec.name)
        if not _is_rows(spec):
            inputs[spec.name] = rows.reshape(n_graphs, -1)
            continue
        counts = getattr(batch, f"{PREFIX}{spec.name}_n").reshape(-1).long()
        owner = torch.repeat_interleave(torch.arange(n_graphs, device=counts.device), counts)
        if rows.dim() == 2:  # sentence embeddings, atom states
            if rows.shape[1] != spec.dim:
                raise ValueError(
                    f"Modality {spec.name!r}: rows of width {rows.shape[1]}, the "
                    f"model expects {spec.dim}"
                )
            states, mask = to_dense_batch(rows, owner, batch_size=n_graphs)
            inputs[spec.name] = SentenceBatch(states, mask)
        else:
            ids, mask = to_dense_batch(
                rows, owner, fill_value=int(spec.params.get("pad_id", 0)), batch_size=n_graphs
            )
            inputs[spec.name] = TokenBatch(ids, mask)
    mask = getattr(batch, MASK, None)
    if not specs:
        present = torch.zeros(n_graphs, 0, dtype=torch.bool)
    elif mask is None:
        raise ValueError("The MatGL graphs carry no modality mask (df_mask)")
    else:
        present = mask.reshape(n_graphs, -1).bool()
    if present.shape[1] != len(specs):
        raise ValueError(
            f"The graphs carry {present.shape[1]} extra modalities, the model "
            f"expects {len(specs)} ({[s.name for s in specs]})"
        )
    return inputs, present


def collate_fn_targets(batch: Sequence[tuple[Any, Tensor, Tensor, dict[str, Tensor]]]) -> tuple:
    """MatGL's ``collate_fn_graph`` for every label: ``(g, lattices, state_attr, targets)``.

    MatGL's ``collate_fn_graph`` (and ``MGLDataLoader``, which picks it) keeps the *first* label
    of each structure only. This collate stacks all of them, in the dataset's label order
    (``MultiModalMGLDataset.target_names``): ``targets`` is ``(B, n_targets)``, or ``(B,)`` for
    a single label, exactly as ``collate_fn_graph`` gives it.

    Parameters
    ----------
    batch: list of tuple
        ``(graph, lattice, state_attr, labels)`` items of an ``MGLDataset``.

    Returns
    -------
    tuple
        ``(graph batch, lattices, state attributes, targets)``.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> from deepfuse_plugin.matgl import collate_fn_targets
    >>> loader = DataLoader(dataset, batch_size=32, collate_fn=collate_fn_targets)  # doctest: +SKIP
    >>> g, lattices, state_attr, targets = next(iter(loader))  # doctest: +SKIP
    >>> targets.shape  # doctest: +SKIP
    torch.Size([32, 2])
    """
    from matgl.graph.data import collate_fn_graph

    labels = [item[3] for item in batch]
    names = list(labels[0])
    if not names:
        raise InvalidInputError("The structures carry no label to train on (labels={})")
    rows = []
    for row, values in enumerate(labels):
        if list(values) != names:
            raise InvalidInputError(
                f"Structure {row} of the batch has labels {list(values)}, the first one "
                f"{names}: every structure needs the same labels"
            )
        rows.append(torch.stack([_one_number(values[k], k) for k in names]))
    targets = torch.stack(rows)
    # MatGL's collate does the graph batching (its labels, the first one only, are replaced)
    g, lattices, state_attr, _ = collate_fn_graph([(*item[:3], {"": 0.0}) for item in batch])
    return g, lattices, state_attr, targets.squeeze(1) if len(names) == 1 else targets


def _one_number(value: Any, name: str) -> Tensor:
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise InvalidInputError(
            f"Label {name!r} holds {value.numel()} values per structure; give each target "
            "its own label name"
        )
    return value.reshape(())


def _check_structures(structures: Sequence[Any]) -> None:
    from pymatgen.core import IStructure

    bad = [i for i, s in enumerate(structures) if not isinstance(s, IStructure)]
    if bad:
        raise TypeError(
            f"MultiModalMGLDataset needs pymatgen Structures; rows {bad[:10]} "
            f"({len(bad)} in all) are not"
        )


def _extra_modalities(featurizer: Any) -> list[Modality]:
    """The featurizer's modalities that this route adds beside MatGL's graph.

    A plain structure graph (``graph``, ``matgl_graph``) is left out: the converter's graph takes
    its place. A graph carrying a pretrained provider's atom states (``chgnet_graph``) is refused,
    not dropped: the route has no place for its node features, and training without a view the
    user asked for would be a silent change of model.
    """
    if featurizer is None:
        return []
    carried = [
        m.name
        for m in featurizer.modalities
        if m.kind == "crystal_graph" and "provider" in (m.params or {})
    ]
    if carried:
        raise ValueError(
            f"the MatGL route cannot carry {carried}: its structure view is MatGL's own graph, "
            "so pretrained atom states on the CGCNN graph have nowhere to go. Use the provider's "
            "atom states as their own view (e.g. 'chgnet_atoms') here, or train on the DeepChem "
            "route (deepfuse_plugin.models), which reads these graphs."
        )
    return [m for m in featurizer.modalities if m.kind != "crystal_graph"]


def _check_labels(labels: dict[str, Any], n: int) -> None:
    for name, values in labels.items():
        values = np.asarray(values, dtype=float)
        if len(values) != n:
            raise ValueError(f"Label {name!r} has {len(values)} values for {n} structures")
        if values.ndim != 1:
            # one label is one target: the model predicts one number per label name
            raise InvalidInputError(
                f"Label {name!r} holds {values[0].size} values per structure; give each "
                f"target its own label name (e.g. {{'{name}_0': ..., '{name}_1': ...}})"
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"Label {name!r} is missing/non-finite in rows {bad[:10].tolist()} "
                f"({bad.size} in all): MatGL's loss cannot mask labels; drop those "
                "rows or use the DeepChem route (weights mask missing labels)"
            )


def _label_lists(labels: Mapping[str, Sequence[float]] | None) -> dict[str, list[Any]] | None:
    """A copy of ``labels`` with lists for values: ``MGLDataset`` turns arrays into lists in the
    dict it is given, which must not be the caller's."""
    if labels is None:
        return None
    return {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in labels.items()}


class MultiModalMGLDataset(MGLDataset):
    """MatGL's ``MGLDataset`` plus deepfuse modalities (text, composition, the pretrained
    ``chgnet``/``chgnet_atoms`` view) on every graph.

    The graphs are MatGL's (``converter``, e.g. ``Structure2Graph(element_types, cutoff)``);
    ``featurizer`` (a :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`
    computing the *other* modalities, e.g. ``["text_sentences", "composition"]``) is run once
    over all structures (parallel, cached, progress bar) and its values are attached to the
    graphs (module docstring), so MatGL's ``MGLDataLoader``, ``collate_fn_graph`` and
    ``ModelLightningModule`` work unchanged. A modality that failed for a structure is stored
    as missing (``df_mask``), not an error.

    The processed dataset is saved in ``root``: the graphs, lattices and state attributes as
    plain tensors (``deepfuse_graphs.pt``, ``deepfuse_lattices.pt``,
    ``deepfuse_state_attr.pt``, read back with ``torch.load(weights_only=True)``: no code in a
    cache folder ever runs), MatGL's ``labels.json`` and ``fingerprint.json``, and
    ``deepfuse_modalities.json`` (the modality specs); a cache made with other modality
    settings is rebuilt, not silently reused. Load a saved one with
    ``MultiModalMGLDataset(root=...)`` alone. A cache in MatGL's own pickled format (or from
    deepfuse before 0.x, format 1) is never loaded: rebuild it from the structures.

    Parameters
    ----------
    structures: list of pymatgen Structure
    labels: dict name -> list of float
        The targets, one number per structure each (every value finite), e.g.
        ``{"eform": [...], "band_gap": [...]}``. Batch them with :func:`collate_fn_targets`
        (MatGL's ``collate_fn_graph`` keeps the first label only);
        :meth:`MatMMFuse.from_dataset <deepfuse_plugin.matgl.MatMMFuse.from_dataset>` predicts
        all of them (``target_names``).
    converter: matgl GraphConverter
    featurizer: CrystalMultiModalFeaturizer, optional
        The extra modalities (a ``graph``/``matgl_graph`` modality in it is ignored: the
        graph is the converter's; a graph with pretrained atom states such as ``chgnet_graph``
        raises ``ValueError``).
    root: str
    **kwargs:
        Passed to ``MGLDataset`` (``save_cache``, ``graph_labels``, ...).

    Attributes
    ----------
    modalities: list of Modality
        Specs of the extra modalities, in ``df_mask`` order.
    target_names: list of str
        The label names, in the order :func:`collate_fn_targets` stacks them.
    """

    def __init__(
        self,
        structures: Sequence[Any] | None = None,
        labels: dict[str, Sequence[float]] | None = None,
        converter: Any = None,
        featurizer: Any = None,
        root: str = "MultiModalMGLDataset",
        **kwargs: Any,
    ):
        structures = list(structures or [])
        if structures:
            _check_structures(structures)
            _check_labels(labels or {}, len(structures))
        self.featurizer = featurizer
        for key, name in CACHE_FILES.items():
            kwargs.setdefault(key, name)
        self.modalities: list[Modality] = _extra_modalities(featurizer)
        super().__init__(
            structures=structures,
            labels=_label_lists(labels),
            converter=converter,
            root=root,
            **kwargs,
        )

    @property
    def target_names(self) -> list[str]:
        """The label names (the model's targets), in the order :func:`collate_fn_targets`
        stacks them; MatGL leaves text labels out of its items, so they are left out here."""
        return [
            name
            for name, values in (self.labels or {}).items()
            if not (len(values) and isinstance(values[0], str))
        ]

    def has_cache(self) -> bool:
        if not super().has_cache():
            return False
        path = Path(self.root) / METADATA_FILE
        if not path.exists():
            return False
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(stored, dict) or stored.get("format") != FORMAT_VERSION:
            return False  # an older (pickled) or unknown cache: rebuilt, or refused in process
        if self.converter is None or self.featurizer is None:  # load-only flow
            return True
        expected = [m.fingerprint for m in self.modalities]
        return stored.get("fingerprints") == expected

    def process(self) -> None:
        if self.has_cache():
            return
        if not self.structures:
            self._refuse_unusable_cache()
        samples = self._featurize()
        save_cache, self.save_cache = self.save_cache, False
        try:
            super().process()
        finally:
            self.save_cache = save_cache
        for graph, sample in zip(self.graphs, samples):
            attach_modalities(graph, sample, self.modalities)
        self.save()

    def _featurize(self) -> list[MultiModalSample | None]:
        if not self.modalities:
            return [None] * len(self.structures)
        samples = list(self.featurizer.featurize(self.structures))
        return [s if isinstance(s, MultiModalSample) else None for s in samples]

    def _refuse_unusable_cache(self) -> None:
        """Load-only flow without a usable cache: say why instead of MatGL's empty-dataset error."""
        root = Path(self.root)
        legacy = [n for n in LEGACY_CACHE_FILES if (root / n).exists()]
        if legacy:
            raise CorruptCheckpointError(
                f"The dataset cache in {self.root} is in MatGL's pickled format ({legacy}), which "
                "deepfuse does not load (unpickling can run code): rebuild it with "
                "MultiModalMGLDataset(structures, labels, converter, featurizer, root=...) into "
                "a new folder, or delete those files"
            )
        raise CorruptCheckpointError(
            f"No complete dataset cache in {self.root} (expected {sorted(CACHE_FILES.values())}, "
            f"labels.json and {METADATA_FILE}): build it from structures first"
        )

    def save(self) -> None:
        """MatGL's cache, with the graphs as plain tensors instead of pickled PyG objects."""
        if not self.save_cache:
            return
        from matgl.graph.data import _compute_cache_fingerprint

        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        if self.labels:
            (root / self.filename_labels).write_text(json.dumps(self.labels))
        torch.save([dict(graph.to_dict()) for graph in self.graphs], root / self.filename)
        torch.save(list(self.lattices), root / self.filename_lattice)
        torch.save(self.state_attr, root / self.filename_state_attr)
        fingerprint = _compute_cache_fingerprint(
            self.converter, self.include_line_graph, self.include_ref_charge, self.graph_labels
        )
        (root / self.filename_fingerprint).write_text(
            json.dumps(fingerprint, indent=2, sort_keys=True)
        )
        payload = {
            "format": FORMAT_VERSION,
            "modalities": [m.to_dict() for m in self.modalities],
            "fingerprints": [m.fingerprint for m in self.modalities],
        }
        (root / METADATA_FILE).write_text(json.dumps(payload, indent=2))

    def load(self) -> None:
        """Read the cache without running code from it (``torch.load(weights_only=True)``)."""
        from torch_geometric.data import Data

        root = Path(self.root)
        payload = self._read_json(root / METADATA_FILE)
        version = payload.get("format", 0) if isinstance(payload, dict) else 0
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CorruptCheckpointError(
                f"{self.root} was written by a newer deepfuse (format "
                f"{version!r}): upgrade deepfuse"
            )
        if version < 2:
            self._refuse_unusable_cache()
        graphs = self._load_tensors(root / self.filename)
        try:
            self.graphs = [Data.from_dict(dict(g)) for g in graphs]
        except (TypeError, ValueError, AttributeError) as err:
            raise CorruptCheckpointError(
                f"{root / self.filename} does not hold graphs ({err}): "
                "rebuild the cache from the structures"
            ) from err
        self.lattices = self._load_tensors(root / self.filename_lattice)
        self.state_attr = self._load_tensors(root / self.filename_state_attr)
        self.labels = self._read_json(root / self.filename_labels)
        try:
            self.modalities = as_modalities(payload["modalities"]) if payload["modalities"] else []
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{root / METADATA_FILE} holds no valid modality specs ({err}): rebuild the cache"
            ) from err

    @staticmethod
    def _load_tensors(path: Path) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (zip/unpickling errors have no common class)
            message = str(err).strip()
            first_line = message.splitlines()[0][:200] if message else repr(err)
            raise CorruptCheckpointError(
                f"{path} cannot be read safely (damaged, or not a plain-tensor cache; nothing in "
                f"it was run): {first_line}. Rebuild the cache from the structures"
            ) from err

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{path} is missing or not valid JSON ({err}): rebuild "
                "the cache from the structures"
            ) from err
