"""pyinstrument profiles of deepfuse's featurization, collate and training epoch
(``deepfuse-bench speed --profile``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from deepfuse_bench import featurize as fb
from deepfuse_bench.speed_runs import BATCH_SIZE, build_model
from deepfuse_plugin import workflows as wf


def profiler_class() -> type:
    """pyinstrument's ``Profiler`` (an optional dependency).

    Raises
    ------
    WorkflowError
        pyinstrument is not installed.
    """
    try:
        from pyinstrument import Profiler
    except ImportError as err:
        raise wf.WorkflowError(
            "--profile needs pyinstrument: pip install pyinstrument "
            "(or the harness's extra: pip install -e 'benchmarks[profile]')"
        ) from err
    return Profiler


def write_profiles(
    smiles: Sequence[str], datasets: dict[str, Any], folder: str, scratch: str
) -> list[str]:
    """pyinstrument text reports of featurization, collate and one training epoch of
    DynamicFusionModel (after a warm-up epoch) in ``folder``; returns the paths."""
    from deepfuse_plugin.data.collate import collate_samples

    Profiler = profiler_class()

    model = build_model("dynamic", os.path.join(scratch, "profile"))
    dataset = datasets["dynamic"]
    samples = list(dataset.X)
    model.fit(dataset, nb_epoch=1, checkpoint_interval=0)
    featurize = fb.deepfuse_featurizer(1)
    featurize(smiles[: fb.WARMUP_MOLECULES])
    stages: dict[str, Callable[[], Any]] = {
        "featurize": partial(featurize, smiles),
        "collate": lambda: [
            collate_samples(samples[i : i + BATCH_SIZE], model.modalities)
            for i in range(0, len(samples), BATCH_SIZE)
        ],
        "train_epoch": partial(model.fit, dataset, nb_epoch=1, checkpoint_interval=0),
    }
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fn in stages.items():
        profiler = Profiler(interval=0.0005)
        with fb.QuietLogs():
            profiler.start()
            fn()
            profiler.stop()
        paths.append(os.path.join(folder, f"{name}.txt"))
        with open(paths[-1], "w") as fh:
            fh.write(profiler.output_text(unicode=False, color=False))
    return paths
