"""One model-name check (``weights.check_model_name``): every entry point uses it, none copies it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List

import pytest
from conftest import ROOT as REPO

from weights import MODEL_NAMES, check_model_name

PACKAGES = ("common", "weights", "isaid", "app", "convert", "torch_ref", "paddle_impl", "align")
# A copy of the check: the message it raises, written anywhere but in weights/.
COPY = re.compile(r"unknown (target|model)\b")


def copies(sources: List[Path]) -> List[str]:
    """``path:line`` of every line outside weights/ that words the unknown-model error itself."""
    found = []
    for path in sources:
        if path.parent.name == "weights":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if COPY.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}")
    return found


def test_no_copy_of_the_check():
    sources = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert copies(sources) == []


def test_a_planted_copy_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    planted = tmp_path / "convert" / "planted.py"
    planted.parent.mkdir()
    planted.write_text('if name not in NAMES:\n    raise ValueError(f"unknown model {name!r}")\n')
    assert copies([planted]) == ["convert/planted.py:2"]


@pytest.mark.parametrize("error", [ValueError, LookupError, RuntimeError])
def test_check_model_name(error):
    assert check_model_name("factseg", error=error) == "factseg"
    assert check_model_name("auto", choices=("auto",) + MODEL_NAMES) == "auto"
    with pytest.raises(error, match=r"unknown target 'farseg50': expected one of farseg, factseg$"):
        check_model_name("farseg50", error=error, what="target")
    with pytest.raises(error, match="unknown model None"):
        check_model_name(None, error=error)  # a wrong type is refused too


def _entry_points() -> List[Callable[[], object]]:
    from align import AlignConfig
    from convert import imagenet_resnet50_to, model_rules

    points: List[Callable[[], object]] = [
        lambda: model_rules("resnet"),
        lambda: imagenet_resnet50_to({}, model="resnet"),
        lambda: AlignConfig(model="resnet"),
    ]
    for package in ("torch_ref", "paddle_impl"):
        built = pytest.importorskip(package)
        points.append(lambda built=built: built.build_model("resnet"))
    return points


def test_every_entry_point_words_it_the_same():
    # AlignConfig raises AlignInputError, a ValueError.
    for point in _entry_points():
        with pytest.raises(ValueError, match=r"'resnet': expected one of farseg, factseg$"):
            point()
