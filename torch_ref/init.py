"""Write a starting checkpoint of FarSeg or FactSeg: the official initialisation, optionally
with the ImageNet ResNet-50 encoder, in torch's or Paddle's format.

Usage::

    python -m torch_ref.init --model farseg --out farseg_init.pth
    python -m torch_ref.init --model farseg --out farseg_init.pdparams      # Paddle's names
    python -m torch_ref.init --model factseg --imagenet resnet50-19c8e357.pth --out factseg_in.pth

A checkpoint to try ``convert``, ``evaluate``, ``predict``, ``export`` and ``align
--torch-ckpt`` with before any training or download. The weights are torch_ref's own
initialisation under ``--seed`` (the trainers' seeding), so the same seed writes the same file;
the output's extension picks the format (``.pth``: official torch layout; ``.pdparams``:
``convert.torch_to_paddle`` of it). Every key and shape is checked against the layout and the
file is written with the project's atomic writer (complete, or the earlier file untouched).
Bad input: one ``error:`` line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np

from app.cli import OneLineArgumentParser, int_in_range
from common.atomic import check_writable, describe_os_error
from convert import CheckpointError, save_paddle, save_torch, torch_to_paddle, validate
from weights import MODEL_NAMES

PROG = "python -m torch_ref.init"
FORMATS = {".pth": "torch", ".pdparams": "paddle"}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m torch_ref.init``."""
    parser = OneLineArgumentParser(
        prog=PROG,
        description=(
            "Write a starting checkpoint of FarSeg or FactSeg (torch_ref's official initialisation"
            " under --seed, optionally with the ImageNet ResNet-50 encoder) in torch's (.pth) or"
            " Paddle's (.pdparams) format, for trying convert, evaluate, predict, export and align"
            " without a download. Exit status 0 written, 2 bad input (one line on stderr, nothing"
            " written)."
        ),
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="architecture: farseg or factseg")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.pth|FILE.pdparams",
        help="output file; its extension picks the format: .pth = bare torch state dict in the"
        " official key layout, .pdparams = the same weights in Paddle's names (paddle_impl)."
        " Written atomically",
    )
    parser.add_argument(
        "--imagenet",
        metavar="FILE",
        help="put the ImageNet ResNet-50 encoder into the model: torchvision's"
        " resnet50-19c8e357.pth or its python -m convert --model resnet50 --target MODEL output"
        " (either format; read without executing code). Default: none (random encoder)",
    )
    parser.add_argument(
        "--seed",
        type=int_in_range(0, 2**32 - 1, "a seed"),
        default=2333,
        metavar="N",
        help="seed of the random initialisation (default 2333, the recipes' train.seed)",
    )
    return parser


def initial_state(model: str, seed: int, imagenet: Optional[str] = None) -> "OrderedDict[str, np.ndarray]":
    """torch_ref's initialisation of ``model`` under ``seed`` (encoder from ``imagenet`` when
    given) as numpy arrays in the official torch key layout, checked against that layout."""
    from app.train_loop import seed_everything

    from . import build_model
    from .train import PARTS, load_imagenet

    seed_everything(PARTS, seed)
    net = build_model(model)
    if imagenet is not None:
        load_imagenet(net, imagenet, model)
    state = OrderedDict((k, v.detach().cpu().contiguous().numpy()) for k, v in net.state_dict().items())
    validate(state, model, "torch")
    return state


def write_initial_checkpoint(
    model: str, out: str, seed: int = 2333, imagenet: Optional[str] = None
) -> Dict[str, object]:
    """Write the starting checkpoint of ``model`` to ``out`` (format from its extension).

    Returns a summary (path, format, parameter count). Raises ValueError for an unknown
    extension, CheckpointError for an ImageNet file that does not fit, OSError when the file
    cannot be written (the earlier file, if any, is untouched).
    """
    extension = os.path.splitext(out)[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"--out {out}: unsupported extension {extension or '(none)'!r}; use .pth or .pdparams")
    state = initial_state(model, seed, imagenet)
    if FORMATS[extension] == "paddle":
        paddle_state = torch_to_paddle(state, model)
        validate(paddle_state, model, "paddle")
        save_paddle(paddle_state, out)
    else:
        save_torch(state, out)
    parameters = sum(int(v.size) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    return {"path": out, "format": FORMATS[extension], "values": parameters}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if os.path.splitext(args.out)[1].lower() not in FORMATS:
            raise ValueError(
                f"--out {args.out}: unsupported extension"
                f" {os.path.splitext(args.out)[1] or '(none)'!r}; use .pth or .pdparams"
            )
        try:
            check_writable(args.out)  # a read-only folder is found before the model is built
        except OSError as error:
            raise ValueError(f"--out {args.out}: cannot write there ({describe_os_error(error)})") from None
        summary = write_initial_checkpoint(args.model, args.out, args.seed, args.imagenet)
    except CheckpointError as error:
        print(f"error: {error.headline()}", file=sys.stderr, flush=True)
        return 2
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return 2
    except OSError as error:
        print(f"error: {describe_os_error(error, with_file=True)}", file=sys.stderr, flush=True)
        return 2
    encoder = f"ImageNet encoder from {args.imagenet}" if args.imagenet else "random encoder"
    print(
        f"{args.model}: initial weights (seed {args.seed}, {encoder}), {summary['values']} values,"
        f" {summary['format']} format -> {summary['path']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
