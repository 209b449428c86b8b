"""docs/tutorial.md, followed exactly as written: its commands are read from the markdown and run
in order in a fresh folder (with the repository's configs/), each must exit 0, and each line of
output the tutorial shows must appear in what the commands print (numbers and paths may differ).
Sized to run in well under 90 s on one thread."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def commands_of(block: str) -> List[str]:
    """The commands of a ```bash block: comments and blank lines dropped, ``\\`` lines joined."""
    commands, current = [], ""
    for line in block.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        commands.append(current + stripped)
        current = ""
    assert not current, f"dangling continuation: {current!r}"
    return commands


def sections(text: str) -> Tuple[List[str], List[Tuple[List[str], List[str]]]]:
    """(the commands of the page's first block, [(a section's commands, its shown output lines)])."""
    first = commands_of(re.search(r"```bash\n(.*?)```", text, re.S).group(1))
    steps = []
    for body in re.split(r"^## ", text, flags=re.M)[1:]:
        bash = re.findall(r"```bash\n(.*?)```", body, re.S)
        if not bash:
            continue
        shown = re.findall(r"```text\n(.*?)```", body, re.S)
        steps.append(([c for b in bash for c in commands_of(b)], "".join(shown).splitlines()))
    return first, steps


def pattern_of(line: str) -> str:
    """A shown output line as a regex. What may differ from machine to machine: numbers,
    ``/path/to/``, the predicted classes (``top classes: ...``) and which tensor is an align
    stage's worst (``worst NAME``)."""
    pieces = re.split(r"(top classes: .*|worst \S+|/path/to/)", line)
    variable = {"worst": r"worst \S+", "/path/to/": r"\S*", "top classes": r"top classes: .*"}
    out = []
    for index, piece in enumerate(pieces):
        if index % 2:  # a captured variable part
            out.append(next(v for k, v in variable.items() if piece.startswith(k)))
        else:
            out.append(r"[-+]?[\d.]+(?:e[+-]?\d+)?".join(re.escape(p) for p in NUMBER.split(piece)))
    return "".join(out)


def test_the_first_block_lists_every_section_command_in_order() -> None:
    first, steps = sections(TUTORIAL.read_text(encoding="utf-8"))
    assert first == [c for commands, _ in steps for c in commands]
    assert len(first) >= 8


def test_pattern_of_can_fail() -> None:
    """Planted: an output line with other words than the tutorial shows does not match."""
    pattern = pattern_of("synth: wrote 2 train and 1 val scenes (zipped) to data/synth")
    assert re.search(pattern, "synth: wrote 20 train and 10 val scenes (zipped) to data/synth")
    assert not re.search(pattern, "synth: wrote 2 train and 1 test scenes (zipped) to data/synth")
    shown = "[PASS] loss     farseg  float64  28/28 values  worst model/cls_loss rel 8.6e-13 (<= 1e-09)  1.8 s  -> x"
    assert re.search(pattern_of(shown), shown.replace("model/cls_loss", "model/loss").replace("1.8 s", "2.5 s"))
    assert not re.search(pattern_of(shown), shown.replace("[PASS]", "[FAIL]"))


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    _, steps = sections(TUTORIAL.read_text(encoding="utf-8"))
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for commands, shown in steps:
        printed = ""
        for command in commands:
            argv = shlex.split(command)
            assert argv[0] == "python", command
            result = subprocess.run(
                [sys.executable, *argv[1:]],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            printed += result.stdout + result.stderr.replace("\r", "\n")
        for line in shown:
            if line.strip() in ("", "...") or line.startswith("(") or "warning" in line.lower():
                continue
            assert re.search(pattern_of(line), printed), f"tutorial shows {line!r}; {commands} printed:\n{printed}"
    for made in (
        "runs/farseg_torch_cpu/model_final.pth",
        "pred.png",
        "export/farseg_cpu/model.yml",
        "farseg_cpu.pdparams",
    ):
        assert (tmp_path / made).is_file(), made
