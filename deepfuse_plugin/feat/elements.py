"""Elemental property tables of the crystal featurizer (from pymatgen's ``Element`` data).

:func:`atom_feature_table` gives the CGCNN-style atom features of the crystal graph
(:data:`ATOM_FEATURE_BLOCKS`, 91-d); the composition modality summarises
:data:`COMPOSITION_PROPERTIES`. Tables are built once per process, on first use; pymatgen is
imported then (the ``materials`` extra).

Examples
--------
>>> ATOM_FEATURE_DIM, COMPOSITION_DIM
(91, 140)
>>> [name for name, size in ATOM_FEATURE_BLOCKS][:4]
['group', 'period', 'block', 'valence']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepfuse_plugin.feat.text import _require_pymatgen

__all__ = [
    "ATOM_FEATURE_BLOCKS",
    "ATOM_FEATURE_DIM",
    "COMPOSITION_DIM",
    "COMPOSITION_PROPERTIES",
    "MAX_Z",
    "atom_feature_table",
]

MAX_Z = 100


# CGCNN-style atom features (Xie & Grossman 2018 use a 92-d one-hot of binned elemental properties,
# atom_init.json). Here the same idea from pymatgen's Element data, every block one-hot:
# group 1-18, period 1-7, block s/p/d/f, valence electrons 1-12 (from the group), and 10 equal bins
# over fixed ranges of Pauling electronegativity [0.7, 4.0], atomic radius [0.25, 2.6] Å, first
# ionisation energy [3.5, 25] eV, electron affinity [-1, 3.7] eV and log10 molar volume [0.5, 2.0]
# (log10 cm^3/mol). A missing property (e.g. the electronegativity of He) leaves its block all-zero.
ATOM_FEATURE_BLOCKS = (
    ("group", 18),
    ("period", 7),
    ("block", 4),
    ("valence", 12),
    ("electronegativity", 10),
    ("atomic_radius", 10),
    ("ionization_energy", 10),
    ("electron_affinity", 10),
    ("log_molar_volume", 10),
)
ATOM_FEATURE_DIM = sum(n for _, n in ATOM_FEATURE_BLOCKS)  # 91
_BIN_RANGES = {
    "electronegativity": (0.7, 4.0),
    "atomic_radius": (0.25, 2.6),
    "ionization_energy": (3.5, 25.0),
    "electron_affinity": (-1.0, 3.7),
    "log_molar_volume": (0.5, 2.0),
}
#: Elemental properties summarised by the composition modality (fraction-weighted mean and std,
#: min and max over the elements present), each z-scored over Z = 1..100 first.
COMPOSITION_PROPERTIES = (
    "electronegativity",
    "atomic_radius",
    "row",
    "group",
    "atomic_mass",
    "ionization_energy",
    "electron_affinity",
    "molar_volume",
    "melting_point",
    "mendeleev_no",
)
COMPOSITION_DIM = MAX_Z + 4 * len(COMPOSITION_PROPERTIES)  # 140
#: Columns of the raw element table: the composition properties, then the block (s, p, d, f).
_ELEMENT_COLUMNS = (*COMPOSITION_PROPERTIES, "block")
_COLUMN = {name: i for i, name in enumerate(_ELEMENT_COLUMNS)}
#: pymatgen's attribute where it differs from the property's name
_PYMATGEN_ATTRIBUTE = {"electronegativity": "X"}

_TABLES: dict[str, np.ndarray] = {}


def _element_properties() -> np.ndarray:
    """``(MAX_Z + 1, n_props)`` raw elemental properties (row 0 unused), NaN where unknown."""
    if "raw" in _TABLES:
        return _TABLES["raw"]
    _require_pymatgen()
    import warnings

    from pymatgen.core.periodic_table import Element

    table = np.full((MAX_Z + 1, len(_ELEMENT_COLUMNS)), np.nan)
    blocks = {"s": 0, "p": 1, "d": 2, "f": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            values = {
                name: _num(el, _PYMATGEN_ATTRIBUTE.get(name, name))
                for name in COMPOSITION_PROPERTIES
            }
            values["block"] = float(blocks[el.block]) if el.block in blocks else np.nan
            table[z] = [values[n] for n in _ELEMENT_COLUMNS]
    _TABLES["raw"] = table
    return table


def _num(element: Any, attribute: str) -> float:
    """``element.<attribute>`` as a finite float, NaN where pymatgen has none."""
    try:
        value = getattr(element, attribute)
        value = float(value) if value is not None else np.nan
    except Exception:  # pymatgen raises or returns strings for some unknown properties
        return np.nan
    return value if np.isfinite(value) else np.nan


def atom_feature_table() -> np.ndarray:
    """``(MAX_Z + 1, ATOM_FEATURE_DIM)`` float32 CGCNN-style atom features (row = Z)."""
    if "atom" in _TABLES:
        return _TABLES["atom"]
    raw = _element_properties()
    col = _COLUMN
    out = np.zeros((MAX_Z + 1, ATOM_FEATURE_DIM), dtype=np.float32)
    for z in range(1, MAX_Z + 1):
        r = raw[z]
        offset = 0
        for name, size in ATOM_FEATURE_BLOCKS:
            index = None
            if name == "group" and np.isfinite(r[col["group"]]):
                index = int(r[col["group"]]) - 1
            elif name == "period" and np.isfinite(r[col["row"]]):
                index = min(int(r[col["row"]]), 7) - 1
            elif name == "block" and np.isfinite(r[col["block"]]):
                index = int(r[col["block"]])
            elif name == "valence" and np.isfinite(r[col["group"]]):
                group = int(r[col["group"]])
                index = (group if group <= 12 else group - 10) - 1
            elif name in _BIN_RANGES:
                key = "molar_volume" if name == "log_molar_volume" else name
                value = r[col[key]]
                if name == "log_molar_volume" and np.isfinite(value) and value > 0:
                    value = np.log10(value)
                if np.isfinite(value):
                    lo, hi = _BIN_RANGES[name]
                    index = int(np.clip((value - lo) / (hi - lo) * size, 0, size - 1))
            if index is not None and 0 <= index < size:
                out[z, offset + index] = 1.0
            offset += size
    _TABLES["atom"] = out
    return out


def _composition_property_table() -> np.ndarray:
    """``(MAX_Z + 1, len(COMPOSITION_PROPERTIES))`` z-scored properties, NaN kept."""
    if "composition" in _TABLES:
        return _TABLES["composition"]
    raw = _element_properties()[:, : len(COMPOSITION_PROPERTIES)]
    values = raw[1:]
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    table = (raw - mean) / np.where(std > 0, std, 1.0)
    _TABLES["composition"] = table
    return table
