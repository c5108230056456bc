"""Input limits checked before RDKit, spglib or pymatgen see an input.

Some inputs crash or stall the chemistry libraries rather than fail cleanly: RDKit's canonical
SMILES writer segfaults on a 20,000-character SMILES, spglib segfaults on a NaN coordinate, a
lattice with c = 1e-6 A makes neighbour search grow memory until the kernel kills the process, and
some descriptors cost minutes on a 1,000-atom molecule. deepfuse therefore checks every input
against :class:`InputLimits` first. An input over a limit is a per-row failure with the reason
returned here, never an exception that costs the other rows.

Every default is a documented constructor argument: a user whose data are legitimately larger
raises the limit (``MultiModalFeaturizer(limits=InputLimits(max_atoms=2000))``).

This module is on the bottom floor (only NumPy): featurizers, loaders and workflows all use it.

Examples
--------
>>> from deepfuse_plugin.limits import InputLimits, smiles_problem
>>> smiles_problem("CCO") is None
True
>>> smiles_problem("C" * 5000)
'SMILES has 5000 characters, over the limit of 2000 (InputLimits.max_smiles_length)'
>>> smiles_problem("C" * 5000, InputLimits(max_smiles_length=10000)) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "InputLimits",
    "DEFAULT_LIMITS",
    "smiles_problem",
    "molecule_problem",
    "structure_problem",
]


@dataclass(frozen=True)
class InputLimits:
    """Bounds on one input; every check names the field a user would raise.

    Parameters
    ----------
    max_smiles_length: int
        Characters of a SMILES/SELFIES string (the longest in MoleculeNet's seven datasets has
        580).
    max_atoms: int
        Heavy atoms of a molecule (MoleculeNet's largest has 222).
    max_fragments: int
        Disconnected fragments (salts, mixtures) of a molecule.
    max_descriptor_atoms: int
        Heavy atoms above which the ``descriptors`` modality is marked missing: a few RDKit
        descriptors grow much faster than the molecule (seconds at 300 atoms, minutes at 1,000).
    max_sites: int
        Sites of a crystal structure.
    min_lattice_length, max_lattice_length: float
        Bounds on each lattice vector's length, in Angstrom.
    min_volume_per_site: float
        Cell volume per site, in cubic Angstrom: far below any real solid means a broken cell.
    min_distance: float
        Smallest allowed distance between two sites (periodic images included), in Angstrom.
    max_abs_frac_coord: float
        Largest allowed absolute fractional coordinate (a coordinate of 1e9 is a broken file).
    """

    max_smiles_length: int = 2000
    max_atoms: int = 500
    max_fragments: int = 50
    max_descriptor_atoms: int = 200
    max_sites: int = 500
    min_lattice_length: float = 1.0
    max_lattice_length: float = 200.0
    min_volume_per_site: float = 1.0
    min_distance: float = 0.5
    max_abs_frac_coord: float = 100.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(
                    f"InputLimits.{name} must be a positive finite number, got {value!r}"
                )
        if self.min_lattice_length >= self.max_lattice_length:
            raise ValueError(
                "InputLimits.min_lattice_length must be below max_lattice_length, got "
                f"{self.min_lattice_length} and {self.max_lattice_length}"
            )


#: The limits every featurizer and loader uses unless given others.
DEFAULT_LIMITS = InputLimits()


def smiles_problem(text: Any, limits: InputLimits = DEFAULT_LIMITS) -> str | None:
    """Why ``text`` must not reach RDKit as a SMILES, or ``None`` when it may.

    Checks the type, emptiness, characters that cannot be encoded as UTF-8 (a lone surrogate raises
    ``UnicodeEncodeError`` inside RDKit), NUL bytes, the length and the fragment count (dots), all
    without parsing.
    """
    if not isinstance(text, str):
        return f"not a string (got {type(text).__name__})"
    if not text.strip():
        return "empty SMILES"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"character at position {err.start} cannot be encoded as UTF-8 (lone surrogate)"
    if "\x00" in text:
        return f"NUL character at position {text.index(chr(0))}"
    if len(text) > limits.max_smiles_length:
        return (
            f"SMILES has {len(text)} characters, over the limit of "
            f"{limits.max_smiles_length} (InputLimits.max_smiles_length)"
        )
    fragments = text.count(".") + 1
    if fragments > limits.max_fragments:
        return (
            f"{fragments} fragments, over the limit of {limits.max_fragments} "
            "(InputLimits.max_fragments)"
        )
    return None


def molecule_problem(mol: Any, limits: InputLimits = DEFAULT_LIMITS) -> str | None:
    """Why a parsed RDKit molecule is too large to featurize, or ``None``.

    Run it right after parsing and before canonicalization or any descriptor: it only counts.
    """
    atoms = mol.GetNumHeavyAtoms()
    if atoms > limits.max_atoms:
        return f"{atoms} heavy atoms, over the limit of {limits.max_atoms} (InputLimits.max_atoms)"
    from rdkit import Chem  # deferred: this module stays importable without RDKit

    fragments = len(Chem.GetMolFrags(mol))
    if fragments > limits.max_fragments:
        return (
            f"{fragments} fragments, over the limit of {limits.max_fragments} "
            "(InputLimits.max_fragments)"
        )
    return None


def structure_problem(structure: Any, limits: InputLimits = DEFAULT_LIMITS) -> str | None:
    """Why a crystal structure must not reach spglib/pymatgen's neighbour search, or ``None``.

    ``structure`` is a pymatgen ``Structure`` (anything with ``lattice.matrix``, ``frac_coords``,
    ``species_and_occu`` and ``__len__``). Checks, cheapest first: the site count, a finite lattice
    with vector lengths and volume in bounds, finite fractional coordinates of bounded size,
    occupancies in (0, 1] summing to at most 1 per site, and the smallest interatomic distance
    with periodic images (only once every bound above holds, so it cannot blow up).
    """
    n_sites = len(structure)
    if n_sites == 0:
        return "structure has no sites"
    if n_sites > limits.max_sites:
        return f"{n_sites} sites, over the limit of {limits.max_sites} (InputLimits.max_sites)"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        return "lattice matrix is not a finite 3x3 matrix"
    lengths = np.linalg.norm(matrix, axis=1)
    if lengths.min() < limits.min_lattice_length or lengths.max() > limits.max_lattice_length:
        return (
            f"lattice vector lengths {np.round(lengths, 4).tolist()} A outside "
            f"[{limits.min_lattice_length}, {limits.max_lattice_length}] "
            "(InputLimits.min_lattice_length / max_lattice_length)"
        )
    volume = abs(float(np.linalg.det(matrix)))
    if volume / n_sites < limits.min_volume_per_site:
        return (
            f"cell volume {volume:.4g} A^3 is {volume / n_sites:.4g} per site, under "
            f"{limits.min_volume_per_site} (InputLimits.min_volume_per_site)"
        )
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not np.isfinite(frac).all():
        rows = np.flatnonzero(~np.isfinite(frac).all(axis=1))
        return f"non-finite fractional coordinates at site(s) {rows[:10].tolist()}"
    if np.abs(frac).max() > limits.max_abs_frac_coord:
        return (
            f"fractional coordinate {np.abs(frac).max():.4g} over the limit of "
            f"{limits.max_abs_frac_coord} (InputLimits.max_abs_frac_coord)"
        )
    problem = _occupancy_problem(structure)
    if problem:
        return problem
    shortest = _shortest_distance(matrix, frac, limits.min_distance)
    if shortest < limits.min_distance:
        return (
            f"two sites are {shortest:.4g} A apart, under {limits.min_distance} A "
            "(InputLimits.min_distance)"
        )
    return None


def _occupancy_problem(structure: Any) -> str | None:
    for index, composition in enumerate(structure.species_and_occu):
        occupancies = [float(amount) for amount in composition.values()]
        if not all(np.isfinite(o) and 0 < o <= 1 for o in occupancies):
            return f"site {index} has occupancies {occupancies} outside (0, 1]"
        if sum(occupancies) > 1 + 1e-6:
            return f"site {index} has occupancies summing to {sum(occupancies):.4g} (over 1)"
    return None


def _shortest_distance(matrix: np.ndarray, frac: np.ndarray, below: float) -> float:
    """Smallest distance between two sites, or between a site and a periodic image of itself,
    exact whenever it is under ``below`` (otherwise some distance >= ``below`` is returned).

    A skewed cell can put a site's image much closer than the 27 neighbouring cells suggest
    (vectors of 10, 10 and 141 A with c = 10a + 10b + 0.05 A z: the image 0.05 A away is 10
    cells along a and b). So the basis is LLL-reduced first (same lattice, near-orthogonal
    vectors), and every image whose distance could be under ``below`` is searched: along vector
    ``i`` with cell height ``h_i`` that is ``floor(below / h_i) + 1`` cells either way (one for any
    real cell).
    """
    from pymatgen.core.lattice import Lattice  # deferred: only crystal inputs reach this

    reduced = np.asarray(Lattice(matrix).get_lll_reduced_lattice().matrix, dtype=float)
    shortest_vector = float(np.linalg.norm(reduced, axis=1).min())
    if shortest_vector < below:  # every site is that close to its own image
        return shortest_vector
    cart = frac @ matrix
    in_reduced = np.linalg.solve(reduced.T, cart.T).T
    wrapped = in_reduced - np.floor(in_reduced)
    cart = wrapped @ reduced
    volume = abs(float(np.linalg.det(reduced)))
    areas = np.linalg.norm(np.cross(reduced[[1, 2, 0]], reduced[[2, 0, 1]]), axis=1)
    # LLL keeps heights within a small factor of the vector lengths, all >= below here: reach <= 3
    reach = np.minimum(np.floor(below / (volume / areas)).astype(int) + 1, 4)
    n = len(frac)
    best = np.inf
    for shift in np.stack(
        np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), axis=-1
    ).reshape(-1, 3):
        offset = shift.astype(float) @ reduced
        dist = np.linalg.norm(cart[:, None, :] - cart[None, :, :] + offset, axis=-1)  # (n, n)
        if not shift.any():
            dist[np.arange(n), np.arange(n)] = np.inf  # a site and itself
        best = min(best, float(dist.min()))
    return best
