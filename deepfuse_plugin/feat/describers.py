"""Describers: a crystal structure in words, for the text modalities.

:class:`FastDescriber` (built in, on pymatgen: formula, crystal system and space group, lattice,
density, per-site coordination environments and bond lengths, about 10 ms) and
:class:`RobocrysDescriber` (robocrystallographer, optional, seconds per structure) share one
interface, :class:`Describer`; :func:`make_describer` picks one by name.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _require_pymatgen() -> None:
    try:
        import pymatgen.core  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the materials extra
        raise ImportError(
            "Crystal featurization needs pymatgen: pip install 'deepfuse-plugin[materials]'"
        ) from err


# -- describers ------------------------------------------------------------------------------------
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _geometry(cn: int, vectors: np.ndarray) -> str:
    """A geometry label from the coordination number and the number of near-linear bond pairs."""
    if cn < 2:
        return "single-bond" if cn == 1 else "isolated"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = np.clip(unit @ unit.T, -1.0, 1.0)
    angles = np.degrees(np.arccos(cosines[np.triu_indices(cn, 1)]))
    linear = int((angles > 155.0).sum())
    if cn == 2:
        return "linear" if linear else "bent"
    if cn == 3:
        return "trigonal planar" if angles.sum() > 350.0 else "trigonal pyramidal"
    if cn == 4:
        return {0: "tetrahedral", 1: "see-saw-like", 2: "square planar"}.get(linear, "4-coordinate")
    if cn == 5:
        return {1: "trigonal bipyramidal", 2: "square pyramidal"}.get(linear, "5-coordinate")
    if cn == 6:
        return {3: "octahedral", 0: "trigonal prismatic"}.get(linear, "distorted octahedral")
    if cn == 8:
        return "body-centred cubic" if linear == 4 else "8-coordinate"
    if cn == 12:
        return "cuboctahedral" if linear == 6 else "12-coordinate"
    return f"{cn}-coordinate"


class Describer(ABC):
    """Interface: ``describe(structure) -> str``; ``name``, ``version`` and ``settings`` identify
    the output for caching."""

    name = "describer"
    version = "0"

    @property
    def settings(self) -> dict[str, Any]:
        return {}

    @property
    def key(self) -> str:
        """Cache/spec identity: name, version and settings."""
        return json.dumps(
            {"describer": self.name, "version": self.version, **self.settings}, sort_keys=True
        )

    @abstractmethod
    def describe(self, structure: Any) -> str:
        """The text description of one pymatgen ``Structure``."""


class FastDescriber(Describer):
    """Robocrystallographer-style description built from pymatgen in a few milliseconds.

    Sentences, in this order (each ends with a full stop, so :func:`split_sentences` recovers them):

    1. ``"<formula> crystallizes in the <system> <symbol> space group (No. <n>)."``
    2. conventional cell: lattice parameters, volume and formula units;
    3. density and volume per atom;
    4. per symmetry-inequivalent site (at most ``max_sites``, then a count of the rest; ordered by
       electronegativity, so cations first, independent of the input's site order): Wyckoff
       position (multiplicity in the conventional cell and letter), coordination number, geometry
       label and neighbour species; then its bond lengths per neighbour element (value or range).

    Parameters
    ----------
    symprec: float
        Symmetry tolerance (Å) for spglib (``SpacegroupAnalyzer``).
    tolerance: float
        A neighbour is bonded when closer than ``(1 + tolerance) * d_min`` (``d_min`` = the site's
        shortest distance).
    cutoff: float
        Neighbour search radius (Å); a site with no neighbour within it is described as isolated.
    max_sites: int
        Inequivalent sites described one by one.
    """

    name = "fast"
    version = "1.0"

    def __init__(
        self, symprec: float = 0.1, tolerance: float = 0.1, cutoff: float = 6.0, max_sites: int = 8
    ):
        self.symprec, self.tolerance, self.cutoff, self.max_sites = (
            symprec,
            tolerance,
            cutoff,
            max_sites,
        )

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "symprec": self.symprec,
            "tolerance": self.tolerance,
            "cutoff": self.cutoff,
            "max_sites": self.max_sites,
        }

    def describe(self, structure: Any) -> str:
        _require_pymatgen()
        from pymatgen.core import Lattice
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        formula = structure.composition.reduced_formula
        sentences = []
        symmetry = None
        equivalent: np.ndarray  # index of each site's symmetry-equivalent representative
        try:
            sga = SpacegroupAnalyzer(structure, symprec=self.symprec)
            symmetry = sga.get_symmetry_dataset()
        except Exception:  # spglib finds no cell (e.g. overlapping atoms): describe without it
            sga = None
        if sga is not None and symmetry is not None:
            number = int(symmetry.number)
            symbol = symmetry.international
            system = sga.get_crystal_system()
            sentences.append(
                f"{formula} crystallizes in the {system} {symbol} space group (No. {number})."
            )
            # spglib's standardized conventional cell, read from the dataset (building pymatgen's
            # conventional Structure would cost more than the rest of the description)
            lat = Lattice(symmetry.std_lattice)
            n_conventional = len(symmetry.std_types)
            equivalent = np.asarray(symmetry.equivalent_atoms)
            wyckoffs = list(symmetry.wyckoffs)
        else:
            sentences.append(f"{formula} has no symmetry found at tolerance {self.symprec} Å.")
            lat = structure.lattice
            n_conventional = len(structure)
            equivalent = np.arange(len(structure))
            wyckoffs = None
        factor = structure.composition.get_reduced_composition_and_factor()[1]
        z = max(1, int(round(factor * n_conventional / len(structure))))
        sentences.append(
            f"The conventional cell has a = {lat.a:.2f} Å, b = {lat.b:.2f} Å, c = {lat.c:.2f} Å, "
            f"α = {lat.alpha:.1f}°, β = {lat.beta:.1f}°, γ = {lat.gamma:.1f}°, a volume of "
            f"{lat.volume:.1f} Å³ and {_count_word(z)} formula unit{'s' if z != 1 else ''}."
        )
        sentences.append(
            f"The density is {structure.density:.2f} g/cm³ with "
            f"{structure.volume / len(structure):.1f} Å³ per atom."
        )
        # Wyckoff multiplicities refer to the conventional cell
        scale = n_conventional / len(structure) if wyckoffs is not None else 1.0
        sentences += self._site_sentences(structure, equivalent, wyckoffs, scale)
        return " ".join(sentences)

    def _site_sentences(
        self, structure: Any, equivalent: np.ndarray, wyckoffs: list[str] | None, scale: float
    ) -> list[str]:
        species = [site.species_string for site in structure]

        def electronegativity(i: int) -> float:
            x = structure[i].species.average_electroneg
            return float(x) if np.isfinite(x) else 99.0

        # canonical order, independent of the input's site order: cations (low electronegativity)
        # first, then species name and Wyckoff letter
        unique = sorted(
            set(int(i) for i in equivalent),
            key=lambda u: (
                electronegativity(u),
                species[u],
                wyckoffs[u] if wyckoffs is not None else "",
                u,
            ),
        )
        multiplicity = {u: int(round((equivalent == u).sum() * scale)) for u in unique}
        shown = unique[: self.max_sites]
        centres, points, images, distances = structure.get_neighbor_list(
            self.cutoff, sites=[structure[i] for i in shown]
        )
        cart, frac = structure.cart_coords, structure.frac_coords
        lattice = structure.lattice
        sentences = []
        for k, i in enumerate(shown):
            # centres index `shown`; the site itself comes back at distance 0 (exclude_self only
            # matches equal indices)
            sel = np.flatnonzero((centres == k) & (distances > 1e-6))
            label = species[i]
            where = (
                f" at Wyckoff position {multiplicity[i]}{wyckoffs[i]}"
                if wyckoffs is not None
                else f" ({multiplicity[i]} equivalent sites)"
            )
            if sel.size == 0:
                sentences.append(f"{label}{where} has no neighbour within {self.cutoff:.1f} Å.")
                continue
            d = distances[sel]
            bonded = sel[d <= (1.0 + self.tolerance) * d.min() + 1e-8]
            order = np.lexsort((points[bonded], distances[bonded]))
            bonded = bonded[order]
            cn = len(bonded)
            neighbours = frac[points[bonded]] + images[bonded]
            vectors = lattice.get_cartesian_coords(neighbours) - cart[i]
            geometry = _geometry(cn, vectors)
            by_species: dict[str, list[float]] = {}
            for j in bonded:
                by_species.setdefault(species[int(points[j])], []).append(float(distances[j]))
            names = sorted(by_species, key=lambda s: (-len(by_species[s]), s))
            partners = " and ".join(f"{_count_word(len(by_species[s]))} {s}" for s in names)
            sentences.append(f"{label}{where} is {cn}-coordinated ({geometry}) by {partners}.")
            bonds = []
            for s in names:
                lo, hi = min(by_species[s]), max(by_species[s])
                if hi - lo < 0.005:
                    bonds.append(f"{label}–{s} {lo:.2f} Å")
                else:
                    bonds.append(f"{label}–{s} {lo:.2f}–{hi:.2f} Å")
            sentences.append("Its bond lengths are " + ", ".join(bonds) + ".")
        rest = len(unique) - len(shown)
        if rest > 0:
            sentences.append(f"There are {rest} further inequivalent sites.")
        return sentences


class RobocrysDescriber(Describer):
    """robocrystallographer (Ganose & Jain, MRS Communications 2019): condense, then describe.

    Optional dependency (``pip install robocrys``); about 1-10 s per structure.
    """

    name = "robocrys"

    def __init__(self, **describer_options: Any):
        self.describer_options = describer_options
        # robocrys's StructureCondenser and StructureDescriber (an optional package that ships
        # no types), built on first use
        self._condenser: Any = None
        self._describer: Any = None

    @property
    def version(self) -> str:  # type: ignore[override]
        try:
            from importlib.metadata import version

            return version("robocrys")
        except Exception:
            return "unknown"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.describer_options)

    def describe(self, structure: Any) -> str:
        if self._describer is None:
            try:
                from robocrys import StructureCondenser, StructureDescriber
            except ImportError as err:
                raise ImportError(
                    "describer='robocrys' needs robocrystallographer: pip install robocrys"
                ) from err
            self._condenser = StructureCondenser()
            self._describer = StructureDescriber(**self.describer_options)
        return self._describer.describe(self._condenser.condense_structure(structure))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_condenser": None, "_describer": None}


def make_describer(describer: str | Describer) -> Describer:
    """``"fast"`` / ``"robocrys"`` or a :class:`Describer` instance."""
    if isinstance(describer, Describer):
        return describer
    if describer == "fast":
        return FastDescriber()
    if describer == "robocrys":
        return RobocrysDescriber()
    raise ValueError(f"describer must be 'fast', 'robocrys' or a Describer, got {describer!r}")


_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\bNo\.)\s+(?=[A-Z(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a description (split after ``.``, ``!`` or ``?`` followed by whitespace and a
    capital letter or parenthesis; decimals such as ``2.84`` and ``No. 221`` are not split)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
