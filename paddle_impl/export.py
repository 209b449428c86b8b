"""Export FarSeg / FactSeg for Paddle Inference (``paddle.jit.save``, Paddle 3 PIR format) or ONNX.

Usage::

    python -m paddle_impl.export --model farseg --weights farseg50.pdparams --out deploy/farseg
        [--size H W] [--no-check] [--format paddle|onnx]

``--format onnx`` converts the saved program with paddle2onnx 2.1.0 (the ``.[onnx]`` extra) into
``DIR/model.onnx`` and checks it with onnxruntime instead. paddle2onnx 2.1.0 cannot read Paddle
3.3.1's programs as written: its PIR parser requires float elements in the interpolations'
``scale`` attribute, which Paddle writes (and its own loader requires) as doubles ("the 0th
elementwise MUST be ir::FloatAttribute"); the converter is given a copy with those exact values
(2.0, 4.0) retyped (:func:`scale_attributes_as_float32`).

Writes ``DIR/model.json`` (the PIR program) + ``DIR/model.pdiparams`` (the weights) and a small
``DIR/model.yml`` that says how to feed the program: model, classes (iSAID names and colours),
normalisation, input layout, the size multiple, the sliding-window protocol. The program maps a
normalised float32 batch [B,3,H,W] (RGB, H and W multiples of 32) to class probabilities
[B,16,H,W] (the models' eval output: softmax for FarSeg, the fused joint probability for
FactSeg). The batch is always dynamic; H and W are fixed by ``--size`` and dynamic otherwise.

Weights: a Paddle ``.pdparams`` or an official / torch_ref ``.pth``, which is converted on the
fly (``convert.torch_to_paddle``; needs torch installed); both are read without executing code.

After saving, the export is checked (unless ``--no-check``): Paddle Inference runs the saved
program on a random input with the exact backend, which must equal the dynamic graph within
``--tolerance`` (1e-5; it agrees bit for bit), and with the backend :mod:`paddle_impl.infer`
picks by default (oneDNN), within ``--rounding-tolerance`` (1e-4, see :func:`check_export`). Nothing is left in
``--out`` when the export or the check fails (the folder is written next to it and renamed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from app.cli import OneLineArgumentParser, float_in_range, stride_px, window_side
from app.exported import (
    CHECK_SIZE,
    ONNX_FORMAT,
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
from . import factseg as _factseg_module
from . import farseg as _farseg_module
from .export_format import CONFIG_FILE, EXPORT_PROG, FORMAT, INPUT_NAME, PARAMS_FILE, PROGRAM_FILE, ExportError
from .infer import create_predictor
from .sliding_window import load_weights

PROG = EXPORT_PROG
ONNX_FILE = "model.onnx"
FORMATS = ("paddle", "onnx")
ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-5  # exact backend (native): agrees bit for bit in practice
DEFAULT_ROUNDING_TOLERANCE = 1e-4  # oneDNN backend: BatchNorm folding changes float32 rounding


class ProbabilityModel(nn.Layer):
    """What is exported: the eval forward of a model (normalised batch -> class probabilities).

    A wrapper rather than the model itself because ``paddle.jit.to_static`` converts the
    forward of the layer it is given; the wrapped model stays a dynamic-graph model, so the
    export can be compared with it in the same process.
    """

    def __init__(self, model: nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model(x)


def _check_concrete_size(x: paddle.Tensor) -> None:
    """The models' input check, applied only where the size is known at trace time.

    With a dynamic InputSpec, H and W are symbolic values during ``paddle.jit.to_static``,
    and the models' ``check_input_size`` cannot compare them with Python ``%`` (the traced
    ``if`` raises on every trace). The exported program relies on the caller padding to a
    multiple of 32 instead: ``model.yml`` says so, and :mod:`paddle_impl.infer` pads.
    """
    height, width = x.shape[-2:]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"input height and width must be multiples of {SIZE_MULTIPLE}, got {height}x{width}")


@contextlib.contextmanager
def symbolic_size_checks() -> Iterator[None]:
    """Swap the models' input-size check for :func:`_check_concrete_size` while tracing.

    Affects only this process during the export (the model files are unchanged).
    """
    saved = [(module, module.check_input_size) for module in (_farseg_module, _factseg_module)]
    try:
        for module, _ in saved:
            module.check_input_size = _check_concrete_size
        yield
    finally:
        for module, original in saved:
            module.check_input_size = original


def input_spec(size: Optional[Tuple[int, int]] = None) -> List[InputSpec]:
    """[B,3,H,W] float32, batch dynamic; H, W fixed to ``size`` or dynamic (-1)."""
    height, width = size if size is not None else (None, None)
    return [InputSpec([None, 3, height, width], "float32", INPUT_NAME)]


def save_inference_model(model: nn.Layer, folder: str, size: Optional[Tuple[int, int]] = None) -> None:
    """``paddle.jit.save`` the eval forward of ``model`` to ``folder/model.{json,pdiparams}``."""
    model.eval()
    wrapper = ProbabilityModel(model)
    wrapper.eval()
    with symbolic_size_checks():
        static = paddle.jit.to_static(wrapper, input_spec=input_spec(size), full_graph=True)
        paddle.jit.save(static, os.path.join(folder, "model"))
    produced = sorted(os.listdir(folder))
    if PROGRAM_FILE not in produced or PARAMS_FILE not in produced:
        raise ExportError(
            f"paddle.jit.save wrote {produced}, expected {PROGRAM_FILE} and {PARAMS_FILE}"
            " (Paddle >= 3.0 with PIR is required)"
        )


def check_export(
    model: nn.Layer,
    model_dir: str,
    size: Optional[Tuple[int, int]],
    tolerance: float = DEFAULT_TOLERANCE,
    rounding_tolerance: float = DEFAULT_ROUNDING_TOLERANCE,
    seed: int = 0,
) -> List[Tuple[str, float, float]]:
    """Compare the saved program (Paddle Inference) with the dynamic graph on a random input.

    Two runs, one CPU thread each: the exact backend ("native": Paddle's plain CPU kernels in
    the dynamic graph's reduction order) must agree within ``tolerance`` (it agrees bit for
    bit); the backend ``paddle_impl.infer`` picks by default ("auto", i.e. oneDNN with the
    BatchNorm folded into the convolutions) within ``rounding_tolerance``, because folding
    changes float32 rounding: measured 2.6e-6 to 4.1e-5 on random weights, against 2e-6 to
    3.4e-6 between the dynamic graph in float32 and in float64 (the model's own float32
    noise). Returns ``[(backend, max |difference|, tolerance)]``; raises ExportError when a
    difference exceeds its tolerance.
    """
    height, width = size if size is not None else CHECK_SIZE
    x = np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype("float32")
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    results = []
    for backend, limit in (("native", tolerance), ("auto", rounding_tolerance)):
        predictor = create_predictor(model_dir, device="cpu", backend=backend, threads=1)
        got = predictor(x)
        difference = float(np.abs(got - expected).max())
        results.append((predictor.backend, difference, limit))
        if not difference <= limit:  # also catches NaN
            raise ExportError(
                f"{model_dir}: exported program ({predictor.backend} backend) differs from"
                f" the dynamic graph by {difference:.3g} > {limit:g} on a"
                f" {height}x{width} input"
            )
    return results


def scale_attributes_as_float32(program_json: str, out_json: str) -> int:
    """Copy a PIR program with the interpolations' ``scale`` arrays retyped double -> float.

    paddle2onnx 2.1.0's PIR parser requires ``pir::FloatAttribute`` elements in the ``scale``
    of ``nearest_interp`` / ``bilinear_interp`` ("the 0th elementwise MUST be
    ir::FloatAttribute") while Paddle 3.3.1 writes (and its own loader requires) doubles. The
    values (2.0, 4.0) are exact in float32, so the retyped copy is the same program; it is
    given to paddle2onnx only. Returns the number of values retyped.
    """
    with open(program_json, encoding="utf-8") as handle:
        program = json.load(handle)
    retyped = 0
    for op in program["program"]["regions"][0]["blocks"][0]["ops"]:
        if str(op.get("#", "")).endswith("_interp"):
            for attribute in op.get("A", []):
                if attribute.get("N") == "scale":
                    for value in attribute["AT"]["D"]:
                        if value.get("#") == "0.a_f64":
                            value["#"] = "0.a_f32"
                            retyped += 1
    with open(out_json, "w", encoding="utf-8") as handle:
        json.dump(program, handle)
    return retyped


def convert_to_onnx(program_dir: str, onnx_path: str, opset: int = ONNX_OPSET) -> None:
    """paddle2onnx (the ``.[onnx]`` extra) on the program in ``program_dir``; ExportError on failure."""
    try:
        import paddle2onnx
    except ImportError:
        raise ExportError('--format onnx needs paddle2onnx: pip install -e ".[onnx]"') from None
    patched = os.path.join(program_dir, "paddle2onnx_input.json")
    scale_attributes_as_float32(os.path.join(program_dir, PROGRAM_FILE), patched)
    try:
        # No extra optimiser: onnxruntime folds constants itself when it loads the model.
        paddle2onnx.export(
            patched,
            os.path.join(program_dir, PARAMS_FILE),
            save_file=onnx_path,
            opset_version=opset,
            enable_onnx_checker=True,
            optimize_tool="None",
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001 (paddle2onnx raises bare Exceptions)
        raise ExportError(
            f"paddle2onnx {paddle2onnx.__version__} failed: {' '.join(str(error).split())[:300]}"
        ) from None
    finally:
        os.remove(patched)
    if not os.path.isfile(onnx_path):
        raise ExportError(
            f"paddle2onnx {paddle2onnx.__version__} wrote no {os.path.basename(onnx_path)} (its log above says why)"
        )


def check_onnx_export(
    model: nn.Layer,
    model_dir: str,
    size: Optional[Tuple[int, int]],
    tolerance: float = DEFAULT_ROUNDING_TOLERANCE,
    min_agreement: float = 0.999,
    seed: int = 0,
) -> List[Tuple[str, float, float]]:
    """onnxruntime on the exported ``model.onnx`` vs the dynamic graph on a random input.

    onnxruntime folds BatchNorm into the convolutions, like the oneDNN backend, so the same
    rounding tolerance applies (measured 2.9e-5 on paddle.seed(0) weights). Raises ExportError
    when the max |difference| of the probabilities exceeds ``tolerance`` or the argmax agrees
    on fewer than ``min_agreement`` of the pixels.
    """
    height, width = size if size is not None else CHECK_SIZE
    x = np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype("float32")
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    return check_onnx_against(model_dir, x, expected, "the dynamic graph", tolerance, min_agreement)


def export(
    model_name: str,
    weights: Optional[str],
    out_dir: str,
    size: Optional[Tuple[int, int]] = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    model: Optional[nn.Layer] = None,
    window: int = 896,
    stride: int = 512,
    rounding_tolerance: float = DEFAULT_ROUNDING_TOLERANCE,
    fmt: str = "paddle",
) -> Dict[str, object]:
    """Build ``model_name``, load ``weights``, save the inference program + ``model.yml``.

    ``fmt``: "paddle" (``model.json`` + ``model.pdiparams``, Paddle Inference) or "onnx"
    (``model.onnx`` converted from that program by paddle2onnx, run by onnxruntime).
    ``model``: an already built (and loaded) model to export instead of loading ``weights``
    (tests, benchmarks). Returns a summary dict (paths, sizes, check results, seconds).
    Raises CheckpointError (bad weights) or ExportError; ``out_dir`` is untouched then.
    """
    check_model_name(model_name)
    check_model_name(fmt, choices=FORMATS, what="format")
    if size is not None and (size[0] % SIZE_MULTIPLE or size[1] % SIZE_MULTIPLE or min(size) <= 0):
        raise ExportError(f"--size {size[0]} {size[1]}: both must be positive multiples of {SIZE_MULTIPLE}")
    out_dir = os.path.normpath(out_dir)  # "deploy/" and "deploy" name the same folder
    check_replaceable(out_dir, [("--weights", weights)])
    start = time.perf_counter()
    how = "given model"
    if model is None:
        if weights is None:
            raise ValueError("weights or model is required")
        model = build_model(model_name)
        how = load_weights(model, model_name, weights)
    model.eval()
    staging = staging_folder(out_dir)
    try:
        save_inference_model(model, staging, size)
        if fmt == "onnx":
            import paddle2onnx

            convert_to_onnx(staging, os.path.join(staging, ONNX_FILE))
            for name in os.listdir(staging):  # keep model.onnx only
                if name != ONNX_FILE:
                    os.remove(os.path.join(staging, name))
            config = deploy_config(
                model_name,
                size,
                weights,
                how,
                window,
                stride,
                ONNX_FORMAT,
                f"paddle {paddle.__version__} + paddle2onnx {paddle2onnx.__version__}, opset {ONNX_OPSET}",
            )
        else:
            config = deploy_config(
                model_name,
                size,
                weights,
                how,
                window,
                stride,
                FORMAT,
                f"paddle {paddle.__version__} paddle.jit.save",
                {"paddle_version": paddle.__version__},
            )
        write_deploy_config(staging, config, PROG)
        read_deploy_config(staging)  # the program must be what model.yml says
        saved = time.perf_counter()
        checks: List[Tuple[str, float, float]] = []
        if check:
            checks = (
                check_onnx_export(model, staging, size, rounding_tolerance)
                if fmt == "onnx"
                else check_export(model, staging, size, tolerance, rounding_tolerance)
            )
        os.chmod(staging, 0o777 & ~current_umask())
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = (ONNX_FILE,) if fmt == "onnx" else (PROGRAM_FILE, PARAMS_FILE)
    return {
        "out_dir": out_dir,
        "model": model_name,
        "weights": how,
        "size": size,
        "format": fmt,
        "checks": checks,
        "export_seconds": saved - start,
        "check_seconds": time.perf_counter() - saved,
        "bytes": {name: os.path.getsize(os.path.join(out_dir, name)) for name in files + (CONFIG_FILE,)},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Export FarSeg / FactSeg for Paddle Inference: paddle.jit.save of the eval"
        " forward (normalised float32 [B,3,H,W] RGB, H and W multiples of 32 ->"
        " class probabilities [B,16,H,W]) as DIR/model.json + DIR/model.pdiparams"
        " (Paddle 3 PIR format), plus DIR/model.yml (classes, normalisation, input"
        " layout, window/stride). Run it with python -m paddle_impl.infer or"
        " python -m paddle_impl.predict --model-dir DIR. Exit status 0 done, 2 bad"
        " input or failed check (nothing written then).",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="model architecture")
    parser.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="checkpoint: a Paddle .pdparams, or an official / torch_ref .pth"
        " (official wrapper and 'module.' prefix accepted) converted on the"
        " fly with convert.torch_to_paddle (needs torch). Read without"
        " executing code; the layout must match --model exactly",
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
        choices=FORMATS,
        default="paddle",
        help="paddle (default): DIR/model.json + model.pdiparams for Paddle Inference;"
        " onnx: DIR/model.onnx, the same program converted by paddle2onnx (opset"
        f" {ONNX_OPSET}; the onnx extra), for onnxruntime (checked with it)",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=size_multiple_of_32,
        metavar=("H", "W"),
        help="fix the input height and width (multiples of 32; e.g. 896 896 for"
        " the official windows). Default: dynamic H and W. The batch is"
        " always dynamic",
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
        help="after saving, run the program with Paddle Inference (the exact"
        " 'native' backend and the default 'auto' one) on a random input and"
        " compare with the dynamic graph (default on; a few seconds)",
    )
    parser.add_argument(
        "--tolerance",
        type=float_in_range(0.0, 1.0, "a tolerance"),
        default=DEFAULT_TOLERANCE,
        metavar="ABS",
        help=f"largest allowed max |difference| of the probabilities between the"
        f" exact 'native' backend and the dynamic graph (default"
        f" {DEFAULT_TOLERANCE:g}; they agree bit for bit on one thread)",
    )
    parser.add_argument(
        "--rounding-tolerance",
        type=float_in_range(0.0, 1.0, "a tolerance"),
        default=DEFAULT_ROUNDING_TOLERANCE,
        metavar="ABS",
        help=f"the same for the default 'onednn' backend, whose BatchNorm folding"
        f" changes float32 rounding (default {DEFAULT_ROUNDING_TOLERANCE:g};"
        f" measured 3e-6 to 4.1e-5 on random weights)",
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
    paddle.set_device("cpu")  # export and check on the CPU; the program runs on any device
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
            rounding_tolerance=args.rounding_tolerance,
            fmt=args.format,
        )
    except CheckpointError as error:
        print(f"{PROG}: error: {error.headline()}", file=sys.stderr)
        return 2
    except ExportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    size = "x".join(map(str, summary["size"])) if summary["size"] else "dynamic HxW"
    files = [name for name in summary["bytes"]]
    megabytes = summary["bytes"][files[-2]] / 1e6
    print(
        f"exported {args.model} ({summary['weights']}) -> {args.out}/{{{','.join(files)}}}"
        f" (input [B,3,{size}], {megabytes:.1f} MB of weights) in {summary['export_seconds']:.1f}s"
    )
    for backend, difference, limit in summary["checks"]:
        runtime = "onnxruntime" if backend == "onnxruntime" else f"Paddle Inference ({backend} backend)"
        print(
            f"check: {runtime}, 1 thread, vs dynamic graph: max |diff| of the probabilities"
            f" {difference:.3g} (tolerance {limit:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
