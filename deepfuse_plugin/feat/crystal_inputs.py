"""Reading crystal inputs for :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`:
a pymatgen ``Structure`` from what a user hands in, and a cell pymatgen's neighbour search can
walk. pymatgen is imported lazily (the ``materials`` extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepfuse_plugin.feat.text import _require_pymatgen

__all__ = ["searchable_cell", "to_structure"]


def _is_single(datapoints: Any) -> bool:
    if isinstance(datapoints, dict):
        return True
    try:
        from pymatgen.core import IStructure

        if isinstance(datapoints, IStructure):
            return True
    except ImportError:
        pass
    return _is_ase_atoms(datapoints)


def _is_ase_atoms(obj: Any) -> bool:
    return any(c.__name__ == "Atoms" and c.__module__.startswith("ase") for c in type(obj).__mro__)


def to_structure(datapoint: Any) -> Any:
    """pymatgen ``Structure`` from a ``Structure``/``IStructure``, its dict or an ASE ``Atoms``."""
    _require_pymatgen()
    from pymatgen.core import IStructure, Structure

    if isinstance(datapoint, Structure):
        return datapoint
    if isinstance(datapoint, IStructure):
        return Structure.from_sites(datapoint.sites)
    if isinstance(datapoint, dict):
        return Structure.from_dict(datapoint)
    if _is_ase_atoms(datapoint):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(datapoint)
    raise TypeError(f"Cannot read a crystal structure from a {type(datapoint).__name__}")


def searchable_cell(structure: Any) -> Any:
    """``structure`` itself, or the same crystal on its LLL-reduced cell when the given cell is so
    skewed that a neighbour search would crawl.

    pymatgen's neighbour search scans as many cell images along each vector as the radius over
    that cell height; a cell of 20 x 20 x 14.9 A whose third vector lies 0.01 A out of the
    plane of the other two (passing every input limit: 4 A^3 for one site) takes 22 s at 8 A,
    and each halving of the height costs about 8 times more. The reduced cell holds the same
    periodic crystal (same distances, same neighbour list) with near-orthogonal vectors. Cells
    whose thinnest height is already at least half the reduced cell's (every ordinary cell) are
    returned unchanged, so their graphs keep the input's own cell and coordinates.
    """
    heights = _cell_heights(np.asarray(structure.lattice.matrix, dtype=float))
    reduced = structure.lattice.get_lll_reduced_lattice()
    if heights.min() >= 0.5 * _cell_heights(np.asarray(reduced.matrix, dtype=float)).min():
        return structure
    return structure.get_reduced_structure("LLL")


def _cell_heights(matrix: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell, along each vector's reciprocal direction."""
    areas = np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1)
    return abs(float(np.linalg.det(matrix))) / areas


def _show_input(point: Any) -> str:
    try:
        return repr(to_structure(point).composition.reduced_formula)
    except Exception:
        return type(point).__name__
