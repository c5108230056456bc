"""Regex SMILES and SELFIES tokenizers with a fixed, savable vocabulary.

Token ids are computed at featurization time, so the vocabulary is part of the modality spec
(:attr:`Modality.vocab`) and travels with every model built from it. Tokens outside the vocabulary
map to ``[UNK]``; nothing is silently dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

# Atom-level SMILES regex (Schwaller et al., Molecular Transformer): bracket atoms, two-letter
# organic-subset halogens, bonds, branches, ring closures (including %nn).
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)

_ORGANIC = ["B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I", "b", "c", "n", "o", "s", "p"]
_SYNTAX = ["(", ")", ".", "=", "#", "-", "+", "\\", "/", ":", "~", "@", "*", "$"]
_RINGS = [str(i) for i in range(10)] + [f"%{i}" for i in range(10, 30)]
# Bracket atoms that cover >99.9% of MoleculeNet bracket tokens (charged N/O/S, stereo carbons,
# common counter-ions and metals). Anything else becomes [UNK] unless the vocabulary is fitted on
# the data.
_BRACKETS = [
    "[nH]",
    "[NH]",
    "[NH+]",
    "[NH2+]",
    "[NH3+]",
    "[N+]",
    "[N-]",
    "[n+]",
    "[n-]",
    "[nH+]",
    "[O-]",
    "[O+]",
    "[OH-]",
    "[S-]",
    "[S+]",
    "[s+]",
    "[SH]",
    "[P+]",
    "[PH]",
    "[C-]",
    "[CH-]",
    "[CH2-]",
    "[C@H]",
    "[C@@H]",
    "[C@]",
    "[C@@]",
    "[S@]",
    "[S@@]",
    "[N@]",
    "[N@@]",
    "[N@+]",
    "[N@@+]",
    "[P@]",
    "[P@@]",
    "[Si]",
    "[SiH]",
    "[Se]",
    "[se]",
    "[SeH]",
    "[te]",
    "[Te]",
    "[B-]",
    "[BH-]",
    "[BH3-]",
    "[2H]",
    "[3H]",
    "[13C]",
    "[13CH]",
    "[14C]",
    "[Cl-]",
    "[Br-]",
    "[I-]",
    "[F-]",
    "[Na+]",
    "[Na]",
    "[K+]",
    "[K]",
    "[Li+]",
    "[Li]",
    "[Mg+2]",
    "[Mg]",
    "[Ca+2]",
    "[Ca]",
    "[Zn+2]",
    "[Zn]",
    "[Fe]",
    "[Fe+2]",
    "[Fe+3]",
    "[Cu]",
    "[Cu+2]",
    "[Co]",
    "[Ni]",
    "[Mn]",
    "[Pt]",
    "[Pt+2]",
    "[Pd]",
    "[Hg]",
    "[Sn]",
    "[As]",
    "[Al]",
    "[Al+3]",
    "[Gd+3]",
    "[Ag+]",
    "[Au]",
    "[Ti]",
    "[Cr]",
    "[Ba+2]",
    "[Sr+2]",
    "[Bi]",
    "[Sb]",
    "[H]",
    "[H+]",
    "[Cl+3]",
    "[I+]",
    "[IH2]",
    "[NH4+]",
    "[OH2+]",
    "[o+]",
    "[c-]",
]
DEFAULT_SMILES_VOCAB: tuple[str, ...] = SPECIAL_TOKENS + tuple(
    _ORGANIC + _SYNTAX + _RINGS + _BRACKETS
)


def tokenize_smiles(smiles: str) -> list[str]:
    """Split a SMILES string into atom-level tokens.

    Raises
    ------
    ValueError
        If the regex does not cover the whole string (characters that are not SMILES).

    Examples
    --------
    >>> tokenize_smiles("C[C@H](Cl)c1ccccc1")
    ['C', '[C@H]', '(', 'Cl', ')', 'c', '1', 'c', 'c', 'c', 'c', 'c', '1']
    """
    tokens = SMILES_REGEX.findall(smiles)
    if sum(len(t) for t in tokens) != len(smiles):
        raise ValueError(f"SMILES {smiles!r} contains characters the tokenizer does not recognise")
    return tokens


def tokenize_selfies(selfies_string: str) -> list[str]:
    """Split a SELFIES string into its bracketed symbols."""
    import selfies as sf

    return list(sf.split_selfies(selfies_string))


# SELFIES forms of the bracket atoms above (stereo centres, explicit-H/charged atoms such as the
# kekulised aromatic [nH] -> [NH1], ions, metals), and bond-direction (/ \) variants of common
# atoms. SELFIES' robust alphabet has none of them: without these, 40% of BBBP molecules had
# [UNK] tokens (every stereo carbon and every pyrrole-type nitrogen lost its identity).
_SELFIES_ATOMS = [
    "NH1",
    "NH1+1",
    "NH2+1",
    "NH3+1",
    "NH4+1",
    "N+1",
    "N-1",
    "O-1",
    "O+1",
    "OH1-1",
    "OH2+1",
    "S-1",
    "S+1",
    "SH1",
    "P+1",
    "PH1",
    "C-1",
    "CH1-1",
    "CH2-1",
    "C@H1",
    "C@@H1",
    "C@",
    "C@@",
    "S@",
    "S@@",
    "N@",
    "N@@",
    "N@+1",
    "N@@+1",
    "P@",
    "P@@",
    "Si",
    "SiH1",
    "Se",
    "SeH1",
    "Te",
    "B-1",
    "BH1-1",
    "BH3-1",
    "2H",
    "3H",
    "13C",
    "13CH1",
    "14C",
    "Cl-1",
    "Br-1",
    "I-1",
    "F-1",
    "Na+1",
    "Na",
    "K+1",
    "K",
    "Li+1",
    "Li",
    "Mg+2",
    "Mg",
    "Ca+2",
    "Ca",
    "Zn+2",
    "Zn",
    "Fe",
    "Fe+2",
    "Fe+3",
    "Cu",
    "Cu+2",
    "Co",
    "Ni",
    "Mn",
    "Pt",
    "Pt+2",
    "Pd",
    "Hg",
    "Sn",
    "As",
    "Al",
    "Al+3",
    "Gd+3",
    "Ag+1",
    "Au",
    "Ti",
    "Cr",
    "Ba+2",
    "Sr+2",
    "Bi",
    "Sb",
    "H+1",
    "Cl+3",
    "I+1",
]
_SELFIES_DIRECTIONAL = [
    "C",
    "N",
    "O",
    "S",
    "F",
    "Cl",
    "Br",
    "I",
    "C@H1",
    "C@@H1",
    "C@",
    "C@@",
    "NH1",
    "N+1",
    "O-1",
    "N@",
    "N@@",
    "S@",
    "S@@",
]


def default_selfies_vocab() -> tuple[str, ...]:
    """SELFIES' semantically robust alphabet, common bracket atoms (stereo, charged, explicit-H,
    ions) and bond-direction variants, plus the special tokens (sorted, so it is stable)."""
    import selfies as sf

    alphabet = set(sf.get_semantic_robust_alphabet()) | {
        "[Branch1]",
        "[Branch2]",
        "[Branch3]",
        "[Ring1]",
        "[Ring2]",
        "[Ring3]",
        ".",
    }
    alphabet |= {f"[{a}]" for a in _SELFIES_ATOMS}
    alphabet |= {f"[={a}]" for a in _SELFIES_DIRECTIONAL if "H" not in a}
    alphabet |= {f"[{d}{a}]" for a in _SELFIES_DIRECTIONAL for d in ("/", "\\")}
    return SPECIAL_TOKENS + tuple(sorted(alphabet))


class Vocabulary:
    """Token <-> id mapping with ``[PAD]=0`` and ``[UNK]=1``.

    Parameters
    ----------
    tokens: sequence of str
        Ordered tokens; the four special tokens are put first if absent.

    Examples
    --------
    >>> v = Vocabulary(["C", "O"])
    >>> v.encode(["C", "O", "Xx"]).tolist()
    [2, 4, 5, 1, 3]
    >>> v.decode(v.encode(["C", "O"]))
    ['C', 'O']
    """

    def __init__(self, tokens: Sequence[str]):
        ordered = list(SPECIAL_TOKENS) + [t for t in tokens if t not in SPECIAL_TOKENS]
        if len(set(ordered)) != len(ordered):
            raise ValueError("Vocabulary tokens must be unique")
        self.tokens: tuple[str, ...] = tuple(ordered)
        self._index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    def encode(self, tokens: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Ids of ``[BOS] tokens [EOS]``, truncated to ``max_length`` (EOS kept last)."""
        get, unk = self._index.get, self.unk_id
        ids = [self._index[BOS]] + [get(t, unk) for t in tokens] + [self._index[EOS]]
        if max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [self._index[EOS]]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for ids, without special tokens other than ``[UNK]``."""
        skip = {self._index[PAD], self._index[BOS], self._index[EOS]}
        return [self.tokens[i] for i in ids if i not in skip]

    @classmethod
    def fit(
        cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, base: Sequence[str] = ()
    ) -> Vocabulary:
        """Vocabulary of ``base`` plus every token seen at least ``min_freq`` times (sorted)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        seen = sorted(t for t, c in counts.items() if c >= min_freq and t not in set(base))
        return cls(list(base) + seen)


def fit_smiles_vocabulary(smiles: Iterable[str], min_freq: int = 1) -> tuple[str, ...]:
    """Default SMILES vocabulary extended with the tokens of ``smiles`` (for unusual chemistry).

    Pass the result as ``MultiModalFeaturizer(smiles_vocabulary=...)``.
    """
    token_lists = (tokenize_smiles(s) for s in smiles)
    return Vocabulary.fit(token_lists, min_freq, base=DEFAULT_SMILES_VOCAB).tokens
