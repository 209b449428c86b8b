"""evaluate and predict ``--config CONFIG.yaml``: model, window and stride come from the training
YAML; options typed on the command line win; a bad file or a stride beyond the window is one
line, exit 2. The shipped CPU recipes load and are CPU-sized."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torch_ref.evaluate as torch_evaluate
import torch_ref.predict as torch_predict
from app.cli import OneLineArgumentParser, explicit_options
from app.config import load_config
from torch_ref.init import write_initial_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """A 96x96 RGB scene, its index mask, FarSeg starting weights and two training YAMLs."""
    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / "images" / "P0001.png")
    Image.fromarray(rng.integers(0, 16, (96, 96), dtype=np.uint8)).save(folder / "labels" / "P0001.png")
    weights = folder / "farseg.pth"
    write_initial_checkpoint("farseg", str(weights), seed=0)
    config = folder / "small.yaml"
    config.write_text("model:\n  name: farseg\ndata:\n  window: 64\n  stride: 32\n")
    bad_stride = folder / "bad_stride.yaml"
    bad_stride.write_text("model:\n  name: farseg\ndata:\n  window: 64\n")  # stride: the default 512
    return {"folder": folder, "weights": weights, "config": config, "bad_stride": bad_stride}


def evaluate(scene: dict, *options: str) -> dict:
    out = scene["folder"] / "result.json"
    if out.exists():
        out.unlink()
    argv = [
        "--weights",
        str(scene["weights"]),
        "--images",
        str(scene["folder"] / "images"),
        "--masks",
        str(scene["folder"] / "labels"),
        "--device",
        "cpu",
        "--no-progress",
        "--json",
        str(out),
        *options,
    ]
    assert torch_evaluate.main(argv) == 0
    return json.loads(out.read_text())


def test_explicit_options_are_what_the_user_typed() -> None:
    parser = OneLineArgumentParser(prog="p")
    parser.add_argument("--window", type=int, default=896)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--model")
    assert explicit_options(parser, []) == set()
    assert explicit_options(parser, ["--window", "64"]) == {"window"}
    assert explicit_options(parser, ["--win=64", "--model", "x"]) == {"window", "model"}  # abbreviation, = form
    assert explicit_options(parser, ["--stride", "512"]) == {"stride"}  # the default's value, typed: explicit
    assert parser.parse_args([]).window == 896  # defaults restored afterwards


def test_evaluate_takes_model_window_and_stride_from_the_config(scene: dict) -> None:
    result = evaluate(scene, "--config", str(scene["config"]))
    assert result["model"] == "farseg"
    assert (result["protocol"]["window"], result["protocol"]["stride"]) == (64, 32)
    assert result["windows"] == 4  # rows and columns start at 0 and 32: 2 x 2 windows of 64


def test_explicit_flags_win_over_the_config(scene: dict) -> None:
    """Planted bug: explicit_options returning nothing (the file overriding typed flags) makes
    --window 96 come back as the config's 64, which this test sees."""
    result = evaluate(scene, "--config", str(scene["config"]), "--window", "96", "--stride", "96")
    assert (result["protocol"]["window"], result["protocol"]["stride"]) == (96, 96)
    result = evaluate(scene, "--config", str(scene["config"]), "--stride", "64")
    assert (result["protocol"]["window"], result["protocol"]["stride"]) == (64, 64)


def test_without_config_the_defaults_and_required_model_stay(scene: dict, capsys) -> None:
    result = evaluate(scene, "--model", "farseg")
    assert (result["protocol"]["window"], result["protocol"]["stride"]) == (896, 512)
    argv = ["--weights", str(scene["weights"]), "--images", "x", "--masks", "y", "--device", "cpu"]
    assert torch_evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model is required"), err


@pytest.mark.parametrize(
    "config_name, message",
    [
        ("bad_stride", "data.stride 512 is larger than the window 64"),
        ("missing", "config file not found"),
        ("typo", "data.windw"),
    ],
)
def test_bad_config_is_one_line_exit_2_before_any_work(scene: dict, capsys, config_name: str, message: str) -> None:
    folder = scene["folder"]
    (folder / "typo.yaml").write_text("data:\n  windw: 64\n")
    path = scene.get(config_name, folder / f"{config_name}.yaml")
    for main, io in (
        (torch_evaluate.main, ["--images", str(folder / "images"), "--masks", str(folder / "labels")]),
        (torch_predict.main, ["--image", str(folder / "images" / "P0001.png"), "--out", str(folder / "o.png")]),
    ):
        assert main(["--config", str(path), "--weights", str(scene["weights"]), "--device", "cpu", *io]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--config" in err[0] and message in err[0], err
        assert not (folder / "o.png").exists()


def test_predict_takes_window_stride_and_model_from_the_config(scene: dict, capsys) -> None:
    folder = scene["folder"]
    out = folder / "pred.png"
    argv = ["--weights", str(scene["weights"]), "--image", str(folder / "images" / "P0001.png"), "--out", str(out)]
    assert torch_predict.main([*argv, "--config", str(scene["config"]), "--device", "cpu", "--no-progress"]) == 0
    assert "window 64, stride 32" in capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (96, 96)
    # The config's model.name is used for --weights: a FactSeg config does not fit FarSeg weights.
    factseg = folder / "factseg.yaml"
    factseg.write_text("model:\n  name: factseg\ndata:\n  window: 64\n  stride: 64\n")
    assert torch_predict.main([*argv, "--config", str(factseg), "--device", "cpu", "--no-progress"]) == 2
    assert "factseg" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["farseg", "factseg"])
def test_shipped_cpu_recipes_are_cpu_sized(model: str) -> None:
    config = load_config(str(ROOT / "configs" / f"{model}_cpu.yaml"))
    assert config["model"]["name"] == model
    assert config["train"]["amp"] == "none" and config["train"]["device"] == "cpu"
    assert config["init"]["imagenet"] is None
    assert config["data"]["window"] <= 256 and config["data"]["stride"] <= config["data"]["window"]
    assert config["train"]["batch_size"] <= 4 and config["train"]["iterations"] <= 1000
    assert config["train"]["num_workers"] <= 1
