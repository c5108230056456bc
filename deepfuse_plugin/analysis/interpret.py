"""Interpretability: modality weights, weights under masking, embedding projections.

Which models have modality weights
----------------------------------
``DynamicFusionModel`` (inter-modal attention ``alpha``), ``CrossAttentionFusionModel`` (modality
pooling weights), ``GatedMoEFusionModel`` (gate mass per modality, shared experts split evenly over
the present modalities) and ``LateFusionModel`` (combination weights) have per-sample weights that
sum to 1 over the present modalities. ``UnimodalModel`` has a trivial weight (1 where its modality
is present). ``EarlyFusionModel`` concatenates and has **no** weights: the model only reports its
presence mask, so :func:`modality_weights` raises :class:`NoModalityWeightsError` for it (a
``ValueError``) unless ``allow_presence=True``, which returns that mask with
``attrs["kind"] == "presence"``. Averaging presence bits would look like a weight plot and mean
nothing, so :func:`mean_modality_weights` and :func:`weights_vs_masking_rate` always raise for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from deepchem.data import Dataset

from deepfuse_plugin.analysis._common import (
    AnalysisResult,
    NoModalityWeightsError,
    PlotArg,
    as_seeds,
    finish_result,
    iterate_network,
    presence,
    random_drop,
    samples_of,
    true_labels,
    with_samples,
)

WEIGHT_COLUMNS = [
    "rate",
    "seed",
    "modality",
    "mean_weight",
    "std_weight",
    "mean_weight_present",
    "presence_rate",
]


def modality_weights(
    model: Any, dataset: Dataset, drop_modalities: Iterable[str] = (), allow_presence: bool = False
) -> pd.DataFrame:
    """Per-sample modality weights of the fusion layer (attention / gate / expert / combination).

    Parameters
    ----------
    model: MultiModalTorchModel
    dataset: dc.data.Dataset
    drop_modalities: iterable of str
        Modalities made missing in every sample first.
    allow_presence: bool
        For a model without weights (early fusion): return the presence mask instead of raising.

    Returns
    -------
    pandas.DataFrame
        Rows = dataset ids, columns = the model's modalities; 0 for a missing modality.
        ``attrs["kind"]`` is ``"weights"`` (the fusion layer's weights) or ``"presence"``
        (``allow_presence=True`` on a model without weights); ``attrs["model"]`` the class name.

    Raises
    ------
    NoModalityWeightsError
        The model has no modality weights (``EarlyFusionModel``) and ``allow_presence`` is False.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.zeros((3, 1)), ids=smiles)
    >>> model = dfp.DynamicFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                                progress=False)
    >>> weights = modality_weights(model, ds)
    >>> weights.shape, bool(np.allclose(weights.sum(axis=1), 1.0))
    ((3, 2), True)
    >>> modality_weights(model, ds, drop_modalities=["ecfp"])["ecfp"].tolist()
    [0.0, 0.0, 0.0]
    """
    parts, has_weights = [], True
    for out, fusion in iterate_network(model, dataset, drop_modalities):
        has_weights = has_weights and fusion.weights is not None
        parts.append(out.modality_weights.detach().cpu().numpy())
    if not has_weights and not allow_presence:
        raise NoModalityWeightsError(
            f"{type(model).__name__} has no modality weights: its fusion layer "
            f"({type(model.fusion_layer).__name__}) concatenates the modalities and only reports "
            "their presence mask. Use a model with weights (DynamicFusionModel, "
            "CrossAttentionFusionModel, GatedMoEFusionModel, LateFusionModel), modality_ablation() "
            "for importance, or allow_presence=True to get the presence mask"
        )
    table = pd.DataFrame(
        np.concatenate(parts).astype(float),
        index=pd.Index(np.asarray(dataset.ids), name="id"),
        columns=list(model.modality_names),
    )
    table.attrs.update(kind="weights" if has_weights else "presence", model=type(model).__name__)
    return table


def _summary(weights: pd.DataFrame, dataset: Dataset, drop: Iterable[str] = ()) -> pd.DataFrame:
    """Mean weights per modality; presence from the data (a present modality may get weight 0,
    e.g. an unselected expert of a top-k gate)."""
    mask = presence(samples_of(dataset), list(weights.columns))
    mask[:, [j for j, n in enumerate(weights.columns) if n in set(drop)]] = False
    present = pd.DataFrame(mask, index=weights.index, columns=weights.columns)
    return pd.DataFrame(
        {
            "mean_weight": weights.mean(axis=0),
            "std_weight": weights.std(axis=0, ddof=0),
            "mean_weight_present": weights.where(present).mean(axis=0).fillna(0.0),
            "presence_rate": present.mean(axis=0),
        }
    )


def mean_modality_weights(
    model: Any, dataset: Dataset, drop_modalities: Iterable[str] = (), plot: PlotArg = True
) -> AnalysisResult:
    """Mean modality weight per modality, with a bar plot (the paper's Figure 5).

    Parameters
    ----------
    model: MultiModalTorchModel
        A model with modality weights (not ``EarlyFusionModel``: see the module notes).
    dataset: dc.data.Dataset
    drop_modalities: iterable of str
        Modalities made missing in every sample first.
    plot: bool or path
        Draw the bar plot (:func:`~deepfuse_plugin.analysis.plot_modality_weights`); a path also
        saves it.

    Returns
    -------
    AnalysisResult
        ``(table, figure)``; ``table`` is indexed by modality with columns ``mean_weight`` (over all
        samples, 0 where missing: sums to 1 over modalities), ``std_weight``,
        ``mean_weight_present`` (over the samples where the modality is present) and
        ``presence_rate``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.zeros((3, 1)), ids=smiles)
    >>> model = dfp.LateFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                             progress=False)
    >>> table, fig = mean_modality_weights(model, ds)
    >>> table["mean_weight"].round(3).tolist()  # combine="mean": equal weights
    [0.5, 0.5]
    """
    drop = tuple(drop_modalities)
    table = _summary(modality_weights(model, dataset, drop), dataset, drop)
    table.index.name = "modality"
    return finish_result(table, model, plot, "plot_modality_weights")


def weights_vs_masking_rate(
    model: Any,
    dataset: Dataset,
    rates: Iterable[float] = (0.0, 0.1, 0.25, 0.5, 0.75),
    seeds: int | Iterable[int] = (0, 1, 2),
    plot: PlotArg = True,
) -> AnalysisResult:
    """Mean modality weights as a function of the inference-time masking rate (paper's Figure 4).

    For each rate ``p`` and seed, every present modality of every sample is masked with probability
    ``p`` (never a sample's last one), and the modality weights are averaged over the samples.

    Parameters
    ----------
    model: MultiModalTorchModel
        A model with modality weights (not ``EarlyFusionModel``).
    dataset: dc.data.Dataset
    rates: iterable of float
        Masking rates in [0, 1).
    seeds: int or iterable of int
        Seeds of the random masking (rate 0 is computed once, seed ``<NA>``).
    plot: bool or path
        Draw the line plot (:func:`~deepfuse_plugin.analysis.plot_weights_vs_masking_rate`); a path
        also saves it.

    Returns
    -------
    AnalysisResult
        ``(table, figure)``; tidy ``table`` with columns ``rate``, ``seed``, ``modality``,
        ``mean_weight`` (over all samples, masked = 0), ``std_weight``, ``mean_weight_present``
        (over the samples where the modality stayed present) and ``presence_rate``.

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CCCC"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.zeros((4, 1)), ids=smiles)
    >>> model = dfp.DynamicFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                                progress=False)
    >>> table, fig = weights_vs_masking_rate(model, ds, rates=(0.0, 0.5), seeds=(0,))
    >>> sums = table.groupby(["rate", "seed"], dropna=False)["mean_weight"].sum()
    >>> bool(np.allclose(sums, 1.0))  # every sample keeps a modality: weights sum to 1
    True
    """
    samples = samples_of(dataset)
    names = list(model.modality_names)
    seed_list = as_seeds(seeds)
    rows: list[dict[str, Any]] = []
    for rate in [float(r) for r in rates]:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Masking rates must be in [0, 1), got {rate}")
        for seed in [None] if rate == 0.0 else seed_list:
            data = dataset
            if rate > 0.0:
                new_samples, _ = random_drop(
                    samples, names, names, rate, np.random.default_rng(seed)
                )
                data = with_samples(dataset, new_samples)
            summary = _summary(modality_weights(model, data), data)
            for modality, stats in summary.iterrows():
                rows.append({"rate": rate, "seed": seed, "modality": modality, **stats.to_dict()})
    table = pd.DataFrame(rows, columns=WEIGHT_COLUMNS)
    table["seed"] = table["seed"].astype("Int64")
    return finish_result(table, model, plot, "plot_weights_vs_masking_rate")


def _project(
    embeddings: np.ndarray, method: str, random_state: int, perplexity: float
) -> np.ndarray:
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"A 2-D projection needs at least 2 samples, got {n}")
    if method == "pca":
        from sklearn.decomposition import PCA

        coords = PCA(
            n_components=min(2, embeddings.shape[1]), random_state=random_state
        ).fit_transform(embeddings)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        coords = TSNE(
            n_components=2,
            perplexity=float(min(perplexity, n - 1)),
            init="pca",
            random_state=random_state,
        ).fit_transform(embeddings)
    elif method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError(
                "method='umap' needs the optional package umap-learn "
                "(pip install umap-learn); use method='tsne' or 'pca' without "
                "it"
            ) from err
        coords = umap.UMAP(
            n_components=2, n_neighbors=max(2, min(15, n - 1)), random_state=random_state
        ).fit_transform(embeddings)
    else:
        raise ValueError(f"method must be 'tsne', 'umap' or 'pca', got {method!r}")
    coords = np.asarray(coords, dtype=float)
    if coords.shape[1] < 2:  # PCA of 1-wide embeddings
        coords = np.hstack([coords, np.zeros((n, 2 - coords.shape[1]))])
    return coords


def embedding_projection(
    model: Any,
    dataset: Dataset,
    method: str = "tsne",
    color_by: int | Sequence[float] | None = 0,
    drop_modalities: Iterable[str] = (),
    transformers: Sequence[Any] = (),
    perplexity: float = 30.0,
    random_state: int = 0,
    plot: PlotArg = True,
) -> AnalysisResult:
    """2-D projection of the fused embeddings (``predict(..., output_types="embedding")``).

    Parameters
    ----------
    model: MultiModalTorchModel
    dataset: dc.data.Dataset
    method: str
        ``"tsne"`` (scikit-learn; perplexity clipped to ``n - 1``), ``"pca"``, or ``"umap"`` (needs
        the optional package ``umap-learn``).
    color_by: int, array-like or None
        Task index whose label colours the points (unlabelled entries, weight 0, are grey), an
        array of ``N`` values, or None.
    drop_modalities: iterable of str
        Modalities made missing in every sample before embedding.
    transformers: list of dc.trans.Transformer
        Label transforms to undo for the colours.
    perplexity: float
        t-SNE perplexity (before clipping).
    random_state: int
        Seed of t-SNE / PCA / UMAP.
    plot: bool or path
        Draw the scatter plot (:func:`~deepfuse_plugin.analysis.plot_projection`); a path also
        saves it.

    Returns
    -------
    AnalysisResult
        ``(coords, figure)``; ``coords`` indexed by dataset id with columns ``dim1``, ``dim2`` and
        ``color`` (when ``color_by`` is not None).

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "smiles"], ecfp_size=64, max_length=24,
    ...                                 progress=False)
    >>> smiles = ["CCO", "CCN", "c1ccccc1", "CCCC", "CC(=O)O"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.arange(5.0).reshape(-1, 1), ids=smiles)
    >>> model = dfp.EarlyFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                              progress=False)
    >>> coords, fig = embedding_projection(model, ds, method="pca")
    >>> list(coords.columns), coords.shape
    (['dim1', 'dim2', 'color'], (5, 3))
    """
    embeddings = np.asarray(
        model.predict(dataset, output_types="embedding", drop_modalities=tuple(drop_modalities)),
        dtype=float,
    )
    coords = _project(embeddings.reshape(len(embeddings), -1), method, random_state, perplexity)
    table = pd.DataFrame(
        coords[:, :2], columns=["dim1", "dim2"], index=pd.Index(np.asarray(dataset.ids), name="id")
    )
    label = None
    if color_by is not None:
        if isinstance(color_by, (int, np.integer)):
            y, w = true_labels(dataset, transformers)
            y = y.reshape(len(y), -1)
            if not 0 <= int(color_by) < y.shape[1]:
                raise ValueError(f"color_by={color_by} but the dataset has {y.shape[1]} task(s)")
            values = y[:, int(color_by)].astype(float)
            w = np.asarray(w, dtype=float).reshape(len(y), -1)
            if w.shape[1] == y.shape[1]:
                values = np.where(w[:, int(color_by)] > 0, values, np.nan)
            tasks = list(dataset.get_task_names()) if hasattr(dataset, "get_task_names") else []
            name = str(tasks[int(color_by)]) if len(tasks) > int(color_by) else str(color_by)
            label = f"task {color_by}" if name == str(color_by) else name
            table.attrs["categorical"] = getattr(model, "mode", "") == "classification"
        else:
            values = np.asarray(color_by, dtype=float).reshape(-1)
            if len(values) != len(table):
                raise ValueError(f"color_by has {len(values)} values for {len(table)} samples")
            label = "color"
        table["color"] = values
        table.attrs["color_label"] = label
    table.attrs.update(method=method, model=type(model).__name__)
    return finish_result(table, model, plot, "plot_projection")
