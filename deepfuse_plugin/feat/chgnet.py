"""CHGNet as a pretrained crystal view: its crystal vector and per-atom states, offline.

CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031, 2023) is a universal interatomic potential: a
graph network over atoms, bonds and angles, trained on MPtrj (1.58M structures from the Materials
Project's relaxation trajectories) to predict energies, forces, stresses and magnetic moments. Its
internal states are a general-purpose description of a crystal's local chemistry. The ``chgnet``
package's wheel carries the weights (0.3.0 by default, 0.2.0 too; about 5 MB each), so this view
needs no download. The package is BSD-licensed (modified 3-clause BSD, LBNL).

**Leakage.** MPtrj contains the Materials Project structures and the energies that MP-derived
datasets (mp36k, ``load_materials_project``) take their formation energies from, test splits
included. A model that reads the CHGNet view on such data has, in effect, seen the test labels'
source: report those numbers only with that warning, and judge the view on data outside the
Materials Project (e.g. the Castelli perovskites, ``perovskites_castelli.csv.gz``).

Examples
--------
>>> from deepfuse_plugin.feat.pretrained import structure_provider
>>> import deepfuse_plugin.feat.chgnet  # registers "chgnet"
>>> provider = structure_provider("chgnet")  # doctest: +SKIP
>>> from pymatgen.core import Lattice, Structure  # doctest: +SKIP
>>> cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3])  # doctest: +SKIP
>>> [result] = provider.embed([cscl])  # doctest: +SKIP
>>> result.crystal.shape, result.atoms.shape  # doctest: +SKIP
((64,), (2, 64))
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections.abc import Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from deepfuse_plugin.feat._base import exception_reason
from deepfuse_plugin.feat.pretrained import (
    StructureEmbedding,
    StructureEmbeddingProvider,
    StructureResult,
    register_structure_provider,
)

__all__ = [
    "ATOM_FEA_LAYER",
    "CHGNET_MODELS",
    "CHGNET_N_CONV",
    "CHGNetProvider",
    "check_atom_layers",
]

#: Checkpoints shipped inside the ``chgnet`` wheel.
CHGNET_MODELS = ("0.3.0", "0.2.0")
#: CHGNet's atom embedding covers Z = 1..94 (H to Pu).
CHGNET_MAX_Z = 94
#: Atom convolutions of both shipped checkpoints (``n_conv`` in their ``model_args``).
CHGNET_N_CONV = 4
#: The layer of CHGNet's ``atom_fea`` (after the third atom convolution): the atom states unless
#: ``atom_layers`` says otherwise.
ATOM_FEA_LAYER = 3


@register_structure_provider
class CHGNetProvider(StructureEmbeddingProvider):
    """CHGNet's crystal vector and atom states (the ``chgnet`` crystal modalities).

    For each structure, from one forward pass of the pretrained model (``CHGNet.predict_graph``
    with ``return_crystal_feas``, and forward hooks on the layers ``atom_layers`` names):

    - crystal vector ``(64,)``: CHGNet's ``crystal_fea``, the mean over atoms of the last
      convolution's layer-normalised atom features (what its energy read-out sees);
    - atom states ``(n_sites, 64)``: CHGNet's ``atom_fea``, each site's features after the
      second-to-last convolution (the layer its magnetic-moment head reads: they carry the
      charge/valence information CHGNet is trained to resolve), stored in float16. With
      ``atom_layers`` the states of several layers, side by side (``(n_sites, 64 * k)``).

    A structure CHGNet cannot take is returned as a reason (marked missing by the modality, never
    dropped): partial occupancies, an element beyond Pu (Z > 94), or an atom with no neighbour
    within CHGNet's 6 Å atom-graph cutoff. Structures are converted one at a time (a failure
    costs only itself) and run through the model ``batch_size`` at a time; a batch that fails is
    re-run one structure at a time.

    The checkpoint is read with ``torch.load(weights_only=True)`` (plain tensors, no pickled
    code), not with CHGNet's own loader.

    **Leakage**: trained on MPtrj (Materials Project); see the module docstring.

    Parameters
    ----------
    model: str
        ``"0.3.0"`` (default) or ``"0.2.0"``, a checkpoint inside the ``chgnet`` wheel.
    batch_size: int
        Structures per forward pass (16, CHGNet's own default: on 200 mp36k structures, one
        thread, 16 ran at 19 structures/s with 100 MB above the loaded model, 32 at 15/s with
        140 MB, 8 at 18/s with 80 MB).
    device: str
        Torch device of the model (``"cpu"`` by default; ``"cuda"`` when available).
    atom_layers: sequence of int
        The layers whose atom states make the atom view, side by side in this order: 0 the atom
        embedding, 1 to 4 the output of each atom convolution (both checkpoints have four).
        Default ``(3,)``, CHGNet's ``atom_fea``. All five, ``(0, 1, 2, 3, 4)`` (320-d per
        site), as CGCNN's node inputs (``chgnet_graph``) on the Castelli perovskites lowered
        validation MAE by 11% (``benchmarks/experiments/castelli_chgnet_layers.py``).
    """

    name = "chgnet"

    def __init__(
        self,
        model: str = "0.3.0",
        batch_size: int = 16,
        device: str = "cpu",
        atom_layers: Sequence[int] = (ATOM_FEA_LAYER,),
    ):
        if model not in CHGNET_MODELS:
            raise ValueError(f"CHGNet model must be one of {CHGNET_MODELS}, got {model!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = model, int(batch_size), str(device)
        self.atom_layers = check_atom_layers(atom_layers)
        self._network: Any = None

    # -- identity ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(_checkpoint_args(self.model)["atom_fea_dim"])

    @property
    def atom_dim(self) -> int:
        return int(_checkpoint_args(self.model)["atom_fea_dim"]) * len(self.atom_layers)

    @property
    def _default_layers(self) -> bool:
        return self.atom_layers == (ATOM_FEA_LAYER,)

    def settings(self) -> dict[str, Any]:
        # the default keeps the settings (and so the cache key) of models saved before the option
        atoms = "atom_fea" if self._default_layers else f"atom layers {list(self.atom_layers)}"
        return {
            "package": "chgnet",
            "version": _package_version(),
            "model": self.model,
            "checkpoint_sha256": _checkpoint_sha256(self.model),
            "crystal": "crystal_fea",
            "atoms": atoms,
        }

    def rebuild_options(self) -> dict[str, Any]:
        if self._default_layers:  # a saved spec without atom_layers means the default
            return {"model": self.model}
        return {"model": self.model, "atom_layers": list(self.atom_layers)}

    # -- computation ---------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._network is None:
            import torch
            from chgnet.model import CHGNet

            path = _checkpoint_path(self.model)
            state = torch.load(path, map_location="cpu", weights_only=True)
            with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
                network = CHGNet.from_dict(
                    state["model"], mlp_out_bias=self.model == "0.2.0", version=self.model
                )
            self._network = network.to(self.device).eval()
        return self._network

    def embed(self, structures: Sequence[Any]) -> list[StructureResult]:
        network = self._load()
        out: list[StructureResult] = [""] * len(structures)
        graphs, rows = [], []
        for row, structure in enumerate(structures):
            graph = self._graph(network, structure)
            if isinstance(graph, str):
                out[row] = graph
            else:
                graphs.append(graph)
                rows.append(row)
        with _AtomStates(network, self.atom_layers) as states:
            for start in range(0, len(graphs), self.batch_size):
                part = slice(start, start + self.batch_size)
                for row, result in zip(rows[part], self._predict(network, graphs[part], states)):
                    out[row] = result
        return out

    def _graph(self, network: Any, structure: Any) -> Any:
        """CHGNet's graph of ``structure``, or why it has none."""
        if not structure.is_ordered:
            return (
                "disordered structure (partial occupancies): CHGNet needs one species per site; "
                "order it first (e.g. pymatgen OrderDisorderedStructureTransformation)"
            )
        heavy = sorted({el.symbol for el in structure.composition if el.Z > CHGNET_MAX_Z})
        if heavy:
            return f"elements {heavy} are beyond Pu (Z {CHGNET_MAX_Z}): CHGNet cannot embed them"
        try:
            # CHGNet writes bond_graph_error.cif into the working directory when its bond graph
            # fails: a copy whose `to` writes nothing keeps the user's folder untouched
            quiet = structure.copy()
            quiet.to = _write_nothing
            return network.graph_converter(quiet)
        except Exception as err:  # isolated atoms (ValueError), bond graph (RuntimeError), ...
            isolated = re.search(r"has (\d+) isolated atom", str(err))
            if isolated:
                cutoff = network.graph_converter.atom_graph_cutoff
                return (
                    f"{isolated.group(1)} atom(s) with no neighbour within CHGNet's {cutoff} A "
                    "atom-graph cutoff: CHGNet does not embed isolated atoms"
                )
            return f"CHGNet cannot build its graph ({exception_reason(err)})"

    def _predict(
        self, network: Any, graphs: list[Any], states: _AtomStates
    ) -> list[StructureResult]:
        """Results of one batch; a failing batch is re-run one graph at a time."""
        import torch

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CHGNet's tensor-from-tensor UserWarning
                predictions = network.predict_graph(
                    graphs,
                    task="e",
                    return_crystal_feas=True,
                    batch_size=len(graphs),
                )
        except Exception as err:
            if len(graphs) == 1:
                return [f"CHGNet failed on this structure ({exception_reason(err)})"]
            return [r for graph in graphs for r in self._predict(network, [graph], states)]
        if isinstance(predictions, dict):  # CHGNet returns a bare dict for a single graph
            predictions = [predictions]
        atoms = states.split([len(graph.atomic_number) for graph in graphs])
        return [self._checked(p, a) for p, a in zip(predictions, atoms)]

    def _checked(self, prediction: dict[str, np.ndarray], atoms: np.ndarray) -> StructureResult:
        crystal = np.asarray(prediction["crystal_fea"], dtype=np.float32).reshape(-1)
        if not (np.isfinite(crystal).all() and np.isfinite(atoms).all()):
            return "CHGNet returned non-finite features for this structure"
        if not np.isfinite(atoms.astype(np.float16)).all():
            return "CHGNet atom features overflow float16 for this structure"
        return StructureEmbedding(crystal, atoms.astype(np.float16))

    def __getstate__(self) -> dict:  # the network is reloaded where it is needed
        return {**self.__dict__, "_network": None}


class _AtomStates:
    """Forward hooks that keep the atom states of the chosen CHGNet layers (0 the atom embedding,
    then each atom convolution) from the last forward pass. Layer 3's output is the tensor CHGNet
    returns as ``atom_fea``, so the default goes the same way as any other choice."""

    def __init__(self, network: Any, layers: tuple[int, ...]):
        self.network, self.layers = network, layers
        self.captured: dict[int, Any] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> _AtomStates:
        modules = [self.network.atom_embedding, *self.network.atom_conv_layers]
        self._hooks = [modules[k].register_forward_hook(self._keeper(k)) for k in self.layers]
        return self

    def _keeper(self, k: int) -> Any:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self.captured[k] = output.detach()

        return keep

    def split(self, sizes: list[int]) -> list[np.ndarray]:
        """Per graph of the last pass (``sizes``: its atom counts), the layers side by side."""
        import torch

        joined = torch.cat([self.captured[k] for k in self.layers], dim=-1)
        return [part.cpu().numpy() for part in torch.split(joined, sizes)]

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def check_atom_layers(layers: Sequence[int], n_conv: int = CHGNET_N_CONV) -> tuple[int, ...]:
    """``layers`` as a tuple, each one of 0 (the embedding) to ``n_conv``, none twice."""
    chosen = tuple(int(k) for k in layers)
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= k <= n_conv for k in chosen):
        raise ValueError(
            f"atom_layers must be distinct layers from 0 (the atom embedding) to {n_conv} "
            f"(after each atom convolution), got {list(layers)}"
        )
    return chosen


def _write_nothing(*args: Any, **kwargs: Any) -> str:
    return ""


def _package_dir() -> Path:
    spec = find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The chgnet modalities need the chgnet package (pip install 'deepfuse[materials]' "
            "or pip install chgnet)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _checkpoint_path(model: str) -> Path:
    found = sorted((_package_dir() / "pretrained" / model).glob("*.pth.tar"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"Expected one CHGNet {model} checkpoint (*.pth.tar) in "
            f"{_package_dir() / 'pretrained' / model}, found {len(found)}: reinstall chgnet"
        )
    return found[0]


@cache
def _checkpoint_sha256(model: str) -> str:
    return hashlib.sha256(_checkpoint_path(model).read_bytes()).hexdigest()


@cache
def _checkpoint_args(model: str) -> dict[str, Any]:
    import torch

    path = _checkpoint_path(model)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state["model"]["model_args"])


def _package_version() -> str:
    try:
        return version("chgnet")
    except PackageNotFoundError:
        return "not installed"
