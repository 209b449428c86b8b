"""Run an export of ``python -m paddle_impl.export`` with Paddle Inference.

Usage::

    python -m paddle_impl.infer --model-dir deploy/farseg --image scene.png [--out classes.png]
        [--color colour.png] [--device cpu|gpu] [--backend auto|onednn|native|paddle-default]
        [--threads N]

One forward pass over the whole image (normalised, zero-padded to a multiple of 32, cropped
back, argmax): the minimal deployment path. For scenes larger than a window, or GeoTIFFs, use
``python -m paddle_impl.predict --model-dir DIR`` (sliding windows, bounded memory).

CPU backends (``--backend``), and why ``auto`` does not use Paddle's default:

- ``paddle-default``: Paddle's own CPU configuration, oneDNN on. Paddle 3.3.1 refuses these
  models at ``predictor.run()``: ``ConvertPirAttribute2RuntimeAttribute not support
  [pir::ArrayAttribute<pir::DoubleAttribute>]``. The culprits are the ``nearest_interp`` (FPN
  top-down x2) and ``bilinear_interp`` (decoder x2, head x4) ops: their ``scale`` attribute is
  an array of doubles, which the oneDNN instruction cannot convert, whether the program
  interpolates by scale factor or by output size (a one-conv program with a single
  ``F.interpolate`` fails the same way; without it, it runs).
- ``onednn``: oneDNN on, with the pass that moves individual ops onto oneDNN kernels
  (``onednn_placement_pass``) removed. The fusion passes still turn every convolution (with
  its folded BatchNorm, bias, ReLU and residual add) into a oneDNN ``fused_conv2d``, while
  the interpolations stay on Paddle's own CPU kernels. Runs, and is the fastest CPU backend
  measured here; equal to the dynamic graph up to float32 rounding (BatchNorm folded into the
  convolution weights).
- ``native``: oneDNN off (``config.disable_mkldnn()``): Paddle's plain CPU kernels, the same
  as the dynamic graph's; with one thread the output equals the dynamic graph bit for bit.
- ``onednn-bf16``: ``onednn`` with oneDNN's bfloat16 passes (``enable_mkldnn_bfloat16``):
  the fused convolutions run in bf16 on CPUs with AVX512-BF16 / AMX, the rest stays float32.
  Not exact: see the README for the measured share of pixels whose class changes.
- ``onnxruntime``: for an ONNX export (``--format onnx`` of either framework's export), run by
  onnxruntime's CPU provider; ``auto`` picks it for such a folder.
- ``auto`` (default): ``onednn``, falling back to ``native`` if it fails on the first run
  (the reason is kept in ``DeployedModel.fallbacks`` and printed); on a GPU: ``gpu``.

Before anything runs, ``model.yml`` is checked against the program (the convolution weight
shapes must be those of the model it names; :func:`app.exported.read_deploy_config`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import paddle.inference as paddle_infer

from app.cli import OneLineArgumentParser, device_spec, thread_count
from app.exported import MODEL_DIR_FILES, ONNX_FORMAT, ExportedModel, OnnxModel, check_input
from app.exported import default_threads as default_threads
from app.preview import ColourPreview
from app.raster import GEOTIFF_EXTENSIONS, RasterError, open_raster
from common.atomic import InputOverwriteError, describe_os_error, refuse_overwriting_inputs
from isaid.imageio import ImageReadError, check_image_memory, read_size, write_png_atomic
from isaid.palette import CLASS_NAMES, NUM_CLASSES

from .export_format import CONFIG_FILE, PARAMS_FILE, PROGRAM_FILE, ExportError, fixed_size, read_deploy_config

PROG = "python -m paddle_impl.infer"
CPU_BACKENDS = ("onednn", "onednn-bf16", "native", "paddle-default")
BACKENDS = ("auto",) + CPU_BACKENDS + ("gpu", "onnxruntime")
# What "auto" tries on a CPU, in order (a test puts "paddle-default" first to see the fallback).
AUTO_CPU_ORDER: Tuple[str, ...] = ("onednn", "native")
# The pass whose removal keeps oneDNN convolutions but leaves interpolations on CPU kernels.
ONEDNN_PLACEMENT_PASS = "onednn_placement_pass"
# Peak bytes a pixel of the input costs in one whole-image forward pass (the image, its
# normalised copy, ResNet-50/FPN activations, the probabilities [16,H,W], the class map).
# Measured 808 (FarSeg, native backend, one thread: peak RSS of 1024^2 minus 256^2 over the
# pixel difference, /usr/bin/time -f %M; docs/untrusted_inputs.md); 1000 leaves a margin.
FORWARD_BYTES_PER_PIXEL = 1000


class InferenceError(Exception):
    """No backend could run the export, or the input does not fit it; one line."""


def check_forward_memory(height: int, width: int, path: str) -> None:
    """ImageReadError (one line) when one forward pass over a ``height`` x ``width`` image
    (what this command runs) needs more memory than this process may allocate."""
    check_image_memory(
        height,
        width,
        path,
        FORWARD_BYTES_PER_PIXEL,
        "one forward pass over",
        "use python -m paddle_impl.predict --model-dir (sliding windows, bounded memory)",
    )


def make_config(model_dir: str, backend: str, threads: Optional[int] = None, gpu_id: int = 0) -> "paddle_infer.Config":
    """A ``paddle.inference.Config`` for ``model_dir`` and one concrete backend (not "auto")."""
    config = paddle_infer.Config(os.path.join(model_dir, PROGRAM_FILE), os.path.join(model_dir, PARAMS_FILE))
    config.disable_glog_info()
    if backend == "gpu":
        config.enable_use_gpu(256, gpu_id)  # initial memory pool in MB; grows as needed
        return config
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads or default_threads())
    if backend == "native":
        config.disable_mkldnn()
    elif backend in ("onednn", "onednn-bf16"):
        config.enable_mkldnn()
        config.delete_pass(ONEDNN_PLACEMENT_PASS)
        if backend == "onednn-bf16":
            config.enable_mkldnn_bfloat16()
    elif backend == "paddle-default":
        config.enable_mkldnn()  # what a plain Config does on a oneDNN-enabled CPU build
    else:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS[1:])}")
    return config


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = next((line for line in lines if "Error" in line or "not support" in line), lines[0] if lines else "")
    return " ".join(text.split())[:300] or type(error).__name__


class DeployedModel(ExportedModel):
    """A Paddle Inference predictor over an export, with the backend chosen as ``infer`` does.

    ``model(x)`` maps normalised float32 [B,3,H,W] (multiples of 32; the fixed size of a
    fixed-size export) to probabilities [B,16,H,W]. With ``backend="auto"`` the first call
    tries the candidates in order and keeps the first that runs; ``backend`` then names it
    and ``fallbacks`` lists ``(backend, reason)`` for those that failed.
    """

    error = InferenceError

    def __init__(
        self,
        model_dir: str,
        device: str = "cpu",
        backend: str = "auto",
        threads: Optional[int] = None,
        config: Optional[dict] = None,
        checked: bool = True,
    ) -> None:
        self.model_dir = model_dir
        self.checked = checked
        self.config = read_deploy_config(model_dir) if config is None else config
        self.fixed_size = fixed_size(self.config)
        self.threads = threads
        device = device.lower()
        self.gpu_id = 0
        if device in ("gpu", "cuda") or device.startswith(("gpu:", "cuda:")):
            self.gpu_id = int(device.split(":")[1]) if ":" in device else 0
            if backend not in ("auto", "gpu"):
                raise InferenceError(f"--backend {backend} is a CPU backend; use auto or gpu with --device {device}")
            candidates: Tuple[str, ...] = ("gpu",)
        elif device == "cpu":
            if backend == "gpu":
                raise InferenceError("--backend gpu needs --device gpu")
            candidates = AUTO_CPU_ORDER if backend == "auto" else (backend,)
        else:
            raise InferenceError(f"unknown device {device!r}: expected cpu or gpu[:N]")
        self.device = device
        self.candidates = list(candidates)
        self.fallbacks: List[Tuple[str, str]] = []
        self.backend = self.candidates[0]
        self._proven = False  # a run has succeeded: no more falling back
        self._predictor = None
        self._create()
        self.probe()

    def _next_backend(self, error: BaseException) -> None:
        """Record why the current backend failed and move to the next candidate (or raise)."""
        position = self.candidates.index(self.backend)
        if self._proven or position + 1 >= len(self.candidates):
            tried = "; ".join(f"{b}: {r}" for b, r in self.fallbacks)
            raise InferenceError(
                f"{self.model_dir}: Paddle Inference ({self.backend} backend) failed:"
                f" {_first_line(error)}" + (f" (also tried {tried})" if tried else "")
            ) from None
        self.fallbacks.append((self.backend, _first_line(error)))
        self.backend = self.candidates[position + 1]
        self._predictor = None

    def _create(self) -> None:
        """Create the predictor (program loading and graph optimisation: seconds, done once)."""
        while self._predictor is None:
            try:
                self._predictor = paddle_infer.create_predictor(
                    make_config(self.model_dir, self.backend, self.threads, self.gpu_id)
                )
            except Exception as error:  # noqa: BLE001 (Paddle raises many types)
                self._next_backend(error)

    def _run(self, x: np.ndarray) -> np.ndarray:
        self._create()
        predictor = self._predictor
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(x)
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.fixed_size, self.model_dir, InferenceError)
        while True:
            try:
                output = self._run(x)
                self._proven = True
                return self.check_output(x, output)
            except InferenceError:
                raise
            except Exception as error:  # noqa: BLE001 (Paddle raises RuntimeError, NotImplementedError, ...)
                self._next_backend(error)


def create_predictor(
    model_dir: str, device: str = "cpu", backend: str = "auto", threads: Optional[int] = None, verify: bool = True
) -> ExportedModel:
    """Open the export in ``model_dir``: a :class:`DeployedModel` (Paddle Inference) for a
    Paddle program, an :class:`app.exported.OnnxModel` for an ONNX export. ExportError if the
    folder is not an export or its ``model.yml`` does not describe its program (``verify``;
    it also turns on the output checks: shape and finiteness at load and on every run).
    """
    config = read_deploy_config(model_dir, verify=verify)
    if config["format"] == ONNX_FORMAT:
        if backend not in ("auto", "onnxruntime") or device.lower() != "cpu":
            raise InferenceError(
                f"{model_dir} is an ONNX export: it runs with --backend onnxruntime (or auto) on the CPU"
            )
        return OnnxModel(model_dir, threads, config, error=InferenceError, checked=verify)
    if backend == "onnxruntime":
        raise InferenceError(
            f"{model_dir} is a Paddle Inference export; --backend onnxruntime needs an export"
            " written with --format onnx"
        )
    return DeployedModel(model_dir, device, backend, threads, config, checked=verify)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Run an export of python -m paddle_impl.export with Paddle Inference on one"
        " image, in one forward pass (whole image, zero-padded to a multiple of 32"
        " after normalisation). For large scenes and GeoTIFFs use python -m"
        " paddle_impl.predict --model-dir DIR. Exit status 0 done, 2 bad input.",
    )
    parser.add_argument(
        "--model-dir",
        required=True,
        metavar="DIR",
        help=f"folder written by python -m paddle_impl.export ({PROGRAM_FILE}, {PARAMS_FILE}, {CONFIG_FILE})",
    )
    parser.add_argument(
        "--image", required=True, metavar="FILE", help="RGB image: PNG / JPEG / BMP, or a 3-band uint8 (Geo)TIFF"
    )
    parser.add_argument(
        "--out",
        metavar="OUT.png",
        help="write the class map as a palette PNG (pixel value = class index"
        " 0..15, shown in the iSAID colours); atomically",
    )
    parser.add_argument("--color", metavar="COLOUR.png", help="write a colour rendering with a class legend")
    parser.add_argument(
        "--device",
        type=device_spec,
        default="cpu",
        metavar="cpu|gpu[:N]",
        help="where Paddle Inference runs (default cpu)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="CPU backend: auto (default: onednn, falling back to native; onnxruntime"
        " for an ONNX export), onednn (oneDNN convolutions, interpolation on CPU"
        " kernels), onednn-bf16 (the same with oneDNN bfloat16; not exact), native"
        " (oneDNN off; bit-exact with the dynamic graph on one thread),"
        " paddle-default (Paddle's own config: fails on Paddle 3.3.1 for"
        " these models, see the module doc); gpu with --device gpu; onnxruntime"
        " for an export written with --format onnx",
    )
    parser.add_argument(
        "--threads", type=thread_count, metavar="N", help="CPU threads (default: all cores this process may use)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for option, path in (("--out", args.out), ("--color", args.color)):
        if path is not None and not path.lower().endswith(".png"):
            print(f"{PROG}: error: {option} {path}: must end in .png", file=sys.stderr)
            return 2
    try:  # no output may be an input (symbolic and hard links included)
        refuse_overwriting_inputs(
            [("--out", args.out), ("--color", args.color)],
            [("--image", args.image)] + [("--model-dir", os.path.join(args.model_dir, n)) for n in MODEL_DIR_FILES],
        )
    except InputOverwriteError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    try:
        model = create_predictor(args.model_dir, args.device, args.backend, args.threads)
        if not args.image.lower().endswith(GEOTIFF_EXTENSIONS):  # decoded whole: check its header first
            check_forward_memory(*read_size(args.image), args.image)
        with open_raster(args.image) as reader:
            check_forward_memory(reader.height, reader.width, args.image)
            image = reader.read_window(0, 0, reader.height, reader.width)
            georeference = reader.georeference()
        start = time.perf_counter()
        classes = model.predict_image(image)
        seconds = time.perf_counter() - start
    except (ExportError, RasterError, InferenceError, ImageReadError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    for backend, reason in model.fallbacks:
        print(f"note: backend {backend} failed ({reason}); used {model.backend} instead", file=sys.stderr)
    if georeference and args.out:  # a PNG holds no georeferencing: say so rather than drop it silently
        print(
            f"note: {args.image} is georeferenced ({georeference}) but {args.out} is a PNG, which"
            f" cannot keep that; python -m paddle_impl.predict --model-dir {args.model_dir} --out OUT.tif keeps it",
            file=sys.stderr,
        )
    try:
        if args.out:
            write_png_atomic(args.out, classes, index_palette=True)
        if args.color:
            preview = ColourPreview(*classes.shape)
            preview.add_rows(0, classes)
            preview.save(args.color)
    except OSError as error:  # disk full, read-only folder: the earlier file is untouched
        print(f"{PROG}: error: {describe_os_error(error, with_file=True)}", file=sys.stderr)
        return 2
    except RasterError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    counts = np.bincount(classes.reshape(-1), minlength=NUM_CLASSES)
    present = ", ".join(
        f"{CLASS_NAMES[c]} {100.0 * counts[c] / classes.size:.1f}%" for c in np.argsort(-counts) if counts[c]
    )
    print(
        f"{args.image} ({image.shape[1]}x{image.shape[0]}) -> {args.out or '(not written)'}:"
        f" {model.config['model']} on {model.device} ({model.backend} backend) in {seconds:.2f}s;"
        f" classes: {present}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
