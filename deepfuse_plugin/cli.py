"""The ``deepfuse`` command.

::

    deepfuse demo [--out results/demo] [--epochs N] [--seed S] [--quick]
    deepfuse train --csv FILE --smiles-column COL --tasks T1,T2 --mode regression --out DIR
                   [--overwrite] [--resume]
    deepfuse predict --model-dir DIR --csv FILE [--smiles-column COL] [--out preds.csv]
                     [--overwrite]
    deepfuse bench featurize [--data-dir ../shared/data] [--n 3000]
    deepfuse bench moleculenet [--suite reduced|full] [--datasets bbbp,delaney] [--seeds 0,1,2]
                               [--processes N]
    deepfuse bench merge benchmarks/full-hiv [...] --out benchmarks/full
    deepfuse bench crystals [--n-train 2000 --n-val 500 --n-test 500 | --full] [--epochs 15]
    deepfuse bench speed [--n-train 2000] [--epochs 2] [--n-memory N] [--no-chemprop] [--profile]

Argument parsing only; the work is done by functions in :mod:`deepfuse_plugin.workflows` and
:mod:`deepfuse_plugin.bench` that tests and notebooks call directly. ``main(argv)`` returns the exit
code (0 success, 2 bad input or usage: one sentence on standard error, the traceback only with
``--debug``).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from typing import Sequence

from deepfuse_plugin.errors import DeepfuseError

logger = logging.getLogger("deepfuse_plugin.cli")


def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. 'ecfp,graph'")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    """A finite number > 0 (``nan``, ``inf``, ``0`` and negative values are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``demo``, ``train``, ``predict``, ``bench featurize``)."""
    from deepfuse_plugin._version import __version__
    from deepfuse_plugin.workflows import MODELS, MODES, SPLITS

    parser = argparse.ArgumentParser(prog="deepfuse", description="Multimodal fusion models for "
                                     "DeepChem: demo, training and prediction on CSV files, "
                                     "benchmarks.")
    parser.add_argument("--version", action="version", version=f"deepfuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (by default a mistake in the "
                        "input or the settings is one sentence and exit code 2)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch intra-op threads (default: %(default)s; see below)")
    parser.epilog = ("--threads defaults to 1: the networks are small (batch 64, width 128), and "
                     "with 2 OpenMP threads on a 2-core machine shared with other jobs a training "
                     "step was measured 4-10x slower than with 1 thread (spin-waiting threads).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="Huuskonen solubility: DynamicFusion vs single modalities "
                          "and DeepChem baselines (about 10 minutes on 2 CPU cores)")
    demo.add_argument("--out", default="results/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=None,
                      help="epochs for every model (default: 30; --quick: 2)")
    demo.add_argument("--eval-every", type=_positive_int, default=None,
                      help="validate every N epochs, keep the best (default: 2; --quick: 1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=_positive_int, default=64)
    demo.add_argument("--learning-rate", type=_positive_float, default=1e-3)
    demo.add_argument("--limit", type=_positive_int, default=None,
                      help="use only the first N molecules")
    demo.add_argument("--no-dmpnn", action="store_true",
                      help="skip the DeepChem DMPNNModel baseline (about 30 s of the demo)")
    demo.add_argument("--quick", action="store_true",
                      help="tiny settings for tests (first 240 molecules, 2 epochs)")

    train = sub.add_parser("train", help="train a fusion model on your CSV")
    train.add_argument("--csv", required=True, help="input CSV file")
    train.add_argument("--smiles-column", required=True)
    train.add_argument("--tasks", required=True, type=_csv_list,
                       help="comma-separated label columns, e.g. T1,T2")
    train.add_argument("--mode", choices=MODES, default="regression")
    train.add_argument("--model", choices=sorted(MODELS), default="dynamic")
    train.add_argument("--split", choices=SPLITS, default="scaffold",
                       help="DeepChem splitter, 80/10/10 (default: %(default)s)")
    train.add_argument("--modalities", type=_csv_list, default=["ecfp", "graph", "smiles"],
                       help="comma-separated modalities (default: ecfp,graph,smiles)")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--eval-every", type=_positive_int, default=2,
                       help="validate every N epochs, keep the best (default: %(default)s)")
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--learning-rate", type=_positive_float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--n-jobs", type=_positive_int, default=1, help="featurization processes")
    train.add_argument("--out", required=True,
                       help="run folder to write (trained in OUT.deepfuse-partial, moved into OUT "
                       "when training succeeds)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a run already in OUT (only deepfuse's files there; your other "
                       "files are kept)")
    train.add_argument("--uncertainty", choices=["evidential"], default=None,
                       help="predict a distribution: 'predict' then writes <task>_std "
                            "(regression: rescaled per set of present modalities on the "
                            "validation split)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run (kept in OUT.deepfuse-partial) from "
                            "its last finished epoch (same data and settings; otherwise training "
                            "starts over)")

    predict = sub.add_parser("predict", help="predict a CSV with a run folder from 'train'/'demo'")
    predict.add_argument("--model-dir", required=True, help="run folder (or bare model folder)")
    predict.add_argument("--csv", required=True)
    predict.add_argument("--smiles-column", default=None,
                         help="default: the column used for training")
    predict.add_argument("--out", default="predictions.csv",
                         help="output CSV (default: %(default)s)")
    predict.add_argument("--batch-size", type=_positive_int, default=None)
    predict.add_argument("--overwrite", action="store_true",
                         help="replace an existing --out file (never the input CSV)")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_sub.required = True
    featurize = bench_sub.add_parser("featurize", help="featurization speed vs DeepChem")
    featurize.add_argument("--data-dir", default="../shared/data",
                           help="folder containing moleculenet/HIV.csv (default: %(default)s)")
    featurize.add_argument("--n", type=_positive_int, default=3000, help="number of molecules")
    featurize.add_argument("--repeats", type=_positive_int, default=3)
    featurize.add_argument("--out-dir", default="benchmarks",
                           help="where featurize.json/.md are written (default: %(default)s)")
    featurize.add_argument("--no-parallel", action="store_true", help="skip the n_jobs=2 figure")
    molnet = bench_sub.add_parser("moleculenet", help="MoleculeNet accuracy: deepfuse models vs "
                                  "DeepChem baselines on the same split")
    molnet.add_argument("--suite", choices=("reduced", "full"), default="reduced",
                        help="defaults for datasets/seeds/epochs: reduced = bbbp,delaney, seed 0, "
                        "30 epochs; full = 7 datasets incl. HIV, seeds 0,1,2 (default: "
                        "%(default)s)")
    molnet.add_argument("--datasets", type=_csv_list, default=None,
                        help="DeepChem molnet loader names, e.g. bbbp,bace_classification,"
                        "clintox,hiv,tox21,delaney,sampl,lipo")
    molnet.add_argument("--data-dir", default="../shared/data",
                        help="folder with moleculenet/ (DeepChem file names) (default: "
                        "%(default)s)")
    molnet.add_argument("--seeds", type=lambda t: [int(x) for x in _csv_list(t)], default=None,
                        help="model seeds, e.g. 0,1,2")
    molnet.add_argument("--epochs", type=_positive_int, default=None,
                        help="epochs for every neural model (default: the suite's, 30)")
    molnet.add_argument("--eval-every", type=_positive_int, default=1,
                        help="validate every N epochs, keep the best (default: %(default)s)")
    molnet.add_argument("--batch-size", type=_positive_int, default=64)
    molnet.add_argument("--learning-rate", type=float, default=1e-3)
    molnet.add_argument("--split", choices=SPLITS, default="scaffold")
    molnet.add_argument("--split-seed", type=int, default=0, help="seed of --split random")
    molnet.add_argument("--models", type=_csv_list, default=None,
                        help="default: every fusion model, unimodal_ecfp,unimodal_graph,"
                        "unimodal_smiles, dc_mlp,dc_rf,dc_dmpnn")
    molnet.add_argument("--out", default="benchmarks",
                        help="writes moleculenet.{md,json,png} and splits/ (default: %(default)s)")
    molnet.add_argument("--n-jobs", type=_positive_int, default=1,
                        help="featurization processes and random-forest jobs")
    molnet.add_argument("--cache-dir", default=None,
                        help="keep DeepChem's featurized datasets here (default: temporary)")
    molnet.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/moleculenet.json and skip them; "
                             "continue an interrupted run from its last finished epoch")
    molnet.add_argument("--processes", type=_positive_int, default=1,
                        help="run each dataset's runs in this many worker processes (Linux/"
                        "macOS), each with torch threads / processes threads; results do not "
                        "change (default: %(default)s)")
    molnet.add_argument("--limit", type=_positive_int, default=None,
                        help="first N molecules of each dataset (quick runs)")
    molnet.add_argument("--length-bucket-pool", type=int, default=0,
                        help="deepfuse models: length-bucketed training batches from pools of "
                        "this many batches (faster SMILES Transformer on a CPU; changes results). "
                        "Default 0: the models' default shuffled batches")
    merge = bench_sub.add_parser("merge", help="merge 'bench moleculenet' output folders (e.g. "
                                 "datasets run in parallel) into one table")
    merge.add_argument("sources", nargs="+", help="folders holding moleculenet.json")
    merge.add_argument("--out", required=True,
                       help="folder to merge into; its own runs are kept, its moleculenet."
                       "{md,json,png} and splits/ rewritten")
    merge.add_argument("--replace", action="store_true",
                       help="runs of the sources replace the same dataset/model/seed runs of "
                       "--out (a model re-run after a change of its defaults); recorded in the "
                       "notes")
    _add_crystals_parser(bench_sub)
    _add_speed_parser(bench_sub)
    return parser


def _add_crystals_parser(bench_sub: argparse._SubParsersAction) -> None:
    """``deepfuse bench crystals`` (:func:`deepfuse_plugin.bench.crystals.run_crystal_bench`)."""
    from deepfuse_plugin.bench.crystals import (DEFAULT_EPOCHS, DEFAULT_MODELS, DEFAULT_SIZES,
                                                MIN_FORMATION_ENERGY, MODELS)

    crystals = bench_sub.add_parser("crystals", help="mp36k formation energy (MEGNet split): "
                                    "CGCNN, text-only, MatMMFuse and DynamicFusion, zero-shot "
                                    "sulfides, featurization speed")
    crystals.add_argument("--data-dir", default="../shared/data",
                          help="folder with materials/mp36k.extxyz.xz (default: %(default)s)")
    crystals.add_argument("--data-file", default=None,
                          help="another extended XYZ file (info keys material_id, split, "
                          "formation_energy_per_atom)")
    for part, size in DEFAULT_SIZES.items():
        crystals.add_argument(f"--n-{part}", type=_positive_int, default=size,
                              help=f"first N {part} structures after a seeded shuffle "
                              "(default: %(default)s)")
    crystals.add_argument("--full", action="store_true",
                          help="every row of every split (hours on 2 CPU cores; use a GPU)")
    crystals.add_argument("--subset-seed", type=int, default=0, help="seed of the subset shuffle")
    crystals.add_argument("--seed", type=int, default=0, help="model seed (same for every model)")
    crystals.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    crystals.add_argument("--eval-every", type=_positive_int, default=1)
    crystals.add_argument("--batch-size", type=_positive_int, default=64)
    crystals.add_argument("--learning-rate", type=float, default=1e-3)
    crystals.add_argument("--models", type=_csv_list, default=list(DEFAULT_MODELS),
                          help=f"comma-separated, from {','.join(MODELS)} (default: "
                          f"{','.join(DEFAULT_MODELS)})")
    crystals.add_argument("--family", default="sulfides",
                          help="family carved out of every split and evaluated zero-shot on the "
                          "test split's members; 'none' disables (default: %(default)s)")
    crystals.add_argument("--n-zero-shot", type=_positive_int, default=None,
                          help="at most N family structures (default: all in the test split)")
    crystals.add_argument("--min-formation-energy", type=float, default=MIN_FORMATION_ENERGY,
                          help="drop rows below this eV/atom (default: %(default)s)")
    crystals.add_argument("--n-timing", type=_positive_int, default=200,
                          help="structures timed with the fast describer (default: %(default)s)")
    crystals.add_argument("--robocrys-sample", type=int, default=10,
                          help="structures timed with robocrys, seconds each; 0 skips "
                          "(default: %(default)s)")
    crystals.add_argument("--cache-dir", default=None,
                          help="featurized datasets and description/embedding caches (default: "
                          "$DEEPFUSE_CACHE_DIR or ~/.cache/deepfuse)")
    crystals.add_argument("--out", default="benchmarks",
                          help="writes crystals.{json,md,png} (default: %(default)s)")
    crystals.add_argument("--n-jobs", type=_positive_int, default=1,
                          help="featurization processes")


def _add_speed_parser(bench_sub: argparse._SubParsersAction) -> None:
    """``deepfuse bench speed`` (:func:`deepfuse_plugin.bench.speed.run_speed_bench`)."""
    speed = bench_sub.add_parser("speed", help="featurization, training and inference speed and "
                                 "peak memory vs DeepChem (and chemprop), as ratios")
    speed.add_argument("--data-dir", default="../shared/data",
                       help="folder containing moleculenet/HIV.csv (default: %(default)s)")
    speed.add_argument("--n-featurize", type=_positive_int, default=3000,
                       help="molecules timed for featurization (default: %(default)s)")
    speed.add_argument("--n-train", type=_positive_int, default=2000,
                       help="molecules for training throughput and inference (default: "
                       "%(default)s)")
    speed.add_argument("--epochs", type=_positive_int, default=2,
                       help="timed epochs after one warm-up epoch (default: %(default)s)")
    speed.add_argument("--repeats", type=_positive_int, default=3,
                       help="featurization repeats, best reported (default: %(default)s)")
    speed.add_argument("--latency-calls", type=_positive_int, default=200,
                       help="timed one-molecule predictions per model (default: %(default)s)")
    speed.add_argument("--n-memory", type=_positive_int, default=None,
                       help="molecules for the peak-memory child processes (default: all of "
                       "HIV.csv, 41,127)")
    speed.add_argument("--memory-epochs", type=_positive_int, default=1,
                       help="training epochs in the peak-memory children (default: %(default)s)")
    speed.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    speed.add_argument("--no-chemprop", action="store_true",
                       help="skip chemprop (otherwise its environment is created on first use)")
    speed.add_argument("--chemprop-venv", default=None,
                       help="chemprop's virtual environment (default: .venv-chemprop)")
    speed.add_argument("--out-dir", default="benchmarks",
                       help="where speed.json/.md (and profiles/) are written (default: "
                       "%(default)s)")
    speed.add_argument("--profile", action="store_true",
                       help="also write pyinstrument profiles to OUT_DIR/profiles")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepfuse_plugin").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # DeepChem logs every 1000 molecules and each checkpoint at INFO/WARNING
        logging.getLogger("deepchem").setLevel(logging.ERROR)
    # DeepChem's fit averages a loss tensor with float(); torch warns about it on every call
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")


def _run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.command == "demo":
        from deepfuse_plugin.bench.demo import run_demo

        run_demo(out=args.out, epochs=args.epochs, seed=args.seed, quick=args.quick,
                 eval_every=args.eval_every, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, limit=args.limit, dmpnn=not args.no_dmpnn,
                 progress=progress)
    elif args.command == "train":
        from deepfuse_plugin.workflows import train_from_csv

        record = train_from_csv(args.csv, args.smiles_column, args.tasks, args.out, mode=args.mode,
                                model=args.model, split=args.split, modalities=args.modalities,
                                epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, eval_every=args.eval_every,
                                seed=args.seed, n_jobs=args.n_jobs, resume=args.resume,
                                uncertainty=args.uncertainty, progress=progress,
                                overwrite=args.overwrite)
        training = record["training"]
        print(f"Trained {record['model_class']} ({'+'.join(record['modalities'])}) on "
              f"{record['data']['n_train']} molecules; best epoch {training['best_epoch']} of "
              f"{training['epochs']} ({training['selection']}).")
        for split in ("valid", "test"):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"][split].items()
                              if k != "n" and v is not None)
            print(f"  {split} (n={record['metrics'][split].get('n', 0)}): {shown}")
        calibration = (record.get("uncertainty") or {}).get("test_calibration")
        if calibration:
            print("  test errors within 1 std: {:.0%} as predicted, {:.0%} rescaled per input "
                  "(a Gaussian: 68%)".format(calibration["as_predicted"]["within_1sigma"],
                                             calibration["rescaled"]["within_1sigma"]))
        print(f"Saved run folder {args.out} (model/, deepfuse_run.json, metrics.json)")
    elif args.command == "predict":
        from deepfuse_plugin.workflows import predict_from_csv

        frame = predict_from_csv(args.model_dir, args.csv, args.smiles_column, args.out,
                                 args.batch_size, progress=progress, overwrite=args.overwrite)
        failed = int((frame["deepfuse_status"] != "ok").sum())
        print(f"Wrote {len(frame)} rows to {args.out} ({len(frame) - failed} predicted, {failed} "
              f"left empty: invalid SMILES or no modality, or a non-finite output; see "
              f"deepfuse_status)")
    elif args.command == "bench" and args.bench == "featurize":
        from deepfuse_plugin.bench.featurize import run_featurize_bench

        run_featurize_bench(data_dir=args.data_dir, n=args.n, repeats=args.repeats,
                            out_dir=args.out_dir, parallel=not args.no_parallel)
    elif args.command == "bench" and args.bench == "moleculenet":
        from deepfuse_plugin.bench.moleculenet import run_moleculenet_bench

        run_moleculenet_bench(datasets=args.datasets, data_dir=args.data_dir, seeds=args.seeds,
                              epochs=args.epochs, split=args.split, split_seed=args.split_seed,
                              models=args.models, out=args.out, suite=args.suite,
                              eval_every=args.eval_every, batch_size=args.batch_size,
                              learning_rate=args.learning_rate, n_jobs=args.n_jobs,
                              cache_dir=args.cache_dir, resume=args.resume, limit=args.limit,
                              length_bucket_pool=args.length_bucket_pool,
                              processes=args.processes, progress=progress,
                              command=" ".join(["deepfuse", *sys.argv[1:]]))
    elif args.command == "bench" and args.bench == "merge":
        from deepfuse_plugin.bench.moleculenet import merge_results

        merge_results(args.sources, args.out, replace=args.replace)
    elif args.command == "bench" and args.bench == "crystals":
        from deepfuse_plugin.bench.crystals import run_crystal_bench

        run_crystal_bench(data_dir=args.data_dir, data_file=args.data_file, n_train=args.n_train,
                          n_val=args.n_val, n_test=args.n_test, full=args.full,
                          subset_seed=args.subset_seed, seed=args.seed, epochs=args.epochs,
                          eval_every=args.eval_every, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, models=args.models,
                          family=None if args.family == "none" else args.family,
                          n_zero_shot=args.n_zero_shot,
                          min_formation_energy=args.min_formation_energy, n_timing=args.n_timing,
                          robocrys_sample=args.robocrys_sample, cache_dir=args.cache_dir,
                          out=args.out, n_jobs=args.n_jobs, progress=progress,
                          command=" ".join(["deepfuse", *sys.argv[1:]]))
    elif args.command == "bench" and args.bench == "speed":
        from deepfuse_plugin.bench.speed import run_speed_bench

        run_speed_bench(data_dir=args.data_dir, n_featurize=args.n_featurize, n_train=args.n_train,
                        epochs=args.epochs, repeats=args.repeats, latency_calls=args.latency_calls,
                        n_memory=args.n_memory, memory=not args.no_memory,
                        memory_epochs=args.memory_epochs, chemprop=not args.no_chemprop,
                        chemprop_venv=args.chemprop_venv, out_dir=args.out_dir,
                        profile=args.profile, progress=progress,
                        command=" ".join(["deepfuse", *sys.argv[1:]]))
    return 0


#: Errors caused by what the user gave (data, settings, paths): one message and exit code 2.
#: ``DeepfuseError`` and ``ResumeMismatchError`` are ``ValueError`` s. Anything else is a bug and
#: keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, FileExistsError)


def _one_message(err: BaseException) -> str:
    """The error's own words (its type's name when it has none)."""
    return str(err).strip() or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepfuse`` console script; returns the exit code.

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    _configure_logging(args.verbose)
    import torch

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        code = _run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"deepfuse {args.command}: error: {_one_message(err)}", file=sys.stderr)
        if not isinstance(err, DeepfuseError):  # a library's message: the way to see more
            print("(run with --debug for the full traceback)", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called inside another program
    logger.info("deepfuse %s finished in %.1f s", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
