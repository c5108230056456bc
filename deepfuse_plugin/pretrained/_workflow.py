"""``deepfuse pretrain``: featurize an unlabelled corpus and pretrain encoders on it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from deepfuse_plugin.data.corpora import moses_smiles, read_smiles_file
from deepfuse_plugin.errors import InvalidSettingError
from deepfuse_plugin.pretrained._loop import PretrainingConfig
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
    """
    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    config = config or PretrainingConfig()
    overlap = set(modalities) & set(targets)
    if overlap:
        raise InvalidSettingError(f"{sorted(overlap)} cannot be both an input and a target")
    if corpus == "moses":
        smiles = moses_smiles(n=n, seed=config.seed)
        description = "MOSES train split (molsets package)"
    else:
        smiles = read_smiles_file(corpus, smiles_column, n=n, seed=config.seed)
        description = f"{Path(corpus).name}"
    subset = f"{n} molecules, seeded random subset (seed {config.seed})" if n else "all"
    featurizer = MultiModalFeaturizer(
        [*modalities, *targets],
        n_jobs=n_jobs,
        progress=progress,
        embedding_cache_dir=embedding_cache_dir,
    )
    samples = featurizer.featurize(smiles)
    inputs = featurizer.modalities[: len(modalities)]
    target_specs = featurizer.modalities[len(modalities) :]
    return pretrain_encoders(
        samples,
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
    )
