"""The Castelli perovskites: 3,787 cubic ABX3 crystals with DFT heats of formation and band gaps,
outside the Materials Project.

Castelli et al. (Energy Environ. Sci. 5, 9034, 2012) computed the perovskites with GPAW and the
RPBE functional, so neither the structures nor the energies come from the Materials Project: a model
or feature pretrained on Materials Project data (e.g. the CHGNet view, trained on MPtrj) is judged
on them without leakage. The file read here is the CSV of the Perov-5 benchmark as shipped by
CDVAE (``perovskites_castelli.csv.gz``: columns ``material_id``, ``cif`` (a pymatgen CIF string,
5 atoms), ``formula``, ``heat_all``, ``heat_ref``, ``dir_gap``, ``ind_gap``). ``heat_ref`` is the
usual target (matbench_perovskites' ``e_form``); its source says heat of formation in eV without
saying whether per atom or per 5-atom cell, so its values are not in the same units as a Materials
Project formation energy per atom.

Every row is read on its own: a CIF that does not parse, a structure outside the
:class:`~deepfuse_plugin.limits.InputLimits`, or a missing or non-numeric label costs only its own
row, which is left out with its reason (:attr:`CastelliPerovskites.problems`).

Examples
--------
>>> from deepfuse_plugin.data.perovskites import CASTELLI_TARGETS
>>> CASTELLI_TARGETS
('heat_ref', 'heat_all', 'dir_gap', 'ind_gap')
>>> from deepfuse_plugin.data.perovskites import load_castelli_perovskites
>>> data = load_castelli_perovskites("perovskites_castelli.csv.gz")  # doctest: +SKIP
>>> len(data.structures), data.labels.shape, data.ids[:2]  # doctest: +SKIP
(3787, (3787, 1), ['18517', '15400'])
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepfuse_plugin.errors import InvalidInputError, InvalidSettingError
from deepfuse_plugin.limits import DEFAULT_LIMITS, InputLimits, structure_problem

__all__ = ["CASTELLI_TARGETS", "CastelliPerovskites", "load_castelli_perovskites"]

#: Label columns of the Castelli file: heat of formation (fitted references / all references, eV)
#: and the direct / indirect band gaps (eV).
CASTELLI_TARGETS = ("heat_ref", "heat_all", "dir_gap", "ind_gap")
#: Column holding the CIF text, and the one naming each row.
CIF_COLUMN, ID_COLUMN = "cif", "material_id"


@dataclass
class CastelliPerovskites:
    """The readable, labelled rows of a Castelli file, and why the others were left out.

    Attributes
    ----------
    structures: list of pymatgen Structure
        One per kept row, in file order.
    labels: numpy.ndarray
        ``(n_kept, n_targets)`` float64, every value finite.
    ids: list of str
        The kept rows' ``material_id``, exactly as written in the file.
    targets: list of str
        The label columns, in the order of ``labels``' columns.
    formulas: list of str
        The kept rows' ``formula`` (empty strings when the file has no such column).
    problems: dict of str to str
        ``material_id`` of each left-out row (``row <n>`` when blank, ``<id> (row <n>)`` when
        repeated) -> the reason.
    n_rows: int
        Rows in the file.
    path: str
        The file read.
    """

    structures: list[Any]
    labels: np.ndarray
    ids: list[str]
    targets: list[str]
    formulas: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    n_rows: int = 0
    path: str = ""

    def __len__(self) -> int:
        return len(self.structures)

    def to_dataset(self, featurizer: Any = None) -> Any:
        """A :class:`~deepfuse_plugin.data.loaders.CrystalDataset` of the kept rows: ``X`` =
        ``featurizer.featurize(structures)`` (the structures themselves without a featurizer),
        ``y`` = the labels, ``w`` = 1, ``ids`` = the material ids."""
        from deepfuse_plugin.data.loaders import _make_dataset

        return _make_dataset(
            self.structures,
            self.labels,
            np.ones_like(self.labels),
            np.asarray(self.ids, dtype=object),
            featurizer,
            self.targets,
        )


def load_castelli_perovskites(
    path: str | os.PathLike,
    target: str | Sequence[str] = "heat_ref",
    limits: InputLimits = DEFAULT_LIMITS,
) -> CastelliPerovskites:
    """Read the Castelli perovskites (``perovskites_castelli.csv.gz`` or any CSV with the same
    columns), one row at a time.

    Parameters
    ----------
    path: path
        The CSV file (plain or compressed, e.g. ``.csv.gz``). There is no default location: the
        data is not shipped with deepfuse.
    target: str or sequence of str
        Label column(s), from :data:`CASTELLI_TARGETS` (default ``"heat_ref"``).
    limits: InputLimits
        Structures outside them are left out with the reason (default
        :data:`~deepfuse_plugin.limits.DEFAULT_LIMITS`).

    Returns
    -------
    CastelliPerovskites
        Structures, labels and ids of the kept rows; ``problems`` names every row left out.

    Raises
    ------
    InvalidSettingError
        A target that is not a Castelli label column.
    InvalidInputError
        The file is missing, not a CSV, lacks the ``material_id``, ``cif`` or target columns, or
        no row is usable (the first reasons are listed).

    Examples
    --------
    >>> data = load_castelli_perovskites("perovskites_castelli.csv.gz")  # doctest: +SKIP
    >>> dataset = data.to_dataset()  # X = the structures  # doctest: +SKIP
    """
    from deepfuse_plugin.structure_inputs import read_structures

    targets = [target] if isinstance(target, str) else list(target)
    unknown = [t for t in targets if t not in CASTELLI_TARGETS]
    if unknown or not targets:
        raise InvalidSettingError(
            f"target {unknown or targets} is not a Castelli label column; choose from "
            f"{list(CASTELLI_TARGETS)}"
        )
    path = os.fspath(path)
    rows = read_structures(path, cif_column=CIF_COLUMN, tasks=[ID_COLUMN, *targets])
    frame = rows.frame
    names = [
        name.strip() or f"row {i}" for i, name in enumerate(frame[ID_COLUMN].astype(str).tolist())
    ]
    labels = frame[targets].apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    values = labels.to_numpy(dtype=np.float64)
    problems = dict(rows.problems)
    for i, structure in enumerate(rows.structures):
        if i not in problems:
            reason = _row_problem(structure, frame.iloc[i], values[i], targets, limits)
            if reason is not None:
                problems[i] = reason
    keep = [i for i in range(len(frame)) if i not in problems]
    repeated = {n for n, count in Counter(names).items() if count > 1}
    named = {
        f"{names[i]} (row {i})" if names[i] in repeated else names[i]: reason
        for i, reason in sorted(problems.items())
    }
    if not keep:
        shown = "; ".join(f"{k}: {v}" for k, v in list(named.items())[:5])
        raise InvalidInputError(f"No usable row in {path} ({len(frame)} rows). First: {shown}")
    formulas = frame["formula"].tolist() if "formula" in frame.columns else [""] * len(frame)
    return CastelliPerovskites(
        structures=[rows.structures[i] for i in keep],
        labels=values[keep],
        ids=[names[i] for i in keep],
        targets=targets,
        formulas=[formulas[i] for i in keep],
        problems=named,
        n_rows=len(frame),
        path=path,
    )


def _row_problem(
    structure: Any, row: pd.Series, values: np.ndarray, targets: list[str], limits: InputLimits
) -> str | None:
    """Why a row whose CIF parsed cannot be used, or None."""
    bad = [t for t, v in zip(targets, values) if not np.isfinite(v)]
    if bad:
        shown = ", ".join(f"{t}={row[t]!r}" for t in bad)
        return f"missing or non-numeric label ({shown}): give a number"
    problem = structure_problem(structure, limits)
    return f"structure outside the input limits: {problem}" if problem else None
