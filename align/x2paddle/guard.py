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
    """Refuse every internet socket connection and name lookup inside the block.

    Yields the list of refused attempts (empty when nothing tried the network). A refused call
    raises ``OSError(ENETUNREACH)`` at once, so code that swallows errors (X2Paddle's usage
    report does) returns immediately instead of waiting for a timeout.
    """
    attempts: List[str] = []
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
             socket.getaddrinfo)

    def refuse(what: str) -> None:
        attempts.append(what)
        raise OSError(errno.ENETUNREACH, f"network access refused by align.x2paddle ({what})")

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(f"connect{address!r}")
        return saved[0](sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(f"connect_ex{address!r}")
        return saved[1](sock, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"create_connection{address!r}")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"getaddrinfo({host!r}, {port!r})")

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,  # type: ignore[method-assign]
         socket.getaddrinfo) = saved


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
    """``torch.jit.trace`` with ``check_trace=False`` for X2Paddle's tracer.

    The check re-runs the model twice and traces it again to compare graphs: about two thirds
    of a FarSeg conversion. It adds nothing here: every generated program is run and its outputs
    compared with torch_ref's, which is the stronger check.
    """
    def trace_once(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("check_trace", False)
        return trace(*args, **kwargs)
    return trace_once


def _skip_static_export(self: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``PaddleGraph.dygraph2static`` during a conversion.

    X2Paddle's ``gen_model`` ends by inserting the output folder into ``sys.path``, importing
    the generated code as the module ``x2paddle_code`` and exporting a static inference model
    with ``paddle.jit``. This check does not use that export; skipping it roughly halves the
    conversion time, leaves ``sys.path``/``sys.modules`` alone, and avoids the ``exit(0)`` the
    export calls on some errors (which would end the caller's process with status 0).
    """
