"""Fast describer (deterministic, right space group and environments), caches, sentence split."""

from __future__ import annotations

import pytest

pytest.importorskip("pymatgen.core")

from deepfuse_plugin.feat.text import (
    DescriptionCache,
    FastDescriber,
    split_sentences,
    structure_hash,
)
from tests.unit.test_crystal_structures import (
    cscl,
    disordered,
    lone_atom,
    nacl,
    silicon,
    srtio3,
    with_isolated_atom,
)


@pytest.mark.parametrize(
    "build, symbol, number, system",
    [
        (nacl, "Fm-3m", 225, "cubic"),
        (cscl, "Pm-3m", 221, "cubic"),
        (silicon, "Fd-3m", 227, "cubic"),
        (srtio3, "Pm-3m", 221, "cubic"),
    ],
)
def test_fast_description_names_the_space_group(build, symbol, number, system):
    text = FastDescriber().describe(build())
    assert f"{system} {symbol} space group (No. {number})" in text


def test_fast_description_environments_and_bond_lengths():
    d = FastDescriber()
    nacl_text = d.describe(nacl())
    assert "Na at Wyckoff position 4a" in nacl_text and "Cl at Wyckoff position 4b" in nacl_text
    assert nacl_text.index("Na at") < nacl_text.index("Cl at")  # cations first
    assert "6-coordinated (octahedral) by six Cl" in nacl_text
    assert "Na–Cl 2.85 Å" in nacl_text or "Na–Cl 2.84 Å" in nacl_text
    assert "a = 5.69 Å" in nacl_text  # conventional cell, not the primitive one
    assert "4-coordinated (tetrahedral) by four Si" in d.describe(silicon())
    assert "8-coordinated (body-centred cubic) by eight Cl" in d.describe(cscl())
    perovskite = d.describe(srtio3())
    assert "Ti at Wyckoff position" in perovskite
    assert "6-coordinated (octahedral) by six O" in perovskite
    assert "12-coordinated (cuboctahedral) by twelve O" in perovskite


def test_fast_description_is_deterministic():
    texts = {FastDescriber().describe(srtio3()) for _ in range(3)}
    assert len(texts) == 1
    # same crystal, sites listed in another order: the same text (sites are described in a
    # canonical order)
    s = srtio3()
    reordered = s.copy()
    reordered.sort(key=lambda site: -site.specie.Z)
    assert FastDescriber().describe(reordered) == FastDescriber().describe(s)


def test_isolated_and_disordered_structures_are_described_without_crashing():
    d = FastDescriber()
    assert "Ar at Wyckoff position" in d.describe(with_isolated_atom())
    assert "has no neighbour within 6.0 Å" in d.describe(lone_atom())
    assert d.describe(disordered())  # partial occupancy: species strings like "Fe:0.500"


def test_sentences_split_back():
    text = FastDescriber().describe(srtio3())
    sentences = split_sentences(text)
    assert " ".join(sentences) == text
    assert sentences[0].endswith("(No. 221).") and all(s.endswith(".") for s in sentences)
    assert len(sentences) == 3 + 2 * 3  # formula/SG, lattice, density + two per inequivalent site


def test_description_cache(tmp_path, monkeypatch):
    cache = DescriptionCache(tmp_path)
    d = FastDescriber()
    first = cache.describe(nacl(), d)
    monkeypatch.setattr(FastDescriber, "describe", lambda self, s: "recomputed")
    assert cache.describe(nacl(), d) == first  # from disk
    assert DescriptionCache(tmp_path).describe(nacl(), d) == first  # a new process/object too
    assert cache.describe(nacl(), FastDescriber(symprec=0.01)) == "recomputed"  # other settings
    assert (tmp_path / "descriptions.sqlite").exists()


def test_structure_hash_ignores_wrapping_but_not_the_species():
    a = nacl()
    b = a.copy()
    b.translate_sites([0], [1.0, 0, 0], frac_coords=True, to_unit_cell=False)
    assert structure_hash(a) == structure_hash(b)
    c = a.copy()
    c.replace_species({"Na": "K"})
    assert structure_hash(a) != structure_hash(c)


@pytest.mark.slow
def test_robocrys_describer_when_installed():
    pytest.importorskip("robocrys")
    from deepfuse_plugin.feat.text import RobocrysDescriber

    text = RobocrysDescriber().describe(nacl())
    assert "Fm-3m" in text and "Na" in text
