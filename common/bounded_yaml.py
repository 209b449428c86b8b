"""The project's one YAML reader for files it did not write itself (configs, ``model.yml``).

PyYAML's ``safe_load`` executes nothing, but it is not bounded: an alias bomb (a few hundred
bytes whose anchors expand to billions of nodes) exhausts memory as soon as anything walks or
``repr``s the result, and a few thousand nested brackets overflow the recursive composer
(``RecursionError``). This module reads the event stream first (``yaml.parse``: libyaml's or
PyYAML's parser, both iterative) with counters, and only when every bound holds lets the safe
loader build objects:

- size: the text is at most ``max_bytes`` (a regular file, read with a cap);
- nesting: at most ``max_depth`` open collections at any point;
- aliases: at most ``max_aliases`` alias uses, and at most ``max_nodes`` nodes once every alias
  is expanded (so walking or printing the result is bounded too).

Errors are :class:`BoundedYamlError`, one line, naming the file; they quote PyYAML's problem
text (cut short), never a value read from the file.
"""

from __future__ import annotations

import os
import reprlib
import stat
from typing import Any, Dict, List

import yaml

MAX_YAML_BYTES = 1 << 20  # configs and model.yml are a few KB
MAX_YAML_DEPTH = 32  # nesting of mappings and sequences (the project's files use 3)
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 200_000  # scalars + collections with every alias expanded

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BoundedYamlError(ValueError):
    """A YAML text that is unreadable or over one of the bounds; the message is one line."""


def brief(value: Any, limit: int = 80) -> str:
    """A short ``repr`` of a value read from an untrusted file (nested and long values cut)."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    shortener.maxlevel = 2
    text = shortener.repr(value)
    return text if len(text) <= limit + 20 else text[: limit + 17] + "..."


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {_one_line(problem)}"


def check_yaml_events(
    text: str,
    where: str,
    max_depth: int = MAX_YAML_DEPTH,
    max_aliases: int = MAX_YAML_ALIASES,
    max_nodes: int = MAX_YAML_NODES,
) -> None:
    """Walk the event stream of ``text`` with counters; BoundedYamlError at the first bound
    exceeded (stops reading there, so a hostile text costs at most its bounded prefix)."""
    anchors: Dict[str, int] = {}  # anchor -> expanded node count of the node it names
    open_nodes: List[List[Any]] = []  # per open collection: [anchor, expanded nodes so far]
    total = 0
    aliases = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                if len(open_nodes) >= max_depth:
                    raise BoundedYamlError(f"{where}: YAML nested deeper than {max_depth} levels")
                open_nodes.append([event.anchor, 1])
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, size = open_nodes.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, size = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise BoundedYamlError(f"{where}: more than {max_aliases} YAML aliases")
                if event.anchor not in anchors:
                    raise BoundedYamlError(f"{where}: YAML alias to an undefined or unfinished anchor")
                anchor, size = None, anchors[event.anchor]
            else:  # stream and document start/end
                continue
            if anchor is not None:
                anchors[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size
            total += size
            if total > max_nodes or (open_nodes and open_nodes[-1][1] > max_nodes):
                raise BoundedYamlError(
                    f"{where}: YAML expands to more than {max_nodes} nodes (aliases repeating anchors)"
                )
    except yaml.YAMLError as error:
        raise BoundedYamlError(f"{where}: {_yaml_problem(error)}") from None
    except RecursionError:  # not expected of the iterative parsers; kept one line all the same
        raise BoundedYamlError(f"{where}: YAML nested too deeply") from None


def parse_yaml(
    text: str,
    where: str,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_aliases: int = MAX_YAML_ALIASES,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """``text`` as Python objects (safe loader only) once every bound holds; ``where`` names
    the source in errors (a file, or ``--set key=value``)."""
    if len(text) > max_bytes:
        raise BoundedYamlError(f"{where}: {len(text)} characters of YAML, more than the {max_bytes} accepted")
    check_yaml_events(text, where, max_depth, max_aliases, max_nodes)
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as error:
        raise BoundedYamlError(f"{where}: {_yaml_problem(error)}") from None
    except RecursionError:
        raise BoundedYamlError(f"{where}: YAML nested too deeply") from None


def read_text_capped(path: str, max_bytes: int, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path``, refused (ValueError, one line naming the
    file) when it is not a regular file (a FIFO would block) or larger than ``max_bytes``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({_one_line(error.strerror or error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file (a pipe or device is not read)")
    if info.st_size > max_bytes:
        raise ValueError(f"{path}: {info.st_size} bytes, more than the {max_bytes} a {what} may have")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({_one_line(error.strerror or error)})") from None
    if len(data) > max_bytes:  # grew since stat
        raise ValueError(f"{path}: more than the {max_bytes} bytes a {what} may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None


def read_yaml(
    path: str,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_aliases: int = MAX_YAML_ALIASES,
    max_nodes: int = MAX_YAML_NODES,
    what: str = "YAML file",
) -> Any:
    """Read the YAML file ``path`` within the bounds; BoundedYamlError (one line) otherwise."""
    try:
        text = read_text_capped(path, max_bytes, what)
    except ValueError as error:
        raise BoundedYamlError(str(error)) from None
    return parse_yaml(text, path, max_bytes, max_depth, max_aliases, max_nodes)


__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "BoundedYamlError",
    "brief",
    "check_yaml_events",
    "parse_yaml",
    "read_text_capped",
    "read_yaml",
]
