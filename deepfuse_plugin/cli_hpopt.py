"""``deepfuse hpopt``: its options and what it prints (the search itself is
:func:`deepfuse_plugin.tuning.hpopt_from_csv`).

Examples
--------
>>> from deepfuse_plugin.cli import main
>>> main(["hpopt", "esol.csv", "--smiles-column", "smiles", "--target-columns", "logS",
...       "--trials", "20", "--out", "runs/esol-search"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import os
import shlex

from deepfuse_plugin.cli_options import (
    add_data_arguments,
    add_pretrained_arguments,
    add_run_arguments,
    data_options,
    input_help,
    positive_float,
    positive_int,
)
from deepfuse_plugin.errors import InvalidSettingError

__all__ = ["add_hpopt_parser", "run_hpopt_command", "train_command"]


def add_hpopt_parser(sub: argparse._SubParsersAction) -> None:
    """The ``hpopt`` subcommand and its options."""
    hpopt = sub.add_parser(
        "hpopt",
        help="search a model's settings on the validation split (Optuna TPE; resumable); "
        "the test split is never used",
        description="Search a fusion model's settings (learning rate, widths, dropout, loss "
        "weights, masking rates, epochs) with Optuna's TPE sampler. Every trial trains on the "
        "training split and is scored on the validation split (the data prepared exactly as "
        "'deepfuse train' prepares them); the test split is never used, so the test score of "
        "'deepfuse train --params OUT/best_params.json' stays unbiased. OUT gets study.db "
        "(the study: the same command again continues it to --trials), trials.csv, trials.md "
        "(best first), history.png and best_params.json.",
    )
    hpopt.add_argument(
        "data", nargs="?", default=None, metavar="DATA", help=input_help() + " (or --csv)"
    )
    hpopt.add_argument(
        "--csv",
        "--data",
        dest="csv_option",
        default=None,
        metavar="DATA",
        help="the input (instead of the positional DATA)",
    )
    add_data_arguments(hpopt)
    hpopt.add_argument(
        "--trials",
        type=positive_int,
        default=20,
        help="trials to complete in total, a continued search's included (default: %(default)s)",
    )
    hpopt.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after this many seconds (run again to continue)",
    )
    hpopt.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="train every trial this long (default: searched, 10-60)",
    )
    hpopt.add_argument(
        "--eval-every",
        type=positive_int,
        default=1,
        help="validate every N epochs; a trial scores its best (default: %(default)s)",
    )
    hpopt.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(hpopt)
    hpopt.add_argument("--out", required=True, help="search folder (created; your files kept)")
    hpopt.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: remove an earlier search's files in OUT (only those)",
    )
    add_pretrained_arguments(hpopt)


def run_hpopt_command(args: argparse.Namespace, progress: bool) -> None:
    """Run the search and print its table and the ``deepfuse train`` command that reuses it."""
    from deepfuse_plugin.workflows import hpopt_from_csv

    if args.data and args.csv_option and args.data != args.csv_option:
        raise InvalidSettingError(
            f"Two input files given ({args.data} and --csv {args.csv_option}); give one"
        )
    csv = args.data or args.csv_option
    if not csv:
        raise InvalidSettingError("Give the input: deepfuse hpopt DATA ... (or --csv DATA)")
    options = data_options(args, csv)
    result = hpopt_from_csv(
        csv,
        out=args.out,
        n_trials=args.trials,
        timeout_s=args.timeout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        overwrite=args.overwrite,
        progress=progress,
        **options,
    )
    modalities = options["modalities"]
    print(
        f"Search of {args.model} ({'+'.join(modalities)}): {result.n_trials} trial(s) complete, "
        f"best validation {result.score_name} {result.best_score:.4g} (the test split was not "
        "used)"
    )
    if result.n_trials < args.trials:
        print(f"Stopped before {args.trials} trials (--timeout): run the same command to continue")
    print(result.table)
    print(
        f"Wrote {args.out}: study.db, trials.csv, trials.md, history.png, best_params.json. "
        "Train with the best settings:"
    )
    print("  " + shlex.join(train_command(args, csv, modalities)))


def train_command(args: argparse.Namespace, csv: str, modalities: list[str]) -> list[str]:
    """The ``deepfuse train`` command line that reuses a search's data and best settings."""
    from deepfuse_plugin.training_data import input_kind, resolve_split

    split = resolve_split(args.split, input_kind(csv, args.smiles_column, args.cif_column))
    command = ["deepfuse", "train", "--csv", csv]
    command += _given(("--smiles-column", args.smiles_column), ("--cif-column", args.cif_column))
    command += ["--tasks", ",".join(args.tasks), "--mode", args.mode, "--model", args.model]
    command += ["--split", split, "--modalities", ",".join(modalities)]
    command += ["--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    command += _given(
        ("--backbone", args.backbone),
        ("--describer", args.describer),
        ("--text-model", args.text_model),
        ("--chgnet-layers", ",".join(map(str, args.chgnet_layers or [])) or None),
    )
    if args.pretrained:
        command += ["--pretrained", args.pretrained]
        command += ["--encoder-lr-scale", str(args.encoder_lr_scale)]
        command += ["--freeze-encoders"] if args.freeze_encoders else []
    params = os.path.join(args.out, "best_params.json")
    return command + ["--params", params, "--out", os.path.join(args.out, "best_run")]


def _given(*options: tuple[str, str | None]) -> list[str]:
    """``[option, value, ...]`` of the options that have a value."""
    return [part for option, value in options if value for part in (option, value)]
