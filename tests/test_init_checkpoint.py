"""``python -m torch_ref.init``: a starting checkpoint in both formats, loadable strictly by both
model packages, reproducible from its seed, with the ImageNet encoder when asked; bad input is
one line, exit 2, nothing written; the layout check is what stops a wrong Paddle file."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import torch_ref.init as init_cli
from convert import CheckpointError, load_state_dict_file, save_torch
from weights import ENCODER_PREFIX


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch_ref.init", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_torch_and_paddle_files_load_strictly_and_hold_the_same_weights(tmp_path: Path) -> None:
    import paddle
    import torch

    from paddle_impl import build_model as build_paddle
    from torch_ref import build_model as build_torch

    pth, pdparams = tmp_path / "f.pth", tmp_path / "f.pdparams"
    assert init_cli.main(["--model", "farseg", "--out", str(pth)]) == 0
    assert init_cli.main(["--model", "farseg", "--out", str(pdparams)]) == 0
    net = build_torch("farseg")
    net.load_state_dict(torch.load(str(pth), weights_only=True), strict=True)
    layer = build_paddle("farseg")
    missing, unexpected = layer.set_state_dict(paddle.load(str(pdparams)))
    assert not missing and not unexpected
    torch_state, paddle_state = load_state_dict_file(str(pth)), load_state_dict_file(str(pdparams))
    conv = "en.resnet.conv1.weight"
    np.testing.assert_array_equal(np.asarray(torch_state[conv]), np.asarray(paddle_state[conv]))


def test_same_seed_same_file_other_seed_other_weights(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    init_cli.write_initial_checkpoint("factseg", str(a), seed=1)
    init_cli.write_initial_checkpoint("factseg", str(b), seed=1)
    init_cli.write_initial_checkpoint("factseg", str(c), seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_imagenet_encoder_is_put_in_and_the_rest_is_the_seeded_init(tmp_path: Path) -> None:
    base = init_cli.initial_state("farseg", seed=5)
    prefix = ENCODER_PREFIX["farseg"]
    encoder = OrderedDict(
        (k, (v + 1.0 if v.dtype == np.float32 else v)) for k, v in base.items() if k.startswith(prefix)
    )
    encoder_file = tmp_path / "encoder.pth"
    save_torch(encoder, encoder_file)
    out = tmp_path / "init.pth"
    assert init_cli.main(["--model", "farseg", "--seed", "5", "--imagenet", str(encoder_file), "--out", str(out)]) == 0
    written = load_state_dict_file(str(out))
    for key, value in base.items():
        expected = encoder[key] if key in encoder else value
        np.testing.assert_array_equal(np.asarray(written[key]), expected, err_msg=key)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "farseg", "--out", "{tmp}/x.bin"], "unsupported extension '.bin'"),
        (["--model", "farseg", "--out", "{tmp}/text.pth/x.pth"], "cannot write there"),
        (["--model", "farseg", "--imagenet", "{tmp}/text.pth", "--out", "{tmp}/x.pth"], "text.pth"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, args, message) -> None:
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.bin").exists()


def test_a_wrong_paddle_conversion_is_caught_before_writing(tmp_path: Path, monkeypatch) -> None:
    """Planted bug: the conversion loses a BatchNorm statistic; the layout check refuses the
    file and nothing is written (without the check a Paddle file missing a key would be saved)."""

    def lossy(state, model):
        from convert import torch_to_paddle

        converted = OrderedDict(torch_to_paddle(state, model))
        converted.pop(next(k for k in converted if k.endswith("_mean")))
        return converted

    monkeypatch.setattr(init_cli, "torch_to_paddle", lossy)
    out = tmp_path / "bad.pdparams"
    with pytest.raises(CheckpointError):
        init_cli.write_initial_checkpoint("farseg", str(out))
    assert not out.exists()
    assert init_cli.main(["--model", "farseg", "--out", str(out)]) == 2
    assert not out.exists()
