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
Nothing here imports torch or Paddle; ``onnx`` and ``onnxruntime`` (the ``.[onnx]`` extra) are
imported when an ONNX export is opened.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import mmap
import os
import struct
from collections import Counter
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

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
from common.bounded_json import read_json
from common.bounded_yaml import BoundedYamlError, brief, read_yaml
from common.constants import SIZE_MULTIPLE
from isaid.palette import CLASS_NAMES, MEAN, NUM_CLASSES, PALETTE, STD, normalize
from isaid.windows import pad_to_multiple
from weights import MODEL_NAMES, WEIGHTS_DIR, load_layout

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
MAX_PROGRAM_JSON_BYTES = 64 << 20
MAX_ONNX_BYTES = 2 << 30
MAX_CONFIG_BYTES = 1 << 20
PROBE_SIZE = 64  # side of the window an export is run on at load (ExportedModel.probe)
# The op types this project's exports write (python -m align.export_ops): the allow-list.
EXPORT_OPS_FILE = WEIGHTS_DIR / "export_ops.json"


class ExportError(Exception):
    """An export could not be written, read, or did not pass its check; one line."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
) -> Dict[str, Any]:
    """The content of ``model.yml``: everything a deployment needs besides the program."""
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
            "sha256": sha256_file(weights) if weights else None,
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


def _regular_file(path: str, limit: int) -> None:
    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing or not a regular file")
    if os.path.getsize(path) > limit:
        raise ExportError(f"{path}: {os.path.getsize(path)} bytes, more than the {limit} this reader accepts")


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


ShapeList = List[Tuple[int, ...]]


def layout_conv_shapes(name: str) -> ShapeList:
    """Sorted shapes of the convolution weights of ``name`` (the 4-D entries of its layout)."""
    return sorted(shape for shape in load_layout(name).values() if len(shape) == 4)


def identify(shapes: Sequence[Tuple[int, ...]]) -> Optional[str]:
    """The model whose convolution weights have exactly these shapes (as a multiset), or None."""
    found = Counter(tuple(s) for s in shapes)
    for name in MODEL_NAMES:
        if Counter(layout_conv_shapes(name)) == found:
            return name
    return None


def allowed_export_ops() -> Dict[str, FrozenSet[str]]:
    """The op types (``paddle``, ``onnx``) and ONNX domains (``onnx_domains``) this project's
    exports write: ``weights/export_ops.json``, made by ``python -m align.export_ops``."""
    return _allowed_export_ops()


@functools.lru_cache(maxsize=None)
def _allowed_export_ops() -> Dict[str, FrozenSet[str]]:
    content = json.loads(EXPORT_OPS_FILE.read_text(encoding="utf-8"))
    return {
        "paddle": frozenset(content["paddle_ops"]),
        "onnx": frozenset(content["onnx_ops"]),
        "onnx_domains": frozenset(content["onnx_domains"]),
    }


def check_program_ops(path: str, found: Iterable[str], kind: str) -> None:
    """ExportError naming ``path`` and the op types in ``found`` that no export of this project
    writes (``kind``: ``paddle`` or ``onnx``): checked before any runtime loads the program."""
    allowed = allowed_export_ops()[kind]
    foreign = sorted(set(found) - allowed)
    if foreign:
        shown = ", ".join(brief(name, 40) for name in foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ExportError(
            f"{path}: op types this project's export never writes: {shown}; refusing to load it"
            f" (allowed: {EXPORT_OPS_FILE.name}, made by python -m align.export_ops)"
        )


def read_paddle_program(path: str) -> Dict[str, Any]:
    """A PIR ``model.json`` parsed by the bounded reader (size cap, nesting depth)."""
    _regular_file(path, MAX_PROGRAM_JSON_BYTES)
    try:
        program = read_json(path, MAX_PROGRAM_JSON_BYTES, what="Paddle program")
    except ValueError as error:
        raise ExportError(str(error)) from None
    if not isinstance(program, dict) or not isinstance(program.get("program"), dict):
        raise ExportError(f"{path}: not a Paddle PIR program (no 'program' object)")
    return program


def _paddle_ops(program: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Every op of a PIR program, those in nested regions (control flow) included; iterative."""
    stack: List[Any] = [program["program"]]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "ops" and isinstance(value, list):
                    yield from (op for op in value if isinstance(op, dict))
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))


def paddle_program_ops(path_or_program: Any) -> Set[str]:
    """The op types (``"1.conv2d"``, ``"p"`` ...) of a PIR program (a path or its parsed JSON)."""
    program = read_paddle_program(path_or_program) if isinstance(path_or_program, str) else path_or_program
    return {str(op.get("#")) for op in _paddle_ops(program)}


def paddle_program_conv_shapes(path_or_program: Any, path: str = "") -> ShapeList:
    """Shapes of the weight operand of every ``conv2d`` in a Paddle 3 PIR ``model.json``."""
    if isinstance(path_or_program, str):
        path, program = path_or_program, read_paddle_program(path_or_program)
    else:
        program = path_or_program
    try:
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
        parameters: Dict[int, Tuple[int, ...]] = {}
        shapes: ShapeList = []
        for op in ops:
            kind = op.get("#")
            if kind == "p":  # a parameter: its value id and declared dense-tensor shape
                parameters[int(op["O"]["%"])] = tuple(int(v) for v in op["O"]["TT"]["D"][1])
            elif kind == "1.conv2d":
                weight = int(op["I"][1]["%"])
                if weight not in parameters:
                    raise ValueError("a convolution weight is not a parameter")
                shapes.append(parameters[weight])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise ExportError(
            f"{path}: not a readable Paddle PIR program ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
        ) from None
    return sorted(shapes)


def load_onnx_model(path: str) -> Any:
    """An ONNX ModelProto read by onnx's protobuf parser (size checked first, no external data)."""
    _regular_file(path, MAX_ONNX_BYTES)
    onnx = _import_onnx()
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as error:  # noqa: BLE001 (protobuf raises DecodeError and others)
        raise ExportError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None


def _onnx_graphs(model: Any) -> Iterator[Any]:
    """The main graph and every subgraph held in node attributes (If/Loop bodies); iterative."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name  # two spellings of the default domain


def onnx_program_ops(path_or_model: Any) -> Tuple[Set[str], Set[str]]:
    """(op types, domains) of an ONNX model: nodes of every graph and subgraph, as ``Conv`` for
    the default domain and ``domain:Op`` for any other; a local function counts as the op
    ``function:domain:name`` (no export of this project has one) and its domain is listed."""
    model = load_onnx_model(path_or_model) if isinstance(path_or_model, str) else path_or_model
    ops: Set[str] = set()
    domains: Set[str] = {_domain(opset.domain) for opset in model.opset_import}
    for graph in _onnx_graphs(model):
        for node in graph.node:
            domains.add(_domain(node.domain))
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}")
    for function in model.functions:
        domains.add(_domain(function.domain))
        ops.add(f"function:{function.domain}:{function.name}")
    return ops, domains


def check_onnx_ops(path: str, model: Any) -> None:
    """ExportError unless every op type and domain of ``model`` is one this project's export writes."""
    ops, domains = onnx_program_ops(model)
    foreign_domains = sorted(domains - allowed_export_ops()["onnx_domains"])
    if foreign_domains:
        raise ExportError(
            f"{path}: ONNX domains this project's export never uses: "
            + ", ".join(brief(d, 40) for d in foreign_domains[:5])
            + "; refusing to load it"
        )
    check_program_ops(path, ops, "onnx")


def onnx_conv_shapes(path_or_model: Any, path: str = "") -> ShapeList:
    """Shapes of the weight initializer of every ``Conv`` node of an ONNX model."""
    if isinstance(path_or_model, str):
        path, model = path_or_model, load_onnx_model(path_or_model)
    else:
        model = path_or_model
    # A weight is an initializer (torch's exporter) or the output of a Constant node
    # (paddle2onnx without an optimiser), possibly behind Identity nodes.
    tensors = {init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer}
    aliases: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    tensors[node.output[0]] = tuple(int(d) for d in attribute.t.dims)
        elif node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1:
            aliases[node.output[0]] = node.input[0]
    shapes: ShapeList = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            name = node.input[1] if len(node.input) >= 2 else ""
            for _ in range(len(aliases) + 1):  # bounded: a cycle of Identity nodes ends here
                if name not in aliases:
                    break
                name = aliases[name]
            if name not in tensors:
                raise ExportError(f"{path}: a convolution weight is not a constant of the model")
            shapes.append(tensors[name])
    return sorted(shapes)


# Paddle's VarType codes of the tensors a .pdiparams may hold, and their item sizes; floats
# are checked finite.
_PADDLE_DTYPES = {
    0: "bool",
    1: "int16",
    2: "int32",
    3: "int64",
    4: "float16",
    5: "float32",
    6: "float64",
    20: "uint8",
    21: "int8",
}
MAX_TENSOR_DESC_BYTES = 1024


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated tensor description")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _tensor_desc(data: bytes) -> Tuple[int, List[int]]:
    """(VarType code, dims) of a serialised ``TensorDesc`` (protobuf: 1 data_type, 2 dims)."""
    pos, dtype, dims = 0, -1, []
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(value)
        elif wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
            if end > len(data):
                raise ValueError("truncated tensor description")
            while field == 2 and pos < end:  # packed dims
                value, pos = _varint(data, pos)
                dims.append(value)
            pos = end
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return dtype, [d - (1 << 64) if d >= 1 << 63 else d for d in dims]


def check_paddle_params(path: str) -> int:
    """Read ``model.pdiparams`` (Paddle's saved tensors, one after another) without Paddle:
    every header within the file, every floating-point value finite. Returns the number of
    tensors; ExportError (one line) otherwise. A NaN weight does not always reach the output
    (ReLU maps NaN to 0 in Paddle's kernels), so the weights themselves are checked."""
    _regular_file(path, MAX_ONNX_BYTES)
    try:
        with open(path, "rb") as handle:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b""
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: cannot read ({' '.join(str(error).split())[:120]})") from None
    size, pos, index = len(data), 0, 0
    try:
        while pos < size:
            if pos + 12 > size:
                raise ValueError("truncated tensor header")
            version, lod_levels = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if version != 0 or lod_levels > 8:
                raise ValueError(f"tensor {index}: unexpected header")
            for _ in range(lod_levels):
                (length,) = struct.unpack_from("<Q", data, pos)
                pos += 8 + length
            if pos + 8 > size:
                raise ValueError("truncated tensor header")
            tensor_version, desc_size = struct.unpack_from("<Ii", data, pos)
            pos += 8
            if tensor_version != 0 or not 0 < desc_size <= MAX_TENSOR_DESC_BYTES or pos + desc_size > size:
                raise ValueError(f"tensor {index}: unexpected header")
            code, dims = _tensor_desc(bytes(data[pos : pos + desc_size]))
            pos += desc_size
            if code not in _PADDLE_DTYPES or any(d < 0 for d in dims):
                raise ValueError(f"tensor {index}: unsupported type {code} or shape {dims[:8]}")
            dtype = np.dtype(_PADDLE_DTYPES[code])
            count = int(np.prod(dims, dtype=np.float64)) if dims else 1
            if pos + count * dtype.itemsize > size:
                raise ValueError(f"tensor {index}: {dims[:8]} runs past the end of the file")
            if dtype.kind == "f":
                values = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count, offset=pos)
                finite = bool(np.isfinite(values).all())
                del values  # the map cannot be closed while an array views it
                if not finite:
                    raise ExportError(
                        f"{path}: parameter {index} (shape {dims[:8]}) holds NaN or Inf values; refusing the export"
                    )
            pos += count * dtype.itemsize
            index += 1
    except (ValueError, struct.error) as error:
        raise ExportError(f"{path}: not a Paddle parameter file ({' '.join(str(error).split())[:160]})") from None
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    return index


def check_onnx_weights(path: str, model: Any) -> None:
    """ExportError unless every floating-point initializer and Constant of ``model`` is finite."""
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    for graph in _onnx_graphs(model):
        for node in graph.node:
            if node.op_type == "Constant":
                tensors.extend(a.t for a in node.attribute if a.HasField("t"))
    for tensor in tensors:
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 (external or malformed data: onnxruntime will refuse it)
            continue
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ExportError(
                f"{path}: weight {brief(tensor.name, 60)} (shape {list(values.shape)[:8]}) holds NaN or Inf"
                " values; refusing the export"
            )


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


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError('ONNX support needs the onnx extra: pip install -e ".[onnx]"') from None
    return onnx


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
