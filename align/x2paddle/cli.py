"""``python -m align.x2paddle``: the three-way check on its own (align's options and fixture)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from app.cli import OneLineArgumentParser

from ..config import AlignConfig, AlignInputError
from . import ATOL_MEAN, INSTALL_MESSAGE, RTOL_MAX, X2PADDLE_VERSION
from .plans import PLANS


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m align.x2paddle``."""
    parser = OneLineArgumentParser(
        prog="python -m align.x2paddle",
        description="Trace torch_ref with X2Paddle's pytorch2paddle into an independent Paddle program "
        "and compare it with torch_ref and paddle_impl (float32, align's deterministic random "
        "weights and synthetic scene). Exit status: 0 passed, 1 a comparison failed, 2 cannot run.",
    )
    parser.add_argument("--model", required=True, choices=sorted(PLANS), help="model to check")
    parser.add_argument(
        "--size", type=int, default=64, help="input height and width in pixels, a multiple of 32 (default 64)"
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights, BN statistics, input and labels (default 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the generated programs (kept); default: a temporary folder "
        "removed at exit (each FarSeg/FactSeg program is ~130 MB)",
    )
    parser.add_argument(
        "--atol-mean",
        type=float,
        default=ATOL_MEAN,
        help=f"pass threshold on the mean absolute difference (default {ATOL_MEAN:.0e})",
    )
    parser.add_argument(
        "--rtol-max",
        type=float,
        default=RTOL_MAX,
        help=f"pass threshold on max |diff| / max |reference| (default {RTOL_MAX:.0e})",
    )
    parser.add_argument(
        "--no-training",
        action="store_true",
        help="skip the training-mode probes (loss, step counter, training-mode BatchNorm)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --out: use a conversion already in DIR whose fingerprint (model "
        "state, inputs, torch_ref sources, this package, versions) matches instead of "
        "converting again",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the full result as JSON to this file (written atomically)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 passed, 1 failed, 2 cannot run)."""
    from . import x2paddle_available

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # align's one validation of model, size and batch
        config = AlignConfig(
            model=args.model, dtype="float32", batch=args.batch, size=args.size, seed=args.seed, out=None
        )
    except AlignInputError as exc:
        parser.error(str(exc))
    if not x2paddle_available():
        print(f"error: {INSTALL_MESSAGE}", file=sys.stderr)
        return 2
    from ..fixtures import build_fixture
    from .check import compare_with_x2paddle
    from .conversion import installed_x2paddle_version
    from .report import format_report

    version = installed_x2paddle_version()
    if version != X2PADDLE_VERSION:
        print(
            f"warning: x2paddle {version} installed; this check was written against {X2PADDLE_VERSION}", file=sys.stderr
        )
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="x2paddle_check_")))
        else:
            out_dir = args.out
            if out_dir.exists() and not out_dir.is_dir():
                print(f"error: {out_dir}: exists and is not a folder", file=sys.stderr)
                return 2
        fx = build_fixture(config)
        result = compare_with_x2paddle(
            args.model,
            fx.torch_model,
            fx.paddle_model,
            fx.x,
            out_dir,
            args.atol_mean,
            args.rtol_max,
            check_training=not args.no_training,
            seed=args.seed,
            reuse=args.reuse,
        )
        if args.out is None:
            result["generated_dir"] = None  # removed at exit
        print(format_report(result))
        if args.json is not None:
            from convert import atomic_write

            text = json.dumps(result, indent=2).encode("utf-8")
            atomic_write(args.json, lambda f: f.write(text))
    return 0 if result["passed"] else 1
