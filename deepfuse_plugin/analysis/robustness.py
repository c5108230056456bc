"""Missing-modality robustness: metrics with modalities removed, dropped at random, or shuffled.

Not-applicable conditions
-------------------------
A model cannot predict a sample none of whose modalities is left (its prediction would be a constant
from biases: garbage). Every condition is therefore scored only on the samples that keep at least
one of the *model's* modalities; the table says how many were used (``n_samples``) and how many were
left out (``n_excluded``). A condition that leaves no sample with an input (e.g. removing the only
modality of a :class:`~deepfuse_plugin.UnimodalModel`) is **not computed**: its row has
``applicable=False``, ``value=NaN`` and the reason, and a warning is logged. Random dropping never
removes a sample's last modality (as in training-time masking), so it is always applicable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from deepchem.data import Dataset
from deepchem.metrics import Metric

from deepfuse_plugin.analysis._common import (
    AnalysisResult,
    PlotArg,
    as_seeds,
    finish_result,
    logger,
    modality_universe,
    output_transformers,
    presence,
    resolve_metrics,
    rows_with_any,
    samples_of,
    score,
    shuffle_modality,
    true_labels,
    with_samples,
)
from deepfuse_plugin.analysis._common import random_drop as _random_drop

MetricArg: TypeAlias = Metric | Callable | Sequence[Metric | Callable]

MISSING_COLUMNS = [
    "condition",
    "removed",
    "kept",
    "drop_fraction",
    "seed",
    "metric",
    "value",
    "delta",
    "n_samples",
    "n_excluded",
    "removed_fraction",
    "applicable",
    "reason",
]
ABLATION_COLUMNS = [
    "modality",
    "mode",
    "seed",
    "metric",
    "value",
    "full_value",
    "delta",
    "relative_delta",
    "n_samples",
    "n_excluded",
    "applicable",
    "reason",
]


def _normalise_patterns(
    patterns: str | Iterable[str | Sequence[str]],
    universe: list[str],
    model_names: list[str],
    samples: Sequence[Any],
) -> list[tuple[str, ...]]:
    if isinstance(patterns, str):
        if patterns != "all":
            raise ValueError(
                f"patterns must be 'all' or a list of tuples of modality names, got {patterns!r}"
            )
        return [
            combo for k in range(1, len(universe)) for combo in itertools.combinations(universe, k)
        ]
    known = set(model_names) | set(samples[0].modality_names)
    out: list[tuple[str, ...]] = []
    for pattern in patterns:
        names = (pattern,) if isinstance(pattern, str) else tuple(dict.fromkeys(pattern))
        if not names:
            raise ValueError("An empty pattern removes nothing: the full input is always reported")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"Pattern {names}: unknown modalities {unknown}; the model has "
                f"{model_names}, the data {list(samples[0].modality_names)}"
            )
        if names not in out:
            out.append(names)
    return out


def evaluate_missing_modalities(
    model: Any,
    dataset: Dataset,
    metrics: MetricArg,
    transformers: Sequence[Any] = (),
    patterns: str | Iterable[str | Sequence[str]] = "all",
    random_drop: Iterable[float] = (0.1, 0.25, 0.5),
    seeds: int | Iterable[int] = (0, 1, 2),
    modalities: Sequence[str] | None = None,
    plot: PlotArg = True,
) -> AnalysisResult:
    """Metrics with modalities missing at inference (the Dynamic Fusion paper's Figure 2).

    Conditions: the full input; every pattern of removed modalities (default: every non-empty proper
    subset of the modalities, never all of them), removed from every sample; and random per-sample
    dropping, each present modality removed with probability ``p`` independently per sample (never a
    sample's last modality), for every rate and seed. The model is never retrained.

    Parameters
    ----------
    model: MultiModalTorchModel
        Any model of the family (``DynamicFusionModel``, ``EarlyFusionModel``, ...).
    dataset: dc.data.Dataset
        Featurized with the model's modalities, labelled.
    metrics: dc.metrics.Metric, metric function, or a list of them
        As for ``model.evaluate``.
    transformers: list of dc.trans.Transformer
        Label transforms to undo before scoring (as for ``model.evaluate``).
    patterns: "all" or list
        ``"all"``, or patterns to remove, each a modality name or a tuple of names. Names of data
        modalities the model does not use are allowed (removing them changes nothing for the model:
        useful to run one set of patterns on every model of a comparison).
    random_drop: iterable of float
        Drop rates in [0, 1) for random per-sample dropping; ``()`` for none.
    seeds: int or iterable of int
        Seeds of the random dropping (one set of rows per seed and rate).
    modalities: list of str, optional
        The modalities ``patterns="all"`` enumerates and random dropping draws from (default: the
        model's). Pass the data's modalities to give every model of a comparison the same patterns.
    plot: bool or path
        Draw the degradation figure (:func:`~deepfuse_plugin.analysis.plot_degradation`); a path
        also saves it there.

    Returns
    -------
    AnalysisResult
        ``(table, figure)``. ``table`` has one row per condition, seed and metric, with columns:

        - ``condition``: ``"full"``, ``"subset"`` (a pattern removed) or ``"random"``;
        - ``removed``: the removed modalities joined by ``"+"`` (``""`` for full/random);
        - ``kept``: the model's modalities still available (``"+"``-joined);
        - ``drop_fraction``: the random drop rate (0 for full, NaN for patterns);
        - ``seed``: the random seed (``<NA>`` for deterministic conditions);
        - ``metric``, ``value``, ``delta`` (value minus the full-input value);
        - ``n_samples``: samples scored; ``n_excluded``: samples left with no modality, not scored;
        - ``removed_fraction``: fraction of the present (sample, model modality) entries removed;
        - ``applicable``: False when the condition leaves no sample with an input (see the module
          notes): then ``value`` is NaN and ``reason`` says why.

        ``table.attrs["model"]`` is the model class name.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dfp.EarlyFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                              head_hidden=16, progress=False)
    >>> table, fig = evaluate_missing_modalities(model, ds, dc.metrics.Metric(dc.metrics.mae_score),
    ...                                          random_drop=(0.5,), seeds=(0,))
    >>> for row in table[["condition", "removed", "kept"]].values.tolist():
    ...     print(row)
    ['full', '', 'ecfp+smiles']
    ['subset', 'ecfp', 'smiles']
    ['subset', 'smiles', 'ecfp']
    ['random', '', 'ecfp+smiles']
    """
    metric_objs = resolve_metrics(metrics)
    samples = samples_of(dataset)
    names = list(model.modality_names)
    universe = modality_universe(model, samples, modalities)
    pattern_list = _normalise_patterns(patterns, universe, names, samples)
    rates = [float(r) for r in random_drop]
    for r in rates:
        if not 0.0 <= r < 1.0:
            raise ValueError(f"random_drop rates must be in [0, 1), got {r}")
    seed_list = as_seeds(seeds) if rates else []
    out_trans = output_transformers(transformers)
    y, w = true_labels(dataset, transformers)
    present = presence(samples, names)
    n_present = int(present.sum())
    rows: list[dict[str, Any]] = []
    full_values: dict[str, float] = {}

    def add(
        condition: str,
        removed: Sequence[str],
        kept_mask: np.ndarray,
        fraction: float,
        seed: int | None,
        prediction: np.ndarray | None,
        removed_entries: int,
        reason: str = "",
    ) -> None:
        keep = rows_with_any(kept_mask)
        kept = "+".join(n for j, n in enumerate(names) if kept_mask[:, j].any())
        for metric in metric_objs:
            if prediction is None:
                value, why = float("nan"), reason
            else:
                value, why = score(metric, model, y, prediction, w, keep)
                why = why or reason
            if condition == "full":
                full_values[metric.name] = value
            rows.append(
                {
                    "condition": condition,
                    "removed": "+".join(removed),
                    "kept": kept,
                    "drop_fraction": fraction,
                    "seed": seed,
                    "metric": metric.name,
                    "value": value,
                    "delta": value - full_values.get(metric.name, np.nan),
                    "n_samples": int(keep.sum()) if prediction is not None else 0,
                    "n_excluded": int((~keep).sum()),
                    "removed_fraction": removed_entries / max(1, n_present),
                    "applicable": prediction is not None,
                    "reason": why,
                }
            )

    full_prediction = model.predict(dataset, out_trans)
    add("full", (), present, 0.0, None, full_prediction, 0)

    for pattern in pattern_list:
        effective = [n for n in names if n in pattern]
        kept_mask = present & ~np.isin(names, effective)[None, :]
        removed_entries = int((present & ~kept_mask).sum())
        if not kept_mask.any():
            reason = (
                f"removing {'+'.join(pattern)} leaves no sample with any of the model's "
                f"modalities {names}: the model cannot predict without an input"
            )
            logger.warning(
                "%s: pattern %s not applicable: %s", type(model).__name__, pattern, reason
            )
            add("subset", pattern, kept_mask, float("nan"), None, None, removed_entries, reason)
            continue
        if not effective:
            add(
                "subset",
                pattern,
                kept_mask,
                float("nan"),
                None,
                full_prediction,
                0,
                f"the model does not use {'+'.join(pattern)}: removing it changes nothing",
            )
            continue
        prediction = model.predict(dataset, out_trans, drop_modalities=effective)
        add("subset", pattern, kept_mask, float("nan"), None, prediction, removed_entries)

    candidates = [n for n in universe if n in names]
    for rate in rates:
        for seed in seed_list:
            new_samples, dropped = _random_drop(
                samples, candidates, names, rate, np.random.default_rng(seed)
            )
            prediction = model.predict(with_samples(dataset, new_samples), out_trans)
            add("random", (), present & ~dropped, rate, seed, prediction, int(dropped.sum()))

    table = pd.DataFrame(rows, columns=MISSING_COLUMNS)
    table["seed"] = table["seed"].astype("Int64")
    return finish_result(table, model, plot, "plot_degradation")


def modality_ablation(
    model: Any,
    dataset: Dataset,
    metrics: MetricArg,
    transformers: Sequence[Any] = (),
    mode: str = "drop",
    seeds: int | Iterable[int] = (0, 1, 2),
    modalities: Sequence[str] | None = None,
    plot: PlotArg = True,
) -> AnalysisResult:
    """Metric change when one modality at a time is dropped or shuffled.

    ``mode="drop"`` removes the modality from every sample (deterministic: one row per modality and
    metric). ``mode="shuffle"`` permutes the modality's values among the samples where it is present
    (presence unchanged; the values no longer belong to their molecule), once per seed: the
    permutation-importance test, which also works for a model that cannot run without the modality.

    Parameters
    ----------
    model: MultiModalTorchModel
    dataset: dc.data.Dataset
    metrics: dc.metrics.Metric, metric function, or a list of them
    transformers: list of dc.trans.Transformer
        Label transforms to undo before scoring.
    mode: str
        ``"drop"`` or ``"shuffle"``.
    seeds: int or iterable of int
        Seeds of the shuffles (ignored by ``"drop"``).
    modalities: list of str, optional
        Modalities to ablate (default: the model's).
    plot: bool or path
        Draw the bar plot (:func:`~deepfuse_plugin.analysis.plot_ablation`); a path also saves it.

    Returns
    -------
    AnalysisResult
        ``(table, figure)``; ``table`` columns: ``modality``, ``mode``, ``seed`` (``<NA>`` for
        drop), ``metric``, ``value``, ``full_value``, ``delta`` (value - full_value),
        ``relative_delta`` (delta / |full_value|), ``n_samples``, ``n_excluded`` (samples left
        with no modality, not scored), ``applicable`` and ``reason`` (dropping the model's only
        modality, or shuffling a modality fewer than two samples have, is not applicable: NaN
        value, see :mod:`deepfuse_plugin.analysis.robustness`).

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "c1ccncc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(6.0).reshape(-1, 1), ids=smiles)
    >>> model = dfp.DynamicFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                                head_hidden=16, progress=False)
    >>> table, _ = modality_ablation(model, ds, dc.metrics.Metric(dc.metrics.mae_score),
    ...                              mode="shuffle", seeds=(0, 1), plot=False)
    >>> table[["modality", "seed"]].values.tolist()
    [['ecfp', 0], ['ecfp', 1], ['smiles', 0], ['smiles', 1]]
    """
    if mode not in ("drop", "shuffle"):
        raise ValueError(f"mode must be 'drop' or 'shuffle', got {mode!r}")
    metric_objs = resolve_metrics(metrics)
    samples = samples_of(dataset)
    names = list(model.modality_names)
    targets = modality_universe(model, samples, modalities)
    out_trans = output_transformers(transformers)
    y, w = true_labels(dataset, transformers)
    present = presence(samples, names)
    full_prediction = model.predict(dataset, out_trans)
    keep_full = rows_with_any(present)
    full = {m.name: score(m, model, y, full_prediction, w, keep_full)[0] for m in metric_objs}
    rows: list[dict[str, Any]] = []

    def add(
        modality: str,
        seed: int | None,
        prediction: np.ndarray | None,
        keep: np.ndarray,
        reason: str = "",
    ) -> None:
        for metric in metric_objs:
            if prediction is None:
                value, why = float("nan"), reason
            else:
                value, why = score(metric, model, y, prediction, w, keep)
                why = why or reason
            base = full[metric.name]
            delta = value - base
            rows.append(
                {
                    "modality": modality,
                    "mode": mode,
                    "seed": seed,
                    "metric": metric.name,
                    "value": value,
                    "full_value": base,
                    "delta": delta,
                    "relative_delta": delta / abs(base) if base else float("nan"),
                    "n_samples": int(keep.sum()) if prediction is not None else 0,
                    "n_excluded": int((~keep).sum()),
                    "applicable": prediction is not None,
                    "reason": why,
                }
            )

    for modality in targets:
        if modality not in names:
            reason = f"the model does not use {modality!r}: ablating it changes nothing"
            for seed in [None] if mode == "drop" else as_seeds(seeds):
                add(modality, seed, full_prediction, keep_full, reason)
            continue
        if mode == "drop":
            keep = rows_with_any(present & (np.asarray(names) != modality)[None, :])
            if not keep.any():
                reason = (
                    f"dropping {modality!r} leaves no sample with any of the model's "
                    f"modalities {names}: the model cannot predict without an input"
                )
                logger.warning("%s: %s", type(model).__name__, reason)
                add(modality, None, None, keep, reason)
            else:
                add(
                    modality,
                    None,
                    model.predict(dataset, out_trans, drop_modalities=[modality]),
                    keep,
                )
            continue
        n_have = int(present[:, names.index(modality)].sum())
        for seed in as_seeds(seeds):
            if n_have < 2:
                add(
                    modality,
                    seed,
                    None,
                    keep_full,
                    f"only {n_have} sample(s) have {modality!r}: nothing to shuffle",
                )
                continue
            shuffled = shuffle_modality(samples, modality, np.random.default_rng(seed))
            add(
                modality, seed, model.predict(with_samples(dataset, shuffled), out_trans), keep_full
            )

    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    table["seed"] = table["seed"].astype("Int64")
    return finish_result(table, model, plot, "plot_ablation")
