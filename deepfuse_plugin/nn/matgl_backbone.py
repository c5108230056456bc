"""MatGL graph backbones (MEGNet, M3GNet, or CGCNN convolutions) as deepfuse crystal graph encoders.

These encoders read a *MatGL-format* crystal graph: element indices into ``element_types``
(``node_type``), Cartesian positions (``pos``) and, per directed edge, the Cartesian shift of the
neighbour's periodic image (``pbc_offshift``); MatGL's models compute bond vectors and distances
from those themselves. Two containers carry such a graph:

- the MatGL route: the PyG batch of :class:`matgl.graph.data.MGLDataset` (``node_type``,
  ``frac_coords``, ``pbc_offset``; ``pos`` and ``pbc_offshift`` are set by MatGL's
  ``ModelLightningModule`` from the lattices, or by :func:`attach_positions`);
- the DeepChem route: the ``matgl_graph`` modality of
  :class:`~deepfuse_plugin.feat.crystal.CrystalMultiModalFeaturizer`, collated like any deepfuse
  graph, with ``x = [node_type, x, y, z]`` ``(N, 4)`` and ``edge_attr = pbc_offshift`` ``(E, 3)``.

The encoder returns the crystal vector (MatGL's readout) and the atom states of the last block, both
projected to the deepfuse encoder width, so any fusion layer (cross-attention over atoms included)
can use them. Pure torch / PyG / MatGL: no DeepChem import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# MATGL_FORMAT and default_element_types are contracts shared with the featurizers: they live in
# deepfuse_plugin.modalities and stay importable from here
from deepfuse_plugin.modalities import MATGL_FORMAT, default_element_types  # noqa: F401
from deepfuse_plugin.nn.cgcnn import CGCNNEncoder
from deepfuse_plugin.nn.encoders import EncodedModality, encode_crystal, reset_all

#: Graph backbones of the MatGL format.
MATGL_BACKBONES = ("megnet", "m3gnet", "cgcnn")


def attach_positions(graph: Any, lattice: Tensor) -> Any:
    """Set ``pos`` and ``pbc_offshift`` of a MatGL graph (batch) from its lattice(s), as MatGL's
    ``ModelLightningModule.forward`` does. ``lattice``: ``(3, 3)``, ``(1, 3, 3)`` or
    ``(B, 3, 3)``."""
    lattice = lattice.reshape(-1, 3, 3).to(graph.frac_coords.dtype)
    batch = getattr(graph, "batch", None)
    if batch is None:
        batch = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.frac_coords.device)
    graph.pos = (graph.frac_coords.unsqueeze(-1) * lattice[batch]).sum(dim=1)
    edge_lattice = lattice[batch[graph.edge_index[0]]]
    graph.pbc_offshift = (graph.pbc_offset.unsqueeze(-1) * edge_lattice).sum(dim=1)
    return graph


class _MatGLView:
    """The attributes MatGL's models read, from either container (see module docstring)."""

    def __init__(self, graph: Any):
        if hasattr(graph, "node_type"):
            if getattr(graph, "pos", None) is None:
                raise ValueError(
                    "The MatGL graph has no 'pos': call attach_positions(graph, "
                    "lattice) first (MatGL's ModelLightningModule does it)"
                )
            self.node_type, self.pos = graph.node_type.long(), graph.pos
            self.pbc_offshift = getattr(graph, "pbc_offshift", None)
        else:  # deepfuse's collated matgl_graph modality
            if graph.x.shape[1] != 4 or graph.edge_attr.shape[1] != 3:
                raise ValueError(
                    f"A MatGL-format graph has node features [node_type, x, y, z] and edge "
                    f"features pbc_offshift (widths 4 and 3), got {graph.x.shape[1]} and "
                    f"{graph.edge_attr.shape[1]}: featurize with the 'matgl_graph' modality"
                )
            self.node_type, self.pos = graph.x[:, 0].round().long(), graph.x[:, 1:4]
            self.pbc_offshift = graph.edge_attr
        self.edge_index = graph.edge_index.long()
        self.batch = graph.batch
        self.num_graphs = int(graph.num_graphs)
        self.state_attr = getattr(graph, "state_attr", None)


class MatGLGraphEncoder(nn.Module):
    """A MatGL backbone as a deepfuse ``crystal_graph`` encoder.

    ``backbone``:

    - ``"megnet"``: :class:`matgl.models.MEGNet` (MatGL defaults, ``cutoff`` 4 Å); crystal vector =
      its Set2Set readout of atoms, bonds and state; atom states = the last block's node features;
    - ``"m3gnet"``: :class:`matgl.models.M3GNet` (intensive readout; three-body interactions inside
      ``threebody_cutoff``); crystal vector = its readout, atom states = last block's node features;
    - ``"cgcnn"``: CGCNN convolutions (:class:`~deepfuse_plugin.nn.cgcnn.CGCNNEncoder`) over the
      same graph, with one-hot element types as atom features and a Gaussian expansion of the bond
      distances (0 to ``cutoff``, ``n_gaussians`` centres) as edge features.

    MatGL's own output layer is unused (its readout is taken before it); both outputs are projected
    to ``out_dim`` by ``Linear -> softplus``. Shapes: ``pooled (B, out_dim)``, ``tokens (B, N_max,
    out_dim)``, ``token_mask (B, N_max)``.

    Parameters
    ----------
    out_dim: int
    backbone: str
        One of :data:`MATGL_BACKBONES`.
    element_types: sequence of str, optional
        Node-type vocabulary; must be the converter's (default: MatGL's ``DEFAULT_ELEMENTS``).
    cutoff: float
        Neighbour cutoff in Å used to build the graphs (bond expansion range).
    dropout: float
        Dropout on both outputs.
    **backbone_options:
        Passed to the MatGL model (e.g. ``nblocks``, ``dim_node_embedding``) or, for ``cgcnn``,
        to ``CGCNNEncoder`` (``atom_fea_len``, ``n_conv``) plus ``n_gaussians``.
    """

    def __init__(
        self,
        out_dim: int,
        backbone: str = "megnet",
        element_types: Sequence[str] | None = None,
        cutoff: float = 4.0,
        dropout: float = 0.0,
        **backbone_options: Any,
    ):
        super().__init__()
        if backbone not in MATGL_BACKBONES:
            raise ValueError(
                f"MatGL graph backbone must be one of {MATGL_BACKBONES}, got {backbone!r}"
            )
        self.backbone_name = backbone
        self.element_types = tuple(element_types or default_element_types())
        self.cutoff = float(cutoff)
        self.backbone, node_dim, readout_dim = self._build(dict(backbone_options))
        self.project_atoms = nn.Linear(node_dim, out_dim)
        self.project_crystal = nn.Linear(readout_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def _build(self, options: dict[str, Any]) -> tuple[nn.Module, int, int]:
        if self.backbone_name == "cgcnn":
            self.n_gaussians = int(options.pop("n_gaussians", 40))
            width = int(options.get("atom_fea_len", 64))
            cgcnn = CGCNNEncoder(len(self.element_types), self.n_gaussians, width, **options)
            return cgcnn, width, width
        from matgl.models import M3GNet, MEGNet

        module: nn.Module
        if self.backbone_name == "megnet":
            module = MEGNet(element_types=self.element_types, cutoff=self.cutoff, **options)
        else:
            options.setdefault("is_intensive", True)
            options.setdefault("threebody_cutoff", min(4.0, self.cutoff))
            module = M3GNet(element_types=self.element_types, cutoff=self.cutoff, **options)
        node_dim, readout_dim = _probe_widths(module, self.element_types)
        return module, node_dim, readout_dim

    def reset_parameters(self) -> None:
        reset_all(self)

    def forward(self, graph: Any) -> EncodedModality:
        view = _MatGLView(graph)
        if self.backbone_name == "cgcnn":
            atoms, crystal = self._cgcnn(view)
        else:
            atoms, crystal = self._matgl(view)
        pooled = F.softplus(self.project_crystal(crystal))
        # a missing crystal (no atoms, DeepChem route) must encode to exact zeros
        return encode_crystal(
            pooled,
            lambda: F.softplus(self.project_atoms(atoms)),
            view.batch,
            view.num_graphs,
            self.dropout,
        )

    def _matgl(self, view: _MatGLView) -> tuple[Tensor, Tensor]:
        state = view.state_attr
        if self.backbone_name == "megnet" and state is None:
            # MatGL's structure converter gives every crystal the state [0, 0]
            state = view.pos.new_zeros(view.num_graphs, 2)
        self.backbone(view, state_attr=state)
        atoms, readout = _last_features(self.backbone)
        return atoms, readout.reshape(view.num_graphs, -1)

    def _cgcnn(self, view: _MatGLView) -> tuple[Tensor, Tensor]:
        from torch_geometric.nn import global_mean_pool

        src, dst = view.edge_index
        vectors = view.pos[dst] - view.pos[src]
        if view.pbc_offshift is not None:
            vectors = vectors + view.pbc_offshift
        distance = vectors.norm(dim=-1, keepdim=True)
        centres = torch.linspace(0.0, self.cutoff, self.n_gaussians, device=distance.device)
        width = self.cutoff / max(self.n_gaussians - 1, 1)
        edge_attr = torch.exp(-((distance - centres) ** 2) / width**2)
        x = F.one_hot(view.node_type, len(self.element_types)).to(view.pos.dtype)
        # CGCNN messages flow neighbour -> centre: edge_index is (source, target) in PyG
        backbone = cast(CGCNNEncoder, self.backbone)  # what _build makes for "cgcnn"
        atoms = backbone.node_states(x, view.edge_index, edge_attr)
        crystal = global_mean_pool(atoms, view.batch, size=view.num_graphs)
        return atoms, crystal


def _probe_widths(module: nn.Module, element_types: Sequence[str]) -> tuple[int, int]:
    """Node-state and readout widths of a MatGL model, read from one forward pass on a two-atom
    toy graph (MatGL does not expose them as attributes consistently across models)."""
    from torch_geometric.data import Batch, Data

    pos = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    toy = Data(
        node_type=torch.tensor([0, min(1, len(element_types) - 1)]),
        pos=pos,
        edge_index=torch.tensor([[0, 1], [1, 0]]),
        pbc_offshift=torch.zeros(2, 3),
        num_nodes=2,
    )
    batch = Batch.from_data_list([toy])
    view = _MatGLView(batch)
    state = pos.new_zeros(1, 2) if type(module).__name__ == "MEGNet" else None
    was_training = module.training
    module.eval()
    with torch.no_grad():
        module(view, state_attr=state)
    module.train(was_training)
    atoms, readout = _last_features(module)
    return int(atoms.shape[-1]), int(readout.reshape(1, -1).shape[-1])


def _last_features(module: nn.Module) -> tuple[Tensor, Tensor]:
    """The node states of the last graph convolution and the readout that a MatGL model's forward
    pass left in its ``feature_dict``."""
    # MatGL sets feature_dict as a plain attribute in forward (nn.Module's typing cannot know it)
    features = cast(dict[str, Any], module.feature_dict)
    last = max(int(k.split("_")[1]) for k in features if k.startswith("gc_"))
    return features[f"gc_{last}"]["node_feat"], features["readout"]
