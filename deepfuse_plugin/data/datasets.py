"""Multimodal datasets: plain DeepChem datasets whose ``X`` is an object array of samples.

Any DeepChem ``Dataset`` produced with a deepfuse featurizer (``CSVLoader``, ``dc.molnet.load_*``,
``DiskDataset``) already works with every deepfuse model. The helpers here build one directly from
SMILES and inspect or change modality presence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from deepchem.data import Dataset, NumpyDataset

from deepfuse_plugin.modalities import MultiModalSample

logger = logging.getLogger(__name__)


class MultiModalDataset(NumpyDataset):
    """A ``NumpyDataset`` of :class:`MultiModalSample` with constructors from SMILES.

    Examples
    --------
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    >>> ds = dfp.MultiModalDataset.from_smiles(["CCO", "not a smiles", "CCN"], y=[1.0, 2.0, 3.0],
    ...                                        featurizer=feat)
    >>> list(ds.ids), ds.y.ravel().tolist()
    (['CCO', 'CCN'], [1.0, 3.0])
    """

    @classmethod
    def from_smiles(
        cls,
        smiles: Sequence[str],
        featurizer: Any,
        y: Any = None,
        w: Any = None,
        ids: Sequence[Any] | None = None,
    ) -> MultiModalDataset:
        """Featurize ``smiles``; rows that cannot be parsed are dropped (and logged), the rest kept
        with their labels, weights and ids aligned."""
        smiles = list(smiles)
        X = featurizer.featurize(smiles)
        keep = np.array([isinstance(x, MultiModalSample) for x in X], dtype=bool)
        ids_arr = np.asarray(list(ids) if ids is not None else smiles, dtype=object)
        if not keep.any():
            raise ValueError(
                f"None of the {len(smiles)} inputs could be featurized "
                f"(first ids: {list(ids_arr[:5])})"
            )
        dropped = ids_arr[~keep]
        if len(dropped):
            logger.warning(
                "Dropped %d row(s) that could not be featurized: %s",
                len(dropped),
                list(dropped[:20]),
            )
        y_arr = (
            None if y is None else np.asarray(y, dtype=np.float64).reshape(len(smiles), -1)[keep]
        )
        w_arr = (
            None if w is None else np.asarray(w, dtype=np.float64).reshape(len(smiles), -1)[keep]
        )
        if y_arr is not None and w_arr is None:
            w_arr = np.isfinite(y_arr).astype(np.float64)  # missing labels weigh 0
            y_arr = np.nan_to_num(y_arr, nan=0.0)
        return cls(X[keep], y_arr, w_arr, ids_arr[keep].astype(str))


def presence_frame(dataset: Dataset, names: Sequence[str] | None = None) -> pd.DataFrame:
    """``(N, M)`` boolean frame: is modality m present for sample i? (index = dataset ids).

    Reads one sample at a time (a sharded dataset one shard at a time); ``names`` defaults to
    the first sample's modalities."""
    masks, ids = [], []
    for sample, _, _, id_ in dataset.itersamples():
        if not names:
            names = list(sample.modality_names)
        masks.append(sample.mask(names))
        ids.append(id_)
    names = list(names or [])
    data = np.stack(masks) if masks else np.zeros((0, len(names)), bool)
    return pd.DataFrame(data, index=pd.Index(ids, name="id"), columns=names)


def drop_modalities(
    dataset: Dataset,
    names: Iterable[str],
    fraction: float = 1.0,
    seed: int | None = 0,
    keep_one_of: Iterable[str] | None = None,
) -> NumpyDataset:
    """Copy of ``dataset`` with ``names`` made missing in a random ``fraction`` of samples.

    A sample never loses its last present modality among ``keep_one_of`` (default: all of the
    sample's modalities), mirroring training-time masking. Pass the model's modality names
    (``keep_one_of=model.modality_names``) when the samples carry modalities the model does not
    use, so that no sample is left with nothing the model can read. Labels, weights and ids are
    unchanged.

    Examples
    --------
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], progress=False)
    >>> ds = dfp.MultiModalDataset.from_smiles(["CCO", "CCN"], featurizer=feat)
    >>> dfp.presence_frame(dfp.drop_modalities(ds, ["smiles"])).sum().to_dict()
    {'ecfp': 2, 'smiles': 0}
    """
    names = list(names)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    known = {n for sample in dataset.X for n in sample.modality_names}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Cannot drop {unknown}: the samples' modalities are {sorted(known)}")
    guarded = None if keep_one_of is None else set(keep_one_of)
    rng = np.random.default_rng(seed)
    out = []
    for sample in dataset.X:
        chosen = [n for n in names if rng.random() < fraction and sample.present(n)]
        remaining = [
            n
            for n in sample.modality_names
            if sample.present(n) and n not in chosen and (guarded is None or n in guarded)
        ]
        protected = [n for n in chosen if guarded is None or n in guarded]
        if protected and not remaining:
            chosen.remove(protected[int(rng.integers(len(protected)))])
        out.append(sample.without(chosen))
    X = np.empty(len(out), dtype=object)
    X[:] = out
    return NumpyDataset(X, dataset.y, dataset.w, dataset.ids)


def untransform_labels(y: np.ndarray, transformers: Sequence[Any]) -> np.ndarray:
    """``y`` ``(N, n_tasks)`` with ``transformers`` undone, keeping its shape.

    DeepChem's ``NormalizationTransformer.untransform`` broadcasts a single row ``(1, T)`` with
    ``T > 1`` tasks into ``(T, T)`` (it squeezes the row away first), which broke a one-row
    validation or test split; a one-row input is therefore untransformed as two copies.
    """
    from deepchem.trans import undo_transforms

    y = np.asarray(y)
    if len(y) == 1:
        return np.asarray(undo_transforms(np.concatenate([y, y]), list(transformers)))[:1]
    return np.asarray(undo_transforms(y, list(transformers)))
