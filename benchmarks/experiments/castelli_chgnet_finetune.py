"""Does fine-tuning CHGNet (instead of reading its frozen features) fit the Castelli heats of
formation better than CGCNN from scratch?

Seed-0 split of ``deepfuse-bench crystals --dataset castelli`` (70/15/15); train and validation
rows only (test labels are never read), so the answer can choose what to build next without
touching the benchmark's test split. CHGNet 0.3.0 (the chgnet view's weights-only load) is
trained end to end with a small head on its crystal feature (``crystal_fea``, 64-d): labels
normalized on train, MSE loss, AdamW with a 10x lower learning rate for the pretrained network
than for the head, one-cycle schedule (5% warm-up, cosine decay), gradients clipped at norm 1,
the epoch with the best validation MAE kept. ``--frozen`` trains the head alone (the network
stays as shipped), the comparison that isolates fine-tuning.

    python benchmarks/experiments/castelli_chgnet_finetune.py --data-dir ../shared/data
    python benchmarks/experiments/castelli_chgnet_finetune.py --data-dir ../shared/data --frozen

The benchmark's seed-0 runs on the same split (``benchmarks/crystals-castelli``, 60 epochs at
most) reach validation MAE 0.079 (CGCNN), 0.079 (MatMMFuse), 0.071 (MatMMFuse + frozen CHGNet
atom states) and 0.212 (frozen CHGNet crystal vector + MLP).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import numpy as np


def load_split(data_dir: str):
    """Structures and labels of the seed-0 train and validation parts (test left unread)."""
    from deepfuse_bench.crystals_castelli import DEFAULT_FRACTIONS, castelli_split
    from deepfuse_plugin.data.perovskites import load_castelli_perovskites

    data = load_castelli_perovskites(
        os.path.join(data_dir, "materials", "perovskites_castelli.csv.gz")
    )
    labels = np.asarray(data.labels, dtype=np.float32).reshape(-1)
    parts = castelli_split(len(data.structures), DEFAULT_FRACTIONS, seed=0)
    return {
        part: ([data.structures[i] for i in parts[part]], labels[parts[part]])
        for part in ("train", "val")
    }


def chgnet_graphs(parts):
    """CHGNet 0.3.0 (loaded once) and, per part, its graphs and the rows they belong to (rows
    it cannot build a graph for are dropped; the caller prints how many are kept)."""
    from deepfuse_plugin.feat.chgnet import CHGNetProvider

    provider = CHGNetProvider()
    network = provider._load()
    graphs = {}
    for part, structures in parts.items():
        built = [provider._graph(network, s) for s in structures]
        keep = [i for i, g in enumerate(built) if not isinstance(g, str)]
        graphs[part] = ([built[i] for i in keep], np.asarray(keep))
    return network, graphs


class FineTuned:
    """CHGNet's crystal feature -> a two-layer head, on normalized labels."""

    def __init__(self, network, mean: float, std: float, frozen: bool):
        import torch

        self.network, self.mean, self.std, self.frozen = network, mean, std, frozen
        dim = int(network.mlp.layers[0].in_features) if hasattr(network, "mlp") else 64
        self.head = torch.nn.Sequential(
            torch.nn.Linear(dim, 64), torch.nn.SiLU(), torch.nn.Linear(64, 1)
        )
        for p in network.parameters():
            p.requires_grad_(not frozen)

    def predict_normalized(self, graphs):
        features = self.network(graphs, task="e", return_crystal_feas=True)["crystal_fea"]
        return self.head(features).squeeze(-1)

    def parameter_groups(self, lr: float):
        groups = [{"params": self.head.parameters(), "lr": lr}]
        if not self.frozen:
            groups.append({"params": self.network.parameters(), "lr": lr / 10})
        return groups


def mae(model, graphs, labels, batch_size: int) -> float:
    import torch

    model.network.eval()
    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(graphs), batch_size):
            out.append(model.predict_normalized(graphs[start : start + batch_size]))
    predicted = torch.cat(out).numpy() * model.std + model.mean
    return float(np.abs(predicted - labels).mean())


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frozen", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    split = load_split(args.data_dir)
    network, graphs = chgnet_graphs({part: split[part][0] for part in ("train", "val")})
    (train_graphs, train_rows), (val_graphs, val_rows) = graphs["train"], graphs["val"]
    y_train, y_val = split["train"][1][train_rows], split["val"][1][val_rows]
    print(
        f"graphs: train {len(train_graphs)}/{len(split['train'][0])}, "
        f"val {len(val_graphs)}/{len(split['val'][0])}",
        flush=True,
    )
    mean, std = float(y_train.mean()), float(y_train.std())
    model = FineTuned(network, mean, std, args.frozen)
    optimizer = torch.optim.AdamW(model.parameter_groups(args.lr), weight_decay=1e-5)
    steps = args.epochs * math.ceil(len(train_graphs) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=steps,
        pct_start=0.05,
    )
    target = torch.from_numpy((y_train - mean) / std)
    rng = np.random.default_rng(args.seed)
    best = (math.inf, 0)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.network.train(not args.frozen)
        order = rng.permutation(len(train_graphs))
        for first in range(0, len(order), args.batch_size):
            rows = order[first : first + args.batch_size]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predicted = model.predict_normalized([train_graphs[i] for i in rows])
            loss = torch.nn.functional.mse_loss(predicted, target[rows])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], 1.0
            )
            optimizer.step()
            schedule.step()
        score = mae(model, val_graphs, y_val, 128)
        best = min(best, (score, epoch))
        print(
            f"epoch {epoch:3d}  validation MAE {score:.4f}  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print(
        f"best validation MAE {best[0]:.4f} at epoch {best[1]} "
        f"({'frozen' if args.frozen else 'fine-tuned'} CHGNet, {args.epochs} epochs)"
    )


if __name__ == "__main__":
    main()
