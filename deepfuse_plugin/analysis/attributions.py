"""Atom-level attributions for the graph modality with Integrated Gradients (captum).

What is attributed
------------------
For each molecule, the scalar model output ``f`` is attributed to the node (atom) input features
``x`` of its graph, with an all-zeros node-feature baseline on the same graph (same bonds and edge
features) and every other modality held fixed at the molecule's real values (or missing, with
``drop_modalities``). Summing the attribution over the feature dimensions gives one score per atom;
Integrated Gradients' completeness property makes the scores add up to ``f(x) - f(0)``.

``f`` is, for task ``task``:

- regression: the predicted value (in the model's output space, i.e. before undoing label
  transformers);
- classification (default ``target="probability"``): the softmax probability of class
  ``class_index`` (1 = the positive class of a binary task), the quantity ``predict`` returns;
  ``target="logit"`` attributes the head's pre-softmax logit of that class instead (log-probability
  for ``LateFusionModel``, which pools probabilities). Probabilities are bounded, so attributions
  are easy to compare between molecules; logits are unbounded and do not saturate.

Atom ``i`` is atom ``i`` of ``Chem.MolFromSmiles(smiles)`` for the SMILES the molecule was
featurized from (``MultiModalFeaturizer`` computes the graph from that parse, hydrogens implicit).

Models with discrete routing (``GatedMoEFusionModel``'s top-k gate) are piecewise: a gate switch
along the integration path is a jump that gradients do not see, so completeness can fail for them;
``AtomAttribution.delta`` reports the gap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from deepchem.data import Dataset

from deepfuse_plugin.analysis._common import samples_of
from deepfuse_plugin.data.collate import collate_samples

logger = logging.getLogger("deepfuse_plugin.analysis")


@dataclass
class AtomAttribution:
    """Integrated-Gradients attribution of one molecule.

    Attributes
    ----------
    id: str
        The dataset id.
    smiles: str or None
        SMILES whose RDKit atom order the scores follow (None if unknown: pass ``smiles=`` to
        :func:`atom_attributions`).
    scores: np.ndarray ``(n_atoms,)``
        Attribution per atom (sum over node features).
    node_attributions: np.ndarray ``(n_atoms, node_dim)``
        Attribution per atom and node feature.
    output: float
        ``f(x)``, the attributed model output.
    baseline_output: float
        ``f(baseline)`` (all node features zero).
    delta: float
        Convergence gap ``sum(scores) - (output - baseline_output)`` (0 for exact integration).
    target: str
        What ``f`` is, e.g. ``"task 0 prediction"`` or ``"task 0 probability of class 1"``.
    """

    id: str
    smiles: str | None
    scores: np.ndarray
    node_attributions: np.ndarray
    output: float
    baseline_output: float
    delta: float
    target: str

    @property
    def n_atoms(self) -> int:
        return int(self.scores.shape[0])

    def draw(
        self,
        path: str | os.PathLike | None = None,
        size: tuple[int, int] = (400, 400),
        **kwargs: Any,
    ) -> bytes:
        """PNG of the scores on the 2D structure (see :func:`draw_atom_attributions`)."""
        if self.smiles is None:
            raise ValueError(
                f"No SMILES known for {self.id!r}: call "
                "draw_atom_attributions(smiles, attribution.scores) with the SMILES "
                "the molecule was featurized from"
            )
        return draw_atom_attributions(self.smiles, self.scores, path=path, size=size, **kwargs)


def _graph_modality(model: Any, modality: str | None) -> str:
    graphs = [m.name for m in model.modalities if m.kind == "graph"]
    if modality is not None:
        if modality not in graphs:
            raise ValueError(
                f"{modality!r} is not a graph modality of {type(model).__name__} "
                f"(graph modalities: {graphs}; all: {model.modality_names})"
            )
        return modality
    if not graphs:
        raise ValueError(
            f"{type(model).__name__} has no graph modality (its modalities: "
            f"{model.modality_names}): atom attributions need one"
        )
    if len(graphs) > 1:
        raise ValueError(
            f"{type(model).__name__} has several graph modalities {graphs}: pass modality="
        )
    return graphs[0]


def _selector(model: Any, task: int, target: str, class_index: int) -> tuple[Any, str]:
    if not 0 <= task < model.n_tasks:
        raise ValueError(f"task={task} but the model has {model.n_tasks} task(s)")
    if model.mode == "regression":
        if target not in ("auto", "prediction"):
            raise ValueError(
                f"target={target!r} is for classification; a regression model's "
                "target is 'prediction'"
            )
        return (lambda out: out.prediction[:, task]), f"task {task} prediction"
    if not 0 <= class_index < model.n_classes:
        raise ValueError(f"class_index={class_index} but the model has {model.n_classes} classes")
    if target in ("auto", "probability"):
        return (
            (lambda out: out.prediction[:, task, class_index]),
            f"task {task} probability of class {class_index}",
        )
    if target == "logit":
        return (
            (lambda out: out.task_output[:, task, class_index]),
            f"task {task} logit of class {class_index}",
        )
    raise ValueError(f"target must be 'auto', 'probability' or 'logit', got {target!r}")


def _matching_smiles(candidate: Any, n_atoms: int) -> str | None:
    from rdkit import Chem, rdBase

    if not isinstance(candidate, str):
        return None
    # BlockLogs restores the previous logging state afterwards (a user's own DisableLog stays)
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(candidate)
    return candidate if mol is not None and mol.GetNumAtoms() == n_atoms else None


def atom_attributions(
    model: Any,
    dataset: Dataset,
    task: int = 0,
    target: str = "auto",
    class_index: int = 1,
    modality: str | None = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    drop_modalities: Iterable[str] = (),
    smiles: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
    on_missing: str = "raise",
) -> list[AtomAttribution | None]:
    """Integrated-Gradients attributions of a model output to each atom of the graph modality.

    One molecule at a time; the ``n_steps`` interpolation points of a molecule run as one batch
    (``internal_batch_size`` limits it). See the module notes for what is attributed.

    Parameters
    ----------
    model: MultiModalTorchModel
        Any model with a graph modality.
    dataset: dc.data.Dataset
        Featurized with the model's modalities.
    task: int
        Task whose output is attributed.
    target: str
        ``"auto"`` (regression: the prediction; classification: ``"probability"``),
        ``"probability"`` or ``"logit"`` (classification only).
    class_index: int
        Class whose probability/logit is attributed (classification; 1 = positive class).
    modality: str, optional
        The graph modality (needed only if the model has several).
    n_steps: int
        Integration steps (more = smaller ``delta``).
    method: str
        captum's integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
    internal_batch_size: int, optional
        Interpolation points per forward pass (default: all ``n_steps`` at once).
    drop_modalities: iterable of str
        Other modalities to hold missing instead of at their values.
    smiles: sequence of str, optional
        The SMILES each molecule was featurized from (default: the dataset ids, when they parse to
        a molecule with the graph's atom count).
    indices: sequence of int, optional
        Rows of ``dataset`` to explain (default: all).
    on_missing: str
        A molecule without the graph modality: ``"raise"`` (default) or ``"skip"`` (its entry is
        None).

    Returns
    -------
    list of AtomAttribution
        One per requested row, in order.

    Raises
    ------
    ValueError
        The model has no graph modality, the graph is dropped, or a molecule lacks its graph
        (``on_missing="raise"``).

    Examples
    --------
    >>> import numpy as np
    >>> import deepchem as dc
    >>> import deepfuse_plugin as dfp
    >>> feat = dfp.MultiModalFeaturizer(["ecfp", "graph"], ecfp_size=64, progress=False)
    >>> smiles = ["CCO", "c1ccccc1O"]
    >>> ds = dc.data.NumpyDataset(feat.featurize(smiles), np.zeros((2, 1)), ids=smiles)
    >>> model = dfp.DynamicFusionModel(1, feat.modalities, encoder_dim=16, fused_dim=16,
    ...                                progress=False)
    >>> result = atom_attributions(model, ds, n_steps=32)
    >>> [r.n_atoms for r in result]
    [3, 7]
    >>> bool(abs(result[0].scores.sum() - (result[0].output - result[0].baseline_output)) < 1e-2)
    True
    """
    from captum.attr import IntegratedGradients

    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    graph_name = _graph_modality(model, modality)
    drop = tuple(drop_modalities)
    if graph_name in drop:
        raise ValueError(f"Cannot attribute to {graph_name!r} while dropping it")
    select, target_label = _selector(model, task, target, class_index)
    samples = samples_of(dataset)
    ids = [str(i) for i in np.asarray(dataset.ids)]
    rows = list(range(len(samples))) if indices is None else [int(i) for i in indices]
    if smiles is not None and len(smiles) != len(samples):
        raise ValueError(f"smiles has {len(smiles)} entries for {len(samples)} dataset rows")
    lacking = [ids[i] for i in rows if not samples[i].present(graph_name)]
    if lacking and on_missing == "raise":
        raise ValueError(
            f"{len(lacking)} molecule(s) have no {graph_name!r} modality, so there is "
            f"nothing to attribute to (ids: {lacking[:10]}); pass "
            "on_missing='skip' or leave them out with indices="
        )

    device = model.device
    results: list[AtomAttribution | None] = []
    with model.inference_network() as network:
        for i in rows:
            sample = samples[i]
            if not sample.present(graph_name):
                results.append(None)
                continue
            graph = sample.values[graph_name]
            n_atoms, node_dim = graph.node_features.shape

            def forward(node_x: torch.Tensor, _sample: Any = sample) -> torch.Tensor:
                k = node_x.shape[0]
                batch = collate_samples([_sample] * k, model.modalities, drop).to(device)
                batch.inputs[graph_name].x = node_x.reshape(-1, node_x.shape[-1])
                return select(network(batch))

            ig = IntegratedGradients(forward)
            x = torch.as_tensor(graph.node_features, dtype=torch.float32, device=device)[None]
            baseline = torch.zeros_like(x)
            with torch.enable_grad():
                attr, delta = ig.attribute(
                    x,
                    baselines=baseline,
                    n_steps=n_steps,
                    method=method,
                    internal_batch_size=internal_batch_size,
                    return_convergence_delta=True,
                )
            with torch.no_grad():
                outputs = forward(torch.cat([x, baseline])).detach().cpu().numpy()
            node_attr = attr[0].detach().cpu().numpy().astype(float)
            source = smiles[i] if smiles is not None else ids[i]
            matched = _matching_smiles(source, n_atoms)
            if matched is None and smiles is not None:
                raise ValueError(
                    f"smiles[{i}]={source!r} does not parse to a molecule with the "
                    f"graph's {n_atoms} atoms"
                )
            results.append(
                AtomAttribution(
                    ids[i],
                    matched,
                    node_attr.sum(axis=1),
                    node_attr,
                    float(outputs[0]),
                    float(outputs[1]),
                    float(delta.detach().cpu().reshape(-1)[0]),
                    target_label,
                )
            )
    return results


def draw_atom_attributions(
    smiles: Any,
    scores: Sequence[float] | np.ndarray,
    path: str | os.PathLike | None = None,
    size: tuple[int, int] = (400, 400),
    contour_lines: int = 10,
    vmax: float | None = None,
    **kwargs: Any,
) -> bytes:
    """Draw per-atom scores on the 2D structure as an RDKit similarity map (PNG).

    Positive scores are green, negative pink (RDKit's default similarity-map colours); scores are
    divided by ``vmax`` (default: this molecule's largest absolute score) and clipped, so the colour
    scale spans [-1, 1]. Pass one ``vmax`` to several calls to compare pictures across molecules or
    models: with the per-molecule default, a tiny attribution looks as strong as a large one. A
    one-atom molecule (RDKit's maps need two) gets its atom highlighted in the colour of the score's
    sign.

    Parameters
    ----------
    smiles: str or rdkit.Chem.Mol
        The molecule whose atom order ``scores`` follow.
    scores: sequence of float or numpy.ndarray
        One score per atom.
    path: str or path, optional
        Where to write the PNG.
    size: (int, int)
        Width and height in pixels.
    contour_lines: int
        Contour lines of the map.
    vmax: float, optional
        Absolute score drawn at full colour (a shared colour scale).
    **kwargs:
        Passed to ``rdkit.Chem.Draw.SimilarityMaps.GetSimilarityMapFromWeights`` (e.g.
        ``colorMap``, ``alpha``).

    Returns
    -------
    bytes
        The PNG image.

    Examples
    --------
    >>> png = draw_atom_attributions("CCO", [0.1, -0.2, 0.5])
    >>> png[:4]
    b'\\x89PNG'
    """
    from rdkit import Chem
    from rdkit.Chem import Draw
    from rdkit.Chem.Draw import SimilarityMaps

    mol = smiles if isinstance(smiles, Chem.Mol) else Chem.MolFromSmiles(str(smiles))
    if mol is None:
        raise ValueError(f"RDKit cannot parse {smiles!r}")
    weights = [float(s) for s in np.asarray(scores, dtype=float).reshape(-1)]
    if len(weights) != mol.GetNumAtoms():
        raise ValueError(f"{len(weights)} scores for a molecule with {mol.GetNumAtoms()} atoms")
    if not np.all(np.isfinite(weights)):
        raise ValueError("scores must be finite")
    canvas = Draw.MolDraw2DCairo(int(size[0]), int(size[1]))
    largest = max(abs(v) for v in weights) if weights else 0.0
    if mol.GetNumAtoms() < 2:  # RDKit's similarity maps need two atoms: colour the atom itself
        colour = (0.6, 0.9, 0.6) if weights[0] > 0 else (0.95, 0.6, 0.8) if weights[0] < 0 else None
        highlight = {0: colour} if colour else {}
        Draw.rdMolDraw2D.PrepareAndDrawMolecule(
            canvas, mol, highlightAtoms=list(highlight), highlightAtomColors=highlight
        )
    else:
        scale = largest if vmax is None else float(vmax)
        if scale > 0:  # the colour scale spans [-1, 1]
            weights = [float(np.clip(v / scale, -1.0, 1.0)) for v in weights]
        SimilarityMaps.GetSimilarityMapFromWeights(
            mol, weights, draw2d=canvas, contourLines=contour_lines, **kwargs
        )
    canvas.FinishDrawing()
    png = canvas.GetDrawingText()
    if path is not None:
        with open(os.fspath(path), "wb") as fh:
            fh.write(png)
    return png
