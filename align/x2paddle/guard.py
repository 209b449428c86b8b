"""Keeping X2Paddle's side effects out: no network, no stray output, no exit(0), no static export."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import socket
from typing import Any, Callable, Iterator, List


@contextlib.contextmanager
def network_guard() -> Iterator[List[str]]:
    """Refuse every internet socket connection and name lookup inside the block; yields the list
    of refused attempts. A refusal raises ``OSError(ENETUNREACH)`` at once, so code that swallows
    errors (X2Paddle's usage report) returns at once instead of waiting for a timeout."""
    attempts: List[str] = []
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)

    def refuse(what: str) -> None:
        attempts.append(what)
        raise OSError(errno.ENETUNREACH, f"network access refused by align.x2paddle ({what})")

    def internet_only(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(sock: socket.socket, address: Any) -> Any:  # local (AF_UNIX) sockets still connect
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                refuse(f"{name}{address!r}")
            return original(sock, address)

        return call

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"create_connection{address!r}")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"getaddrinfo({host!r}, {port!r})")

    # Replacing the socket module's functions is the point; the ignores tell a type checker so.
    socket.socket.connect = internet_only("connect", saved[0])  # type: ignore[method-assign]
    socket.socket.connect_ex = internet_only("connect_ex", saved[1])  # type: ignore[method-assign]
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        (
            socket.socket.connect,
            socket.socket.connect_ex,
            socket.create_connection,  # type: ignore[method-assign]
            socket.getaddrinfo,
        ) = saved


@contextlib.contextmanager
def _captured_output(log: io.StringIO) -> Iterator[None]:
    """X2Paddle prints and logs a lot (and ends with a survey link); keep it in ``log``."""
    logger = logging.getLogger("x2paddle")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _trace_without_check(trace: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.jit.trace`` with ``check_trace=False``: the check re-runs and re-traces the model
    (two thirds of a FarSeg conversion) and adds nothing to running every generated program."""

    def trace_once(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("check_trace", False)
        return trace(*args, **kwargs)

    return trace_once


def _skip_static_export(self: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``PaddleGraph.dygraph2static``: X2Paddle's static export (unused here) puts
    the output folder on ``sys.path``, imports the generated code and calls ``exit(0)`` on some
    errors; skipping it roughly halves the conversion time."""
