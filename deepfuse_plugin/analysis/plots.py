"""Figures of the analyses (matplotlib's object API: no pyplot state, safe on any backend).

Every function takes the table an analysis returned, builds a new ``matplotlib.figure.Figure``,
saves it when ``path`` is given (format from the suffix: ``.png``, ``.pdf``, ``.svg``) and returns
it.
In a notebook the returned figure displays itself.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

PathArg = str | os.PathLike | None


def finish_figure(fig: Any, path: PathArg) -> Any:
    """Save ``fig`` to ``path`` (if given; format from the suffix) and return it."""
    if path is not None:
        fig.savefig(os.fspath(path), dpi=150, bbox_inches="tight")
    return fig


def _figure(n_rows: int, n_cols: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _mean_std(frame: pd.DataFrame, by: str | list[str], column: str = "value") -> pd.DataFrame:
    grouped = frame.groupby(by, sort=False)[column]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0).fillna(0.0)})


def plot_degradation(table: pd.DataFrame, path: PathArg = None, title: str | None = None) -> Any:
    """The missing-modality degradation figure (Dynamic Fusion paper, Figure 2).

    One row of panels per metric: left, the metric with every modality subset removed (bars; the
    full input as a dashed line; patterns that are not applicable marked "n/a"); right, the metric
    under random per-sample dropping against the drop rate (mean +- std over seeds; rate 0 = full
    input).

    Parameters
    ----------
    table: pandas.DataFrame
        The table of :func:`~deepfuse_plugin.analysis.evaluate_missing_modalities`.
    path: str or path, optional
        Where to save the figure.
    title: str, optional
        Figure title (default: the model class recorded in the table).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"condition": ["full", "subset", "random"],
    ...                       "removed": ["", "graph", ""],
    ...                       "drop_fraction": [0.0, float("nan"), 0.5],
    ...                       "seed": [None, None, 0], "metric": ["r2"] * 3,
    ...                       "value": [0.8, 0.6, 0.7], "applicable": [True] * 3})
    >>> fig = plot_degradation(table)
    >>> len(fig.axes)
    2
    """
    metrics = list(dict.fromkeys(table["metric"]))
    random_rows = table[table["condition"] == "random"]
    n_cols = 2 if len(random_rows) else 1
    fig, axes = _figure(max(1, len(metrics)), n_cols)
    for r, metric in enumerate(metrics):
        rows = table[table["metric"] == metric]
        full = rows[rows["condition"] == "full"]["value"]
        full_value = float(full.iloc[0]) if len(full) else float("nan")
        ax = axes[r, 0]
        subsets = rows[rows["condition"] == "subset"]
        labels = ["full"] + [f"-{'-'.join(str(s).split('+'))}" for s in subsets["removed"]]
        values = [full_value] + [float(v) for v in subsets["value"]]
        applicable = [True] + [bool(a) for a in subsets["applicable"]]
        positions = np.arange(len(labels))
        heights = [v if ok and np.isfinite(v) else 0.0 for v, ok in zip(values, applicable)]
        colors = ["tab:gray"] + ["tab:blue"] * len(subsets)
        ax.bar(positions, heights, color=colors)
        for position, ok, v in zip(positions, applicable, values):
            if not ok:
                ax.text(position, 0.0, "n/a", ha="center", va="bottom", fontsize=8, color="tab:red")
            elif not np.isfinite(v):
                ax.text(position, 0.0, "nan", ha="center", va="bottom", fontsize=8, color="tab:red")
        if np.isfinite(full_value):
            ax.axhline(full_value, color="k", linestyle="--", linewidth=0.8)
        ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title("modalities removed")
        if n_cols == 2:
            ax = axes[r, 1]
            rand = rows[rows["condition"] == "random"]
            stats = _mean_std(rand, "drop_fraction")
            x = np.concatenate([[0.0], stats.index.to_numpy(dtype=float)])
            mean = np.concatenate([[full_value], stats["mean"].to_numpy()])
            std = np.concatenate([[0.0], stats["std"].to_numpy()])
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("random drop rate per modality")
            ax.set_ylabel(metric)
            ax.set_title("random per-sample dropping")
    model_name = table.attrs.get("model") if hasattr(table, "attrs") else None
    fig.suptitle(
        title or (f"{model_name}: missing modalities" if model_name else "missing modalities")
    )
    return finish_figure(fig, path)


def plot_ablation(table: pd.DataFrame, path: PathArg = None, title: str | None = None) -> Any:
    """Metric change when one modality at a time is dropped or shuffled (bars, mean +- std over
    seeds; not applicable ablations marked "n/a").

    Parameters
    ----------
    table: pandas.DataFrame
        The table of :func:`~deepfuse_plugin.analysis.modality_ablation`.
    path: str or path, optional
    title: str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"modality": ["ecfp", "graph"], "mode": ["drop", "drop"],
    ...                       "metric": ["r2", "r2"], "delta": [-0.1, -0.3],
    ...                       "applicable": [True, True]})
    >>> plot_ablation(table).axes[0].get_ylabel()
    'change in r2'
    """
    metrics = list(dict.fromkeys(table["metric"]))
    fig, axes = _figure(1, max(1, len(metrics)))
    for c, metric in enumerate(metrics):
        ax = axes[0, c]
        rows = table[table["metric"] == metric]
        modalities = list(dict.fromkeys(rows["modality"]))
        usable = rows[rows["applicable"].astype(bool)]
        stats = _mean_std(usable, "modality", "delta").reindex(modalities)
        positions = np.arange(len(modalities))
        heights = stats["mean"].fillna(0.0).to_numpy()
        ax.bar(
            positions,
            heights,
            yerr=stats["std"].fillna(0.0).to_numpy(),
            capsize=3,
            color="tab:blue",
        )  # one colour: whether higher is better depends on the metric
        for x, m in zip(positions, modalities):
            if m not in set(usable["modality"]):
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=8, color="tab:red")
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_xticks(positions, modalities)
        ax.set_ylabel(f"change in {metric}")
        mode = ", ".join(dict.fromkeys(rows["mode"])) if "mode" in rows else ""
        ax.set_title(f"one modality at a time: {mode}" if mode else metric)
    model_name = table.attrs.get("model")
    fig.suptitle(
        title or (f"{model_name}: modality ablation" if model_name else "modality ablation")
    )
    return finish_figure(fig, path)


def plot_modality_weights(
    table: pd.DataFrame, path: PathArg = None, column: str = "mean_weight", title: str | None = None
) -> Any:
    """Bar plot of mean modality weights (Dynamic Fusion paper, Figure 5).

    Parameters
    ----------
    table: pandas.DataFrame
        The table of :func:`~deepfuse_plugin.analysis.mean_modality_weights` (index = modality).
    path: str or path, optional
    column: str
        ``"mean_weight"`` (over all samples, missing = 0; sums to 1 over modalities) or
        ``"mean_weight_present"`` (over the samples where the modality is present).
    title: str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"mean_weight": [0.5, 0.3, 0.2], "std_weight": [0.1, 0.1, 0.05]},
    ...                      index=["smiles", "graph", "ecfp"])
    >>> plot_modality_weights(table).axes[0].get_ylabel()
    'mean_weight'
    """
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    positions = np.arange(len(table))
    with_err = column == "mean_weight" and "std_weight" in table
    err = table["std_weight"].to_numpy() if with_err else None
    ax.bar(positions, table[column].to_numpy(), yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(positions, [str(i) for i in table.index])
    ax.set_ylabel(column)
    ax.set_ylim(0, max(1.0, float(np.nanmax(table[column].to_numpy(), initial=0.0)) * 1.1))
    model_name = table.attrs.get("model")
    fig.suptitle(
        title or (f"{model_name}: mean modality weights" if model_name else "mean modality weights")
    )
    return finish_figure(fig, path)


def plot_weights_vs_masking_rate(
    table: pd.DataFrame, path: PathArg = None, column: str = "mean_weight", title: str | None = None
) -> Any:
    """Mean modality weight against the inference-time masking rate, one line per modality
    (Dynamic Fusion paper, Figure 4); mean +- std over seeds.

    Parameters
    ----------
    table: pandas.DataFrame
        The table of :func:`~deepfuse_plugin.analysis.weights_vs_masking_rate`.
    path: str or path, optional
    column: str
        ``"mean_weight"`` or ``"mean_weight_present"``.
    title: str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"rate": [0.0, 0.0, 0.5, 0.5], "seed": [0, 0, 0, 0],
    ...                       "modality": ["a", "b", "a", "b"],
    ...                       "mean_weight": [0.7, 0.3, 0.6, 0.4]})
    >>> len(plot_weights_vs_masking_rate(table).axes[0].lines) >= 2
    True
    """
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    for modality in dict.fromkeys(table["modality"]):
        rows = table[table["modality"] == modality]
        stats = _mean_std(rows, "rate", column).sort_index()
        x = stats.index.to_numpy(dtype=float)
        ax.errorbar(x, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=str(modality))
    ax.set_xlabel("masking rate at inference")
    ax.set_ylabel(column)
    ax.legend(title="modality")
    model_name = table.attrs.get("model")
    fig.suptitle(
        title
        or (
            f"{model_name}: modality weights vs masking rate"
            if model_name
            else "modality weights vs masking rate"
        )
    )
    return finish_figure(fig, path)


def plot_projection(coords: pd.DataFrame, path: PathArg = None, title: str | None = None) -> Any:
    """Scatter plot of a 2-D embedding projection coloured by ``coords["color"]``.

    A regression target gets a colour bar; a classification target (few integer values) a legend;
    rows without a label (``NaN``) are grey.

    Parameters
    ----------
    coords: pandas.DataFrame
        The table of :func:`~deepfuse_plugin.analysis.embedding_projection` (columns ``dim1``,
        ``dim2`` and optionally ``color``).
    path: str or path, optional
    title: str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> coords = pd.DataFrame({"dim1": [0.0, 1.0, 2.0], "dim2": [1.0, 0.0, 1.0],
    ...                        "color": [0.1, 0.5, float("nan")]})
    >>> len(plot_projection(coords).axes)  # the scatter and its colour bar
    2
    """
    fig, axes = _figure(1, 1, width=5.5, height=4.5)
    ax = axes[0, 0]
    x, y = coords["dim1"].to_numpy(), coords["dim2"].to_numpy()
    color = coords["color"].to_numpy(dtype=float) if "color" in coords else None
    if color is None:
        ax.scatter(x, y, s=18)
    else:
        known = np.isfinite(color)
        if (~known).any():
            ax.scatter(x[~known], y[~known], s=14, color="lightgray", label="no label")
        values = np.unique(color[known])
        categorical = coords.attrs.get(
            "categorical", len(values) <= 10 and np.allclose(values, np.round(values))
        )
        if categorical:
            for v in values:
                sel = known & (color == v)
                ax.scatter(x[sel], y[sel], s=18, label=f"{v:g}")
            ax.legend(title=coords.attrs.get("color_label", "target"), fontsize=8)
        else:
            points = ax.scatter(x[known], y[known], c=color[known], s=18, cmap="viridis")
            fig.colorbar(points, ax=ax, label=coords.attrs.get("color_label", "target"))
            if (~known).any():
                ax.legend(fontsize=8)
    method = coords.attrs.get("method", "projection")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    model_name = coords.attrs.get("model")
    fig.suptitle(
        title
        or (
            f"{model_name}: fused embeddings ({method})"
            if model_name
            else f"fused embeddings ({method})"
        )
    )
    return finish_figure(fig, path)
