"""Do CHGNet's frozen atom states help more as CGCNN's node inputs than as a view to attend over?

Seed-0 split of ``deepfuse-bench crystals --dataset castelli`` (70/15/15); train and validation
rows only (test labels are never read). The same CGCNN (deepfuse's ``CGCNNEncoder``: atom width
64 and 3 convolutions, or each ``--shapes`` ``WIDTHxCONVS``; a 128-d crystal vector and a linear
head) is trained with three kinds of node input: CGCNN's own 91-d atom features (``cgcnn``), those
concatenated with CHGNet 0.3.0's 64-d state of each site (``cgcnn+chgnet``), and the CHGNet
states alone (``chgnet``). Same loop
for all: normalized labels, MSE, AdamW (learning rate 1e-3), one-cycle schedule (5% warm-up,
cosine decay), gradients clipped at norm 1, batch size 64, the epoch with the best validation MAE
kept.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/castelli_chgnet_node_features.py \\
        --data-dir ../shared/data

The benchmark's seed-0 runs on the same split (``benchmarks/crystals-castelli``, 60 epochs at
most) reach validation MAE 0.079 (CGCNN), 0.079 (MatMMFuse) and 0.071 (MatMMFuse + CHGNet atom
states as a third view).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from castelli_chgnet_finetune import load_split  # the same seed-0 split (this script's folder)

NODE_INPUTS = ("cgcnn", "cgcnn+chgnet", "chgnet")
VIEWS = ("graph", "chgnet_atoms")


def graphs(structures, labels, cache_dir: str | None, chgnet_options: dict | None = None):
    """PyG graphs with both node inputs (``x`` CGCNN's, ``chgnet`` CHGNet's), for the structures
    that have both views (the caller prints how many); ``chgnet_options``: the CHGNet provider's
    (e.g. ``atom_layers``)."""
    import torch
    from torch_geometric.data import Data

    from deepfuse_plugin.feat.crystal import CrystalMultiModalFeaturizer
    from deepfuse_plugin.modalities import MultiModalSample

    options = {"chgnet": chgnet_options} if chgnet_options else None
    featurizer = CrystalMultiModalFeaturizer(
        VIEWS, cache_dir=cache_dir, progress=True, pretrained_options=options
    )
    out = []
    for sample, y in zip(featurizer.featurize(structures), labels):
        if not isinstance(sample, MultiModalSample) or not all(sample.mask(VIEWS)):
            continue
        graph, atoms = sample.values["graph"], sample.values["chgnet_atoms"]
        out.append(
            Data(
                x=torch.as_tensor(graph.node_features, dtype=torch.float32),
                chgnet=torch.as_tensor(np.asarray(atoms, dtype=np.float32)),
                edge_index=torch.as_tensor(graph.edge_index, dtype=torch.long),
                edge_attr=torch.as_tensor(graph.edge_features, dtype=torch.float32),
                y=torch.tensor([y]),
            )
        )
    return out


def node_input(batch, kind: str):
    import torch

    if kind == "cgcnn":
        return batch.x
    if kind == "chgnet":
        return batch.chgnet
    return torch.cat([batch.x, batch.chgnet], dim=-1)


class Regressor:
    def __init__(self, kind: str, node_dim: int, edge_dim: int, width: int, n_conv: int):
        import torch

        from deepfuse_plugin.nn.cgcnn import CGCNNEncoder

        self.kind = kind
        self.encoder = CGCNNEncoder(
            node_dim, edge_dim, out_dim=128, atom_fea_len=width, n_conv=n_conv
        )
        self.head = torch.nn.Linear(128, 1)
        self.modules = torch.nn.ModuleList([self.encoder, self.head])

    def __call__(self, batch):
        # a loader collates a fresh batch every time, so replacing its node input is safe
        batch.x = node_input(batch, self.kind)
        return self.head(self.encoder(batch).pooled).squeeze(-1)


def validation_mae(model, loader, mean: float, std: float) -> float:
    import torch

    model.modules.eval()
    errors = []
    with torch.no_grad():
        for batch in loader:
            predicted = model(batch) * std + mean
            errors.append((predicted - batch.y).abs())
    return float(torch.cat(errors).mean())


def train(kind, width, n_conv, train_graphs, val_graphs, args) -> tuple[float, int, float]:
    import torch
    from torch_geometric.loader import DataLoader

    torch.manual_seed(args.seed)
    y = torch.cat([g.y for g in train_graphs])
    mean, std = float(y.mean()), float(y.std())
    probe = train_graphs[0]
    node_dim = node_input(probe, kind).shape[-1]
    model = Regressor(kind, node_dim, probe.edge_attr.shape[-1], width, n_conv)
    optimizer = torch.optim.AdamW(model.modules.parameters(), lr=args.lr, weight_decay=1e-5)
    loader = DataLoader(train_graphs, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_graphs, batch_size=256)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(loader), pct_start=0.05
    )
    best, start = (math.inf, 0), time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.modules.train()
        for batch in loader:
            loss = torch.nn.functional.mse_loss(model(batch), (batch.y - mean) / std)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.modules.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        score = validation_mae(model, val_loader, mean, std)
        best = min(best, (score, epoch))
        if epoch % 10 == 0 or epoch == args.epochs:
            print(
                f"  {kind:<13} {width}x{n_conv} epoch {epoch:3d}  validation MAE {score:.4f}",
                flush=True,
            )
    return best[0], best[1], time.perf_counter() - start


def training_parser(description: str) -> argparse.ArgumentParser:
    """The options of :func:`train` (and the data): shared with ``castelli_chgnet_layers.py``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="featurizer cache (default: its own)")
    return parser


def main() -> None:
    import torch

    parser = training_parser(__doc__.split("\n")[0])
    parser.add_argument("--inputs", default=",".join(NODE_INPUTS))
    parser.add_argument(
        "--shapes",
        default="64x3",
        help="comma-separated WIDTHxCONVS of the CGCNN (atom width x convolutions), each "
        "trained with every node input",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split(args.data_dir)
    parts = {part: graphs(*split[part], args.cache_dir) for part in ("train", "val")}
    print(
        f"graphs with both views: train {len(parts['train'])}/{len(split['train'][0])}, "
        f"val {len(parts['val'])}/{len(split['val'][0])}",
        flush=True,
    )
    for shape in args.shapes.split(","):
        width, n_conv = (int(v) for v in shape.split("x"))
        for kind in args.inputs.split(","):
            score, epoch, seconds = train(kind, width, n_conv, parts["train"], parts["val"], args)
            print(
                f"{kind:<13} {shape:<6} best validation MAE {score:.4f} at epoch "
                f"{epoch}/{args.epochs} ({seconds:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
