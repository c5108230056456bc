"""The ``deepfuse-bench`` command (also ``python -m deepfuse_bench``).

::

    deepfuse-bench featurize --data-dir DIR [--n 3000]
    deepfuse-bench moleculenet [--suite reduced|full] [--datasets bbbp,delaney] [--seeds 0,1,2]
                               [--data-dir DIR] [--processes N]
                               [--models minimol_mlp,dynamic_pretrained,...]
                               [--pretrained NAME_OR_FOLDER] [--embedding-cache-dir DIR]
    deepfuse-bench merge benchmarks/full-hiv [...] --out benchmarks/full
    deepfuse-bench merge runs/crystals-seed2 [...] --out benchmarks/crystals-mp36k
    deepfuse-bench crystals --data-dir DIR [--dataset mp36k|castelli] [--seeds 0,1,2]
                            [--n-train 2000 --n-val 500 --n-test 500 | --full] [--resume]
                            [--lr-schedule cosine] [--zero-shot-castelli]
    deepfuse-bench speed --data-dir DIR [--n-train 2000] [--epochs 2] [--no-chemprop] [--profile]
    deepfuse-bench featurize-disk [--sizes 10000,100000,1000000] [--jobs 1,2] [--out benchmarks]
    deepfuse-bench train-scaling --data-dir DIR [--epochs 5] [--processes 2] [--out benchmarks]

Argument parsing only; the work is done by the functions of :mod:`deepfuse_bench` that tests and
notebooks call directly. ``main(argv)`` returns the exit code (0 success, 2 bad input or usage).

Examples
--------
>>> from deepfuse_bench.cli import build_parser
>>> build_parser().parse_args(["featurize", "--data-dir", "data"]).n
3000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence

from deepfuse_bench import crystals_cli, gains, plainfit, scaling_train
from deepfuse_plugin.cli import _csv_list, _positive_int, add_global_options

logger = logging.getLogger("deepfuse_bench.cli")
PROG = "deepfuse-bench"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``featurize``, ``moleculenet``, ``merge``, ``crystals``,
    ``speed``, ``plain-fit``, ``gains``, ``featurize-disk``, ``train-scaling``)."""
    from deepfuse_bench import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmarks of the deepfuse models "
        "against DeepChem and chemprop: accuracy, speed, memory.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    for add in (
        _add_featurize_parser,
        _add_moleculenet_parser,
        _add_merge_parser,
        crystals_cli.add_parser,
        _add_speed_parser,
        plainfit.add_parser,
        gains.add_parser,
        _add_featurize_disk_parser,
        scaling_train.add_parser,
    ):
        add(sub)
    return parser


def _add_featurize_parser(sub: argparse._SubParsersAction) -> None:
    """``deepfuse-bench featurize`` (:func:`deepfuse_bench.featurize.run_featurize_bench`)."""
    featurize = sub.add_parser("featurize", help="featurization speed vs DeepChem")
    featurize.add_argument(
        "--data-dir", required=True, help="folder containing moleculenet/HIV.csv"
    )
    featurize.add_argument("--n", type=_positive_int, default=3000, help="number of molecules")
    featurize.add_argument("--repeats", type=_positive_int, default=3)
    featurize.add_argument(
        "--out-dir",
        default="benchmarks",
        help="where featurize.json/.md are written (default: %(default)s)",
    )
    featurize.add_argument("--no-parallel", action="store_true", help="skip the n_jobs=2 figure")


def _add_moleculenet_parser(sub: argparse._SubParsersAction) -> None:
    """``deepfuse-bench moleculenet`` (:func:`deepfuse_bench.moleculenet.run_moleculenet_bench`)."""
    from deepfuse_plugin.workflows import SPLITS

    molnet = sub.add_parser(
        "moleculenet",
        help="MoleculeNet accuracy: deepfuse models vs DeepChem baselines on the same split",
    )
    molnet.add_argument(
        "--suite",
        choices=("reduced", "full"),
        default="reduced",
        help="defaults for datasets/seeds/epochs: reduced = bbbp,delaney, seed 0, "
        "30 epochs; full = 7 datasets incl. HIV, seeds 0,1,2 (default: "
        "%(default)s)",
    )
    molnet.add_argument(
        "--datasets",
        type=_csv_list,
        default=None,
        help="DeepChem molnet loader names, e.g. bbbp,bace_classification,"
        "clintox,hiv,tox21,delaney,sampl,lipo",
    )
    molnet.add_argument(
        "--data-dir",
        default=None,
        help="folder with the DeepChem files (or its moleculenet/ subfolder); "
        "default: DeepChem's data folder ($DEEPCHEM_DATA_DIR, else the "
        "temporary folder), where its loaders download missing files",
    )
    molnet.add_argument(
        "--seeds",
        type=lambda t: [int(x) for x in _csv_list(t)],
        default=None,
        help="model seeds, e.g. 0,1,2",
    )
    molnet.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs for every neural model (default: the suite's, 30)",
    )
    molnet.add_argument(
        "--eval-every",
        type=_positive_int,
        default=1,
        help="validate every N epochs, keep the best (default: %(default)s)",
    )
    molnet.add_argument("--batch-size", type=_positive_int, default=64)
    molnet.add_argument("--learning-rate", type=float, default=1e-3)
    molnet.add_argument("--split", choices=SPLITS, default="scaffold")
    molnet.add_argument("--split-seed", type=int, default=0, help="seed of --split random")
    molnet.add_argument(
        "--models",
        type=_csv_list,
        default=None,
        help="default: every fusion model, unimodal_ecfp,unimodal_graph,"
        "unimodal_smiles, dc_mlp,dc_rf,dc_dmpnn,chemprop. Opt-in: minimol_mlp "
        "(MiniMol embedding + MLP head), dynamic_minimol,late_minimol (the three "
        "views + MiniMol, from scratch), dynamic_pretrained,late_pretrained (the "
        "same with encoders from --pretrained), dynamic_ssl,late_ssl (encoders from "
        "--pretrained, the three views without MiniMol)",
    )
    molnet.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME_OR_FOLDER",
        help="checkpoint of the *_pretrained and *_ssl models: a shipped name (`deepfuse "
        "pretrained`) or a folder written by `deepfuse pretrain` (default: the "
        "first shipped checkpoint; without one those models are refused)",
    )
    molnet.add_argument(
        "--embedding-cache-dir",
        default=None,
        help="cache of the MiniMol vectors (default: $DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse)",
    )
    molnet.add_argument(
        "--missing-views",
        action="store_true",
        help="also score each deepfuse model with two or more views on the test split with "
        "each view absent at inference (a table and plot in the report)",
    )
    molnet.add_argument(
        "--out",
        default="benchmarks",
        help="writes moleculenet.{md,json,png} and splits/ (default: %(default)s)",
    )
    molnet.add_argument(
        "--n-jobs",
        type=_positive_int,
        default=1,
        help="featurization processes and random-forest jobs",
    )
    molnet.add_argument(
        "--cache-dir",
        default=None,
        help="keep DeepChem's featurized datasets here (default: temporary)",
    )
    molnet.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT/moleculenet.json and skip them; "
        "continue an interrupted run from its last finished epoch",
    )
    molnet.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="run each dataset's runs in this many worker processes (Linux/"
        "macOS), each with torch threads / processes threads; results do not "
        "change (default: %(default)s)",
    )
    molnet.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="first N molecules of each dataset (quick runs)",
    )
    molnet.add_argument(
        "--length-bucket-pool",
        type=int,
        default=0,
        help="deepfuse models: length-bucketed training batches from pools of "
        "this many batches (faster SMILES Transformer on a CPU; changes results). "
        "Default 0: the models' default shuffled batches",
    )


def _add_merge_parser(sub: argparse._SubParsersAction) -> None:
    """``deepfuse-bench merge`` (:func:`deepfuse_bench.merge.merge_results`)."""
    merge = sub.add_parser(
        "merge",
        help="merge 'moleculenet' or 'crystals' output folders (e.g. datasets or seeds run in "
        "parallel) into one table",
    )
    merge.add_argument(
        "sources", nargs="+", help="folders holding moleculenet.json, or crystals*.json"
    )
    merge.add_argument(
        "--out",
        required=True,
        help="folder to merge into; its own runs are kept, its moleculenet."
        "{md,json,png} and splits/ (or crystals*.{md,json,png}) rewritten",
    )
    merge.add_argument(
        "--replace",
        action="store_true",
        help="runs of the sources replace the same dataset/model/seed runs of "
        "--out (a model re-run after a change of its defaults); recorded in the "
        "notes",
    )
    merge.add_argument(
        "--replace-rows",
        action="store_true",
        help="--replace, and a source's dataset/model row replaces the whole row of "
        "--out, dropping the seeds it did not re-run (no row averages runs made "
        "under different settings); recorded in the notes",
    )


def _merge(args: argparse.Namespace) -> None:
    """Crystal results (``crystals*.json``) or molecule results (``moleculenet.json``)."""
    from deepfuse_bench.crystals_merge import crystal_stems, merge_crystal_results
    from deepfuse_bench.merge import merge_results
    from deepfuse_plugin.workflows import WorkflowError

    if any(crystal_stems(folder) for folder in [*args.sources, args.out]):
        if args.replace_rows:
            raise WorkflowError(
                "--replace-rows is for 'moleculenet' tables; crystal runs are replaced one "
                "(model, seed) at a time with --replace"
            )
        merge_crystal_results(args.sources, args.out, replace=args.replace)
    else:
        merge_results(args.sources, args.out, replace=args.replace, replace_rows=args.replace_rows)


def _add_speed_parser(sub: argparse._SubParsersAction) -> None:
    """``deepfuse-bench speed`` (:func:`deepfuse_bench.speed.run_speed_bench`)."""
    speed = sub.add_parser(
        "speed",
        help="featurization, training and inference speed and "
        "peak memory vs DeepChem (and chemprop), as ratios",
    )
    speed.add_argument("--data-dir", required=True, help="folder containing moleculenet/HIV.csv")
    speed.add_argument(
        "--n-featurize",
        type=_positive_int,
        default=3000,
        help="molecules timed for featurization (default: %(default)s)",
    )
    speed.add_argument(
        "--n-train",
        type=_positive_int,
        default=2000,
        help="molecules for training throughput and inference (default: %(default)s)",
    )
    speed.add_argument(
        "--epochs",
        type=_positive_int,
        default=2,
        help="timed epochs after one warm-up epoch (default: %(default)s)",
    )
    speed.add_argument(
        "--repeats",
        type=_positive_int,
        default=3,
        help="featurization repeats, best reported (default: %(default)s)",
    )
    speed.add_argument(
        "--latency-calls",
        type=_positive_int,
        default=200,
        help="timed one-molecule predictions per model (default: %(default)s)",
    )
    speed.add_argument(
        "--n-memory",
        type=_positive_int,
        default=None,
        help="molecules for the peak-memory child processes (default: all of HIV.csv, 41,127)",
    )
    speed.add_argument(
        "--memory-epochs",
        type=_positive_int,
        default=1,
        help="training epochs in the peak-memory children (default: %(default)s)",
    )
    speed.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    speed.add_argument(
        "--no-chemprop",
        action="store_true",
        help="skip chemprop (otherwise its environment is created on first use)",
    )
    speed.add_argument(
        "--chemprop-venv",
        default=None,
        help="chemprop's virtual environment (default: .venv-chemprop)",
    )
    speed.add_argument(
        "--out-dir",
        default="benchmarks",
        help="where speed.json/.md (and profiles/) are written (default: %(default)s)",
    )
    speed.add_argument(
        "--profile",
        action="store_true",
        help="also write pyinstrument profiles to OUT_DIR/profiles",
    )


def _add_featurize_disk_parser(sub: argparse._SubParsersAction) -> None:
    """``deepfuse-bench featurize-disk`` (:func:`deepfuse_bench.scaling.run_scaling_bench`)."""
    from deepfuse_bench.scaling import DEFAULT_JOBS, DEFAULT_SIZES

    disk = sub.add_parser(
        "featurize-disk",
        help="out-of-core featurization into a DiskDataset: peak memory at growing sizes, "
        "molecules/s with 1 and 2 processes",
    )
    disk.add_argument(
        "--sizes",
        type=lambda t: [_positive_int(x) for x in _csv_list(t)],
        default=list(DEFAULT_SIZES),
        help="molecules per run, seeded subsets of MOSES (default: %(default)s; 1M takes "
        "about 10 min per process count on 2 idle cores and ~10 GiB of scratch disk)",
    )
    disk.add_argument(
        "--jobs",
        type=lambda t: [_positive_int(x) for x in _csv_list(t)],
        default=list(DEFAULT_JOBS),
        help="process counts (default: %(default)s)",
    )
    disk.add_argument("--shard-size", type=_positive_int, default=4096)
    disk.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    disk.add_argument("--corpus", default=None, help="a SMILES file instead of MOSES")
    disk.add_argument("--scratch", default=None, help="folder for subsets and featurized data")
    disk.add_argument(
        "--out", default="benchmarks", help="writes featurize_disk.{json,md} (default: %(default)s)"
    )


def _configure_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("deepfuse_plugin", "deepfuse_bench"):
        logging.getLogger(name).setLevel(level)
    if not verbose:  # DeepChem logs every 1000 molecules and each checkpoint at INFO/WARNING
        logging.getLogger("deepchem").setLevel(logging.ERROR)
    # DeepChem's fit averages a loss tensor with float(); torch warns about it on every call
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")


def _run(args: argparse.Namespace, command: str) -> None:
    progress = not args.no_progress
    if args.benchmark == "featurize":
        from deepfuse_bench.featurize import run_featurize_bench

        run_featurize_bench(
            data_dir=args.data_dir,
            n=args.n,
            repeats=args.repeats,
            out_dir=args.out_dir,
            parallel=not args.no_parallel,
        )
    elif args.benchmark == "moleculenet":
        from deepfuse_bench.moleculenet import run_moleculenet_bench

        run_moleculenet_bench(
            datasets=args.datasets,
            data_dir=args.data_dir,
            seeds=args.seeds,
            epochs=args.epochs,
            split=args.split,
            split_seed=args.split_seed,
            models=args.models,
            out=args.out,
            suite=args.suite,
            eval_every=args.eval_every,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            n_jobs=args.n_jobs,
            cache_dir=args.cache_dir,
            resume=args.resume,
            limit=args.limit,
            length_bucket_pool=args.length_bucket_pool,
            processes=args.processes,
            progress=progress,
            command=command,
            pretrained=args.pretrained,
            embedding_cache_dir=args.embedding_cache_dir,
            missing_views=args.missing_views,
        )
    elif args.benchmark == "gains":
        gains.run_from_args(args)
    elif args.benchmark == "plain-fit":
        plainfit.run_from_args(args)
    elif args.benchmark == "train-scaling":
        scaling_train.run_from_args(args)
    elif args.benchmark == "merge":
        _merge(args)
    elif args.benchmark == "crystals":
        crystals_cli.run_from_args(args, progress, command)
    elif args.benchmark == "featurize-disk":
        from deepfuse_bench.scaling import run_scaling_bench

        run_scaling_bench(
            sizes=args.sizes,
            jobs=args.jobs,
            out=args.out,
            shard_size=args.shard_size,
            seed=args.seed,
            corpus=args.corpus,
            scratch=args.scratch,
        )
    elif args.benchmark == "speed":
        from deepfuse_bench.speed import run_speed_bench

        run_speed_bench(
            data_dir=args.data_dir,
            n_featurize=args.n_featurize,
            n_train=args.n_train,
            epochs=args.epochs,
            repeats=args.repeats,
            latency_calls=args.latency_calls,
            n_memory=args.n_memory,
            memory=not args.no_memory,
            memory_epochs=args.memory_epochs,
            chemprop=not args.no_chemprop,
            chemprop_venv=args.chemprop_venv,
            out_dir=args.out_dir,
            profile=args.profile,
            progress=progress,
            command=command,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepfuse-bench`` console script; returns the exit code.

    The command line is recorded in the results (``command`` in the JSON) as
    ``deepfuse-bench ARGV``.

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    _configure_logging(args.verbose)
    import torch

    from deepfuse_plugin.train.resume import ResumeMismatchError
    from deepfuse_plugin.workflows import WorkflowError

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        _run(args, " ".join([PROG, *argv]))
    except (WorkflowError, ResumeMismatchError, FileNotFoundError) as err:
        print(f"{PROG} {args.benchmark}: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called inside another program
    logger.info("%s %s finished in %.1f s", PROG, args.benchmark, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
