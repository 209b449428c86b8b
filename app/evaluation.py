"""The evaluate command of both frameworks, written once: ``python -m torch_ref.evaluate`` and
``python -m paddle_impl.evaluate`` are :func:`run_evaluator` over their framework's backend
(:mod:`app.backend`). Here: the loop
over scenes and bands (:func:`evaluate_scenes`), the command line, the expectation check
against the official figures, the report and the JSON result. The model, the sliding-window
engine and the on-device confusion matrix are the backend's.

Inputs (scenes beside their masks, checked before decoding): :mod:`app.val_scenes`.

Memory per scene: the image is read once, whole (uint8, 3 bytes a pixel: 507 MB for a
13,000 x 13,000 scene), and so is the label (1 byte a pixel: 169 MB; a colour mask also needs
its 507 MB RGB array while it is decoded). One scene is read ahead in a thread while the
previous one is evaluated, so at most two scenes are held at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from common.atomic import (
    InputOverwriteError,
    check_writable,
    describe_os_error,
    refuse_overwriting_inputs,
    remove_stale_temporaries,
)
from common.constants import SIZE_MULTIPLE
from common.digest import sha256_file
from convert import CheckpointError
from isaid.imageio import (
    ImageReadError,
    write_bytes_atomic,
)
from isaid.metrics import format_iou_table, miou
from isaid.palette import CLASS_NAMES, IGNORE_INDEX, MEAN, NUM_CLASSES, STD
from isaid.windows import num_windows
from weights import MODEL_NAMES, OFFICIAL_MIOU, SEED_REPRODUCTION_MIOU

from .backend import Backend, Engine
from .cli import (
    OneLineArgumentParser,
    add_config_option,
    auto_device,
    batch_size,
    explicit_options,
    float_in_range,
    positive_int,
    stride_px,
    window_side,
)
from .config import ConfigError, apply_inference_config
from .exported import MODEL_DIR_FILES, read_deploy_config
from .predict import AMP_HELP, BACKEND_HELP, MODEL_DIR_HELP, add_engine_options, engine_options
from .val_scenes import InputError, LoadedScene, Scene, find_scenes, iter_loaded_scenes, total_windows

OFFICIAL_VAL_IMAGES = 458  # the iSAID val split the official figures were measured on


def evaluate_scenes(
    backend: Backend,
    engine: Engine,
    scenes: Sequence[Scene],
    num_classes: int = NUM_CLASSES,
    progress: bool = True,
    prefetch: bool = True,
) -> "Tuple[np.ndarray, SceneTotals]":
    """Run ``engine`` over ``scenes``; return (confusion int64 [C,C] rows = truth, totals).

    The matrix stays on the device until the end (only the label rows travel there); raises
    ImageReadError / InputError for a scene that cannot be read.
    """
    confusion = backend.new_confusion(engine, num_classes)
    totals = SceneTotals()
    bar = tqdm(
        total=total_windows(scenes, engine.window, engine.stride),
        unit="win",
        desc="evaluate",
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for loaded in iter_loaded_scenes(scenes, prefetch):
            image, label = loaded.image, loaded.label
            height, width = label.shape
            for row_start, row_end, classes in engine.run(
                height, width, lambda y0, x0, y1, x1, pixels=image: pixels[y0:y1, x0:x1], progress=bar
            ):
                target = engine.to_device(label[row_start:row_end])
                confusion += backend.confusion_matrix(classes, target, num_classes)
            totals.add(loaded, num_windows(height, width, engine.window, engine.stride))
            del image, label, loaded
    return backend.to_host(confusion), totals


# ---------------------------------------------------------------------------- command line


def build_parser(
    prog: str, framework: str, gpu_name: str, deploy_backends: Sequence[str] = (), engines: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The evaluator's argument parser; ``gpu_name`` is "cuda" (torch) or "gpu" (Paddle);
    ``deploy_backends`` (non-empty: the framework runs exports) adds ``--model-dir`` / ``--backend``;
    ``engines`` (non-empty: the framework has several engines for ``--weights``) adds
    ``--engine`` / ``--engine-cache``."""
    parser = OneLineArgumentParser(
        prog=prog,
        description=(
            f"Evaluate FarSeg or FactSeg ({framework}) on whole iSAID images with the official"
            " protocol: sliding windows (896 at stride 512), each window normalised then"
            " zero-padded to a multiple of 32, probabilities averaged where windows overlap,"
            " argmax, one 16x16 confusion matrix over all pixels of all images (counted on the"
            " device), IoU per class, mIoU over the 16 classes (background included) and over"
            " the 15 foreground classes. Exit status: 0 done, 1 --expect failed, 2 bad input."
        ),
    )
    parser.add_argument(
        "--model", choices=MODEL_NAMES, help="model architecture: farseg or factseg (required unless --config gives it)"
    )
    add_config_option(parser)
    parser.add_argument(
        "--weights",
        required=not deploy_backends,
        metavar="FILE",
        help="checkpoint: a torch .pth (official training wrapper and 'module.'"
        " prefix accepted) or a Paddle .pdparams; the other framework's"
        " file is converted in memory on the fly (python -m convert writes"
        " it once). Loaded without executing code; the layout must match"
        " the model exactly" + ("; or use --model-dir" if deploy_backends else ""),
    )
    if deploy_backends:
        parser.add_argument("--model-dir", metavar="DIR", help=MODEL_DIR_HELP + "; its model must be --model")
        parser.add_argument("--backend", default="auto", choices=tuple(deploy_backends), help=BACKEND_HELP)
    add_engine_options(parser, engines)
    parser.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help="folder of whole scenes, e.g. OUT/val/images from isaid.prepare or"
        " the extracted official val images (P0003.png ...)",
    )
    parser.add_argument(
        "--masks",
        required=True,
        metavar="DIR",
        help="folder of masks matched by scene name: official colour masks"
        " P0003_instance_color_RGB.png (colours outside the palette count"
        " as background, as officially) or index PNGs P0003.png (e.g."
        " OUT/val/labels from isaid.prepare; 255 = ignored)",
    )
    parser.add_argument(
        "--window",
        type=window_side,
        default=896,
        metavar="PX",
        help="window side in pixels (default 896, the official value)",
    )
    parser.add_argument(
        "--stride",
        type=stride_px,
        default=512,
        metavar="PX",
        help="window stride in pixels, at most --window (default 512, official)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=1,
        metavar="N",
        help="windows per forward pass (default 1, as officially; larger is"
        " faster on a GPU and gives the same result up to float rounding)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", gpu_name),
        default="auto",
        help=f"where the model runs and the confusion matrix is counted:"
        f" cpu, {gpu_name}, or auto ({gpu_name} when available;"
        f" the default)",
    )
    parser.add_argument(
        "--amp",
        choices=("none", "fp16", "bf16"),
        default="none",
        help=AMP_HELP + " (default none: the official figures were measured in float32)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="model precision (default float32, official). float64 is for"
        " alignment checks: it removes float32 argmax flips between"
        " frameworks",
    )
    parser.add_argument(
        "--json",
        metavar="OUT.json",
        help="write the confusion matrix, per-class IoU, mIoU and the run's"
        " settings to this file (atomically; not written on error)",
    )
    parser.add_argument(
        "--expect",
        choices=("official",),
        help="compare the mIoU with the official figure of --model (FarSeg"
        " 63.71, FactSeg 64.80; the seed reproduction is printed beside):"
        " exit 1 when mIoU < official - --tolerance",
    )
    parser.add_argument(
        "--tolerance",
        type=float_in_range(0.0, 100.0, "a tolerance in mIoU points"),
        default=0.3,
        metavar="POINTS",
        help="allowed shortfall in mIoU points for --expect (default 0.3)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate only the first N scenes by name (a quick look; not comparable with the official figures)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar over windows on stderr (default on)",
    )
    return parser


def apply_config_file(args: argparse.Namespace, explicit: Sequence[str]) -> None:
    """``--config``: model, window and stride from the training YAML where not given explicitly
    (:func:`app.config.apply_inference_config`); raises InputError for a bad file or no model."""
    try:
        apply_inference_config(args, explicit)
    except ConfigError as error:
        raise InputError([f"--config {error}"]) from None
    if args.model is None:
        raise InputError(["--model is required (or --config CONFIG.yaml, whose model.name is used)"])


def check_args(args: argparse.Namespace) -> None:
    """Cross-option checks argparse cannot express; raises InputError."""
    if args.stride > args.window:
        raise InputError(
            [f"--stride {args.stride} is larger than --window {args.window}, which would leave pixels in no window"]
        )
    if args.amp != "none" and args.dtype == "float64":
        raise InputError(["--amp and --dtype float64 exclude each other"])
    model_dir = getattr(args, "model_dir", None)
    if (model_dir is not None) == (args.weights is not None):
        raise InputError(
            ["give exactly one of --weights and --model-dir" if hasattr(args, "model_dir") else "--weights is required"]
        )
    if model_dir is not None and args.dtype != "float32":
        raise InputError(["--dtype float64 needs --weights: an export runs in float32"])
    if model_dir is not None and getattr(args, "engine", "auto") != "auto":
        raise InputError(["--engine applies to --weights; with --model-dir use --backend"])


# ------------------------------------------------------------------------------ results


def _finite_or_none(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def summarize(confusion: np.ndarray) -> Dict[str, Any]:
    """IoU figures of a confusion matrix in percent (NaN -> None): iou, miou, miou_fg, ..."""
    summary = miou(confusion)
    return {
        "iou": [_finite_or_none(100.0 * v) for v in summary["iou"]],
        "miou": _finite_or_none(100.0 * summary["miou"]),
        "miou_fg": _finite_or_none(100.0 * summary["miou_fg"]),
        "miou_present": _finite_or_none(100.0 * summary["miou_present"]),
        "miou_fg_present": _finite_or_none(100.0 * summary["miou_fg_present"]),
        "pixel_accuracy": _finite_or_none(100.0 * summary["pixel_accuracy"]),
        "absent_classes": [CLASS_NAMES[c] for c in summary["absent"]],
    }


@dataclass
class Expectation:
    passed: bool
    lines: List[str]
    record: Dict[str, Any]


def check_expectation(model: str, miou_percent: Optional[float], tolerance: float, n_images: int) -> Expectation:
    """Compare a measured mIoU (percent) with the official figure of ``model``.

    Passes when ``miou >= official - tolerance``. An undefined mIoU (a class absent from
    truth and prediction) fails. Looks the figures up in :mod:`weights` at call time.
    """
    official = float(OFFICIAL_MIOU[model])
    seed = float(SEED_REPRODUCTION_MIOU[model])
    threshold = official - tolerance
    passed = miou_percent is not None and miou_percent >= threshold
    shown = "undefined (a class is absent)" if miou_percent is None else f"{miou_percent:.2f}"
    lines = [
        f"mIoU {model}: measured {shown} | official {official:.2f} | seed reproduction {seed:.2f}",
        f"expectation: mIoU >= official - {tolerance:g} = {threshold:.2f}:"
        f" {'PASS' if passed else 'FAIL'}"
        + ("" if miou_percent is None else f" ({miou_percent - official:+.2f} points vs official)"),
    ]
    if n_images != OFFICIAL_VAL_IMAGES:
        lines.append(
            f"note: {n_images} images evaluated; the official figures are over the"
            f" {OFFICIAL_VAL_IMAGES} iSAID val images, so this comparison is indicative"
            " only"
        )
    record = {
        "measured": miou_percent,
        "official": official,
        "seed_reproduction": seed,
        "tolerance": tolerance,
        "threshold": threshold,
        "passed": passed,
    }
    return Expectation(passed, lines, record)


@dataclass
class SceneTotals:
    """What the evaluators count on the host while the device counts the confusion matrix."""

    images: int = 0
    pixels: int = 0
    windows: int = 0
    colour_masks: int = 0
    index_masks: int = 0
    unknown_pixels: int = 0

    def add(self, loaded: LoadedScene, windows: int) -> None:
        self.images += 1
        self.pixels += loaded.label.size
        self.windows += windows
        if loaded.is_colour_mask:
            self.colour_masks += 1
        else:
            self.index_masks += 1
        self.unknown_pixels += loaded.unknown_pixels


def build_result(
    args: argparse.Namespace,
    command: str,
    framework: str,
    framework_version: str,
    device: str,
    confusion: np.ndarray,
    totals: SceneTotals,
    weights_info: str,
    seconds: Dict[str, float],
) -> Dict[str, Any]:
    """The ``--json`` document (also the source of the printed report); ``--expect`` adds
    ``expect`` (:attr:`Expectation.record`) to it."""
    summary = summarize(confusion)
    counted = int(confusion.sum())
    result: Dict[str, Any] = {
        "model": args.model,
        "framework": framework,
        "framework_version": framework_version,
        "weights": (
            {"path": os.path.abspath(args.weights), "sha256": sha256_file(args.weights), "loaded_as": weights_info}
            if args.weights is not None
            else {"model_dir": os.path.abspath(args.model_dir), "loaded_as": weights_info}
        ),
        "data": {
            "images_dir": os.path.abspath(args.images),
            "masks_dir": os.path.abspath(args.masks),
            "images": totals.images,
            "limit": args.limit,
            "colour_masks": totals.colour_masks,
            "index_masks": totals.index_masks,
            "pixels": totals.pixels,
            "pixels_counted": counted,
            "pixels_ignored": totals.pixels - counted,
            "unknown_colour_pixels": totals.unknown_pixels,
        },
        "protocol": {
            "window": args.window,
            "stride": args.stride,
            "pad_multiple": SIZE_MULTIPLE,
            "pad": "zeros bottom/right after normalisation",
            "normalisation": {"mean": list(MEAN), "std": list(STD), "scale": "RGB 0..255"},
            "merge": "class probabilities averaged over overlapping windows, argmax",
            "confusion": "one matrix over all pixels of all images, rows = truth",
            "ignore_index": IGNORE_INDEX,
            "official": args.window == 896 and args.stride == 512,
        },
        "run": {
            "device": device,
            "dtype": args.dtype,
            "amp": args.amp,
            "engine": getattr(args, "engine", None),
            "batch_size": args.batch_size,
            "seconds": seconds,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "command": command,
        },
        "classes": list(CLASS_NAMES),
        "units": "percent",
        "windows": totals.windows,
        "confusion": np.asarray(confusion, dtype=np.int64).tolist(),
        **summary,
    }
    return result


def format_report(result: Dict[str, Any], confusion: np.ndarray) -> str:
    """Human-readable summary printed by the evaluators."""
    run, data = result["run"], result["data"]
    seconds = run["seconds"].get("evaluate", 0.0)
    rate = result["windows"] / seconds if seconds > 0 else float("nan")
    lines = [
        f"{result['model']} ({result['framework']} {result['framework_version']}, {run['device']},"
        f" {run['dtype']}{'' if run['amp'] == 'none' else ', amp ' + run['amp']}) weights"
        f" {result['weights'].get('path') or result['weights']['model_dir']} ({result['weights']['loaded_as']})",
        f"protocol: window {result['protocol']['window']} stride {result['protocol']['stride']},"
        " normalise then zero-pad to a multiple of 32, average probabilities, argmax;"
        " one confusion matrix" + ("" if result["protocol"]["official"] else " (NOT the official 896/512 windows)"),
        f"{data['images']} images ({data['colour_masks']} colour masks, {data['index_masks']}"
        f" index masks), {data['pixels_counted']} pixels counted ({data['pixels_ignored']}"
        f" ignored), {result['windows']} windows in {seconds:.1f} s ({rate:.2f} windows/s)",
    ]
    if data["unknown_colour_pixels"]:
        lines.append(
            f"note: {data['unknown_colour_pixels']} mask pixels have colours outside the palette"
            " and count as background (official behaviour)"
        )
    lines.append(format_iou_table(confusion, CLASS_NAMES))
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _finite_or_none(float(value))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str, document: Dict[str, Any]) -> None:
    """Write ``document`` as JSON (NaN refused: callers turn it into null) atomically."""
    text = json.dumps(document, indent=2, allow_nan=False, default=_json_default)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def print_errors(lines: Sequence[str]) -> None:
    """Report problems on stderr, ``error: `` plus one line each."""
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)


def split_seconds(start: float, loaded: float, done: float) -> Dict[str, float]:
    return {
        "load_model": round(loaded - start, 3),
        "evaluate": round(done - loaded, 3),
        "total": round(done - start, 3),
    }


# ------------------------------------------------------------------------------ main


def evaluate_inputs(args: argparse.Namespace) -> List[Tuple[str, Optional[str]]]:
    """The files an evaluate run reads, as ``(option, path)``: the weights or the export's
    files, and every file of the --images and --masks folders (beyond --limit too)."""
    inputs: List[Tuple[str, Optional[str]]] = [("--weights", args.weights)]
    model_dir = getattr(args, "model_dir", None)
    if model_dir is not None:
        inputs += [("--model-dir", os.path.join(model_dir, name)) for name in MODEL_DIR_FILES]
    for option, folder in (("--images", args.images), ("--masks", args.masks)):
        inputs += [(option, os.path.join(folder, name)) for name in sorted(os.listdir(folder))]
    return inputs


def run_evaluator(argv: Optional[Sequence[str]], prog: str, backend: Backend) -> int:
    """The evaluate command line over one framework's ``backend``; returns the exit status.

    Bad input (options, files, a device the framework cannot use, convert's CheckpointError:
    its ``headline()`` is reported, an unreadable scene): one line per problem, exit 2, no
    JSON. ``--expect`` failed: exit 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(
        prog,
        backend.name,
        backend.gpu_name,
        backend.deploy_backends if backend.supports_model_dir else (),
        backend.engines,
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        apply_config_file(args, explicit_options(parser, argv))
        check_args(args)
        if args.json:
            try:
                check_writable(args.json)  # found now, not after the whole evaluation
                remove_stale_temporaries(
                    os.path.dirname(os.path.abspath(args.json)), lambda target: target == os.path.basename(args.json)
                )
            except OSError as error:
                raise InputError([f"--json {args.json}: cannot write there ({describe_os_error(error)})"]) from None
        scenes = find_scenes(args.images, args.masks, args.limit)
        try:  # the report may not replace any input (symbolic and hard links included)
            refuse_overwriting_inputs([("--json", args.json)], evaluate_inputs(args))
        except InputOverwriteError as error:
            raise InputError([str(error)]) from None
    except InputError as error:
        print_errors(error.lines)
        return 2
    device = auto_device(args.device, backend.gpu_name, backend.gpu_available)
    try:
        backend.resolve_device(device)
    except ValueError as error:
        print_errors([f"--device {device}: {error}"])
        return 2
    try:
        if getattr(args, "model_dir", None) is not None:
            # model.yml's name only: the backend checks the program against model.yml when it loads it.
            exported_model = read_deploy_config(args.model_dir, verify=False)["model"]
            if exported_model != args.model:
                raise InputError([f"--model-dir {args.model_dir} holds {exported_model}, not --model {args.model}"])
            engine, how = backend.build_deployed_engine(
                args.model_dir, args.window, args.stride, device, args.batch_size, args.backend, args.amp
            )
        else:
            engine, how = backend.build_engine(
                args.model,
                args.weights,
                args.window,
                args.stride,
                device,
                args.batch_size,
                None if args.amp == "none" else args.amp,
                args.dtype,
                **engine_options(args),
            )
    except CheckpointError as error:
        print_errors([error.headline()])
        return 2
    except InputError as error:
        print_errors(error.lines)
        return 2
    except backend.engine_errors as error:
        print_errors([str(error)])
        return 2
    loaded = time.perf_counter()
    try:
        confusion, totals = evaluate_scenes(backend, engine, scenes, progress=args.progress)
    except (ImageReadError, *backend.run_errors) as error:
        print_errors([str(error)])
        return 2
    except InputError as error:
        print_errors(error.lines)
        return 2
    seconds = split_seconds(start, loaded, time.perf_counter())
    result = build_result(
        args,
        f"{prog} {' '.join(argv)}",
        backend.name,
        backend.version,
        str(engine.device),
        confusion,
        totals,
        how,
        seconds,
    )
    print(format_report(result, confusion), flush=True)
    expectation = None
    if args.expect:
        expectation = check_expectation(args.model, result["miou"], args.tolerance, totals.images)
        result["expect"] = expectation.record
        print("\n".join(expectation.lines), flush=True)
    if args.json:
        try:
            write_json_atomic(args.json, result)
        except OSError as error:
            print_errors(
                [
                    f"--json {args.json}: cannot write ({describe_os_error(error)}); the earlier file,"
                    " if any, is untouched"
                ]
            )
            return 2
    return 1 if expectation is not None and not expectation.passed else 0
