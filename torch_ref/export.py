"""Export FarSeg / FactSeg to ONNX with torch's exporter, checked with onnxruntime.

Usage::

    python -m torch_ref.export --model farseg --weights farseg50.pth --out deploy/farseg_onnx --format onnx
        [--size H W] [--opset 17] [--no-check] [--tolerance 1e-4]

Writes ``DIR/model.onnx`` (weights inside) and ``DIR/model.yml`` (the same metadata as
``python -m paddle_impl.export``: model, classes, normalisation, input layout, window and
stride; :mod:`app.exported`). The graph maps a normalised float32 batch [B,3,H,W] (RGB, H and
W multiples of 32) to class probabilities [B,16,H,W]; the batch is dynamic, H and W are
dynamic unless ``--size`` fixes them. Run it with ``python -m torch_ref.predict --model-dir
DIR`` or ``python -m paddle_impl.infer`` / ``predict --model-dir DIR`` (onnxruntime).

The exporter is torch's TorchScript-based one (``dynamo=False``): the torch.export-based
default needs the ``onnxscript`` package, which this project does not install; torch 2.13
warns that the TorchScript exporter is deprecated. After writing, onnxruntime runs the file on
a random input and it must equal the eval forward within ``--tolerance`` (max |difference| of
the probabilities; onnxruntime folds BatchNorm into the convolutions, which changes float32
rounding: measured 3.3e-5 to 3.6e-5 on random weights) with the argmax agreeing on at least
99.9% of the pixels; otherwise nothing is written. ``--out`` appears only when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from app.cli import OneLineArgumentParser, float_in_range, int_in_range, stride_px, window_side
from app.exported import (
    CHECK_SIZE,
    CONFIG_FILE,
    FORMAT_FILES,
    INPUT_NAME,
    ONNX_FORMAT,
    ExportError,
    check_onnx_against,
    check_replaceable,
    deploy_config,
    read_deploy_config,
    replace_folder,
    size_multiple_of_32,
    staging_folder,
    write_deploy_config,
)
from common.atomic import current_umask
from common.constants import SIZE_MULTIPLE
from convert import CheckpointError
from weights import MODEL_NAMES, check_model_name

from . import build_model
from .sliding_window import load_weights

PROG = "python -m torch_ref.export"
ONNX_FILE = FORMAT_FILES[ONNX_FORMAT][0]
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4  # onnxruntime folds BatchNorm: float32 rounding changes (measured 3.6e-5)
MIN_AGREEMENT = 0.999
TRACE_SIZE = (64, 96)  # the example input the exporter traces with


def export_onnx(
    model: nn.Module, path: str, size: Optional[Tuple[int, int]] = None, opset: int = DEFAULT_OPSET
) -> None:
    """Write the eval forward of ``model`` (normalised batch -> probabilities) to ``path``."""
    model.eval()
    height, width = size if size is not None else TRACE_SIZE
    example = torch.zeros(1, 3, height, width)
    axes: Dict[int, str] = {0: "batch"} if size is not None else {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and the tracer's warning about the models'
        # input-size check (a Python bool on the traced size, true for every multiple of 32).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            do_constant_folding=True,
        )


def check_onnx(
    model: nn.Module,
    model_dir: str,
    size: Optional[Tuple[int, int]],
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> List[Tuple[str, float, float]]:
    """onnxruntime on ``model_dir`` vs the eval forward on a random input (batch 2, one thread).

    Returns ``[("onnxruntime", max |difference|, tolerance)]``; raises ExportError when the
    difference exceeds ``tolerance`` or the argmax agrees on fewer than 99.9% of the pixels.
    """
    height, width = size if size is not None else CHECK_SIZE
    x = np.random.default_rng(seed).standard_normal((2, 3, height, width)).astype("float32")
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return check_onnx_against(model_dir, x, expected, "the eval forward", tolerance, MIN_AGREEMENT)


def export(
    model_name: str,
    weights: Optional[str],
    out_dir: str,
    size: Optional[Tuple[int, int]] = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    model: Optional[nn.Module] = None,
    window: int = 896,
    stride: int = 512,
    opset: int = DEFAULT_OPSET,
) -> Dict[str, Any]:
    """Build ``model_name``, load ``weights`` (or take ``model``), write ``model.onnx`` + ``model.yml``.

    Returns a summary dict; raises CheckpointError (bad weights) or ExportError, and
    ``out_dir`` is untouched then.
    """
    check_model_name(model_name)
    if size is not None and (size[0] % SIZE_MULTIPLE or size[1] % SIZE_MULTIPLE or min(size) <= 0):
        raise ExportError(f"--size {size[0]} {size[1]}: both must be positive multiples of {SIZE_MULTIPLE}")
    out_dir = os.path.normpath(out_dir)
    check_replaceable(out_dir, [("--weights", weights)])
    start = time.perf_counter()
    how = "given model"
    if model is None:
        if weights is None:
            raise ValueError("weights or model is required")
        model = build_model(model_name)
        how = load_weights(model, model_name, weights)
    model = model.float().eval()
    staging = staging_folder(out_dir)
    try:
        export_onnx(model, os.path.join(staging, ONNX_FILE), size, opset)
        producer = f"torch {torch.__version__} torch.onnx.export (TorchScript exporter), opset {opset}"
        write_deploy_config(
            staging, deploy_config(model_name, size, weights, how, window, stride, ONNX_FORMAT, producer), PROG
        )
        read_deploy_config(staging)  # the program must be what model.yml says
        saved = time.perf_counter()
        checks = check_onnx(model, staging, size, tolerance) if check else []
        os.chmod(staging, 0o777 & ~current_umask())
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "out_dir": out_dir,
        "model": model_name,
        "weights": how,
        "size": size,
        "checks": checks,
        "export_seconds": saved - start,
        "check_seconds": time.perf_counter() - saved,
        "bytes": {name: os.path.getsize(os.path.join(out_dir, name)) for name in (ONNX_FILE, CONFIG_FILE)},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Export FarSeg / FactSeg to ONNX (torch's TorchScript exporter): the eval forward"
        " (normalised float32 [B,3,H,W] RGB, H and W multiples of 32 -> class"
        " probabilities [B,16,H,W]) as DIR/model.onnx plus DIR/model.yml, checked with"
        " onnxruntime against the eval forward. Run it with python -m torch_ref.predict"
        " --model-dir DIR. Exit status 0 done, 2 bad input or failed check (nothing"
        " written then).",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="model architecture")
    parser.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="checkpoint: an official / torch_ref .pth (official wrapper and 'module.'"
        " prefix accepted) or a Paddle .pdparams (converted on the fly); read"
        " without executing code; the layout must match --model exactly",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created). An existing one is replaced only if it is"
        " empty or exactly an earlier export (model.yml and its program files, nothing"
        " else); anything else is refused, naming what is foreign in it",
    )
    parser.add_argument(
        "--format",
        choices=("onnx",),
        default="onnx",
        help="onnx (the only format of this exporter; Paddle Inference programs come"
        " from python -m paddle_impl.export)",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=size_multiple_of_32,
        metavar=("H", "W"),
        help="fix the input height and width (multiples of 32). Default: dynamic H and W. The batch is always dynamic",
    )
    parser.add_argument(
        "--opset",
        type=int_in_range(11, 21, "an ONNX opset"),
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--window",
        type=window_side,
        default=896,
        metavar="PX",
        help="sliding-window side recorded in model.yml for predict (default 896)",
    )
    parser.add_argument(
        "--stride",
        type=stride_px,
        default=512,
        metavar="PX",
        help="sliding-window stride recorded in model.yml (default 512)",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after writing, run the file with onnxruntime on a random input and"
        " compare with the eval forward (default on)",
    )
    parser.add_argument(
        "--tolerance",
        type=float_in_range(0.0, 1.0, "a tolerance"),
        default=DEFAULT_TOLERANCE,
        metavar="ABS",
        help=f"largest allowed max |difference| of the probabilities (default"
        f" {DEFAULT_TOLERANCE:g}; measured 3.3e-5 to 3.6e-5 on random weights,"
        f" from onnxruntime's BatchNorm folding); the argmax must also agree on"
        f" {MIN_AGREEMENT * 100:g}%% of the pixels",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stride > args.window or args.window <= 0 or args.stride <= 0:
        print(
            f"{PROG}: error: --stride {args.stride} / --window {args.window}: need 0 < stride <= window",
            file=sys.stderr,
        )
        return 2
    try:
        summary = export(
            args.model,
            args.weights,
            args.out,
            tuple(args.size) if args.size else None,
            args.check,
            args.tolerance,
            window=args.window,
            stride=args.stride,
            opset=args.opset,
        )
    except CheckpointError as error:
        print(f"{PROG}: error: {error.headline()}", file=sys.stderr)
        return 2
    except ExportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable or full --out: one line, nothing left behind
        print(f"{PROG}: error: {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    size = "x".join(map(str, summary["size"])) if summary["size"] else "dynamic HxW"
    print(
        f"exported {args.model} ({summary['weights']}) -> {args.out}/{{{ONNX_FILE},{CONFIG_FILE}}}"
        f" (input [B,3,{size}], {summary['bytes'][ONNX_FILE] / 1e6:.1f} MB) in"
        f" {summary['export_seconds']:.1f}s"
    )
    for backend, difference, limit in summary["checks"]:
        print(
            f"check: {backend}, 1 thread, vs eval forward: max |diff| of the probabilities"
            f" {difference:.3g} (tolerance {limit:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
