"""What an export's files hold, read without running them: op types, convolution shapes, weights.

Every export folder a command opens is an untrusted file set. Before Paddle Inference or
onnxruntime loads a program, this module parses it with bounded readers and checks it: its op
types against the allow-list of what this project's exports write (``weights/export_ops.json``,
made by ``python -m align.export_ops``; no control flow, no file ops, no foreign ONNX domains),
its convolution weight shapes (which identify FarSeg or FactSeg), and every float weight finite
(a NaN weight would otherwise come out as "background everywhere": Paddle's ReLU maps NaN to 0).
Nothing here imports torch or Paddle; ``onnx`` is imported when an ONNX file is inspected.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from collections import Counter
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from common.bounded_json import read_json
from common.bounded_yaml import brief
from weights import MODEL_NAMES, WEIGHTS_DIR, load_layout

MAX_PROGRAM_JSON_BYTES = 64 << 20
MAX_ONNX_BYTES = 2 << 30

# The op types this project's exports write (python -m align.export_ops): the allow-list.
EXPORT_OPS_FILE = WEIGHTS_DIR / "export_ops.json"


class ExportError(Exception):
    """An export could not be written, read, or did not pass its check; one line."""


def check_regular_file(path: str, limit: int) -> None:
    """ExportError unless ``path`` is a regular file of at most ``limit`` bytes."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing or not a regular file")
    if os.path.getsize(path) > limit:
        raise ExportError(f"{path}: {os.path.getsize(path)} bytes, more than the {limit} this reader accepts")


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
    check_regular_file(path, MAX_PROGRAM_JSON_BYTES)
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
    check_regular_file(path, MAX_ONNX_BYTES)
    onnx = import_onnx()
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
    check_regular_file(path, MAX_ONNX_BYTES)
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


def import_onnx() -> Any:
    """The ``onnx`` package (ExportError naming the extra when it is not installed)."""
    try:
        import onnx
    except ImportError:
        raise ExportError('ONNX support needs the onnx extra: pip install -e ".[onnx]"') from None
    return onnx
