"""``deepfuse-bench crystals``: its options (:func:`add_parser`) and the call they make
(:func:`run_from_args` -> :func:`~deepfuse_bench.crystals.run_crystal_bench`).

Examples
--------
>>> from deepfuse_bench.cli import build_parser
>>> args = build_parser().parse_args(["crystals", "--dataset", "castelli", "--seeds", "0,1,2"])
>>> args.dataset, args.seeds, args.lr_schedule, args.early_stopping, args.chgnet_layers
('castelli', [0, 1, 2], 'cosine', 10, None)
>>> build_parser().parse_args(["crystals", "--chgnet-layers", "3,4"]).chgnet_layers
[3, 4]
"""

from __future__ import annotations

import argparse
from typing import Any

from deepfuse_plugin.cli import _csv_list, _positive_int
from deepfuse_plugin.cli_options import chgnet_layers


def _seeds(text: str) -> list[int]:
    return [int(x) for x in _csv_list(text)]


def _fractions(text: str) -> list[float]:
    return [float(x) for x in _csv_list(text)]


def _patience(text: str) -> int | None:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = off), got {value}")
    return value or None


def _clip(text: str) -> float | None:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = off), got {value}")
    return value or None


def add_parser(sub: Any) -> None:
    """``deepfuse-bench crystals`` on the harness's subcommand parser."""
    from deepfuse_bench.crystals import DATASETS, DEFAULT_EPOCHS, DEFAULT_SCHEDULE
    from deepfuse_bench.crystals_castelli import DEFAULT_FRACTIONS, DEFAULT_N_CALIBRATION
    from deepfuse_bench.crystals_data import DEFAULT_MODELS, MIN_FORMATION_ENERGY, MODELS
    from deepfuse_plugin.models._schedules import LR_SCHEDULES

    crystals = sub.add_parser(
        "crystals",
        help="crystal property benchmark: mp36k formation energy (MEGNet split) or the "
        "Castelli perovskites; CGCNN, text-only and fusion models with and without the "
        "pretrained CHGNet view, zero-shot families and featurization speed",
    )
    crystals.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mp36k",
        help="mp36k (MEGNet split) or castelli (seeded random split) (default: %(default)s)",
    )
    crystals.add_argument(
        "--data-dir",
        default=None,
        help="folder with materials/mp36k.extxyz.xz and materials/perovskites_castelli.csv.gz",
    )
    crystals.add_argument(
        "--data-file",
        default=None,
        help="another extended XYZ file (info keys material_id, split, formation_energy_per_atom)",
    )
    crystals.add_argument(
        "--castelli-file", default=None, help="the Castelli CSV (default: under --data-dir)"
    )
    for part in ("train", "val", "test"):
        crystals.add_argument(
            f"--n-{part}",
            type=_positive_int,
            default=None,
            help=f"first N {part} structures after a seeded shuffle (default: mp36k "
            "2000/500/500, castelli the whole part)",
        )
    crystals.add_argument(
        "--full", action="store_true", help="mp36k: every row of every split (use a GPU)"
    )
    crystals.add_argument(
        "--split-fractions",
        type=_fractions,
        default=list(DEFAULT_FRACTIONS),
        help="castelli: train,val,test shares (default: 0.7,0.15,0.15)",
    )
    crystals.add_argument(
        "--subset-seed",
        type=int,
        default=0,
        help="seed of the subset shuffle, the castelli split and the calibration sample",
    )
    crystals.add_argument(
        "--seeds", type=_seeds, default=[0], help="model seeds, e.g. 0,1,2 (default: 0)"
    )
    _add_training_options(crystals, DEFAULT_EPOCHS, DEFAULT_SCHEDULE, LR_SCHEDULES)
    crystals.add_argument(
        "--models",
        type=_csv_list,
        default=list(DEFAULT_MODELS),
        help=f"comma-separated, from {','.join(MODELS)} (default: {','.join(DEFAULT_MODELS)})",
    )
    crystals.add_argument(
        "--family",
        default="sulfides",
        help="mp36k: family carved out of every split and evaluated zero-shot on the "
        "test split's members; 'none' disables (default: %(default)s)",
    )
    crystals.add_argument(
        "--n-zero-shot",
        type=_positive_int,
        default=None,
        help="at most N family structures (default: all in the test split)",
    )
    crystals.add_argument(
        "--min-formation-energy",
        type=float,
        default=MIN_FORMATION_ENERGY,
        help="mp36k: drop rows below this eV/atom (default: %(default)s)",
    )
    crystals.add_argument(
        "--zero-shot-castelli",
        action="store_true",
        help="mp36k: every trained model also predicts the Castelli perovskites; raw MAE and "
        "MAE after a linear recalibration on a small labelled sample",
    )
    crystals.add_argument(
        "--n-calibration",
        type=_positive_int,
        default=DEFAULT_N_CALIBRATION,
        help="Castelli structures the recalibration is fitted on (default: %(default)s)",
    )
    crystals.add_argument(
        "--n-castelli-eval",
        type=_positive_int,
        default=None,
        help="score the zero-shot on at most N other perovskites (default: all)",
    )
    _add_run_options(crystals)


def _add_training_options(
    parser: argparse.ArgumentParser,
    epochs: int,
    schedule: dict[str, Any],
    lr_schedules: tuple[str, ...],
) -> None:
    parser.add_argument("--epochs", type=_positive_int, default=epochs, help="at most N epochs")
    parser.add_argument("--eval-every", type=_positive_int, default=1)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--lr-schedule",
        choices=lr_schedules,
        default=schedule["lr_schedule"],
        help="learning-rate schedule of every model (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        default=schedule["warmup_epochs"],
        help="linear warm-up epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--grad-clip",
        type=_clip,
        default=schedule["grad_clip"],
        help="clip the gradient norm to this; 0 = off (default: %(default)s)",
    )
    parser.add_argument(
        "--early-stopping",
        type=_patience,
        default=schedule["early_stopping"],
        help="stop after N validations without improvement; 0 = off (default: %(default)s)",
    )
    parser.add_argument(
        "--chgnet-layers",
        type=chgnet_layers,  # CHGNet's atom_fea alone is None: such a table merges with older ones
        default=None,
        help="CHGNet layers whose atom states, side by side, make the chgnet_atoms and "
        "chgnet_graph views: 0 the atom embedding, 1-4 after each atom convolution (default: 3, "
        "CHGNet's atom_fea; e.g. 3,4)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-timing",
        type=_positive_int,
        default=200,
        help="structures timed with the fast describer (default: %(default)s)",
    )
    parser.add_argument(
        "--robocrys-sample",
        type=int,
        default=10,
        help="structures timed with robocrys, seconds each; 0 skips (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="featurized datasets and description/embedding caches (default: "
        "$DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse)",
    )
    parser.add_argument(
        "--out",
        default="benchmarks",
        help="writes crystals.{json,md,png} (castelli: crystals_castelli.*) (default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in the output JSON and skip them; continue an "
        "interrupted run from its last finished epoch",
    )
    parser.add_argument("--n-jobs", type=_positive_int, default=1, help="featurization processes")


def run_from_args(args: argparse.Namespace, progress: bool, command: str) -> None:
    from deepfuse_bench.crystals import run_crystal_bench

    run_crystal_bench(
        data_dir=args.data_dir,
        data_file=args.data_file,
        dataset=args.dataset,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        full=args.full,
        subset_seed=args.subset_seed,
        seeds=args.seeds,
        epochs=args.epochs,
        eval_every=args.eval_every,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        grad_clip=args.grad_clip,
        early_stopping=args.early_stopping,
        chgnet_layers=args.chgnet_layers,
        models=args.models,
        family=None if args.family == "none" else args.family,
        n_zero_shot=args.n_zero_shot,
        min_formation_energy=args.min_formation_energy,
        split_fractions=args.split_fractions,
        castelli_file=args.castelli_file,
        zero_shot_castelli=args.zero_shot_castelli,
        n_calibration=args.n_calibration,
        n_castelli_eval=args.n_castelli_eval,
        n_timing=args.n_timing,
        robocrys_sample=args.robocrys_sample,
        cache_dir=args.cache_dir,
        out=args.out,
        resume=args.resume,
        n_jobs=args.n_jobs,
        progress=progress,
        command=command,
    )
