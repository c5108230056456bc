"""Which of CHGNet's layers make the best node inputs for CGCNN on the Castelli perovskites?

The ``chgnet_graph`` view appends each site's CHGNet state after its third of four atom
convolutions (``atom_fea``, the layer CHGNet's magnetic-moment head reads) to CGCNN's 91 atom
features; CGCNN over it is 0.81x CGCNN on the Castelli perovskites (``docs/crystals.md``).
Foundation models often transfer best from a mix of layers, so this script takes the atom states
of every CHGNet 0.3.0 layer (forward hooks on the atom embedding and the four atom convolutions,
one pass per structure batch) and trains the same CGCNN as ``castelli_chgnet_node_features.py``
(width 64, 3 convolutions, its loop and settings) on the seed-0 split of ``deepfuse-bench crystals
--dataset castelli`` with CGCNN's atom features followed by each choice of layers. Train and
validation rows only (test labels are never read).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/castelli_chgnet_layers.py \\
        --data-dir ../shared/data --cache-dir CACHE

``--layers`` lists the choices, each a ``+``-joined set of layer numbers (0: the atom embedding,
1-4: after each atom convolution; 3 is what ``chgnet_graph`` uses).
"""

from __future__ import annotations

import warnings

import numpy as np
from castelli_chgnet_finetune import chgnet_graphs, load_split
from castelli_chgnet_node_features import graphs, train, training_parser

#: Layer choices tried by default: today's view, the last layer, the last two, all convolutions,
#: everything.
DEFAULT_LAYERS = "3,4,3+4,1+2+3+4,0+1+2+3+4"


def layer_states(network, chgnet_graph_list, batch_size: int = 16) -> list[np.ndarray]:
    """``(n_sites, 5, 64)`` per graph: the atom states after CHGNet's embedding and each of its
    atom convolutions, in that order."""
    import torch

    layers = [network.atom_embedding, *network.atom_conv_layers]
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: captured[k].append(out.detach()))
        for k, layer in enumerate(layers)
    ]
    states = []
    try:
        for start in range(0, len(chgnet_graph_list), batch_size):
            batch = chgnet_graph_list[start : start + batch_size]
            for stored in captured:
                stored.clear()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                network.predict_graph(batch, task="e", batch_size=len(batch))
            stacked = torch.stack([stored[-1] for stored in captured], dim=1)  # (atoms, 5, 64)
            sizes = [int(g.atomic_number.shape[0]) for g in batch]
            states.extend(part.numpy() for part in torch.split(stacked, sizes))
    finally:
        for hook in hooks:
            hook.remove()
    return states


def main() -> None:
    import torch

    parser = training_parser(__doc__.split("\n")[0])
    parser.add_argument("--layers", default=DEFAULT_LAYERS)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--convs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split(args.data_dir)
    network, built = chgnet_graphs({part: split[part][0] for part in ("train", "val")})
    parts = {}
    for part in ("train", "val"):
        chgnet_list, rows = built[part]
        structures = [split[part][0][i] for i in rows]
        data = graphs(structures, split[part][1][rows], args.cache_dir)
        if len(data) != len(rows):  # every structure CHGNet takes has the other views too
            raise SystemExit(f"{part}: {len(rows)} CHGNet graphs but {len(data)} with both views")
        for graph, state in zip(data, layer_states(network, chgnet_list)):
            if not np.allclose(state[:, 3], graph.chgnet.numpy(), rtol=1e-2, atol=1e-2):
                raise SystemExit("layer 3 does not reproduce the chgnet_atoms view")
            graph.layers = torch.as_tensor(state)
        parts[part] = data
        print(f"{part}: {len(data)}/{len(split[part][0])} structures", flush=True)
    for choice in args.layers.split(","):
        picked = [int(k) for k in choice.split("+")]
        for graph in (*parts["train"], *parts["val"]):
            graph.chgnet = graph.layers[:, picked].reshape(graph.layers.shape[0], -1)
        score, epoch, seconds = train(
            "cgcnn+chgnet", args.width, args.convs, parts["train"], parts["val"], args
        )
        print(
            f"CGCNN features + CHGNet layers {choice:<10} best validation MAE {score:.4f} at "
            f"epoch {epoch}/{args.epochs} ({seconds:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
