"""The inputs of an out-of-core featurization, read in shards: a list of SMILES (with labels and
ids), a CSV file (read ``shard_size`` rows at a time, labels parsed as ``deepfuse train`` parses
them) and an unlabelled corpus (a seeded subset read in file order). Each says what a resumed
featurization must share with the folder's (``identity``)."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin.data._shards import ShardTask
from deepfuse_plugin.data.corpora import iter_smiles_chunks
from deepfuse_plugin.errors import InvalidInputError


class Input(ABC):
    """An input read in shards: ``identity()`` (what must match to resume), ``count()`` and
    ``shards(size)``."""

    task_names: list[Any] = []

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What a resumed featurization must share with the folder's."""

    def count(self) -> int | None:
        return None

    @abstractmethod
    def shards(self, size: int) -> Iterator[ShardTask]:
        """The input cut into shards of ``size`` rows."""


class SequenceInput(Input):
    def __init__(self, points: list[Any], labels: Any, ids: Sequence[Any] | None):
        self.points = points
        self.y = None if labels is None else np.asarray(labels, dtype=np.float64)
        if self.y is not None:
            if self.y.shape[0] != len(points):
                raise InvalidInputError(
                    f"labels has {self.y.shape[0]} rows for {len(points)} inputs: "
                    "give one per input"
                )
            self.y = self.y.reshape(len(points), -1)
            self.task_names = list(range(self.y.shape[1]))  # NumpyDataset's task names
        self.ids = None if ids is None else [str(i) for i in ids]
        if self.ids is not None and len(self.ids) != len(points):
            raise InvalidInputError(
                f"ids has {len(self.ids)} entries for {len(points)} inputs: give one per input"
            )

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps([repr(p) for p in self.points]).encode())
        if self.y is not None:
            digest.update(self.y.tobytes())
        digest.update(json.dumps(self.ids).encode())
        return {"input": "sequence", "rows": len(self.points), "sha256": digest.hexdigest()}

    def count(self) -> int:
        return len(self.points)

    def shards(self, size: int) -> Iterator[ShardTask]:
        for index, start in enumerate(range(0, len(self.points), size)):
            stop = start + size
            yield ShardTask(
                index,
                start,
                self.points[start:stop],
                None if self.y is None else self.y[start:stop],
                None if self.ids is None else self.ids[start:stop],
            )


class CsvInput(Input):
    def __init__(self, path: str, smiles_column: str, tasks: list[str], id_column: str | None):
        self.path, self.smiles_column, self.id_column = path, smiles_column, id_column
        self.task_names = tasks
        if not os.path.isfile(path):
            raise InvalidInputError(f"CSV file not found: {path}")
        header = list(pd.read_csv(path, dtype=str, nrows=0).columns)
        wanted = [smiles_column, *tasks, *([id_column] if id_column else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise InvalidInputError(
                f"Column(s) {missing} not found in {path}. Available columns: {header}"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "input": "csv",
            "file": os.path.abspath(self.path),
            "sha256": _file_sha256(self.path),
            "smiles_column": self.smiles_column,
            "tasks": self.task_names,
            "id_column": self.id_column,
        }

    def count(self) -> int:
        """Rows of the file; the label columns are parsed on the way, so text in one stops the
        featurization before any shard is written."""
        rows = 0
        for frame in self._frames(65536):
            if self.task_names:
                self._labels(frame, rows)
            rows += len(frame)
        return rows

    def shards(self, size: int) -> Iterator[ShardTask]:
        start = 0
        for index, frame in enumerate(self._frames(size)):
            yield ShardTask(
                index,
                start,
                frame[self.smiles_column].tolist(),
                self._labels(frame, start) if self.task_names else None,
                None if self.id_column is None else frame[self.id_column].tolist(),
            )
            start += len(frame)

    def _frames(self, rows: int) -> Iterator[pd.DataFrame]:
        columns = [
            self.smiles_column,
            *self.task_names,
            *([self.id_column] if self.id_column else []),
        ]
        with pd.read_csv(
            self.path,
            dtype=str,
            keep_default_na=False,
            usecols=lambda c: c in columns,
            chunksize=rows,
        ) as reader:
            yield from reader

    def _labels(self, frame: pd.DataFrame, start: int) -> np.ndarray:
        from deepfuse_plugin.inputs import parse_labels

        rows = [f"row {start + i}" for i in range(len(frame))]
        return parse_labels(frame.reset_index(drop=True), self.task_names, rows)


class CorpusInput(Input):
    def __init__(self, path: str, column: str, n: int | None, seed: int):
        self.path, self.column, self.n, self.seed = path, column, n, seed

    def identity(self) -> dict[str, Any]:
        return {
            "input": "corpus",
            "file": os.path.abspath(self.path),
            "sha256": _file_sha256(self.path),
            "column": self.column,
            "n": self.n,
            "seed": self.seed,
        }

    def count(self) -> int | None:
        return self.n  # a full corpus is not counted: that is a pass over the whole file

    def shards(self, size: int) -> Iterator[ShardTask]:
        chunks = iter_smiles_chunks(self.path, self.column, size, self.n, self.seed)
        buffer: list[str] = []
        index = start = 0
        for chunk in chunks:
            buffer += chunk
            while len(buffer) >= size:
                yield ShardTask(index, start, buffer[:size], None, None)
                buffer, index, start = buffer[size:], index + 1, start + size
        if buffer:
            yield ShardTask(index, start, buffer, None, None)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
