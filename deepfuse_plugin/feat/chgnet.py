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

__all__ = ["CHGNET_MODELS", "CHGNetProvider"]

#: Checkpoints shipped inside the ``chgnet`` wheel.
CHGNET_MODELS = ("0.3.0", "0.2.0")
#: CHGNet's atom embedding covers Z = 1..94 (H to Pu).
CHGNET_MAX_Z = 94


@register_structure_provider
class CHGNetProvider(StructureEmbeddingProvider):
    """CHGNet's crystal vector and atom states (the ``chgnet`` crystal modalities).

    For each structure, from one forward pass of the pretrained model (``CHGNet.predict_graph``
    with ``return_crystal_feas`` and ``return_atom_feas``):

    - crystal vector ``(64,)``: CHGNet's ``crystal_fea``, the mean over atoms of the last
      convolution's layer-normalised atom features (what its energy read-out sees);
    - atom states ``(n_sites, 64)``: CHGNet's ``atom_fea``, each site's features after the
      second-to-last convolution (the layer its magnetic-moment head reads: they carry the
      charge/valence information CHGNet is trained to resolve), stored in float16.

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
    """

    name = "chgnet"

    def __init__(self, model: str = "0.3.0", batch_size: int = 16, device: str = "cpu"):
        if model not in CHGNET_MODELS:
            raise ValueError(f"CHGNet model must be one of {CHGNET_MODELS}, got {model!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = model, int(batch_size), str(device)
        self._network: Any = None

    # -- identity ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(_checkpoint_args(self.model)["atom_fea_dim"])

    @property
    def atom_dim(self) -> int:
        return int(_checkpoint_args(self.model)["atom_fea_dim"])

    def settings(self) -> dict[str, Any]:
        return {
            "package": "chgnet",
            "version": _package_version(),
            "model": self.model,
            "checkpoint_sha256": _checkpoint_sha256(self.model),
            "crystal": "crystal_fea",
            "atoms": "atom_fea",
        }

    def rebuild_options(self) -> dict[str, Any]:
        return {"model": self.model}

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
        for start in range(0, len(graphs), self.batch_size):
            part = slice(start, start + self.batch_size)
            for row, result in zip(rows[part], self._predict(network, graphs[part])):
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

    def _predict(self, network: Any, graphs: list[Any]) -> list[StructureResult]:
        """Results of one batch; a failing batch is re-run one graph at a time."""
        import torch

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CHGNet's tensor-from-tensor UserWarning
                predictions = network.predict_graph(
                    graphs,
                    task="e",
                    return_crystal_feas=True,
                    return_atom_feas=True,
                    batch_size=len(graphs),
                )
        except Exception as err:
            if len(graphs) == 1:
                return [f"CHGNet failed on this structure ({exception_reason(err)})"]
            return [result for graph in graphs for result in self._predict(network, [graph])]
        if isinstance(predictions, dict):  # CHGNet returns a bare dict for a single graph
            predictions = [predictions]
        return [self._checked(p) for p in predictions]

    def _checked(self, prediction: dict[str, np.ndarray]) -> StructureResult:
        crystal = np.asarray(prediction["crystal_fea"], dtype=np.float32).reshape(-1)
        atoms = np.asarray(prediction["atom_fea"], dtype=np.float32)
        if not (np.isfinite(crystal).all() and np.isfinite(atoms).all()):
            return "CHGNet returned non-finite features for this structure"
        if not np.isfinite(atoms.astype(np.float16)).all():
            return "CHGNet atom features overflow float16 for this structure"
        return StructureEmbedding(crystal, atoms.astype(np.float16))

    def __getstate__(self) -> dict:  # the network is reloaded where it is needed
        return {**self.__dict__, "_network": None}


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
