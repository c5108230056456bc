"""Hypothesis strategies for hostile inputs: SMILES-like strings, label cells, settings, crystals.

Strategies mix plain random text with inputs built from the format's own alphabet (so RDKit,
spglib and pymatgen get past their first character) and with the known-hostile shapes of issue 21
(very long strings, lone surrogates, NUL, huge ring numbers, hundreds of fragments, NaN or huge
lattices and coordinates, occupancies over 1).
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

# -- SMILES ----------------------------------------------------------------------------------------
VALID_SMILES = [
    "CCO",
    "c1ccccc1",
    "CC(=O)Nc1ccc(O)cc1",
    "C[C@H](N)C(=O)O",
    "[NH4+]",
    "[Na+].[Cl-]",
    "C1CC2CCC1C2",
    "O=S(=O)(O)O",
    "c1ccc2[nH]ccc2c1",
    "F/C=C/F",
    "[2H]C",
    "C#N",
    "[Fe+2]",
    "[U]",
    "B(O)O",
    "[Si](C)(C)(C)C",
    "C%10CC%10",
    "*C",
    "[*]CC",
    "c1cc[se]c1",
    "[Hg]Cl",
    "C=[N+]=[N-]",
    "OC[C@@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
]
SMILES_TOKENS = [
    "C",
    "c",
    "N",
    "n",
    "O",
    "o",
    "S",
    "s",
    "P",
    "p",
    "F",
    "Cl",
    "Br",
    "I",
    "B",
    "b",
    "[nH]",
    "[C@@H]",
    "[C@H]",
    "[NH4+]",
    "[O-]",
    "[Fe+3]",
    "[13C]",
    "[2H]",
    "[Xe]",
    "[Uuo]",
    "[CH5]",
    "[C+9]",
    "*",
    "[*]",
    "(",
    ")",
    "(",
    ")",
    "=",
    "#",
    "$",
    ":",
    "/",
    "\\",
    "-",
    ".",
    "1",
    "2",
    "3",
    "9",
    "%10",
    "%99",
    "%(123)",
    "%(99999)",
    "@",
    "+",
    "[",
    "]",
    " ",
    "0",
    "%",
]


def _ring_closure(n: int) -> str:
    return str(n) if n < 10 else f"%{n}" if n < 100 else f"%({n})"


@st.composite
def ring_heavy(draw) -> str:
    """Chains closed by ring bonds with large numbers (``%(99999)``) or many open rings."""
    numbers = draw(
        st.lists(
            st.one_of(st.integers(0, 9), st.integers(10, 99), st.integers(100, 10**12)),
            min_size=1,
            max_size=6,
        )
    )
    body = "".join(f"C{_ring_closure(n)}" for n in numbers)
    closing = draw(st.booleans())
    return body + ("".join(f"C{_ring_closure(n)}" for n in numbers) if closing else "")


@st.composite
def long_strings(draw) -> str:
    """Long inputs: plain chains (a few fit the limits, most do not), repeated tokens, many
    fragments and many branches."""
    unit = draw(
        st.sampled_from(
            ["C", "c", "CC(", ")", "C.", "[Na+].", "C1", "(", "CO", "Cl", "[C@@H](F)", "=C"]
        )
    )
    n = draw(st.one_of(st.integers(1, 120), st.integers(400, 2500), st.integers(2500, 30000)))
    return unit * n


def _surrogate() -> st.SearchStrategy[str]:
    return st.integers(0xD800, 0xDFFF).map(chr)


@st.composite
def spiked(draw, base: st.SearchStrategy[str]) -> str:
    """``base`` with a NUL, a lone surrogate or control/odd characters put in at a random place."""
    text = draw(base)
    spike = draw(
        st.one_of(
            st.just("\x00"),
            _surrogate(),
            st.sampled_from(
                ["\n", "\r\n", "\t", "\ufeff", "\u200b", "\u0301", "\x7f", "é", "\U0001f600", " "]
            ),
        )
    )
    at = draw(st.integers(0, len(text)))
    return text[:at] + spike + text[at:]


token_smiles = st.lists(st.sampled_from(SMILES_TOKENS), min_size=0, max_size=40).map("".join)
fragments = st.lists(st.sampled_from(VALID_SMILES), min_size=1, max_size=80).map(".".join)
joined_valid = st.lists(st.sampled_from(VALID_SMILES), min_size=1, max_size=4).map("".join)
smiles_like = st.one_of(
    st.text(max_size=60),  # any unicode (no surrogates)
    st.text(alphabet=st.characters(codec="ascii"), max_size=60),
    st.sampled_from(VALID_SMILES),
    token_smiles,
    joined_valid,
    fragments,
    ring_heavy(),
    long_strings(),
    spiked(st.sampled_from(VALID_SMILES)),
    spiked(token_smiles),
)
#: what reaches a featurizer from a DataFrame column: mostly strings, sometimes not
smiles_inputs = st.one_of(
    smiles_like,
    smiles_like,
    smiles_like,
    st.sampled_from([None, float("nan"), 0, 12, 1.5, b"CCO", "", "   ", "nan", "None"]),
)


# -- CSV cells and labels --------------------------------------------------------------------------
def _float_text(x: float) -> str:
    return repr(x) if not math.isnan(x) else "nan"


numeric_label_cells = st.one_of(
    st.floats(-100.0, 100.0).map(repr),
    st.integers(-50, 50).map(str),
    st.sampled_from(["", "NA", "nan", "1e2", " 3.5 ", "007"]),
)
label_cells = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(_float_text),
    st.floats(allow_nan=True, allow_infinity=True).map(_float_text),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        [
            "",
            "NA",
            "N/A",
            "nan",
            "NaN",
            "None",
            "null",
            "NULL",
            "inf",
            "-inf",
            "Infinity",
            "1e300",
            "-1e300",
            "1e308",
            "1e309",
            "yes",
            "no",
            "TRUE",
            "false",
            " 1.5 ",
            "007",
            "0x10",
            "1,5",
            "1_000",
            "½",
            "١٢",
            "--1",
            "1e",
            ".",
            "+",
        ]
    ),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
id_cells = st.one_of(
    st.from_regex(r"0{1,3}[0-9]{1,4}", fullmatch=True),
    st.sampled_from(
        [
            "NA",
            "None",
            "null",
            "",
            "TRUE",
            "1.0",
            "1e3",
            "-0",
            " x ",
            "id,comma",
            'quo"te',
            "multi\nline",
        ]
    ),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
)

# -- hyper-parameters ------------------------------------------------------------------------------
_odd_values = st.sampled_from(
    [
        0,
        -1,
        -5,
        0.0,
        -0.5,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
        None,
        "8",
        "0.1",
        "abc",
        [],
        {},
        2.5,
        1e300,
        10**40,
    ]
)
# each setting is drawn valid about two times in three, so that some draws train a model
batch_sizes = st.one_of(
    st.integers(1, 64), st.integers(1, 64), st.integers(-(10**6), 10**20), _odd_values
)
learning_rates = st.one_of(
    st.floats(1e-5, 1e-1),
    st.floats(1e-5, 1e-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    _odd_values,
)
epochs = st.one_of(
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(-10, 0),
    st.sampled_from([1.0, 1.5, "1", None, float("nan"), True]),
)
dropouts = st.one_of(
    st.floats(0, 0.99),
    st.floats(0, 0.99),
    st.floats(allow_nan=True, allow_infinity=True),
    _odd_values,
)
# Widths that can be valid stay small (a real 10**6-wide network would take the machine's memory);
# widths the SMILES encoder's 4 attention heads cannot split must be refused by name.
encoder_dims = st.one_of(
    st.integers(1, 48),
    st.integers(1, 12).map(lambda k: 4 * k),
    st.integers(-(10**6), 0),
    _odd_values.filter(
        lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 48)
    ),
)

# -- crystal structures ----------------------------------------------------------------------------
ELEMENTS = [
    "H",
    "Li",
    "C",
    "N",
    "O",
    "Na",
    "Si",
    "Cl",
    "Fe",
    "Cu",
    "Sr",
    "I",
    "Cs",
    "W",
    "U",
    "Pu",
    "Es",
    "Og",
]
_lengths = st.one_of(
    st.floats(1.5, 15.0),
    st.sampled_from(
        [0.0, -4.0, 1e-6, 1e-3, 0.9, 1.0, 199.0, 1e4, 1e9, 1e300, float("nan"), float("inf")]
    ),
)
_components = st.one_of(
    st.floats(-12.0, 12.0),
    st.sampled_from([0.0, 1e-6, -1e-6, 1e9, -1e9, float("nan"), float("inf")]),
)


@st.composite
def lattice_matrices(draw) -> list[list[float]]:
    """Mostly sane cells (cubic, orthorhombic, sheared), with degenerate, flat, tiny, huge and
    non-finite ones mixed in."""
    kind = draw(st.sampled_from(["cubic", "orthorhombic", "sheared", "raw", "coplanar", "thin"]))
    if kind == "cubic":
        a = draw(_lengths)
        return [[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]]
    if kind == "orthorhombic":
        a, b, c = (draw(_lengths) for _ in range(3))
        return [[a, 0.0, 0.0], [0.0, b, 0.0], [0.0, 0.0, c]]
    if kind == "sheared":
        a, b, c = (draw(st.floats(1.5, 12.0)) for _ in range(3))
        sx, sy = draw(st.floats(-40.0, 40.0)), draw(st.floats(-40.0, 40.0))
        return [[a, 0.0, 0.0], [sx, b, 0.0], [sy, sx, c]]
    if kind == "coplanar":  # third vector nearly in the plane of the first two
        a, b = draw(st.floats(1.5, 12.0)), draw(st.floats(1.5, 12.0))
        eps = draw(st.sampled_from([0.0, 1e-9, 1e-4, 0.01, 0.05, 0.2]))
        return [[a, 0.0, 0.0], [0.0, b, 0.0], [a, b, eps]]
    if kind == "thin":  # third vector just out of the plane, between lattice points of it
        a = draw(st.floats(2.0, 40.0))
        p, q = draw(st.floats(-3.0, 3.0)), draw(st.floats(-3.0, 3.0))
        eps = draw(st.sampled_from([1e-5, 1e-3, 0.01, 0.03, 0.1]))
        return [[a, 0.0, 0.0], [0.0, a, 0.0], [p * a, q * a, eps]]
    return [[draw(_components) for _ in range(3)] for _ in range(3)]


_fractions = st.one_of(
    st.floats(0.0, 1.0),
    st.floats(-3.0, 3.0),
    st.sampled_from([1e9, -1e9, 1e-12, float("nan"), float("inf"), 0.5 + 1e-12]),
)
_occupancies = st.one_of(
    st.just(1.0),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, -0.5, 1.0000001, 1.5, 2.0, float("nan"), float("inf")]),
)


@st.composite
def site_dicts(draw) -> dict:
    species = draw(st.lists(st.sampled_from(ELEMENTS), min_size=1, max_size=3, unique=True))
    if len(species) == 1 and draw(st.booleans()):
        occupancy = [1.0]
    else:
        occupancy = [draw(_occupancies) for _ in species]
    abc = [draw(_fractions) for _ in range(3)]
    return {
        "species": [{"element": el, "occu": o} for el, o in zip(species, occupancy)],
        "abc": abc,
        "properties": {},
    }


@st.composite
def sane_lattices(draw) -> list[list[float]]:
    a, b, c = (draw(st.floats(3.0, 12.0)) for _ in range(3))
    shear = draw(st.floats(-0.4, 0.4)) * a
    return [[a, 0.0, 0.0], [shear, b, 0.0], [0.0, shear, c]]


@st.composite
def structure_dicts(draw, max_sites: int = 20) -> dict:
    """A pymatgen ``Structure.as_dict()``-shaped dict: 0-``max_sites`` sites, every field drawn
    from the hostile strategies above; half the draws start from a sane cell with sites spread
    over it, so the graph and composition paths run too, not only the limits."""
    sane = draw(st.booleans())
    matrix = draw(sane_lattices() if sane else lattice_matrices())
    n_sites = draw(st.integers(1, 8) if sane else st.integers(0, max_sites))
    sites = []
    for i in range(n_sites):
        site = draw(site_dicts())
        if sane or draw(st.booleans()):  # spread over the cell: a structure that passes every limit
            site["abc"] = [((i * 0.37) % 1.0), ((i * 0.61) % 1.0), ((i * 0.13) % 1.0)]
        sites.append(site)
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {"matrix": matrix, "pbc": (True, True, True)},
        "properties": {},
        "sites": sites,
    }
