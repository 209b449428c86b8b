"""Exported models, framework-free: ``model.yml``, the program-vs-metadata check, onnxruntime.

An export folder holds a program and a ``model.yml`` that says how to feed it. Two formats:

- ``paddle-inference-pir``: ``model.json`` (Paddle 3 PIR program) + ``model.pdiparams``,
  written by ``python -m paddle_impl.export`` and run by Paddle Inference;
- ``onnx``: ``model.onnx`` (weights inside), written by ``python -m torch_ref.export --format
  onnx`` (torch's exporter) or ``python -m paddle_impl.export --format onnx`` (paddle2onnx),
  run by onnxruntime (:class:`OnnxModel`).

``model.yml`` is not believed on its own word: :func:`read_deploy_config` reads the shapes of
the convolution weights the program actually uses and identifies the architecture from them
(FarSeg and FactSeg differ: FactSeg has two FPNs and decoders and a 1-channel binary head);
a ``model.yml`` naming the other model, or a program of neither, is refused in one line.
What the program files hold (op types against the allow-list, convolution shapes, finite
weights) is read by :mod:`app.export_inspect` before any runtime loads them. Nothing here
imports torch or Paddle; ``onnx`` and ``onnxruntime`` (the ``.[onnx]`` extra) are imported
when an ONNX export is opened.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from app.cli import MAX_WINDOW, MIN_WINDOW, window_problem
from common.atomic import (
    InputOverwriteError,
    refuse_folder_holding_inputs,
    remove_stale_staging,
    replace_folder_with,
    staging_folder_beside,
)
from common.bounded_yaml import BoundedYamlError, brief, read_yaml
from common.constants import SIZE_MULTIPLE
from common.digest import sha256_file
from isaid.palette import CLASS_NAMES, MEAN, NUM_CLASSES, PALETTE, STD, normalize
from isaid.windows import pad_to_multiple
from weights import MODEL_NAMES

from .export_inspect import (
    ExportError,
    check_onnx_ops,
    check_onnx_weights,
    check_paddle_params,
    check_program_ops,
    identify,
    load_onnx_model,
    onnx_conv_shapes,
    paddle_program_conv_shapes,
    paddle_program_ops,
    read_paddle_program,
)

CONFIG_FILE = "model.yml"
PADDLE_FORMAT = "paddle-inference-pir"  # model.json + model.pdiparams, Paddle >= 3.0
ONNX_FORMAT = "onnx"
FORMAT_FILES = {PADDLE_FORMAT: ("model.json", "model.pdiparams"), ONNX_FORMAT: ("model.onnx",)}
# Every file an export folder may hold (what commands reading one must never write over).
MODEL_DIR_FILES = (CONFIG_FILE,) + tuple(name for files in FORMAT_FILES.values() for name in files)
INPUT_NAME = "x"
# Input of the post-export check of a dynamic-size export (H != W on purpose); both exports use it.
CHECK_SIZE = (64, 96)
# Bounds on what is parsed before anything is believed: a PIR program of these models is
# ~0.3 MB of JSON; an ONNX file with its weights ~126 MB (protobuf's own limit is 2 GB).
MAX_CONFIG_BYTES = 1 << 20
PROBE_SIZE = 64  # side of the window an export is run on at load (ExportedModel.probe)


def deploy_config(
    model_name: str,
    size: Optional[Tuple[int, int]],
    weights: Optional[str],
    weights_how: str,
    window: int = 896,
    stride: int = 512,
    fmt: str = PADDLE_FORMAT,
    producer: str = "",
    extra: Optional[Dict[str, Any]] = None,
    weights_sha256: Optional[str] = None,
) -> Dict[str, Any]:
    """The content of ``model.yml``: everything a deployment needs besides the program.

    ``weights_sha256``: the weights file's sha256 when the caller has just computed it (the
    engine cache keys on it), so a 126 MB file is not read twice; computed here otherwise."""
    if fmt not in FORMAT_FILES:
        raise ValueError(f"unknown export format {fmt!r}")
    height, width = size if size is not None else (-1, -1)
    if size is not None and height == width:
        # A fixed-size export runs windows of exactly its size: record that, not the default 896.
        window, stride = height, min(stride, height)
    files = FORMAT_FILES[fmt]
    config: Dict[str, Any] = {
        "model": model_name,
        "format": fmt,
        "producer": producer,
        "files": {"program": files[0], "params": files[1]} if len(files) == 2 else {"program": files[0]},
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "shape": [-1, 3, height, width],
            "size_multiple": SIZE_MULTIPLE,
            "pad": "zero-pad bottom/right to a multiple of size_multiple AFTER normalisation, crop the output back",
        },
        "output": {
            "shape": [-1, NUM_CLASSES, height, width],
            "meaning": "class probabilities (FarSeg: softmax; FactSeg: fused joint probability);"
            " argmax over axis 1 gives the class index",
        },
        "normalize": {
            "mean": [float(v) for v in MEAN],
            "std": [float(v) for v in STD],
            "pixel_range": "0..255",
            "formula": "(pixel - mean) / std per channel",
        },
        "sliding_window": {
            "window": window,
            "stride": stride,
            "merge": "average probabilities where windows overlap, then argmax",
        },
        "num_classes": NUM_CLASSES,
        "classes": list(CLASS_NAMES),
        "palette": [[int(c) for c in colour] for colour in PALETTE],
        "weights": {
            "file": os.path.basename(weights) if weights else None,
            "sha256": (weights_sha256 or sha256_file(weights)) if weights else None,
            "loaded_as": weights_how,
        },
    }
    config.update(extra or {})
    return config


def write_deploy_config(folder: str, config: Dict[str, Any], prog: str) -> None:
    """Write ``folder/model.yml`` (the folder is a staging folder: no atomicity needed here)."""
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as handle:
        handle.write(f"# Written by {prog}; checked against the program when it is loaded.\n")
        yaml.safe_dump(config, handle, sort_keys=False, width=100, default_flow_style=None)


def read_deploy_config(model_dir: str, verify: bool = True) -> Dict[str, Any]:
    """Read and check ``DIR/model.yml``; ExportError (one line) if the folder is not an export.

    ``verify``: also identify the architecture from the program (:func:`program_model`) and
    refuse a ``model.yml`` whose ``model`` says otherwise.
    """
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ExportError(f"{model_dir}: not an export (no {CONFIG_FILE})")
    try:
        config = read_yaml(config_path, MAX_CONFIG_BYTES, what=CONFIG_FILE)
    except BoundedYamlError as error:
        raise ExportError(str(error)) from None
    if (
        not isinstance(config, dict)
        or config.get("format") not in FORMAT_FILES
        or not isinstance(config.get("input"), dict)
    ):
        raise ExportError(f"{config_path}: not a model.yml written by this project's export")
    missing = [name for name in FORMAT_FILES[config["format"]] if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        raise ExportError(f"{model_dir}: incomplete {config['format']} export (missing {', '.join(missing)})")
    if config.get("model") not in MODEL_NAMES:
        raise ExportError(f"{config_path}: model {brief(config.get('model'))} is not one of {', '.join(MODEL_NAMES)}")
    try:
        shape = [int(v) for v in config["input"]["shape"]]
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError
        if any(not (v == -1 or (v > 0 and v % SIZE_MULTIPLE == 0 and v <= MAX_WINDOW)) for v in shape[2:]):
            raise ValueError
        window, stride = config["sliding_window"]["window"], config["sliding_window"]["stride"]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ExportError(f"{config_path}: input shape or sliding_window is malformed") from None
    problem = window_problem(window, stride)
    if problem:
        raise ExportError(f"{config_path}: sliding_window: {problem}")
    if verify:
        found = program_model(model_dir, config["format"])
        if found != config["model"]:
            raise ExportError(
                f"{config_path}: says model {config['model']!r} but the program's convolutions"
                f" are {found or 'neither farseg nor factseg'}'s; refusing a mismatched export"
            )
    return config


def fixed_size(config: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """(H, W) of a fixed-size export, None for a dynamic one."""
    height, width = config["input"]["shape"][2:]
    return None if height == -1 or width == -1 else (int(height), int(width))


def engine_window(config: Dict[str, Any], window: Optional[int], stride: Optional[int]) -> Tuple[int, int]:
    """(window, stride) to run an export with: the asked ones, else the export's own. A
    fixed-size export takes windows of exactly its size only: any other is an ExportError."""
    window = window or int(config["sliding_window"]["window"])
    stride = stride or min(int(config["sliding_window"]["stride"]), window)
    problem = window_problem(window, stride)
    if problem:
        raise ExportError(f"--window {window} --stride {stride}: {problem}")
    size = fixed_size(config)
    if size is not None and size != (window, window):
        raise ExportError(
            f"the export was made for {size[0]}x{size[1]} inputs (--size) and cannot run {window}x{window} "
            f"windows: use --window {size[0]} (square exports only), or export without --size"
        )
    return window, stride


def program_model(model_dir: str, fmt: str) -> Optional[str]:
    """Which model the program in ``model_dir`` is, from its convolution weight shapes, once
    its op types are all ones this project's export writes (:func:`check_program_ops`)."""
    path = os.path.join(model_dir, FORMAT_FILES[fmt][0])
    if fmt == PADDLE_FORMAT:
        program = read_paddle_program(path)
        check_program_ops(path, paddle_program_ops(program), "paddle")
        check_paddle_params(os.path.join(model_dir, FORMAT_FILES[fmt][1]))
        return identify(paddle_program_conv_shapes(program, path))
    model = load_onnx_model(path)
    check_onnx_ops(path, model)
    check_onnx_weights(path, model)
    return identify(onnx_conv_shapes(model, path))


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError('ONNX support needs the onnx extra: pip install -e ".[onnx]"') from None
    return onnxruntime


def check_input(
    x: np.ndarray, size: Optional[Tuple[int, int]], model_dir: str, error: type = ExportError
) -> np.ndarray:
    """A float32 [B,3,H,W] batch with H, W multiples of 32 (the fixed size if there is one)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise error(f"expected a normalised batch [B,3,H,W], got {list(x.shape)}")
    height, width = x.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise error(f"input {height}x{width}: height and width must be multiples of {SIZE_MULTIPLE}")
    if size is not None and (height, width) != size:
        raise error(f"{model_dir} was exported for {size[0]}x{size[1]} inputs, got {height}x{width}")
    return x


class ExportedModel:
    """What the deployment runners share: ``model(x)`` on a normalised batch, plus whole images.

    Subclasses set ``model_dir``, ``config``, ``fixed_size``, ``device``, ``backend``,
    ``fallbacks`` and implement ``__call__`` (float32 [B,3,H,W] -> probabilities [B,16,H,W]).
    """

    model_dir: str
    config: Dict[str, Any]
    fixed_size: Optional[Tuple[int, int]]
    error: type = ExportError
    # Whether outputs are checked (probe at load, every run): off only for a program opened
    # with verify=False (tests and tools running foreign one-op programs), never by a command.
    checked: bool = True

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_output(self, x: np.ndarray, output: Any) -> np.ndarray:
        """``output`` of a run on ``x`` if it is probabilities [B,16,H,W] of ``x``'s B, H, W and
        finite; ``self.error`` (one line) otherwise: a NaN weight or an edited graph must not
        turn into a class map ("background 100%", a broadcast 1x1 output, a 17th class)."""
        if not self.checked:
            return output
        expected = (x.shape[0], NUM_CLASSES, x.shape[2], x.shape[3])
        shape = tuple(getattr(output, "shape", ()))
        if shape != expected:
            raise self.error(
                f"{self.model_dir}: the model's output is {list(shape)} for a {list(x.shape)} input,"
                f" expected [B,{NUM_CLASSES},H,W] = {list(expected)}; not a segmentation export of this project"
            )
        output = np.asarray(output)
        if not np.isfinite(output).all():
            raise self.error(
                f"{self.model_dir}: the model's output holds NaN or Inf (a non-finite weight in the"
                f" export?); refusing to make classes from it"
            )
        return output

    def probe(self) -> None:
        """One run on a small window (the fixed size, else 64x64) at load: the output's shape
        and finiteness are checked (:meth:`check_output`) before any image is processed."""
        if not self.checked:
            return
        height, width = self.fixed_size if self.fixed_size is not None else (PROBE_SIZE, PROBE_SIZE)
        x = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
        self(x)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB [H,W,3] -> probabilities float32 [16,H,W] (one forward pass, padded)."""
        height, width = image.shape[:2]
        x = normalize(image)
        if self.fixed_size is not None:
            if height > self.fixed_size[0] or width > self.fixed_size[1]:
                raise self.error(
                    f"image {height}x{width} is larger than the fixed export size"
                    f" {self.fixed_size[0]}x{self.fixed_size[1]}: use predict --model-dir"
                    f" {self.model_dir} (sliding windows)"
                )
            pad_h, pad_w = self.fixed_size[0] - height, self.fixed_size[1] - width
        else:
            pad_h, pad_w = pad_to_multiple(height, width, SIZE_MULTIPLE)
        # Zero padding AFTER normalisation, as the official evaluation pads each window.
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)))[None]
        return self(x)[0, :, :height, :width]

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB [H,W,3] -> uint8 class map [H,W] (argmax of :meth:`probabilities`)."""
        return self.probabilities(image).argmax(axis=0).astype(np.uint8)


def default_threads() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxModel(ExportedModel):
    """An ONNX export run by onnxruntime's CPU execution provider (all graph optimisations on)."""

    def __init__(
        self,
        model_dir: str,
        threads: Optional[int] = None,
        config: Optional[Dict[str, Any]] = None,
        error: type = ExportError,
        checked: bool = True,
    ) -> None:
        self.error = error
        self.checked = checked
        self.model_dir = model_dir
        self.config = read_deploy_config(model_dir) if config is None else config
        if self.config["format"] != ONNX_FORMAT:
            raise error(f"{model_dir}: a {self.config['format']} export, not an ONNX one")
        self.fixed_size = fixed_size(self.config)
        self.device, self.backend, self.fallbacks = "cpu", "onnxruntime", []
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its notes on unused initialisers are not ours to act on
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                os.path.join(model_dir, FORMAT_FILES[ONNX_FORMAT][0]), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error_:  # noqa: BLE001 (onnxruntime raises its own exception types)
            raise error(
                f"{model_dir}: onnxruntime cannot load the model ({' '.join(str(error_).split())[:200]})"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.probe()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.fixed_size, self.model_dir, self.error)
        try:
            output = self.session.run(None, {self.input_name: x})[0]
        except Exception as error_:  # noqa: BLE001
            raise self.error(f"{self.model_dir}: onnxruntime failed ({' '.join(str(error_).split())[:200]})") from None
        return self.check_output(x, output)


def compare_probabilities(expected: np.ndarray, got: np.ndarray) -> Tuple[float, float]:
    """(max |difference|, share of pixels whose argmax class agrees); NaN-safe (NaN -> inf)."""
    if got.shape != expected.shape:
        return float("inf"), 0.0
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    worst = float("inf") if not np.isfinite(difference).all() else float(difference.max())
    agree = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    return worst, agree


def check_onnx_against(
    model_dir: str, x: np.ndarray, expected: np.ndarray, reference: str, tolerance: float, min_agreement: float
) -> List[Tuple[str, float, float]]:
    """onnxruntime on ``model_dir``'s ``model.onnx`` (one thread) for ``x`` against ``expected``,
    the framework's own output (``reference`` names it in the error). Returns
    ``[("onnxruntime", max |difference|, tolerance)]``; raises ExportError when the difference
    exceeds ``tolerance`` or the argmax agrees on fewer than ``min_agreement`` of the pixels."""
    difference, agreement = compare_probabilities(expected, OnnxModel(model_dir, threads=1)(x))
    if not (difference <= tolerance and agreement >= min_agreement):
        raise ExportError(
            f"{model_dir}: ONNX model (onnxruntime) differs from {reference} by {difference:.3g}"
            f" (tolerance {tolerance:g}), argmax agreement {agreement:.4%} on a {'x'.join(map(str, x.shape))} input"
        )
    return [("onnxruntime", difference, tolerance)]


def size_multiple_of_32(text: str) -> int:
    """argparse type of ``--size H W``: a multiple of :data:`SIZE_MULTIPLE` in 64..4096 (as model.yml)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value % SIZE_MULTIPLE or not MIN_WINDOW <= value <= MAX_WINDOW:
        raise argparse.ArgumentTypeError(
            f"expected a multiple of {SIZE_MULTIPLE} in {MIN_WINDOW}..{MAX_WINDOW}, got {value}"
        )
    return value


def check_replaceable(out_dir: str, inputs: Sequence[Tuple[str, Optional[str]]] = ()) -> None:
    """Refuse an ``out_dir`` that is anything but empty, missing, or entirely an earlier export
    of this project (checked before any work and again just before the replacement).

    An earlier export is verified, not guessed from one file: its ``model.yml`` is read and
    parsed (:func:`read_deploy_config` without the program check) and the folder holds exactly
    the files of its format plus ``model.yml``, all regular files. Anything else there (a file
    or folder of the user's, a symbolic link) is named in the one-line ExportError, and so is
    an input (``inputs``: ``(option, path)`` pairs, e.g. the weights) inside ``out_dir``.
    """
    try:
        refuse_folder_holding_inputs(out_dir, "--out", inputs)
    except InputOverwriteError as error:
        raise ExportError(str(error)) from None
    if os.path.islink(out_dir):
        raise ExportError(f"{out_dir}: is a symbolic link; give the folder it points to, or another --out")
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a folder; refusing to replace it")
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    expected = {CONFIG_FILE}
    if CONFIG_FILE in entries:
        try:
            expected |= set(FORMAT_FILES[read_deploy_config(out_dir, verify=False)["format"]])
        except ExportError as error:
            raise ExportError(
                f"{out_dir}: exists and is not an earlier export ({error}); refusing to replace it"
            ) from None
    foreign = [
        name + ("/" if os.path.isdir(os.path.join(out_dir, name)) else "")
        for name in entries
        if name not in expected
        or os.path.islink(os.path.join(out_dir, name))
        or not os.path.isfile(os.path.join(out_dir, name))
    ]
    if CONFIG_FILE not in entries or foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        what = (f"no {CONFIG_FILE}; " if CONFIG_FILE not in entries else "") + f"foreign: {shown}"
        raise ExportError(
            f"{out_dir}: exists and is not an earlier export ({what}); refusing to replace it:"
            " move those away or choose another --out"
        )


def staging_folder(out_dir: str) -> str:
    """A new hidden folder next to ``out_dir`` to write an export into before it is checked;
    the staging folders that killed exports of ``out_dir`` left are removed first."""
    remove_stale_staging(out_dir)
    return staging_folder_beside(out_dir)


def replace_folder(staging: str, out_dir: str) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing an earlier export there
    (:func:`check_replaceable` again: the folder may have changed during the export)."""
    check_replaceable(out_dir)
    replace_folder_with(staging, out_dir)
