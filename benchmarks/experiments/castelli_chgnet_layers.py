"""Which of CHGNet's layers make the best node inputs for CGCNN on the Castelli perovskites?

The ``chgnet_graph`` view appends each site's CHGNet state after its third of four atom
convolutions (``atom_fea``, the layer CHGNet's magnetic-moment head reads) to CGCNN's 91 atom
features; CGCNN over it is 0.81x CGCNN on the Castelli perovskites (``docs/crystals.md``).
Foundation models often transfer best from a mix of layers, so this script takes the atom states
of every CHGNet 0.3.0 layer (the ``chgnet_atoms`` view with ``atom_layers=[0, 1, 2, 3, 4]``: the
atom embedding and the four atom convolutions, float16 as the view stores them) and trains the
same CGCNN as ``castelli_chgnet_node_features.py`` (width 64, 3 convolutions, its loop and
settings) on the seed-0 split of ``deepfuse-bench crystals --dataset castelli`` with CGCNN's atom
features followed by each choice of layers. Train and
validation rows only (test labels are never read).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/castelli_chgnet_layers.py \\
        --data-dir ../shared/data --cache-dir CACHE

``--layers`` lists the choices, each a ``+``-joined set of layer numbers (0: the atom embedding,
1-4: after each atom convolution; 3 is what ``chgnet_graph`` uses).
"""

from __future__ import annotations

from castelli_chgnet_finetune import load_split
from castelli_chgnet_node_features import graphs, train, training_parser

#: Layer choices tried by default: today's view, the last layer, the last two, all convolutions,
#: everything.
DEFAULT_LAYERS = "3,4,3+4,1+2+3+4,0+1+2+3+4"
#: Every CHGNet layer, computed once; each choice takes its columns.
ALL_LAYERS = [0, 1, 2, 3, 4]
#: Width of one layer's atom state.
STATE_DIM = 64


def main() -> None:
    import torch

    parser = training_parser(__doc__.split("\n")[0])
    parser.add_argument("--layers", default=DEFAULT_LAYERS)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--convs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split(args.data_dir)
    parts = {}
    for part in ("train", "val"):
        parts[part] = graphs(*split[part], args.cache_dir, {"atom_layers": ALL_LAYERS})
        for graph in parts[part]:  # (sites, layers, 64): a choice of layers is a selection
            graph.layers = graph.chgnet.reshape(len(graph.chgnet), len(ALL_LAYERS), STATE_DIM)
        print(f"{part}: {len(parts[part])}/{len(split[part][0])} structures", flush=True)
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
