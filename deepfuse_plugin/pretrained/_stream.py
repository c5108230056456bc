"""Pretraining on a corpus that stays on disk: rows of a sharded dataset, a window at a time.

A :class:`~deepfuse_plugin.data.ShardedMultiModalDataset` corpus is never loaded whole. The
held-out rows are chosen by row number (a seeded permutation of the row numbers, as for an
in-memory corpus), so choosing them reads nothing. Each training epoch visits the shards in a
seeded order, ``window`` shards at a time: their training rows join the rows left over from the
previous window, are shuffled with the same seeded generator and cut into batches; the rows that
do not fill a batch wait for the next window, and those left at the end of the epoch are dropped,
so an epoch has ``len(rows) // batch_size`` batches, as in memory. Everything is drawn from
``(seed, epoch)``: a run resumed after epoch k sees exactly the batches an uninterrupted run
sees. At most ``window + 1`` shards of samples are in memory.

Examples
--------
>>> import os, tempfile
>>> import deepfuse_plugin as dfp
>>> from deepfuse_plugin.data import featurize_to_disk
>>> feat = dfp.MultiModalFeaturizer(["ecfp"], ecfp_size=16, progress=False)
>>> ds = featurize_to_disk(["C" * k for k in range(1, 11)], feat,
...                        os.path.join(tempfile.mkdtemp(), "ds"), shard_size=3, progress=False)
>>> corpus = ShardedCorpus(ds, window=2)
>>> valid, train = corpus.split(np.random.default_rng(0).permutation(10), n_valid=2)
>>> len(valid), len(train), [len(b) for b in train.sample_batches(4, [0, 0], shuffle=True)]
(2, 8, [4, 4])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.modalities import Modality, MultiModalSample

__all__ = ["ShardedCorpus", "StreamedRows", "streamed_target_statistics"]


class ShardedCorpus:
    """A :class:`~deepfuse_plugin.data.ShardedMultiModalDataset` as a pretraining corpus.

    Parameters
    ----------
    dataset: ShardedMultiModalDataset
    window: int
        Shards whose rows are shuffled together (memory: about ``window + 1`` shards).
    """

    def __init__(self, dataset: Any, window: int):
        if not isinstance(window, int) or window < 1:
            raise InvalidSettingError(f"shuffle_window must be a positive integer, got {window!r}")
        self.dataset, self.window = dataset, window

    def __len__(self) -> int:
        return len(self.dataset)

    def split(self, order: np.ndarray, n_valid: int) -> tuple[StreamedRows, StreamedRows]:
        """``(valid, train)``: the rows ``order[:n_valid]`` and the others."""
        held_out = np.zeros(len(self.dataset), dtype=bool)
        held_out[order[:n_valid]] = True
        return StreamedRows(self, held_out), StreamedRows(self, ~held_out)

    def info(self) -> dict[str, Any]:
        """What ``model.json`` records of how the corpus was read."""
        return {
            "streamed_from": self.dataset.data_dir,
            "shards": self.dataset.get_number_shards(),
            "shuffle_window": self.window,
        }


class StreamedRows:
    """The rows of a :class:`ShardedCorpus` where ``chosen`` is True, read shard by shard."""

    def __init__(self, corpus: ShardedCorpus, chosen: np.ndarray):
        self.corpus = corpus
        starts = np.concatenate([[0], np.cumsum(corpus.dataset.shard_rows())])
        self.rows = [np.flatnonzero(chosen[a:b]) for a, b in zip(starts[:-1], starts[1:])]
        self._count = int(chosen.sum())

    def __len__(self) -> int:
        return self._count

    def shard_samples(self, shard: int) -> list[MultiModalSample]:
        """The chosen samples of ``shard``, in row order."""
        if not len(self.rows[shard]):
            return []
        return list(self.corpus.dataset.get_shard(shard, self.rows[shard])[0])

    def sample_batches(
        self, batch_size: int, seed: Sequence[int], shuffle: bool
    ) -> Iterator[list[MultiModalSample]]:
        """Lists of ``batch_size`` samples: shuffled (full batches only, see the module
        docstring) or in row order (the last batch may be smaller)."""
        if not shuffle:
            pool: list[MultiModalSample] = []
            for shard in range(len(self.rows)):
                pool += self.shard_samples(shard)
                while len(pool) >= batch_size:
                    yield pool[:batch_size]
                    pool = pool[batch_size:]
            if pool:
                yield pool
            return
        rng = np.random.default_rng(list(seed))
        shards = rng.permutation(len(self.rows))
        pool = []
        for start in range(0, len(shards), self.corpus.window):
            for shard in shards[start : start + self.corpus.window]:
                pool += self.shard_samples(int(shard))
            order = rng.permutation(len(pool))
            full = len(pool) - len(pool) % batch_size
            for i in range(0, full, batch_size):
                yield [pool[k] for k in order[i : i + batch_size]]
            pool = [pool[k] for k in order[full:]]

    def iter_samples(self) -> Iterator[MultiModalSample]:
        for shard in range(len(self.rows)):
            yield from self.shard_samples(shard)


def streamed_target_statistics(
    rows: StreamedRows, targets: Sequence[Modality]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and (population) standard deviation of each target view over ``rows``, in one pass
    (shard statistics merged with Chan et al.'s formula); zeros for a view never present."""
    moments = {t.name: (0, np.zeros(t.require("dim")), np.zeros(t.require("dim"))) for t in targets}
    for shard in range(len(rows.rows)):
        samples = rows.shard_samples(shard)
        for t in targets:
            present = [s.values[t.name] for s in samples if s.values.get(t.name) is not None]
            if present:
                block = np.stack([np.asarray(v, dtype=np.float64) for v in present])
                moments[t.name] = _merge(moments[t.name], block)
    return {
        name: (mean, np.sqrt(m2 / count) if count else m2)
        for name, (count, mean, m2) in moments.items()
    }


def _merge(
    moments: tuple[int, np.ndarray, np.ndarray], block: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, sum of squared deviations)`` after adding the rows of ``block``."""
    n_a, mean_a, m2_a = moments
    n_b, mean_b = len(block), block.mean(0)
    total, delta = n_a + n_b, mean_b - mean_a
    mean = mean_a + delta * n_b / total
    m2 = m2_a + ((block - mean_b) ** 2).sum(0) + delta**2 * n_a * n_b / total
    return total, mean, m2
