"""Both frameworks' backends match :class:`app.backend.Backend`, member for member.

The protocol is structural (nothing is checked at import or call time), so this test is what
catches a backend that lacks a member or names a parameter differently from the protocol.
"""

from __future__ import annotations

import inspect
from typing import List

import pytest

from app.backend import Backend


def protocol_mismatches(backend: object, protocol: type = Backend) -> List[str]:
    """What ``backend`` lacks or spells differently from ``protocol`` (empty when it matches)."""
    problems = []
    for name in sorted(getattr(protocol, "__annotations__", {})):
        if not hasattr(backend, name):
            problems.append(f"attribute {name} missing")
    for name, member in sorted(vars(protocol).items()):
        if name.startswith("_") or not callable(member):
            continue
        mine = getattr(backend, name, None)
        if not callable(mine):
            problems.append(f"method {name} missing")
            continue
        expected = [p for p in inspect.signature(member).parameters if p != "self"]
        got = list(inspect.signature(mine).parameters)
        if got != expected:
            problems.append(f"method {name}{tuple(got)}: the protocol has {tuple(expected)}")
    return problems


@pytest.fixture(params=["torch_ref", "paddle_impl"])
def backend(request):
    module = pytest.importorskip(f"{request.param}.backend")
    return module.BACKEND


def test_backend_matches_the_protocol(backend) -> None:
    assert protocol_mismatches(backend) == []
    assert isinstance(backend.engine_errors, tuple) and isinstance(backend.run_errors, tuple)


def test_planted_mismatches_are_caught(backend) -> None:
    class Missing(type(backend)):
        classes_to_host = None  # type: ignore[assignment]

    class Renamed(type(backend)):
        def to_host(self, array):  # the protocol calls it ``tensor``
            return array

    assert protocol_mismatches(Missing()) == ["method classes_to_host missing"]
    assert protocol_mismatches(Renamed()) == ["method to_host('array',): the protocol has ('tensor',)"]
