"""Regression tests for what the fuzz suite found in the input limits and the crystal featurizer.

Each input here passed ``structure_problem`` before its fix and then either slipped a broken
structure past ``InputLimits.min_distance`` or stalled the neighbour search.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pymatgen")
from pymatgen.core import Lattice, Structure  # noqa: E402

from deepfuse_plugin.limits import structure_problem  # noqa: E402


def _skewed(third: list[float], first: float = 10.0) -> Structure:
    return Structure(
        Lattice([[first, 0, 0], [0, first, 0], third]),
        ["Na", "Cl"],
        [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]],
    )


@pytest.mark.parametrize("multiple", [3, 10])
def test_a_site_close_to_its_image_beyond_the_neighbouring_cells_is_refused(multiple):
    # c = m (a + b) + 0.05 A z: each site's image 0.05 A away is m cells along a and b, which
    # the former 27-cell search never looked at (lengths 10, 10, 42-141 A are within limits)
    structure = _skewed([10.0 * multiple, 10.0 * multiple, 0.05])
    assert structure_problem(structure) == (
        "two sites are 0.05 A apart, under 0.5 A (InputLimits.min_distance)"
    )


def test_the_distance_check_still_passes_ordinary_cells():
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    assert structure_problem(nacl) is None
    assert structure_problem(_skewed([100.0, 100.0, 1.0])) is None  # skewed, nothing close


def test_a_thin_skewed_cell_is_featurized_fast_with_the_same_graph():
    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer, searchable_cell

    # 20 x 20 x 14.9 A, third vector 0.01 A out of plane, one site: within every limit; the
    # neighbour search on this cell took 22 s (0.003 A: minutes), on the reduced cell ~0 s
    thin = Structure(
        Lattice([[20, 0, 0], [0, 20, 0], [10.3, 10.7, 0.01]]), ["Na"], [[0.1, 0.2, 0.3]]
    )
    assert structure_problem(thin) is None
    feat = CrystalMultiModalFeaturizer(["graph", "composition"], progress=False, cache_dir=False)
    start = time.perf_counter()
    sample = feat.featurize([thin])[0]
    assert time.perf_counter() - start < 5.0
    graph = sample.values["graph"]
    reference = searchable_cell(thin).get_neighbor_list(8.0)[3]  # same crystal, reduced cell
    assert graph.edge_index.shape[1] == min(12, len(reference))
    assert np.isfinite(graph.edge_features).all()


def test_an_ordinary_cell_is_not_replaced():
    from deepfuse_plugin.feat.crystal import searchable_cell

    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    assert searchable_cell(nacl) is nacl
