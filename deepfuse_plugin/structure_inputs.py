"""Crystal structures as ``deepfuse train``/``predict`` inputs, in the layouts MatGL and CGCNN
users have: a CIF folder (``id_prop.csv`` + ``<id>.cif``), an extended XYZ file (labels in each
frame's ``info``), or a CSV with a column of CIF text.

Every row is kept: a structure that cannot be read gets its reason (:attr:`StructureRows.problems`)
instead of costing the others; the featurizer's own checks
(:class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`, input limits included) come
after. Extended XYZ files are read with :func:`deepfuse_plugin.data.loaders.read_extxyz` (ASE),
CIF files with pymatgen.

Examples
--------
>>> from deepfuse_plugin.structure_inputs import structure_format
>>> structure_format("data.csv"), structure_format("data.csv", cif_column="cif")
(None, 'cif_csv')
>>> structure_format("mp36k.extxyz.xz")
'extxyz'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin.inputs import WorkflowError, read_csv_checked

__all__ = [
    "STRUCTURE_FORMATS",
    "DEFAULT_CRYSTAL_MODALITIES",
    "crystal_model_modalities",
    "StructureRows",
    "structure_format",
    "read_structures",
]

#: Input layouts read here (``None`` from :func:`structure_format` is a SMILES CSV).
STRUCTURE_FORMATS = ("cif_folder", "extxyz", "cif_csv")
#: Modalities of a crystal run when none are given: the crystal graph (CGCNN) and the composition
#: vector need no language model and are computed in milliseconds; add ``text_embedding`` or
#: ``text_sentences`` (MiniLM, offline) with ``--modalities``.
DEFAULT_CRYSTAL_MODALITIES = ("graph", "composition")
#: The structure-graph modality each MatMMFuse backbone reads: CGCNN the CGCNN-format graph, MatGL's
#: MEGNet and M3GNet the MatGL-format one.
_BACKBONE_GRAPH = {"cgcnn": "graph", "megnet": "matgl_graph", "m3gnet": "matgl_graph"}
#: CGCNN's table of ids and targets in a CIF folder.
ID_PROP = "id_prop.csv"
_XYZ_SUFFIXES = (".xyz", ".extxyz")
_COMPRESSED = (".xz", ".gz", ".bz2")


def crystal_model_modalities(backbone: str | None = None) -> list[str]:
    """Modalities of a crystal model's run (``--model matmmfuse``) when none are given: the
    structure graph its ``backbone`` reads (default CGCNN's) and the sentence embeddings of the
    structure's text description, the two views MatMMFuse fuses (each atom attends over the
    sentences and each sentence over the atoms). The text is written offline by the ``fast``
    describer and embedded by the offline MiniLM.

    Examples
    --------
    >>> crystal_model_modalities(), crystal_model_modalities("megnet")
    (['graph', 'text_sentences'], ['matgl_graph', 'text_sentences'])
    """
    graph = _BACKBONE_GRAPH.get(backbone or "cgcnn")
    if graph is None:
        raise WorkflowError(
            f"Unknown backbone {backbone!r}; choose one of {sorted(_BACKBONE_GRAPH)}"
        )
    return [graph, "text_sentences"]


@dataclass
class StructureRows:
    """The rows of a structure input, every one kept.

    Attributes
    ----------
    ids: list of str
        One id per row (CIF ids, the ``material_id`` of an XYZ frame, or the row number).
    structures: list
        pymatgen ``Structure`` per row, None where it could not be read.
    problems: dict of int to str
        Row -> why its structure could not be read.
    frame: DataFrame
        The rows as read: a CSV's cells as text; for a folder or an XYZ file an ``id`` column
        (and the frames' ``info`` keys). Label columns are in it under their task names.
    format: str
        One of :data:`STRUCTURE_FORMATS`.
    """

    ids: list[str]
    structures: list[Any]
    frame: pd.DataFrame
    format: str
    problems: dict[int, str] = field(default_factory=dict)

    def readable(self) -> np.ndarray:
        """Row numbers whose structure was read."""
        return np.array([i for i, s in enumerate(self.structures) if s is not None], dtype=int)


def structure_format(path: str, cif_column: str | None = None) -> str | None:
    """The layout of an input path: ``"cif_folder"`` (a folder), ``"extxyz"`` (``.xyz`` or
    ``.extxyz``, optionally ``.xz``/``.gz``/``.bz2``), ``"cif_csv"`` (a CSV read with
    ``cif_column``), or None (a SMILES CSV)."""
    if os.path.isdir(path):
        return "cif_folder"
    name = str(path).lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    if name.endswith(_XYZ_SUFFIXES):
        return "extxyz"
    return "cif_csv" if cif_column else None


def read_structures(
    path: str,
    cif_column: str | None = None,
    tasks: Sequence[str] = (),
    id_key: str = "material_id",
    label_names: Sequence[str] = (),
) -> StructureRows:
    """Read every row of a structure input (see the module docstring).

    Parameters
    ----------
    path: str
        A CIF folder, an extended XYZ file or a CSV (with ``cif_column``).
    cif_column: str, optional
        The CSV column holding CIF text.
    tasks: sequence of str
        Label names: columns of the CSV, ``info`` keys of the XYZ frames, or names for the
        target columns of ``id_prop.csv`` (as many as it has). Empty for prediction.
    id_key: str
        ``info`` key of an XYZ frame used as its id (the row number when absent).
    label_names: sequence of str
        Without ``tasks`` (prediction): names for ``id_prop.csv``'s label columns when it has as
        many (a run's tasks); ``target0``, ``target1``, ... otherwise.

    Raises
    ------
    WorkflowError
        The path is missing, a CSV without ``cif_column``, a folder without ``id_prop.csv`` or
        ``.cif`` files, an XYZ file ASE cannot read, or a task that is not in the input.
    """
    if not os.path.exists(path):
        raise WorkflowError(f"Input not found: {path}")
    kind = structure_format(path, cif_column)
    if kind == "cif_folder":
        return _read_cif_folder(path, list(tasks), list(label_names))
    if kind == "extxyz":
        return _read_extxyz(path, list(tasks), id_key)
    if kind == "cif_csv" and cif_column is not None:
        return _read_cif_csv(path, cif_column, list(tasks))
    raise WorkflowError(
        f"{path} is a CSV: give --cif-column for a column of CIF text (or --smiles-column for "
        "molecules)"
    )


def _parse_cif(text: str) -> Any:
    """One structure from CIF text (pymatgen's parser warnings silenced: the reason of a failure
    is what the row reports)."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def _reason(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _read_cif_csv(path: str, cif_column: str, tasks: list[str]) -> StructureRows:
    frame = read_csv_checked(path, cif_column, tasks)
    structures: list[Any] = []
    problems: dict[int, str] = {}
    for row, text in enumerate(frame[cif_column]):
        structure = None
        if not str(text).strip():
            problems[row] = "empty CIF cell"
        else:
            try:
                structure = _parse_cif(str(text))
            except Exception as err:  # pymatgen raises many types for a bad CIF
                problems[row] = f"cannot read the CIF text: {_reason(err)}"
        structures.append(structure)
    ids = [str(i) for i in range(len(frame))]
    return StructureRows(ids, structures, frame, "cif_csv", problems)


def _read_cif_folder(folder: str, tasks: list[str], label_names: list[str]) -> StructureRows:
    """CGCNN's layout; without ``id_prop.csv`` (prediction only) every ``*.cif`` is a row."""
    table_path = os.path.join(folder, ID_PROP)
    if os.path.isfile(table_path):
        frame = _id_prop_frame(table_path, tasks, label_names)
    else:
        if tasks:
            raise WorkflowError(
                f"{folder} has no {ID_PROP}: a CIF folder for training lists each id and its "
                "target(s) there (CGCNN's layout: no header, 'id,target' per line)"
            )
        names = sorted(n[:-4] for n in os.listdir(folder) if n.lower().endswith(".cif"))
        if not names:
            raise WorkflowError(f"{folder} holds neither {ID_PROP} nor any .cif file")
        frame = pd.DataFrame({"id": names})
    structures: list[Any] = []
    problems: dict[int, str] = {}
    for row, id_ in enumerate(frame["id"]):
        cif = os.path.join(folder, f"{id_}.cif")
        structure = None
        try:
            with open(cif, encoding="utf-8", errors="replace") as fh:
                structure = _parse_cif(fh.read())
        except FileNotFoundError:
            problems[row] = f"{id_}.cif not found in {folder}"
        except Exception as err:
            problems[row] = f"cannot read {id_}.cif: {_reason(err)}"
        structures.append(structure)
    return StructureRows(list(frame["id"]), structures, frame, "cif_folder", problems)


def _id_prop_frame(path: str, tasks: list[str], label_names: list[str]) -> pd.DataFrame:
    """``id_prop.csv`` (no header: id, target...) as a frame with columns ``id`` and ``tasks``
    (or ``label_names`` when there are as many, else ``target0``...)."""
    try:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise WorkflowError(f"Cannot read {path}: {_reason(err)}") from None
    table = table.apply(lambda column: column.str.strip())
    targets = table.shape[1] - 1
    if tasks and targets != len(tasks):
        raise WorkflowError(
            f"{path} has {targets} target column(s) after the id; --tasks names {len(tasks)} "
            f"({','.join(tasks)}): give one name per column, in order"
        )
    if tasks and list(table.iloc[0, 1:]) == tasks:  # a header line written by hand
        table = table.iloc[1:].reset_index(drop=True)
    if len(table) == 0:
        raise WorkflowError(f"{path} lists no structures")
    default = label_names if len(label_names) == targets else [f"target{i}" for i in range(targets)]
    names = ["id", *(tasks or default)]
    table.columns = names
    return table


def _read_extxyz(path: str, tasks: list[str], id_key: str) -> StructureRows:
    from deepfuse_plugin.data.loaders import read_extxyz

    try:
        structures, info = read_extxyz(path, text_keys=(id_key,))
    except Exception as err:  # ASE's parser raises many types for a file that is not ext. XYZ
        raise WorkflowError(f"Cannot read {path} as an extended XYZ file: {_reason(err)}") from None
    if not structures:
        raise WorkflowError(f"{path} holds no structures")
    missing = [t for t in tasks if t not in info.columns]
    if missing:
        raise WorkflowError(
            f"Label(s) {missing} not found in the frames of {path}; their info keys are "
            f"{sorted(info.columns)}"
        )
    ids = (
        info[id_key].astype(str).tolist()
        if id_key in info.columns
        else [str(i) for i in range(len(structures))]
    )
    frame = info.astype(object).where(info.notna(), "").astype(str)
    if "id" not in frame.columns:
        frame.insert(0, "id", ids)
    return StructureRows(ids, list(structures), frame, "extxyz")
