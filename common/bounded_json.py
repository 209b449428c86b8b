"""A JSON reader for files the project did not write itself (an export's ``model.json``).

``json.load`` is recursive (thousands of nested brackets raise RecursionError, deeper ones can
overflow the C stack) and takes any size. :func:`read_json` checks the size first, then the
nesting depth without parsing (a vectorised count of brackets outside strings), and only then
parses. Errors are ValueError with one line naming the file, never quoting its content.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .bounded_yaml import read_text_capped

MAX_JSON_DEPTH = 64
# A JSON string literal (escapes included): its brackets are not structure.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in ``text`` (strings skipped), without recursion."""
    structure = _STRING.sub("", text)
    codes = np.frombuffer(structure.encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.zeros(codes.shape, dtype=np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max()) if steps.size else 0


def parse_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``text`` parsed once its nesting is at most ``max_depth``; ValueError (one line) otherwise."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{where}: JSON nested {depth} levels deep, more than the {max_depth} accepted")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        problem = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        where_in = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ValueError(f"{where}: invalid JSON{where_in}: {problem}") from None


def read_json(path: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, what: str = "JSON file") -> Any:
    """The regular file ``path`` (at most ``max_bytes``) parsed as JSON within ``max_depth``."""
    return parse_json(read_text_capped(path, max_bytes, what), path, max_depth)
