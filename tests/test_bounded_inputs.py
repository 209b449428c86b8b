"""Bounded readers and refusals (issue 17, items 5, 7-11, 13): hostile files made here, small.

Every refusal is a subprocess of the real command under a 3 GB address-space limit and a
timeout, and must end with exit 2 and one ``error:`` line (no traceback, no MemoryError):

- YAML (training configs, ``model.yml``): alias bomb, 20,000 nested brackets, oversized file;
- ``model.yml`` windows and strides outside what the models support;
- every numeric and device flag of every command (one argparse style, app.cli);
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import yaml

from app.exported import deploy_config

REPO = Path(__file__).resolve().parents[1]
MEMORY_CAP = 3 * 2**30
TIMEOUT = 60
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str, cap: bool = True) -> subprocess.CompletedProcess:
    """``python *args`` under the memory cap and the timeout (a hang fails the test)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_cap_memory if cap else None,
    )


def assert_refused(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one non-empty stderr line, ``error:`` in it, no traceback; returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert len(lines[0]) < 600, lines[0][:300]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ hostile YAML


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 9**levels scalars (billion laughs)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    lines.append(f"model: {{name: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


HOSTILE_YAML = {
    "alias-bomb": (alias_bomb, "aliases repeating anchors"),
    "nested-brackets": (lambda: "[" * 20000 + "]" * 20000 + "\n", "nested deeper than"),
    "oversized": (lambda: "# padding\n" * 200_000, "bytes, more than the"),
}


def test_alias_bomb_is_small() -> None:
    assert len(alias_bomb()) < 500


@pytest.mark.parametrize("kind", sorted(HOSTILE_YAML))
@pytest.mark.parametrize("trainer", ["torch_ref.train", "paddle_impl.train"])
def test_hostile_training_config_is_refused(tmp_path: Path, kind: str, trainer: str) -> None:
    make, expected = HOSTILE_YAML[kind]
    path = tmp_path / "recipe.yaml"
    path.write_text(make())
    proc = run_capped("-m", trainer, "--config", str(path), "--print-config")
    assert_refused(proc, str(path), expected)


def _export_folder(folder: Path, yml_text: str) -> Path:
    """A Paddle export folder with ``yml_text`` as model.yml (the program files are empty:
    every check below fires before the program is read)."""
    folder.mkdir()
    (folder / "model.yml").write_text(yml_text)
    (folder / "model.json").write_text("{}")
    (folder / "model.pdiparams").write_bytes(b"")
    return folder


@pytest.mark.parametrize("kind", sorted(HOSTILE_YAML))
def test_hostile_model_yml_is_refused(tmp_path: Path, kind: str) -> None:
    make, expected = HOSTILE_YAML[kind]
    folder = _export_folder(tmp_path / "export", make())
    image = tmp_path / "scene.png"
    image.write_bytes(b"")  # never reached
    proc = run_capped("-m", "paddle_impl.infer", "--model-dir", str(folder), "--image", str(image))
    assert_refused(proc, "model.yml", expected)


def test_override_value_is_read_by_the_bounded_reader() -> None:
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown key"):
        load_config(str(REPO / "configs" / "farseg_isaid.yaml"), ["train.nonsense=" + "[" * 20000])
    config = load_config(str(REPO / "configs" / "farseg_isaid.yaml"), ["data.split=" + "[" * 5000])
    assert config["data"]["split"].startswith("[[[")  # kept as text, not parsed into a RecursionError


def test_bounded_reader_accepts_the_shipped_files_and_refuses_planted_bombs() -> None:
    from common.bounded_yaml import BoundedYamlError, parse_yaml

    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert parse_yaml(path.read_text(), str(path)) == yaml.safe_load(path.read_text())
    # Aliases within the bounds are fine; the node count includes their expansion.
    assert parse_yaml("a: &a [1, 2]\nb: *a\n", "f") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(BoundedYamlError, match="more than 10 nodes"):
        parse_yaml("a: &a [1, 2, 3, 4]\nb: [*a, *a]\n", "f", max_nodes=10)
    with pytest.raises(BoundedYamlError, match="more than 2 YAML aliases"):
        parse_yaml("a: &a 1\nb: [*a, *a, *a]\n", "f", max_aliases=2)
    with pytest.raises(BoundedYamlError, match="deeper than 3"):
        parse_yaml("a: {b: {c: {d: 1}}}\n", "f", max_depth=3)


# ------------------------------------------------------------------------------ model.yml windows


def _model_yml(window: object, stride: object, **changes: object) -> str:
    config = deploy_config("farseg", None, None, "random")
    config["sliding_window"]["window"] = window
    config["sliding_window"]["stride"] = stride
    config.update(changes)
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize(
    "window,stride,expected",
    [
        (1, 1, "window must be a multiple of 32"),
        (32, 32, "window must be a multiple of 32 in 64.."),
        (100, 50, "window must be a multiple of 32"),
        (8192, 512, "window must be a multiple of 32 in 64..4096"),
        (896, 1, "stride must lie in 32..window"),
        (256, 512, "stride must lie in 32..window (256)"),
        ("896", 512, "window must be an integer"),
    ],
)
def test_model_yml_window_and_stride_are_bounded(tmp_path: Path, window, stride, expected: str) -> None:
    from app.exported import ExportError, read_deploy_config

    folder = _export_folder(tmp_path / "export", _model_yml(window, stride))
    with pytest.raises(ExportError) as caught:
        read_deploy_config(str(folder))
    message = str(caught.value)
    assert message.startswith(str(folder / "model.yml") + ": sliding_window: ") and expected in message, message


def test_model_yml_window_refusal_through_the_command(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path / "export", _model_yml(1, 1))
    image = tmp_path / "scene.png"
    image.write_bytes(b"")
    proc = run_capped("-m", "paddle_impl.infer", "--model-dir", str(folder), "--image", str(image))
    assert_refused(proc, "model.yml", "sliding_window", "window must be")


# ------------------------------------------------------------------------------ flags (item 13)

# Required arguments of each command, then the bad flag: argparse refuses before any work.
COMMANDS = {
    "torch_ref.evaluate": ["--model", "farseg", "--weights", "w.pth", "--images", "i", "--masks", "m"],
    "paddle_impl.evaluate": ["--model", "farseg", "--weights", "w.pdparams", "--images", "i", "--masks", "m"],
    "torch_ref.predict": ["--weights", "w.pth", "--image", "x.png", "--out", "o.png"],
    "paddle_impl.predict": ["--weights", "w.pdparams", "--image", "x.png", "--out", "o.png"],
    "torch_ref.export": ["--model", "farseg", "--out", "o"],
    "paddle_impl.export": ["--model", "farseg", "--out", "o"],
    "paddle_impl.infer": ["--model-dir", "d", "--image", "x.png"],
    "isaid.prepare": ["src", "out"],
    "isaid.synth": ["out"],
}
BAD_FLAGS = {
    "--window": ["0", "1", "100", "8192", "-896", "nan"],
    "--stride": ["0", "-3", "1", "100000"],
    "--batch-size": ["0", "-1", "100000"],
    "--threads": ["0", "-3", "100000", "x"],
    "--workers": ["0", "-3", "100000"],
    "--device": ["gpu:x", "gpu:-1", "tpu", "cuda:999", "gpu:1:2"],
    "--color-max-side": ["0", "10000000"],
    "--tolerance": ["-1", "nan", "inf"],
    "--rounding-tolerance": ["-1", "nan"],
    "--opset": ["0", "1000"],
    "--train": ["-1", "1000000"],
    "--val": ["-1"],
    "--size": ["0", "1000000"],
    "--seed": ["-1", "x"],
}


def _all_flag_cases():
    cases = []
    for module, required in COMMANDS.items():
        cases.extend(
            pytest.param(module, required, flag, value, id=f"{module}{flag}={value}")
            for flag, values in BAD_FLAGS.items()
            for value in values
        )
    return cases


@pytest.mark.parametrize("module,required,flag,value", _all_flag_cases())
def test_every_numeric_and_device_flag_is_validated(module: str, required: List[str], flag: str, value: str, capsys):
    """Each command that has the flag refuses the bad value in one line, exit 2, before work."""
    import importlib

    main = importlib.import_module(module).main
    # --help tells whether the command has the flag (the real parser, whatever builds it).
    with pytest.raises(SystemExit):
        main(["--help"])
    if flag not in capsys.readouterr().out:
        pytest.skip(f"{module} has no {flag}")
    argv = (
        required + [flag, value] if flag != "--size" or module.startswith("isaid") else required + [flag, value, value]
    )
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "error:" in lines[0] and flag in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text,expected",
    [("cpu", "cpu"), ("GPU", "gpu"), ("gpu:1", "gpu:1"), ("cuda", "cuda"), ("cuda:03", "cuda:3"), ("auto", "auto")],
)
def test_device_type_accepts_the_documented_spellings(text: str, expected: str) -> None:
    from common.cli import device_or_auto

    assert device_or_auto(text) == expected


def test_infer_device_and_threads_through_the_command(tmp_path: Path) -> None:
    """The issue's cases, end to end: a ValueError traceback and a SIGABRT before."""
    for flag, value in (("--device", "gpu:x"), ("--threads", "-3"), ("--threads", "100000")):
        proc = run_capped("-m", "paddle_impl.infer", "--model-dir", str(tmp_path), "--image", "x.png", flag, value)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"argument {flag}" in proc.stderr, proc.stderr
