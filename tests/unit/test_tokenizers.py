"""Regex SMILES / SELFIES tokenizers and the Vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

import deepfuse_plugin as dfp
from deepfuse_plugin.feat.tokenizers import (
    BOS,
    DEFAULT_SMILES_VOCAB,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    Vocabulary,
    default_selfies_vocab,
    fit_smiles_vocabulary,
    tokenize_selfies,
    tokenize_smiles,
)


@pytest.mark.parametrize(
    "smiles,expected",
    [
        ("CCO", ["C", "C", "O"]),
        ("ClCBr", ["Cl", "C", "Br"]),
        (
            "C[C@@H](Cl)c1ccccc1",
            ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "c", "c", "c", "c", "c", "1"],
        ),
        ("C%12CC%12", ["C", "%12", "C", "C", "%12"]),
        ("[Na+].[Cl-]", ["[Na+]", ".", "[Cl-]"]),
        ("F/C=C\\F", ["F", "/", "C", "=", "C", "\\", "F"]),
    ],
)
def test_tokenize_smiles(smiles, expected):
    tokens = tokenize_smiles(smiles)
    assert tokens == expected
    assert "".join(tokens) == smiles


def test_tokenize_smiles_rejects_non_smiles_characters():
    with pytest.raises(ValueError, match="does not recognise"):
        tokenize_smiles("CC O")


def test_tokenize_selfies_splits_symbols():
    assert tokenize_selfies("[C][=C][Branch1][C][O]") == ["[C]", "[=C]", "[Branch1]", "[C]", "[O]"]


@pytest.mark.parametrize(
    "tokens",
    [
        ["C", "C", "O"],
        ["c", "1", "c", "c", "c", "c", "c", "1", "[C@@H]", "(", "Cl", ")"],
        [],
    ],
)
def test_round_trip(tokens):
    vocab = Vocabulary(DEFAULT_SMILES_VOCAB)
    ids = vocab.encode(tokens)
    assert ids.dtype == np.int64
    assert ids[0] == vocab.tokens.index(BOS) and ids[-1] == vocab.tokens.index(EOS)
    assert vocab.decode(ids) == tokens


def test_round_trip_of_real_smiles_through_default_vocab():
    vocab = Vocabulary(DEFAULT_SMILES_VOCAB)
    for smi in ["CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1", "O=C([O-])c1ccccc1.[Na+]"]:
        tokens = tokenize_smiles(smi)
        assert "".join(vocab.decode(vocab.encode(tokens))) == smi


def test_unknown_token_maps_to_unk_and_is_kept():
    vocab = Vocabulary(["C", "O"])
    ids = vocab.encode(["C", "[Xe]", "O"])
    assert ids.tolist() == [
        vocab.tokens.index(BOS),
        vocab.tokens.index("C"),
        vocab.unk_id,
        vocab.tokens.index("O"),
        vocab.tokens.index(EOS),
    ]
    assert vocab.decode(ids) == ["C", UNK, "O"]  # nothing silently dropped


def test_special_tokens_first_pad_zero_unk_one():
    vocab = Vocabulary(["C", PAD, "O"])  # specials given again are not duplicated
    assert vocab.tokens[:4] == SPECIAL_TOKENS
    assert vocab.pad_id == 0 and vocab.unk_id == 1
    assert len(vocab) == 6
    assert vocab.decode([0, 0, 2, 4, 3, 0]) == ["C"]  # PAD/BOS/EOS skipped
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["C", "C"])


def test_truncation_keeps_bos_and_eos():
    vocab = Vocabulary(["C"])
    ids = vocab.encode(["C"] * 20, max_length=6)
    assert len(ids) == 6
    assert ids[0] == vocab.tokens.index(BOS) and ids[-1] == vocab.tokens.index(EOS)
    assert vocab.decode(ids) == ["C"] * 4
    assert len(vocab.encode(["C"] * 4, max_length=6)) == 6  # exactly fits: no truncation


def test_fit_smiles_vocabulary_extends_default_and_removes_unk():
    unusual = ["[U]CC", "C[Xe]C", "[U]O", "CCO"]
    tokens = fit_smiles_vocabulary(unusual)
    assert tokens[: len(DEFAULT_SMILES_VOCAB)] == DEFAULT_SMILES_VOCAB  # default ids unchanged
    assert set(tokens[len(DEFAULT_SMILES_VOCAB) :]) == {"[U]", "[Xe]"}
    only_frequent = fit_smiles_vocabulary(unusual, min_freq=2)
    assert set(only_frequent[len(DEFAULT_SMILES_VOCAB) :]) == {"[U]"}
    # used by the featurizer: no [UNK] any more, and the vocabulary is part of the spec
    default = dfp.MultiModalFeaturizer(["smiles"], progress=False)
    fitted = dfp.MultiModalFeaturizer(["smiles"], smiles_vocabulary=tokens, progress=False)
    assert default.featurize(["C[Xe]C"])[0].values["smiles"].tolist().count(1) == 1
    ids = fitted.featurize(["C[Xe]C"])[0].values["smiles"]
    assert 1 not in ids.tolist()
    assert fitted.modalities[0].vocab == tokens


def test_default_selfies_vocab_is_stable_and_has_specials():
    a, b = default_selfies_vocab(), default_selfies_vocab()
    assert a == b
    assert a[:4] == SPECIAL_TOKENS
    assert len(set(a)) == len(a)
    assert {"[C]", "[=O]", "[Branch1]", "[Ring1]", "[C@@H1]", "[NH1]"} <= set(a)
