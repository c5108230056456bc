"""Fuzzing model hyper-parameters (issue 21, item 6): ``batch_size``, ``learning_rate``,
``dropout``, ``encoder_dim`` and the epochs of ``fit`` drawn from wide strategies (0, negatives,
NaN, inf, floats for integers, strings, None). Either the model is built and a 1-epoch fit gives a
finite loss and checked predictions (finite, or the row flagged), or a ``ValueError``/``TypeError``
names the setting."""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.fuzz.ledger import SilentResult, Violation, record, shown
from tests.fuzz.strategies import batch_sizes, dropouts, encoder_dims, epochs, learning_rates

SMILES = [
    "CCO",
    "CCN",
    "c1ccccc1",
    "CC(=O)O",
    "c1ccncc1",
    "CCCC",
    "OCC(O)CO",
    "C1CCCCC1",
    "CC(C)O",
    "ClC(Cl)Cl",
    "c1ccsc1",
    "CC#N",
]
BUDGET_S = 60.0
#: what a refusal must name: the setting as the user wrote it
SETTING_NAMES = ("batch_size", "learning_rate", "dropout", "encoder_dim", "nb_epoch")


@functools.cache
def dataset():
    import deepchem as dc

    from deepfuse_plugin.feat.molecule import MultiModalFeaturizer

    feat = MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24, progress=False)
    X = feat.featurize(SMILES)
    y = np.linspace(-1.0, 1.0, len(SMILES)).reshape(-1, 1)
    return feat.modalities, dc.data.NumpyDataset(X, y, ids=np.array(SMILES))


def _build(values: dict, model_dir: str):
    from deepfuse_plugin.models.dynamic import DynamicFusionModel

    modalities, _ = dataset()
    return DynamicFusionModel(
        n_tasks=1,
        modalities=modalities,
        encoder_dim=values["encoder_dim"],
        dropout=values["dropout"],
        batch_size=values["batch_size"],
        learning_rate=values["learning_rate"],
        fused_dim=16,
        head_hidden=16,
        gate_hidden=8,
        decoder_hidden=16,
        encoder_options={"sequence": {"n_layers": 1}},
        progress=False,
        model_dir=model_dir,
    )


def _names_a_setting(err: BaseException) -> bool:
    return any(name in str(err) for name in SETTING_NAMES)


_VALID = dict(batch_size=8, learning_rate=1e-3, dropout=0.1, encoder_dim=16, nb_epoch=1)


# half the draws change one setting of a valid set (each hostile value meets valid neighbours),
# half draw all five at once
@settings(max_examples=examples(0.15, minimum=6))
@given(
    st.one_of(
        st.fixed_dictionaries(
            dict(
                batch_size=batch_sizes,
                learning_rate=learning_rates,
                dropout=dropouts,
                encoder_dim=encoder_dims,
                nb_epoch=epochs,
            )
        ),
        st.sampled_from(
            [
                ("batch_size", batch_sizes),
                ("learning_rate", learning_rates),
                ("dropout", dropouts),
                ("encoder_dim", encoder_dims),
                ("nb_epoch", epochs),
            ]
        ).flatmap(lambda pair: pair[1].map(lambda v, name=pair[0]: {**_VALID, name: v})),
    )
)
def test_settings_are_refused_by_name_or_train_to_a_finite_loss(values):
    torch.manual_seed(0)
    _, data = dataset()
    with (
        record("settings", values, budget_s=BUDGET_S) as outcome,
        tempfile.TemporaryDirectory() as tmp,
    ):
        try:
            model = _build(values, tmp)
            loss = model.fit(data, nb_epoch=values["nb_epoch"])
        except (ValueError, TypeError) as err:
            if not _names_a_setting(err):
                raise Violation(
                    f"{type(err).__name__} that names no setting for {shown(values)}: {err}"
                ) from err
            outcome["refused"] = True
            return
        if not (isinstance(loss, float) and np.isfinite(loss)):
            raise SilentResult(f"fit returned loss {loss!r} for {shown(values)}")
        checked = model.predict_checked(data)
        if len(checked.values) != len(SMILES):
            raise Violation(f"{len(checked.values)} predictions for {len(SMILES)} rows")
        silent = checked.ok & ~np.isfinite(checked.values.reshape(len(SMILES), -1)).all(axis=1)
        if silent.any():
            raise SilentResult(f"non-finite predictions marked ok for {shown(values)}")
        if not checked.ok.all():  # diverged weights: flagged per row (the documented way)
            outcome["refused"] = True
