"""Loaders for crystal data: extended XYZ (ASE), CIF folders (CGCNN layout), DeepChem's materials
loaders and the Materials Project API.

Every loader returns DeepChem datasets: ``X`` = featurized samples (or the pymatgen structures when
no featurizer is given), ``y`` = the targets (one column per task), ``w`` = 1 where a target is
known and 0 where it is missing (NaN), ``ids`` = material ids. ASE, pymatgen and mp-api are
imported lazily (the ``materials`` extra).
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from deepchem.data import NumpyDataset

logger = logging.getLogger(__name__)

#: Targets of ``mp36k.extxyz.xz`` (the shared development set).
MP36K_TARGETS = ("formation_energy_per_atom", "band_gap", "fermi_energy")


class CrystalDataset(NumpyDataset):
    """A ``NumpyDataset`` that remembers its task names (``get_task_names()``), also through
    ``select`` (so DeepChem splitters keep them)."""

    def __init__(
        self,
        X: Any,
        y: Any = None,
        w: Any = None,
        ids: Any = None,
        n_tasks: int = 1,
        tasks: Sequence[str] | np.ndarray | None = None,
    ):
        super().__init__(X, y, w, ids, n_tasks=n_tasks)
        self.tasks = None if tasks is None else np.array(list(tasks))

    def get_task_names(self) -> np.ndarray:
        if self.tasks is not None and len(self.tasks) == (
            self._y.shape[1] if self._y.ndim > 1 else 1
        ):
            return self.tasks
        return super().get_task_names()

    def select(
        self, indices: Sequence[int] | np.ndarray, select_dir: str | None = None
    ) -> CrystalDataset:
        part = super().select(indices, select_dir)
        return CrystalDataset(part.X, part.y, part.w, part.ids, tasks=self.tasks)


def _decompressed(path: str | os.PathLike, workdir: str | None = None) -> tuple[str, bool]:
    """``(plain path, is_temporary)``: ``.xz``/``.gz``/``.bz2`` files are decompressed to a temp
    file (ASE's reader seeks, which is very slow on a compressed stream)."""
    path = str(path)
    openers: dict[str, Callable[..., Any]] = {".xz": lzma.open}
    if path.endswith(".gz"):
        import gzip

        openers[".gz"] = gzip.open
    if path.endswith(".bz2"):
        import bz2

        openers[".bz2"] = bz2.open
    for suffix, opener in openers.items():
        if path.endswith(suffix):
            handle, target = tempfile.mkstemp(
                suffix=Path(path[: -len(suffix)]).suffix or ".xyz", dir=workdir
            )
            with os.fdopen(handle, "wb") as out, opener(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
            return target, True
    return path, False


def _text_keys_parser(keys: Sequence[str]) -> Callable[[str], dict[str, Any]]:
    """ASE's comment-line parser, but ``keys`` keep their text as written: ASE reads
    ``material_id=0001`` as the integer 1, which loses the id (``0001.cif`` becomes ``1``)."""
    from ase.io.extxyz import key_val_str_to_dict

    patterns = {key: re.compile(rf'(?:^|\s){re.escape(key)}=("[^"]*"|\S+)') for key in keys}

    def parse(line: str) -> dict[str, Any]:
        info = key_val_str_to_dict(line)
        for key, pattern in patterns.items():
            found = pattern.search(line)
            if found and key in info:
                info[key] = found.group(1).strip('"')
        return info

    return parse


def read_extxyz(
    path: str | os.PathLike,
    limit: int | None = None,
    index: str | None = None,
    text_keys: Sequence[str] = ("material_id",),
) -> tuple[list[Any], pd.DataFrame]:
    """Structures and per-structure info of an extended XYZ file (compressed or not).

    Parameters
    ----------
    path: path
        ``.extxyz``/``.xyz`` file, optionally ``.xz``/``.gz``/``.bz2`` compressed (decompressed
        to a temporary file first, removed afterwards).
    limit: int, optional
        Read only the first ``limit`` frames.
    index: str, optional
        ASE index string (overrides ``limit``), e.g. ``"100:200"``.
    text_keys: sequence of str
        ``info`` keys read as text exactly as written (ids: ``0001`` stays ``"0001"``).

    Returns
    -------
    structures: list of pymatgen Structure
    info: DataFrame
        One row per structure, the frames' ``info`` keys as columns (e.g. ``material_id``,
        ``formation_energy_per_atom``, ``split``).
    """
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    plain, temporary = _decompressed(path)
    try:
        selection = index if index is not None else (":" if limit is None else f":{int(limit)}")
        frames = ase.io.read(
            plain, index=selection, format="extxyz", properties_parser=_text_keys_parser(text_keys)
        )
    finally:
        if temporary:
            os.unlink(plain)
    if not isinstance(frames, list):
        frames = [frames]
    structures = [AseAtomsAdaptor.get_structure(atoms) for atoms in frames]
    info = pd.DataFrame([dict(atoms.info) for atoms in frames])
    return structures, info


def _targets_and_weights(
    info: pd.DataFrame, targets: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    missing = [t for t in targets if t not in info.columns]
    if missing:
        raise KeyError(f"Targets {missing} not found; available columns: {list(info.columns)}")
    y = info[list(targets)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    w = np.isfinite(y).astype(np.float64)
    return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), w


def _make_dataset(
    structures: Sequence[Any],
    y: np.ndarray | None,
    w: np.ndarray | None,
    ids: np.ndarray,
    featurizer: Any,
    tasks: Sequence[str],
) -> CrystalDataset:
    if featurizer is None:
        X = np.empty(len(structures), dtype=object)
        X[:] = list(structures)
        keep = np.ones(len(structures), dtype=bool)
    else:
        X = featurizer.featurize(list(structures))
        keep = np.array([not (isinstance(x, np.ndarray) and x.size == 0) for x in X], dtype=bool)
        if not keep.all():
            logger.warning(
                "Dropped %d structure(s) that could not be featurized: %s",
                int((~keep).sum()),
                list(ids[~keep][:20]),
            )
    return CrystalDataset(
        X[keep],
        None if y is None else y[keep],
        None if w is None else w[keep],
        ids[keep],
        n_tasks=len(tasks) if tasks else 1,
        tasks=list(tasks) if tasks else None,
    )


def load_extxyz(
    path: str | os.PathLike,
    targets: Sequence[str] = ("formation_energy_per_atom",),
    featurizer: Any = None,
    id_key: str = "material_id",
    split_key: str | None = "split",
    split: str | Sequence[str] | None = None,
    limit: int | None = None,
    where: Callable[[pd.DataFrame], Any] | None = None,
) -> CrystalDataset:
    """An extended XYZ file as a DeepChem dataset.

    Parameters
    ----------
    path: path
        ``.extxyz`` (optionally ``.xz``-compressed, e.g. ``mp36k.extxyz.xz``).
    targets: sequence of str
        ``info`` keys used as tasks (multitask: one column each). Missing/NaN values get weight 0.
    featurizer: optional
        E.g. :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`; None keeps the
        pymatgen structures as ``X``.
    id_key: str
        ``info`` key used as ``ids`` (row numbers when absent).
    split_key, split:
        Keep only rows whose ``info[split_key]`` is ``split`` (or in it), e.g. ``split="train"`` for
        the MEGNet split of mp36k; None keeps all rows. :func:`load_extxyz_splits` returns every
        split at once.
    limit: int, optional
        Read only the first ``limit`` structures (before filtering).
    where: callable, optional
        ``where(info) -> boolean mask`` to filter rows (e.g. drop implausible targets).

    Returns
    -------
    CrystalDataset
        Task names are ``targets`` (``dataset.get_task_names()``).
    """
    structures, info = read_extxyz(path, limit=limit, text_keys=(id_key,))
    return _dataset_from_frames(
        structures, info, targets, featurizer, id_key, split_key, split, where
    )


def _dataset_from_frames(
    structures: list[Any],
    info: pd.DataFrame,
    targets: Sequence[str],
    featurizer: Any,
    id_key: str,
    split_key: str | None,
    split: str | Sequence[str] | None,
    where: Callable[[pd.DataFrame], Any] | None,
) -> CrystalDataset:
    keep = np.ones(len(info), dtype=bool)
    if split is not None:
        if split_key is None or split_key not in info.columns:
            raise KeyError(
                f"split={split!r} needs the column {split_key!r}; available: {list(info.columns)}"
            )
        wanted = [split] if isinstance(split, str) else list(split)
        keep &= info[split_key].astype(str).isin(wanted).to_numpy()
    if where is not None:
        keep &= np.asarray(where(info), dtype=bool)
    rows = np.flatnonzero(keep)
    info = info.iloc[rows].reset_index(drop=True)
    structures = [structures[i] for i in rows]
    ids = (
        info[id_key].astype(str).to_numpy(dtype=object)
        if id_key in info.columns
        else np.array([str(i) for i in rows], dtype=object)
    )
    y, w = _targets_and_weights(info, targets) if targets else (None, None)
    return _make_dataset(structures, y, w, ids, featurizer, targets)


def load_extxyz_splits(
    path: str | os.PathLike,
    targets: Sequence[str] = ("formation_energy_per_atom",),
    featurizer: Any = None,
    id_key: str = "material_id",
    split_key: str = "split",
    splits: Sequence[str] = ("train", "val", "test"),
    limit: int | None = None,
    where: Callable[[pd.DataFrame], Any] | None = None,
) -> dict[str, CrystalDataset]:
    """``{split name: dataset}`` from the ``split_key`` column (read and featurized once).

    Examples
    --------
    >>> parts = load_extxyz_splits("mp36k.extxyz.xz",
    ...                            featurizer=feat)  # doctest: +SKIP
    >>> train, val, test = parts["train"], parts["val"], parts["test"]  # doctest: +SKIP
    """
    structures, info = read_extxyz(path, limit=limit, text_keys=(id_key,))
    if split_key not in info.columns:
        raise KeyError(f"No {split_key!r} column; available: {list(info.columns)}")
    mask = np.ones(len(info), dtype=bool) if where is None else np.asarray(where(info), dtype=bool)
    wanted = info[split_key].astype(str).isin(list(splits)).to_numpy() & mask
    rows = np.flatnonzero(wanted)
    full = _dataset_from_frames(
        [structures[i] for i in rows],
        info.iloc[rows].reset_index(drop=True),
        targets,
        featurizer,
        id_key,
        None,
        None,
        None,
    )
    labels = info[split_key].astype(str).to_numpy()[rows]
    # the featurizer may have dropped rows: align through the ids
    label_of = dict(
        zip(
            info[id_key].astype(str).to_numpy()[rows]
            if id_key in info.columns
            else [str(i) for i in rows],
            labels,
        )
    )
    out = {}
    for name in splits:
        index = np.array(
            [i for i, id_ in enumerate(full.ids) if label_of.get(str(id_)) == name], dtype=np.int64
        )
        out[name] = full.select(index)
    return out


def load_cif_folder(
    folder: str | os.PathLike,
    featurizer: Any = None,
    tasks: Sequence[str] | None = None,
    id_prop: str = "id_prop.csv",
) -> CrystalDataset:
    """A CGCNN-layout folder: ``id_prop.csv`` (no header: ``id, target[, target...]``) and
    ``<id>.cif`` for every id.

    Parameters
    ----------
    folder: path
    featurizer: optional
        None keeps the pymatgen structures as ``X``.
    tasks: sequence of str, optional
        Names of the target columns (default ``task0, task1, ...``).

    Returns
    -------
    CrystalDataset
        ``ids`` = the CIF ids; a CIF that pymatgen cannot read is dropped with a warning.
    """
    from pymatgen.core import Structure

    folder = Path(folder)
    # ids as text exactly as written: "0001" names 0001.cif (read as a number it would be 1)
    table = pd.read_csv(folder / id_prop, header=None, dtype=str, keep_default_na=False)
    ids = table.iloc[:, 0].str.strip().to_numpy(dtype=object)
    values = (
        table.iloc[:, 1:]
        .apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
        .to_numpy(dtype=np.float64)
    )
    tasks = list(tasks) if tasks is not None else [f"task{i}" for i in range(values.shape[1])]
    if len(tasks) != values.shape[1]:
        raise ValueError(f"{len(tasks)} task names for {values.shape[1]} target columns")
    structures, keep = [], []
    for i, id_ in enumerate(ids):
        try:
            structures.append(Structure.from_file(str(folder / f"{id_}.cif")))
            keep.append(i)
        except Exception as err:
            logger.warning("Skipping %s: %s: %s", id_, type(err).__name__, err)
    keep_arr = np.array(keep, dtype=np.int64)
    y = values[keep_arr]
    w = np.isfinite(y).astype(np.float64)
    return _make_dataset(structures, np.nan_to_num(y), w, ids[keep_arr], featurizer, tasks)


def load_molnet_materials(
    name: str = "mp_formation_energy",
    featurizer: Any = None,
    data_dir: str | None = None,
    save_dir: str | None = None,
    splitter: Any = "random",
    transformers: Sequence[Any] = ("normalization",),
    reload: bool = True,
    **kwargs: Any,
) -> tuple[list[str], tuple, list]:
    """DeepChem's materials loaders with the multimodal crystal featurizer.

    ``name``: ``"mp_formation_energy"``, ``"mp_metallicity"``, ``"perovskite"`` or ``"bandgap"``
    (``dc.molnet.load_<name>``). DeepChem downloads the data into ``data_dir`` unless the file
    (e.g. ``mp_formation_energy.json``) is already there, and caches the featurized datasets in
    ``save_dir`` under a folder named after ``str(featurizer)`` (which encodes the modality specs).

    Returns DeepChem's ``(tasks, (train, valid, test), transformers)``.
    """
    import deepchem as dc

    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer

    loaders = {
        "mp_formation_energy": dc.molnet.load_mp_formation_energy,
        "mp_metallicity": dc.molnet.load_mp_metallicity,
        "perovskite": dc.molnet.load_perovskite,
        "bandgap": dc.molnet.load_bandgap,
    }
    if name not in loaders:
        raise ValueError(f"name must be one of {sorted(loaders)}, got {name!r}")
    featurizer = (
        featurizer if featurizer is not None else CrystalMultiModalFeaturizer(progress=False)
    )
    return loaders[name](
        featurizer=featurizer,
        splitter=splitter,
        transformers=list(transformers),
        reload=reload,
        data_dir=data_dir,
        save_dir=save_dir,
        **kwargs,
    )


def load_materials_project(
    targets: Sequence[str] = ("formation_energy_per_atom", "band_gap"),
    featurizer: Any = None,
    api_key: str | None = None,
    material_ids: Sequence[str] | None = None,
    chunk_size: int = 1000,
    **search_criteria: Any,
) -> CrystalDataset:
    """Structures and properties from the Materials Project API (network and an API key needed).

    Uses ``mp_api.client.MPRester().materials.summary.search`` (``pip install mp-api``). The key is
    ``api_key`` or the ``MP_API_KEY`` environment variable.

    Parameters
    ----------
    targets: sequence of str
        Summary fields used as tasks (e.g. ``formation_energy_per_atom``, ``band_gap``,
        ``efermi``, ``energy_above_hull``); None values get weight 0.
    featurizer: optional
    material_ids: sequence of str, optional
        Restrict to these ids.
    **search_criteria:
        Passed to ``summary.search`` (e.g. ``elements=["S"]``, ``num_sites=(1, 20)``,
        ``is_stable=True``).

    Examples
    --------
    >>> ds = load_materials_project(["band_gap"], elements=["Si", "O"],
    ...                             featurizer=feat)  # doctest: +SKIP
    """
    try:
        from mp_api.client import MPRester
    except ImportError as err:
        raise ImportError("load_materials_project needs mp-api: pip install mp-api") from err
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        raise ValueError("No Materials Project API key: pass api_key= or set MP_API_KEY")
    fields = ["material_id", "structure", *targets]
    with MPRester(key) as mpr:
        docs = mpr.materials.summary.search(
            material_ids=list(material_ids) if material_ids else None,
            fields=fields,
            chunk_size=chunk_size,
            **search_criteria,
        )
    structures = [doc.structure for doc in docs]
    ids = np.array([str(doc.material_id) for doc in docs], dtype=object)
    y = np.array(
        [
            [np.nan if getattr(doc, t, None) is None else float(getattr(doc, t)) for t in targets]
            for doc in docs
        ],
        dtype=np.float64,
    ).reshape(len(docs), -1)
    w = np.isfinite(y).astype(np.float64)
    return _make_dataset(structures, np.nan_to_num(y), w, ids, featurizer, targets)


# -- families for zero-shot transfer ---------------------------------------------------------------
_HALOGENS = {"F", "Cl", "Br", "I"}
_CHALCOGENS = {"S", "Se", "Te"}


def _is_perovskite_abx3(composition: Any) -> bool:
    """ABX3 stoichiometry with X = O or a halogen and A, B not anions (the perovskite prototype's
    formula; the structure type itself is not checked)."""
    amounts = composition.reduced_composition.get_el_amt_dict()
    if len(amounts) != 3:
        return False
    anions = [el for el, n in amounts.items() if el in {"O"} | _HALOGENS and abs(n - 3) < 1e-6]
    if len(anions) != 1:
        return False
    others = [n for el, n in amounts.items() if el != anions[0]]
    return all(abs(n - 1) < 1e-6 for n in others) and not any(
        el in {"O", "N", "S", "Se", "Te"} | _HALOGENS for el in amounts if el != anions[0]
    )


#: Built-in families for :func:`family_mask`.
FAMILIES: dict[str, Callable[[Any], bool]] = {
    "sulfides": lambda s: (
        "S" in s.composition.get_el_amt_dict() and "O" not in s.composition.get_el_amt_dict()
    ),
    "chalcogenides": lambda s: (
        bool(_CHALCOGENS & set(s.composition.get_el_amt_dict()))
        and "O" not in s.composition.get_el_amt_dict()
    ),
    "oxides": lambda s: "O" in s.composition.get_el_amt_dict(),
    "halides": lambda s: bool(_HALOGENS & set(s.composition.get_el_amt_dict())),
    "perovskites_abx3": lambda s: _is_perovskite_abx3(s.composition),
}


def family_mask(structures: Sequence[Any], family: str | Callable[[Any], bool]) -> np.ndarray:
    """Boolean mask of the structures in a chemical family, to carve it out of a training set and
    evaluate on it zero-shot.

    ``family``: a name from :data:`FAMILIES` (``"sulfides"``: contains S and no O;
    ``"chalcogenides"``: S/Se/Te and no O; ``"oxides"``; ``"halides"``; ``"perovskites_abx3"``: ABX3
    formula with X = O or a halogen) or a callable ``structure -> bool``.

    Examples
    --------
    >>> structures, info = read_extxyz("mp36k.extxyz.xz")  # doctest: +SKIP
    >>> sulfide = family_mask(structures, "sulfides")  # doctest: +SKIP
    >>> train = load_extxyz("mp36k.extxyz.xz", split="train",
    ...                     where=lambda df: ~sulfide)  # doctest: +SKIP
    """
    if isinstance(family, str) and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; built-in: {sorted(FAMILIES)}")
    test = FAMILIES[family] if isinstance(family, str) else family
    return np.array([bool(test(s)) for s in structures], dtype=bool)
