"""Analyses of trained deepfuse models: missing-modality robustness and interpretability.

Every analysis works on any model of the family (``DynamicFusionModel``, ``EarlyFusionModel``,
``LateFusionModel``, ``CrossAttentionFusionModel``, ``GatedMoEFusionModel``, ``UnimodalModel``) and
returns an :class:`AnalysisResult` ``(table, figure)``: a tidy pandas table and a matplotlib figure
(``plot=False`` skips the figure, ``plot="file.png"`` also saves it).

- :func:`evaluate_missing_modalities`: metrics with modality subsets removed and random per-sample
  dropping (degradation figure);
- :func:`modality_ablation`: drop or shuffle one modality at a time, metric change;
- :func:`modality_weights`, :func:`mean_modality_weights`, :func:`weights_vs_masking_rate`: the
  fusion layer's per-sample modality weights, their means, and their shift under masking;
- :func:`atom_attributions`, :func:`draw_atom_attributions`: Integrated-Gradients atom attributions
  for the graph modality, drawn as RDKit similarity maps;
- :func:`embedding_projection`: t-SNE / PCA / UMAP (optional ``umap-learn``) of fused embeddings.

matplotlib, captum and scikit-learn are imported only when an analysis needs them.
"""

from __future__ import annotations

from deepfuse_plugin.analysis._common import AnalysisResult, NoModalityWeightsError
from deepfuse_plugin.analysis.attributions import (
    AtomAttribution,
    atom_attributions,
    draw_atom_attributions,
)
from deepfuse_plugin.analysis.interpret import (
    embedding_projection,
    mean_modality_weights,
    modality_weights,
    weights_vs_masking_rate,
)
from deepfuse_plugin.analysis.plots import (
    plot_ablation,
    plot_degradation,
    plot_modality_weights,
    plot_projection,
    plot_weights_vs_masking_rate,
)
from deepfuse_plugin.analysis.robustness import evaluate_missing_modalities, modality_ablation

__all__ = [
    "AnalysisResult",
    "NoModalityWeightsError",
    "AtomAttribution",
    "evaluate_missing_modalities",
    "modality_ablation",
    "modality_weights",
    "mean_modality_weights",
    "weights_vs_masking_rate",
    "atom_attributions",
    "draw_atom_attributions",
    "embedding_projection",
    "plot_degradation",
    "plot_ablation",
    "plot_modality_weights",
    "plot_weights_vs_masking_rate",
    "plot_projection",
]
