"""``deepfuse pretrain``: featurize an unlabelled corpus and pretrain encoders on it, in memory or
through pickle-free shards on disk (``shards_dir``) that pretraining streams."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepfuse_plugin.data.corpora import moses_smiles, read_smiles_file
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.pretrained._loop import DEFAULT_SHUFFLE_WINDOW, PretrainingConfig
from deepfuse_plugin.pretrained._pretrain import pretrain_encoders


def pretrain_from_corpus(
    corpus: str,
    out: str | os.PathLike,
    name: str,
    modalities: Sequence[str] = ("ecfp", "graph", "smiles"),
    targets: Sequence[str] = ("descriptors",),
    n: int | None = None,
    smiles_column: str = "SMILES",
    config: PretrainingConfig | None = None,
    n_jobs: int = 1,
    resume: bool = True,
    progress: bool = True,
    embedding_cache_dir: str | os.PathLike | None = None,
    command: str | None = None,
    shards_dir: str | os.PathLike | None = None,
    shard_size: int | None = None,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
    distributed: dict | None = None,
) -> Path:
    """Pretrain the encoders of ``modalities`` on ``corpus`` and write a checkpoint to ``out``.

    Parameters
    ----------
    corpus: str
        ``"moses"`` (the MOSES train split of the installed ``molsets`` package) or the path of a
        CSV / one-SMILES-per-line file.
    out, name:
        Checkpoint folder and name (``<Arch>-<Data>-<version>-<Task>``).
    modalities: the encoded (shipped) views.
    targets: views used only as pretraining targets and relational teacher (``descriptors``,
        ``minimol``, ...); they are not needed at fine-tuning time.
    n: int, optional
        A seeded random subset of ``n`` molecules (seed: ``config.seed``).
    config: PretrainingConfig, optional
    n_jobs: featurization processes.
    resume: continue from ``out``'s resume point if there is one.
    distributed: dict, optional
        ``accelerator``, ``devices``, ``num_nodes``, ``strategy``: pretrain on several processes
        under Lightning DDP (see :func:`~deepfuse_plugin.pretrained.pretrain_encoders`).
    shards_dir: path, optional
        Featurize into pickle-free shards in this folder (resumable, ``n_jobs`` workers writing
        their own shards; an unfinished featurization there is continued, a finished one reused)
        and stream pretraining from them, so memory stays flat whatever the corpus size.
        Default: featurize and pretrain in memory (fine for up to ~100k molecules).
    shard_size: molecules per shard (default 4096), with ``shards_dir``.
    shuffle_window: shards shuffled together per epoch, with ``shards_dir``.

    Examples
    --------
    >>> pretrain_from_corpus("moses", "ckpt", "DeepFuse-MOSES-v1-Multiview",
    ...                      shards_dir="moses_shards", n_jobs=2)  # doctest: +SKIP
    """
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    config = config or PretrainingConfig()
    overlap = set(modalities) & set(targets)
    if overlap:
        raise InvalidSettingError(f"{sorted(overlap)} cannot be both an input and a target")
    featurizer = MultiModalFeaturizer(
        [*modalities, *targets],
        n_jobs=n_jobs,
        progress=progress,
        embedding_cache_dir=embedding_cache_dir,
    )
    if shards_dir is None:
        data: Any = featurizer.featurize(_read_corpus(corpus, n, smiles_column, config.seed))
    else:
        from deepfuse_plugin.data.sharded import DEFAULT_SHARD_SIZE, featurize_corpus_to_disk

        data = featurize_corpus_to_disk(
            corpus,
            featurizer,
            shards_dir,
            n=n,
            seed=config.seed,
            column=smiles_column,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            progress=progress,
        )
    description = "MOSES train split (molsets package)" if corpus == "moses" else Path(corpus).name
    subset = f"{n} molecules, seeded random subset (seed {config.seed})" if n else "all"
    inputs = featurizer.modalities[: len(modalities)]
    target_specs = featurizer.modalities[len(modalities) :]
    return pretrain_encoders(
        data,
        inputs,
        target_specs,
        out,
        name=name,
        config=config,
        resume=resume,
        progress=progress,
        command=command,
        **(distributed or {}),
        corpus_info={
            "description": description,
            "subset": subset,
            "failed_to_featurize": len(featurizer.last_failures),
        },
        shuffle_window=shuffle_window,
    )


def _read_corpus(corpus: str, n: int | None, column: str, seed: int) -> list[str]:
    """The corpus's SMILES in memory (the same molecules ``featurize_corpus_to_disk`` reads)."""
    if corpus == "moses":
        return moses_smiles(n=n, seed=seed)
    return read_smiles_file(corpus, column, n=n, seed=seed)
