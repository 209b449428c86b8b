"""``python -m convert``: the command line of the checkpoint converter (argument handling only)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

DESCRIPTION = """\
Convert FarSeg / FactSeg checkpoints between PyTorch (official layout, torch_ref) and
PaddlePaddle (paddle_impl), or turn torchvision's ImageNet ResNet-50 into encoder weights.

Input: the official training wrapper {"model": ..., "opt": ..., "global_step": ...} or a bare
state dict, with or without the DDP "module." prefix; torchvision's resnet50-19c8e357.pth;
a Paddle .pdparams. The published Paddle reproductions' files are recognised from their keys
and renamed to the official layout by named rule tables (the summary line names the layout
and what was dropped or filled): PaddleSeg FarSeg (ucsk/FarSeg), PaddleRS FarSeg, the
PaddleRS-named FactSeg of FactSeg_paddle, the official layout in a .pdparams with torch
BatchNorm names or num_batches_tracked, and the ImageNet ResNet-50 of X2Paddle (ucsk/FarSeg's
resnet50_pth.pdparams) or with paddle.vision's names. Files are loaded without executing
code and written without importing torch or Paddle (the project's own restricted pickle
interpreter: data only, arrays made from the file's bytes after their dtype, size and
strides are checked; .pth written in torch's zip format).
Every key, shape and dtype (float32; integer BatchNorm counters) is checked against the
official layout first: on any mismatch the missing / unexpected / wrong-shape / wrong-dtype
keys are listed, the exit status is 2 and nothing is written. NaN/Inf values are refused
unless --allow-nonfinite. Only regular files are read, with bounded time and memory whatever
the file claims. Output is written atomically (temp file, fsync, rename).
"""

EPILOG = """\
examples:
  python -m convert farseg50.pth                      # -> farseg50.pdparams
  python -m convert farseg50.pdparams                 # -> farseg50.pth (bare state dict)
  python -m convert resnet50-19c8e357.pth --target factseg
                                   # -> resnet50-19c8e357_factseg_encoder.pdparams
  python -m convert farseg_r50_896x896_asf_amp_60k.pdparams --to paddle
                                   # PaddleSeg FarSeg -> official Paddle layout (.converted.pdparams)
  python -m convert resnet50_pth.pdparams --model resnet50 --target farseg
                                   # X2Paddle's ImageNet ResNet-50 -> resnet50_pth_farseg_encoder.pth
exit status: 0 converted, 2 bad input or arguments (one "error: <path>: ..." line on stderr,
followed by the key report for a layout mismatch).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m convert``."""
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        metavar="IN",
        help="checkpoint to convert: .pth/.pt/.bin (PyTorch) or .pdparams (Paddle); "
        "the format is recognised from the content",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        default=None,
        help="output file (default: next to IN with the extension swapped, "
        "farseg50.pth -> farseg50.pdparams and back; ImageNet input -> "
        "IN-stem_<target>_encoder.<ext>; same-format -> IN-stem.converted.<ext>). "
        "Never the input itself (symbolic and hard links included). A default name never "
        "replaces an existing file (refused, naming the -o to give); an existing OUT given "
        "with -o is replaced atomically and the summary says 'replaced'",
    )
    parser.add_argument(
        "--model",
        choices=("auto", "farseg", "factseg", "resnet50"),
        default="auto",
        help="what IN holds (default auto: detected from the keys; resnet50 = "
        "an ImageNet ResNet-50: torchvision's .pth, X2Paddle's conversion or "
        "paddle.vision's names in a .pdparams)",
    )
    parser.add_argument(
        "--to",
        choices=("paddle", "torch"),
        default=None,
        help="output format (default: the other framework: a PyTorch file becomes "
        ".pdparams, a .pdparams becomes .pth; a Paddle port's file gives the "
        "official layout in either). torch -> torch strips the "
        "wrapper/prefix after validation; for ImageNet input it gives "
        "official-layout encoder keys with num_batches_tracked = 0",
    )
    parser.add_argument(
        "--target",
        choices=("farseg", "factseg"),
        default=None,
        help="for ImageNet resnet50 input only: whose encoder keys to produce "
        "(farseg -> en.resnet.*, factseg -> resencoder.resnet.*; default farseg); "
        "fc.weight/fc.bias are dropped",
    )
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert tensors holding NaN or Inf anyway, with a warning on stderr naming "
        "them (default: refused with exit 2, naming the first such key)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    from . import CheckpointError, run_conversion  # after parsing: --help stays fast

    try:
        result = run_conversion(
            args.input,
            args.output,
            model=args.model,
            to=args.to,
            target=args.target,
            allow_nonfinite=args.allow_nonfinite,
        )
    except CheckpointError as exc:
        if exc.path is None:
            exc = exc.with_path(args.input)
        print(f"error: {exc.format()}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad argument combination
        print(f"error: {args.input}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    warning = result.warning()
    if warning:
        print(warning, file=sys.stderr)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
