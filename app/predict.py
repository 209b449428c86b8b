"""The predict command of both frameworks, written once: ``python -m torch_ref.predict`` and
``python -m paddle_impl.predict`` are this driver over their framework's backend
(:mod:`app.backend`).

The command line, the checks made before any model is built, the loop that writes each row
band as the engine yields it (:func:`predict_to_files`: class map through :mod:`app.raster`,
colour rendering through :mod:`app.preview`), and the command's main (:func:`run_predictor`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from common.atomic import (
    InputOverwriteError,
    check_writable,
    describe_os_error,
    refuse_overwriting_inputs,
    remove_stale_temporaries,
)
from common.resources import MemoryBudgetError, check_memory
from convert import CheckpointError, detect_architecture
from isaid.palette import CLASS_NAMES

from .backend import Backend, Engine, ReadWindow
from .cli import (
    OneLineArgumentParser,
    add_config_option,
    auto_device,
    batch_size,
    explicit_options,
    int_in_range,
    stride_px,
    window_side,
)
from .config import ConfigError, apply_inference_config
from .exported import MODEL_DIR_FILES
from .preview import DEFAULT_PREVIEW_SIDE, ColourPreview
from .raster import (
    NODATA_CLASS,
    OUTPUT_EXTENSIONS,
    GeoTiffClassMapWriter,
    RasterError,
    RasterReader,
    create_class_map_writer,
    open_raster,
)

DEFAULT_WINDOW, DEFAULT_STRIDE = 896, 512  # the official sliding windows
MODEL_DIR_HELP = (
    "an export instead of --weights: python -m paddle_impl.export (Paddle Inference; Paddle"
    " commands) or an ONNX export of python -m torch_ref.export / paddle_impl.export --format"
    " onnx (onnxruntime; both frameworks' commands). DIR/model.yml is checked against the"
    " program; window and stride default to its values"
)
BACKEND_HELP = (
    "runtime for --model-dir (default auto: Paddle Inference's oneDNN backend for a Paddle"
    " export, onnxruntime for an ONNX one); Paddle: onednn, onednn-bf16 (oneDNN bfloat16),"
    " native, paddle-default (see python -m paddle_impl.infer --help), onnxruntime"
)
AMP_HELP = (
    "mixed precision (default none = float32). On a GPU fp16 or bf16 autocast; on a CPU bf16 only,"
    " fast on CPUs with AVX512-BF16 or AMX: torch autocast with channels-last convolutions; Paddle"
    " with --model-dir (Paddle Inference's oneDNN bf16; Paddle 3.3.1's dynamic graph has no CPU"
    " mixed precision). Not exact: see docs/evaluate.md for the share of pixels that change"
)


ENGINE_HELP = (
    "how --weights run: auto (default: on the CPU in float32 or --amp bf16, the model saved as a"
    " static program in-process and run by Paddle Inference with oneDNN, cached and checked against"
    " the dynamic graph on a probe input before use; otherwise the dynamic graph), inference (that"
    " engine, or an error), dygraph (the dynamic graph, as before)"
)
ENGINE_CACHE_HELP = (
    "folder of the inference engine cache (default $RSSEG_ENGINE_CACHE, else"
    " ~/.cache/rsseg-port/paddle-engines; bounded to $RSSEG_ENGINE_CACHE_MB megabytes, default 2048)"
)


def add_engine_options(parser: argparse.ArgumentParser, engines: Sequence[str]) -> None:
    """``--engine`` / ``--engine-cache`` for a framework with several engines for ``--weights``."""
    if engines:
        parser.add_argument("--engine", default=engines[0], choices=tuple(engines), help=ENGINE_HELP)
        parser.add_argument("--engine-cache", metavar="DIR", help=ENGINE_CACHE_HELP)


def engine_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``build_engine`` keyword arguments of :func:`add_engine_options` (none if not added)."""
    if not hasattr(args, "engine"):
        return {}
    return {"engine": args.engine, "engine_cache": args.engine_cache}


def build_predict_parser(
    prog: str,
    framework: str,
    gpu_name: str,
    model_dir: bool = False,
    deploy_backends: Sequence[str] = ("auto",),
    engines: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """The predict CLI's parser; ``model_dir`` adds ``--model-dir`` / ``--backend`` (choices
    ``deploy_backends``); ``engines`` adds ``--engine`` / ``--engine-cache``."""
    source = "--weights W" + (" or --model-dir DIR" if model_dir else "")
    parser = OneLineArgumentParser(
        prog=prog,
        description=(
            f"Predict the iSAID classes of a scene of any size with FarSeg / FactSeg ({framework}):"
            " the official sliding windows (896 at stride 512, probabilities averaged where"
            " windows overlap, argmax), streamed by row bands. Output: a uint8 class-index raster"
            " (0..15). GeoTIFF in, GeoTIFF out keeps the CRS and affine transform. Memory: a"
            " GeoTIFF/TIFF input is read by windows (one strip of --window rows), the output is"
            " written band by band (GeoTIFF or PNG), and the device holds one band of"
            " probabilities (16 x window x width float32), so memory depends on the scene's"
            " width, not its height; a PNG/JPEG input is decoded whole (3 bytes a pixel):"
            " convert huge scenes to a tiled GeoTIFF; a scene whose band would not fit in memory is"
            " refused before prediction starts. Pixels a GeoTIFF marks as nodata (value or mask)"
            " are written as 255 (the output's nodata value) and left out of the class shares."
            " Output files appear only when complete and read back correctly."
            f" Model: {source}. Exit status 0 done, 2 bad input (one line on stderr)."
        ),
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint: a torch .pth (official training wrapper and 'module.'"
        " prefix accepted) or a Paddle .pdparams; the other framework's file"
        " is converted in memory. Loaded without executing code" + ("; or use --model-dir" if model_dir else ""),
    )
    if model_dir:
        parser.add_argument("--model-dir", metavar="DIR", help=MODEL_DIR_HELP)
    parser.add_argument(
        "--model",
        choices=("auto", "farseg", "factseg"),
        default="auto",
        help="architecture of --weights (default auto: detected from the checkpoint's keys; --config's model.name)",
    )
    add_config_option(parser)
    parser.add_argument(
        "--image",
        required=True,
        metavar="FILE",
        help="RGB scene: a 3-band uint8 GeoTIFF/TIFF (read by windows) or a"
        " PNG / JPEG / BMP (decoded whole; greyscale is replicated and alpha"
        " dropped, as the official loader does)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT.tif|OUT.png",
        help="class-index raster, 1 band uint8 (0..15): .tif/.tiff writes a"
        " deflate-compressed, 256x256-tiled GeoTIFF with the input's CRS and"
        " transform and the iSAID colour table; .png a palette PNG (values"
        " = classes, iSAID colours; no georeferencing). Both are written band"
        " by band to a temporary file renamed at the end",
    )
    parser.add_argument(
        "--window", type=window_side, metavar="PX", help="window side (default 896, the official value)"
    )
    parser.add_argument(
        "--stride",
        type=stride_px,
        metavar="PX",
        help="window stride, at most --window (default 512, the official value)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=1,
        metavar="N",
        help="windows per forward pass (default 1; larger is faster on a GPU)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "gpu"),
        default="auto",
        help=f"cpu, {gpu_name} (cuda and gpu both name the GPU), or auto ({gpu_name} when available; default)",
    )
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help=AMP_HELP)
    if model_dir:
        parser.add_argument("--backend", default="auto", choices=tuple(deploy_backends), help=BACKEND_HELP)
    add_engine_options(parser, engines)
    parser.add_argument(
        "--color",
        metavar="COLOUR.png",
        help="also write a colour rendering in the iSAID palette with a legend"
        " (class names and each class's share of the pixels)",
    )
    parser.add_argument(
        "--color-max-side",
        type=int_in_range(16, 1 << 15, "a preview side"),
        default=DEFAULT_PREVIEW_SIDE,
        metavar="PX",
        help=f"the colour rendering is subsampled (nearest neighbour) so that its"
        f" longer side is at most PX (default {DEFAULT_PREVIEW_SIDE}); the"
        f" class shares are computed at full resolution",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar over windows on stderr (default on)",
    )
    return parser


def check_predict_args(args: argparse.Namespace) -> List[str]:
    """Problems with the options that argparse cannot see (empty list when fine)."""
    problems: List[str] = []
    has_dir = getattr(args, "model_dir", None) is not None
    if has_dir == (args.weights is not None):
        problems.append(
            "give exactly one of --weights and --model-dir" if hasattr(args, "model_dir") else "--weights is required"
        )
    if has_dir and args.model != "auto":
        problems.append("--model is read from DIR/model.yml with --model-dir; leave it out")
    if has_dir and getattr(args, "engine", "auto") != "auto":
        problems.append("--engine applies to --weights; with --model-dir use --backend")
    if args.window is not None and args.stride is not None and args.stride > args.window:
        problems.append(
            f"--stride {args.stride} is larger than --window {args.window}, which would leave pixels in no window"
        )
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in OUTPUT_EXTENSIONS:
        problems.append(
            f"--out {args.out}: unsupported extension {extension or '(none)'!r}; use .tif"
            " (GeoTIFF, keeps the georeferencing) or .png"
        )
    if args.color is not None and not args.color.lower().endswith(".png"):
        problems.append(f"--color {args.color}: must end in .png")
    try:
        refuse_overwriting_inputs([("--out", args.out), ("--color", args.color)], predict_inputs(args))
    except InputOverwriteError as error:
        problems.append(str(error))
    return problems


def predict_inputs(args: argparse.Namespace) -> List[Tuple[str, Optional[str]]]:
    """The files a predict run reads, as ``(option, path)``: no output may be one of them."""
    inputs: List[Tuple[str, Optional[str]]] = [("--image", args.image), ("--weights", args.weights)]
    model_dir = getattr(args, "model_dir", None)
    if model_dir is not None:
        inputs += [("--model-dir", os.path.join(model_dir, name)) for name in MODEL_DIR_FILES]
    return inputs


@dataclass
class PredictionResult:
    """What :func:`predict_to_files` wrote, for the CLI's summary line."""

    image: str
    out: str
    colour: Optional[str]
    height: int
    width: int
    seconds: float
    input_description: str
    georeferenced_output: bool
    class_fractions: np.ndarray
    nodata_pixels: int = 0
    georeference: str = "CRS and transform"  # what was kept (RasterReader.georeference)

    def summary(self) -> str:
        megapixels = self.height * self.width / 1e6
        geo = f"{self.georeference} kept" if self.georeferenced_output else "no georeferencing"
        top = np.argsort(-self.class_fractions)[:4]
        classes = ", ".join(
            f"{CLASS_NAMES[c]} {100 * self.class_fractions[c]:.1f}%" for c in top if self.class_fractions[c] > 0
        )
        colour = f"; colour rendering {self.colour}" if self.colour else ""
        if self.nodata_pixels:
            classes += (
                f" (of the valid pixels; {self.nodata_pixels} nodata pixels of the input written as {NODATA_CLASS})"
            )
        return (
            f"{self.image} ({self.input_description}) -> {self.out} (uint8 classes, {geo}) in"
            f" {self.seconds:.1f}s, {megapixels / max(self.seconds, 1e-9):.3f} Mpx/s; top classes:"
            f" {classes}{colour}"
        )


def predict_to_files(
    reader: RasterReader,
    out_path: str,
    bands: Callable[[int, int, Callable[..., np.ndarray]], Iterator[Tuple[int, int, np.ndarray]]],
    colour_path: Optional[str] = None,
    colour_max_side: int = DEFAULT_PREVIEW_SIDE,
) -> PredictionResult:
    """Run ``bands(height, width, read_window)`` (the engine, yielding ``(row_start, row_end,
    uint8 rows [n, width])`` on the host) over ``reader`` and write each band as it arrives.

    The class map goes to ``out_path`` (:func:`create_class_map_writer`; the input's CRS and
    transform when it is a GeoTIFF), the subsampled colour rendering to ``colour_path``.
    Nothing is left at ``out_path`` if anything fails (RasterError from the reader, an engine
    error, Ctrl-C): the temporary file is removed and the exception propagates.
    """
    start = time.perf_counter()
    writer = create_class_map_writer(
        out_path,
        reader.height,
        reader.width,
        reader.crs,
        reader.transform,
        NODATA_CLASS if reader.has_nodata else None,
        reader.gcps,
        reader.rpcs,
    )
    preview = ColourPreview(reader.height, reader.width, colour_max_side)
    with writer:
        for row_start, row_end, rows in bands(reader.height, reader.width, reader.read_window):
            if rows.shape != (row_end - row_start, reader.width):
                raise ValueError(f"engine yielded rows {row_start}..{row_end} of shape {list(rows.shape)}")
            nodata = reader.nodata_rows(row_start, row_end)
            if nodata is not None and nodata.any():
                rows = np.where(nodata, np.uint8(NODATA_CLASS), rows)
            writer.write_rows(row_start, rows)
            preview.add_rows(row_start, rows)
        writer.commit()
    if colour_path is not None:
        try:
            preview.save(
                colour_path,
                title=f"{os.path.basename(reader.path)}: prediction"
                + (f" (1:{preview.step})" if preview.step > 1 else ""),
            )
        except OSError as error:
            raise RasterError(
                f"{colour_path}: cannot write the colour rendering ({describe_os_error(error)});"
                " the earlier file, if any, is untouched"
            ) from None
    georeferenced = isinstance(writer, GeoTiffClassMapWriter) and reader.georeferenced
    return PredictionResult(
        reader.path,
        out_path,
        colour_path,
        reader.height,
        reader.width,
        time.perf_counter() - start,
        reader.describe(),
        georeferenced,
        preview.fractions(),
        preview.nodata_pixels,
        reader.georeference(),
    )


# Bytes per pixel of one band (window rows x scene width) on the host while predicting on the
# CPU: the float32 accumulator of 16 classes, its averaged copy, the RGB strip, the classes
# (counted from the arrays the engine holds, not measured).
BAND_BYTES_PER_PIXEL_CPU = 16 * 4 * 2 + 3 + 8
BAND_BYTES_PER_PIXEL_GPU = 3 + 8  # the probabilities stay on the device


def check_band_memory(reader: RasterReader, window: int, device: str) -> None:
    """RasterError (one line naming the size and the limit) when one band of the scene (window
    rows x its width) would not fit in the memory this process may use."""
    per_pixel = BAND_BYTES_PER_PIXEL_CPU if device == "cpu" else BAND_BYTES_PER_PIXEL_GPU
    rows = min(window, reader.height)
    try:
        check_memory(
            per_pixel * rows * reader.width,
            f"{reader.path}: predicting this {reader.width}x{reader.height} scene (one band of"
            f" {rows} rows x {reader.width} columns)",
            "memory grows with the width only: cut the scene into narrower tiles (e.g."
            " gdal_translate -srcwin) and predict each",
        )
    except MemoryBudgetError as error:
        raise RasterError(str(error)) from None


def class_bands(
    backend: Backend, engine: Engine, progress: bool
) -> Callable[[int, int, ReadWindow], Iterator[Tuple[int, int, np.ndarray]]]:
    """The engine's bands as host uint8 rows (only the class indices leave the device): the
    ``bands`` argument of :func:`predict_to_files`."""

    def bands(height: int, width: int, read_window: ReadWindow) -> Iterator[Tuple[int, int, np.ndarray]]:
        for row_start, row_end, classes in engine.run(height, width, read_window, progress):
            yield row_start, row_end, backend.classes_to_host(classes)

    return bands


def build_engine(backend: Backend, args: argparse.Namespace) -> Tuple[Engine, str]:
    """The sliding-window engine over the model the options name, and what it runs.

    Raises CheckpointError (bad weights) or one of ``backend.engine_errors``.
    """
    if getattr(args, "model_dir", None) is not None:
        return backend.build_deployed_engine(
            args.model_dir, args.window, args.stride, args.device, args.batch_size, args.backend, args.amp
        )
    name = detect_architecture(args.weights) if args.model == "auto" else args.model
    engine, how = backend.build_engine(
        name,
        args.weights,
        args.window or DEFAULT_WINDOW,
        args.stride or DEFAULT_STRIDE,
        args.device,
        args.batch_size,
        None if args.amp == "none" else args.amp,
        exact_float32=False,
        **engine_options(args),
    )
    return engine, f"{name}, {how}"


def print_error(prog: str, message: str) -> None:
    """``prog: error: message`` on stderr, on one line."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def run_predictor(argv: Optional[Sequence[str]], prog: str, backend: Backend) -> int:
    """The predict command line over one framework's ``backend``; returns the exit status.

    Bad options, an unreadable scene, bad weights (convert's CheckpointError: its
    ``headline()`` is reported), ``backend.engine_errors`` while building the engine and
    RasterError / ``backend.run_errors`` while predicting: one line on stderr, exit 2, no
    output file.
    """
    parser = build_predict_parser(
        prog,
        backend.display_name,
        backend.gpu_name,
        model_dir=backend.supports_model_dir,
        deploy_backends=backend.deploy_backends,
        engines=backend.engines,
    )
    args = parser.parse_args(argv)
    try:
        # --model-dir: the export's model.yml names the model; the file still gives window and stride
        apply_inference_config(args, explicit_options(parser, argv), model=getattr(args, "model_dir", None) is None)
    except ConfigError as error:
        print_error(prog, f"--config {error}")
        return 2
    problems = check_predict_args(args)
    args.device = auto_device(args.device, backend.gpu_name, backend.gpu_available)
    for problem in problems:
        print_error(prog, problem)
    if problems:
        return 2
    try:
        backend.resolve_device(args.device)
        for option, path in (("--out", args.out), ("--color", args.color)):
            if path is not None:
                try:
                    check_writable(path)  # a read-only folder is found before any work is done
                    # temporary files that an earlier, killed run left for this very output
                    own_name = os.path.basename(path)
                    remove_stale_temporaries(
                        os.path.dirname(os.path.abspath(path)), lambda target, name=own_name: target == name
                    )
                except OSError as error:
                    raise RasterError(f"{option} {path}: cannot write there ({describe_os_error(error)})") from None
        reader: RasterReader = open_raster(args.image)  # header and band checks before the model
    except (RasterError, ValueError) as error:
        print_error(prog, error)
        return 2
    with reader:
        try:
            engine, how = build_engine(backend, args)
        except CheckpointError as error:
            print_error(prog, error.headline())
            return 2
        except backend.engine_errors as error:
            print_error(prog, error)
            return 2
        if reader.georeferenced and not args.out.lower().endswith((".tif", ".tiff")):
            print(
                f"note: {args.image} is georeferenced ({reader.georeference()}) but {args.out} is a"
                " PNG, which cannot keep that; use a .tif output to keep it",
                file=sys.stderr,
            )
        print(
            f"model: {how}; device {engine.device}; window {engine.window}, stride {engine.stride}",
            file=sys.stderr,
            flush=True,
        )
        try:
            check_band_memory(reader, engine.window, str(engine.device))
        except RasterError as error:
            print_error(prog, error)
            return 2
        try:
            result = predict_to_files(
                reader, args.out, class_bands(backend, engine, args.progress), args.color, args.color_max_side
            )
        except (RasterError, *backend.run_errors) as error:
            print_error(prog, error)
            return 2
    print(result.summary(), flush=True)
    return 0
