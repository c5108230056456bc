"""Is CHGNet's own energy prediction a strong feature for the Castelli heats of formation?

Seed-0 split of ``deepfuse-bench crystals --dataset castelli`` (70/15/15); train and validation
rows only (test labels are never read). CHGNet 0.3.0 predicts the energy per atom of each
structure as given (no relaxation); a linear model (ridge) and gradient boosting then map
``[energy, fractional composition]`` to ``heat_ref``, fitted on train and scored on validation.

    python benchmarks/experiments/castelli_chgnet_energy.py --data-dir ../shared/data

Result (2 shared CPU cores, one thread; 177 s of CHGNet for 3,219 structures): validation MAE
composition only 0.410 (ridge) / 0.436 (boosting); energy + composition 0.130 / 0.159 eV. The
best neural models of the benchmark (CGCNN, MatMMFuse, DynamicFusion) reach 0.074-0.087
validation MAE on its seed-0 split (late fusion 0.155, CHGNet vector + MLP 0.211): the
potential's energy (PBE, Materials Project references) does not carry over to RPBE heats of
formation well enough to be worth a view.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np


def chgnet_energies(structures, batch_size: int = 16) -> np.ndarray:
    """Energy per atom (eV) of each structure, NaN where CHGNet cannot build its graph."""
    import torch

    from deepfuse_plugin.feat.chgnet import CHGNetProvider

    provider = CHGNetProvider(batch_size=batch_size)
    network = provider._load()  # the weights-only load of the chgnet view
    energies = np.full(len(structures), np.nan)
    graphs, rows = [], []
    for row, structure in enumerate(structures):
        graph = provider._graph(network, structure)
        if not isinstance(graph, str):
            graphs.append(graph)
            rows.append(row)
    for start in range(0, len(graphs), batch_size):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = network.predict_graph(graphs[start : start + batch_size], task="e")
        for row, prediction in zip(rows[start : start + batch_size], np.atleast_1d(out)):
            energies[row] = float(np.asarray(prediction["e"]).reshape(-1)[0])
    return energies


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    from deepfuse_bench.crystals_castelli import DEFAULT_FRACTIONS, castelli_split
    from deepfuse_plugin.data.perovskites import load_castelli_perovskites

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    data = load_castelli_perovskites(
        os.path.join(args.data_dir, "materials", "perovskites_castelli.csv.gz")
    )
    labels = np.asarray(data.labels, dtype=float).reshape(-1)
    parts = castelli_split(len(data.structures), DEFAULT_FRACTIONS, seed=0)
    rows = np.concatenate([parts["train"], parts["val"]])
    energy = np.full(len(labels), np.nan)
    energy[rows] = chgnet_energies([data.structures[i] for i in rows])
    elements = sorted({el.symbol for s in data.structures for el in s.composition})
    composition = np.array(
        [[s.composition.fractional_composition[e] for e in elements] for s in data.structures]
    )
    train, val = (p[np.isfinite(energy[p])] for p in (parts["train"], parts["val"]))
    for name, features in [
        ("composition", composition),
        ("energy + composition", np.c_[energy, composition]),
    ]:
        for model in (
            Ridge(alpha=1e-3),
            HistGradientBoostingRegressor(max_iter=800, learning_rate=0.05, random_state=0),
        ):
            model.fit(features[train], labels[train])
            mae = np.abs(model.predict(features[val]) - labels[val]).mean()
            print(f"{name:22s} {type(model).__name__:32s} validation MAE {mae:.3f}")


if __name__ == "__main__":
    main()
