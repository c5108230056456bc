"""A DeepChem dataset of multimodal samples stored in pickle-free shards, streamed shard by shard.

:class:`ShardedMultiModalDataset` is what :func:`~deepfuse_plugin.data.featurize_to_disk` returns.
Its folder holds ``deepfuse_dataset.json`` (task names, modality specs, the shards and their row
counts) and per shard a ``.npz`` of plain numeric arrays plus a ``.json`` sidecar
(:mod:`deepfuse_plugin.data._codec`). Nothing is ever loaded with pickle, so a folder received from
elsewhere can be opened safely (a DeepChem ``DiskDataset`` of samples cannot: DeepChem opens its
files with ``allow_pickle=True``).

It is a ``dc.data.Dataset``: ``model.fit``, ``model.predict``, ``model.evaluate``, DeepChem's
splitters (``select``) and transformers (``NormalizationTransformer(transform_y=True)``) use it
as they use a ``DiskDataset``, and they read one shard at a time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from deepchem.data import Dataset
from deepchem.data.datasets import pad_batch

from deepfuse_plugin.data import _codec
from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError, RunFolderError
from deepfuse_plugin.modalities import Modality, MultiModalSample

__all__ = ["DATASET_FILE", "ShardedMultiModalDataset"]

logger = logging.getLogger(__name__)

#: The file that describes a sharded dataset (tasks, modality specs, shards).
DATASET_FILE = "deepfuse_dataset.json"
_FORMAT = "deepfuse-shards/1"
_DISKDATASET_FILES = ("metadata.csv.gzip", "tasks.json")
DEFAULT_SHARD_SIZE = 4096

#: ``(samples, y, w, ids)`` of one shard
Shard = tuple[Sequence[MultiModalSample], np.ndarray, np.ndarray, Sequence[str]]


class ShardedMultiModalDataset(Dataset):
    """Multimodal samples in pickle-free shards, read one shard at a time.

    Parameters
    ----------
    data_dir: path
        A folder written by :func:`~deepfuse_plugin.data.featurize_to_disk`,
        :meth:`create` or :meth:`from_dataset`.

    Notes
    -----
    ``y``, ``w``, ``ids``, ``len`` and the shapes are read without decoding any sample.
    ``X`` decodes every shard and holds all samples in memory: iterate with
    :meth:`iterbatches`, :meth:`itersamples` or :meth:`itershards` for big datasets.

    Examples
    --------
    >>> import os, tempfile
    >>> import deepfuse_plugin as dfp
    >>> from deepfuse_plugin.data import ShardedMultiModalDataset
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    >>> memory = dfp.MultiModalDataset.from_smiles(["CCO", "CCN", "CCC"], feat, y=[1.0, 2.0, 3.0])
    >>> folder = os.path.join(tempfile.mkdtemp(), "ds")
    >>> ds = ShardedMultiModalDataset.from_dataset(memory, folder, shard_size=2)
    >>> len(ds), ds.get_number_shards(), ds.y.ravel().tolist()
    (3, 2, [1.0, 2.0, 3.0])
    >>> [len(X) for X, y, w, ids in ds.iterbatches(batch_size=2, deterministic=True)]
    [2, 1]
    >>> ShardedMultiModalDataset(folder).X[0].present("ecfp")
    True
    """

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = os.fspath(data_dir)
        meta = _read_dataset_file(self.data_dir)
        self._tasks = list(meta["tasks"])
        self._modalities = meta.get("modalities")
        self._shard_size = int(meta.get("shard_size") or 0)
        self._stems = [str(s["stem"]) for s in meta["shards"]]
        self._rows = np.array([int(s["rows"]) for s in meta["shards"]], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)

    # -- writing -----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        data_dir: str | os.PathLike,
        shards: Iterable[Shard],
        tasks: Sequence[Any] = (0,),
        modalities: Sequence[Modality] | None = None,
    ) -> ShardedMultiModalDataset:
        """Write ``shards`` (``(samples, y, w, ids)`` each, one file pair per shard, empty ones
        skipped) into the new or empty folder ``data_dir`` and open it.

        Raises
        ------
        RunFolderError
            ``data_dir`` is a file or a folder that is not empty (nothing in it is changed).
        """
        out = os.fspath(data_dir)
        _claim_empty(out)
        kinds = {m.name: m.kind for m in modalities or ()}
        written: list[dict[str, Any]] = []
        largest = 0
        for samples, y, w, ids in shards:
            if len(samples):
                stem = f"shard-{len(written)}"
                _codec.write_shard_files(out, stem, samples, y, w, ids, kinds)
                written.append({"stem": stem, "rows": len(samples)})
                largest = max(largest, len(samples))
        write_dataset_file(out, tasks, modalities, written, largest)
        return cls(out)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        data_dir: str | os.PathLike,
        shard_size: int = DEFAULT_SHARD_SIZE,
        modalities: Sequence[Modality] | None = None,
    ) -> ShardedMultiModalDataset:
        """Write any DeepChem dataset of samples (``NumpyDataset``, ``DiskDataset``, ...) in
        shards of ``shard_size`` rows, in its order; it is read one batch at a time."""
        if int(shard_size) < 1:
            raise InvalidSettingError(f"shard_size must be at least 1, got {shard_size}")
        batches = dataset.iterbatches(batch_size=int(shard_size), deterministic=True)
        return cls.create(
            data_dir, (_as_shard(*b) for b in batches), dataset.get_task_names(), modalities
        )

    # -- what DeepChem asks of a dataset -----------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    def get_shape(self) -> tuple[tuple[int, ...], ...]:
        n, n_tasks = len(self), len(self._tasks)
        return (n,), (n, n_tasks), (n, n_tasks), (n,)

    def get_task_names(self) -> np.ndarray:
        return np.array(self._tasks)

    @property
    def modalities(self) -> list[Modality] | None:
        """The specs of the featurizer that wrote the samples (``None`` if not recorded)."""
        if self._modalities is None:
            return None
        return [Modality.from_dict(m) for m in self._modalities]

    def get_number_shards(self) -> int:
        return len(self._stems)

    def get_shard_size(self) -> int:
        """Rows of the largest shard (what a reader holds at a time)."""
        return self._shard_size or int(self._rows.max(initial=0))

    def shard_rows(self) -> np.ndarray:
        """Rows of each shard, in shard order."""
        return self._rows.copy()

    def get_shard(
        self, i: int, rows: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, w, ids)`` of shard ``i`` (only its ``rows``, in that order, if given)."""
        samples, y, w, ids = _codec.read_shard(self.data_dir, self._stems[i], rows)
        return _objects(samples), y, w, np.array(ids, dtype=object)

    def itershards(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(X, y, w, ids)`` of each shard in turn."""
        return (self.get_shard(i) for i in range(self.get_number_shards()))

    def itersamples(self) -> Iterator[tuple[Any, np.ndarray, np.ndarray, Any]]:
        """``(x, y, w, id)`` of each row, one shard in memory at a time."""
        for X, y, w, ids in self.itershards():
            yield from zip(X, y, w, ids)

    def iterbatches(
        self,
        batch_size: int | None = None,
        epochs: int = 1,
        deterministic: bool = False,
        pad_batches: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Batches ``(X, y, w, ids)`` read one shard at a time, as ``DiskDataset`` gives them.

        Unless ``deterministic``, each epoch visits the shards in a random order and shuffles the
        rows within each shard (NumPy's global random state, as DeepChem does); a batch may span
        two shards. ``batch_size=None``: one batch per shard. ``pad_batches`` repeats rows of the
        last batch up to ``batch_size``.
        """
        for _ in range(epochs):
            yield from self._epoch_batches(batch_size, deterministic, pad_batches)

    def _epoch_batches(
        self, batch_size: int | None, deterministic: bool, pad_batches: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        n_shards = self.get_number_shards()
        order = np.arange(n_shards) if deterministic else np.random.permutation(n_shards)
        carry: list[np.ndarray] | None = None
        for i in order:
            shard = list(self.get_shard(int(i)))
            if not deterministic:
                perm = np.random.permutation(len(shard[0]))
                shard = [a[perm] for a in shard]
            if batch_size is None:
                yield tuple(shard)  # type: ignore[misc]
                continue
            if carry is not None:
                shard = [np.concatenate([c, a]) for c, a in zip(carry, shard)]
            full = len(shard[0]) - len(shard[0]) % batch_size
            for start in range(0, full, batch_size):
                yield tuple(a[start : start + batch_size] for a in shard)  # type: ignore[misc]
            carry = [a[full:] for a in shard] if full < len(shard[0]) else None
        if carry is not None:
            last = tuple(carry)
            yield pad_batch(batch_size, *last) if pad_batches else last  # type: ignore[misc]

    @property
    def X(self) -> np.ndarray:
        """Every sample, decoded into memory (object array): prefer the iterators when big."""
        return _objects([x for X, _, _, _ in self.itershards() for x in X])

    @property
    def y(self) -> np.ndarray:
        return self._concat_arrays("y", np.float64)

    @property
    def w(self) -> np.ndarray:
        return self._concat_arrays("w", np.float64)

    @property
    def ids(self) -> np.ndarray:
        ids = [i for stem in self._stems for i in _codec.read_meta(self.data_dir, stem)["ids"]]
        return np.array(ids, dtype=object)

    def _concat_arrays(self, name: str, dtype: Any) -> np.ndarray:
        parts = [_codec.read_arrays(self.data_dir, s, [name])[name] for s in self._stems]
        if not parts:
            return np.zeros((0, len(self._tasks)), dtype=dtype)
        return np.concatenate(parts)

    def get_statistics(self, X_stats: bool = True, y_stats: bool = True) -> tuple[np.ndarray, ...]:
        """Mean and standard deviation of the labels (``y_stats``), as DeepChem computes them;
        the samples have no numeric mean, so ``X_stats`` is refused."""
        if X_stats:
            raise InvalidSettingError(
                "X statistics are not defined for multimodal samples: use transform_X=False "
                "(e.g. NormalizationTransformer(transform_y=True, dataset=...))"
            )
        if not y_stats:
            return tuple()
        y = self.y
        return y.mean(axis=0), y.std(axis=0)

    # -- new datasets ------------------------------------------------------------------------------
    def select(
        self,
        indices: Sequence[int] | np.ndarray,
        select_dir: str | os.PathLike | None = None,
        select_shard_size: int | None = None,
    ) -> Dataset:
        """The rows ``indices`` (in that order): a new sharded dataset in ``select_dir`` (new or
        empty; DeepChem's splitters pass one), or in memory (a ``MultiModalDataset``) when
        ``select_dir`` is None.

        Each output shard reads the input shards its rows come from, one at a time: indices in
        a random order (a random split) read every input shard once per output shard, as
        ``DiskDataset.select`` does.
        """
        indices = self._check_indices(indices)
        if select_dir is None:
            from deepfuse_plugin.data.datasets import MultiModalDataset

            X, y, w, ids = _gather(self, indices)
            return MultiModalDataset(X, y, w, ids)
        size = int(select_shard_size or self.get_shard_size() or 1)
        chunks = (indices[start : start + size] for start in range(0, len(indices), size))
        return ShardedMultiModalDataset.create(
            select_dir,
            (_as_shard(*_gather(self, chunk)) for chunk in chunks),
            self._tasks,
            self.modalities,
        )

    def transform(
        self,
        transformer: Any,
        parallel: bool = False,
        out_dir: str | os.PathLike | None = None,
        **args: Any,
    ) -> ShardedMultiModalDataset:
        """A new sharded dataset in ``out_dir`` (default: a new temporary folder, as DeepChem
        does) with ``transformer.transform_array`` applied shard by shard."""
        out = os.fspath(out_dir) if out_dir is not None else tempfile.mkdtemp()

        def transformed() -> Iterator[Shard]:
            for X, y, w, ids in self.itershards():
                yield _as_shard(*transformer.transform_array(X, y, w, ids))

        return ShardedMultiModalDataset.create(out, transformed(), self._tasks, self.modalities)

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = array[(array < 0) | (array >= len(self))]
        if len(bad):
            raise InvalidInputError(
                f"Row indices {bad[:10].tolist()} are outside this dataset of {len(self)} rows"
            )
        return array

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For global row numbers ``rows``: their shard and their row within it."""
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        return shard, rows - self._starts[shard]

    def __repr__(self) -> str:
        return (
            f"<ShardedMultiModalDataset {self.data_dir!r}: {len(self)} rows in "
            f"{self.get_number_shards()} shard(s), tasks {self._tasks}>"
        )


# -- helpers ---------------------------------------------------------------------------------------
def _objects(samples: Sequence[Any]) -> np.ndarray:
    X = np.empty(len(samples), dtype=object)
    X[:] = list(samples)
    return X


def _as_shard(X: Any, y: Any, w: Any, ids: Any, *_: Any) -> Shard:
    return list(X), np.asarray(y), np.asarray(w), [str(i) for i in ids]


def _gather(
    dataset: ShardedMultiModalDataset, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, w, ids)`` of the global ``rows`` in their order, one input shard at a time."""
    shard_of, local = dataset.locate(rows)
    X = np.empty(len(rows), dtype=object)
    y = w = None
    ids = np.empty(len(rows), dtype=object)
    for shard in np.unique(shard_of):
        where = np.flatnonzero(shard_of == shard)
        X_s, y_s, w_s, ids_s = dataset.get_shard(int(shard), local[where])
        if y is None:
            y = np.zeros((len(rows), *y_s.shape[1:]), dtype=y_s.dtype)
            w = np.zeros((len(rows), *w_s.shape[1:]), dtype=w_s.dtype)
        X[where], y[where], w[where], ids[where] = X_s, y_s, w_s, ids_s  # type: ignore[index]
    if y is None:  # no rows
        n_tasks = len(dataset.get_task_names())
        y, w = np.zeros((0, n_tasks)), np.zeros((0, n_tasks))
    return X, y, w, ids  # type: ignore[return-value]


def write_dataset_file(
    out: str,
    tasks: Sequence[Any],
    modalities: Sequence[Modality] | None,
    shards: list[dict[str, Any]],
    shard_size: int,
) -> None:
    """Write ``deepfuse_dataset.json`` (atomically): the folder is a dataset once it exists."""
    meta = {
        "format": _FORMAT,
        "tasks": [t.item() if isinstance(t, np.generic) else t for t in tasks],
        "modalities": None if modalities is None else [m.to_dict() for m in modalities],
        "shard_size": int(shard_size),
        "shards": shards,
    }
    scratch = os.path.join(out, f"{DATASET_FILE}.tmp")
    with open(scratch, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, default=str)
    os.replace(scratch, os.path.join(out, DATASET_FILE))


def _read_dataset_file(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, DATASET_FILE)
    if not os.path.isfile(path):
        if all(os.path.exists(os.path.join(folder, f)) for f in _DISKDATASET_FILES):
            raise InvalidInputError(
                f"{folder} is a DeepChem DiskDataset (written by deepfuse before the pickle-free "
                "format, or by DeepChem): deepfuse does not open it, because DeepChem reads its "
                "files with pickle, which runs whatever they contain. Featurize the data again "
                "with featurize_to_disk into a new folder, or, only for a folder you wrote "
                "yourself, convert it: ShardedMultiModalDataset.from_dataset("
                "dc.data.DiskDataset(path), new_folder)"
            )
        raise InvalidInputError(
            f"{folder} holds no sharded dataset (no {DATASET_FILE}): give a folder written by "
            "featurize_to_disk, or an unfinished featurization's folder to featurize_to_disk "
            "again to complete it"
        )
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format") != _FORMAT:
        raise InvalidInputError(
            f"{path}: format {meta.get('format')!r}, expected {_FORMAT!r} (written by another "
            "deepfuse version?)"
        )
    return dict(meta)


def _claim_empty(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"{out} is a file, not a folder: give a folder for the dataset")
    if os.path.isdir(out) and os.listdir(out):
        raise RunFolderError(
            f"{out} is not empty: give a new or empty folder for the dataset; nothing in it "
            "was changed"
        )
    os.makedirs(out, exist_ok=True)
