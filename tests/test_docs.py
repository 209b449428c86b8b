"""The README stays short and every relative link in it and in docs/ leads somewhere: the file
exists and, for ``file.md#anchor``, the target has a heading with that GitHub anchor."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> List[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [github_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)]


def broken_links(path: Path) -> List[str]:
    """Every relative link of the markdown file ``path`` that does not resolve, as text."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no heading with anchor #{anchor}")
    return problems


def markdown_files() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_at_most_300_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to a docs/ page"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_readme_links_every_task_guide() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for guide in ("install", "tutorial", "train", "evaluate", "deploy", "convert", "benchmarks", "architecture"):
        assert f"(docs/{guide}.md" in readme, guide


def test_every_guide_starts_with_commands() -> None:
    for guide in ("install", "tutorial", "train", "evaluate", "deploy", "convert", "benchmarks", "align_farseg"):
        lines = (ROOT / "docs" / f"{guide}.md").read_text(encoding="utf-8").splitlines()
        first_block = next(i for i, line in enumerate(lines) if line.startswith("```"))
        assert first_block <= 12, f"docs/{guide}.md: first command block at line {first_block + 1}"


def test_the_checker_catches_planted_broken_links(tmp_path: Path, monkeypatch) -> None:
    """Planted: a missing file, a missing anchor, a missing same-page anchor; links inside code
    and to the web are not checked, and good ones pass."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other page\n\n## Which backend, which precision (CPU)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#which-backend-which-precision-cpu) [ok](#page)"
        " [web](https://example.com/x) `[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#no-such) [bad local](#nope)\n"
    )
    problems = broken_links(page)
    assert problems == [
        "page.md: missing.md: no such file",
        "page.md: other.md#no-such: no heading with anchor #no-such",
        "page.md: #nope: no heading with anchor #nope",
    ]
