"""Training in both frameworks: resume after SIGKILL, two-process CPU data parallel, configs,
ImageNet initialisation, identical batches in torch and Paddle, mixed precision.

The training runs use a synthetic iSAID split cut into 64x64 patches (``isaid.synth`` +
``isaid.prepare``, once per session), FarSeg, global batch 2 and a few iterations: enough to
exercise every path of ``torch_ref.train`` / ``paddle_impl.train`` on two CPU cores.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from conftest import ENV, ROOT

from app.config import ConfigError, default_config, load_config, parse_override
from app.training import write_checksum
from isaid.augment import (
    AugmentParams,
    SamplePlan,
    augment,
    draw_augment,
    load_patch_index,
    load_sample,
    normalize_batch,
)

CONFIG = str(ROOT / "configs" / "farseg_isaid.yaml")
MODULES = {"torch": "torch_ref.train", "paddle": "paddle_impl.train"}
FINAL = {"torch": "model_final.pth", "paddle": "model_final.pdparams"}
CHECKPOINT_SUFFIX = {"torch": ".pt", "paddle": ".pdckpt"}
WINDOW = 64
TIMEOUT = 900


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process torch work on one thread, restored afterwards: on a shared 2-core machine
    torch's default (all cores) was measured 15x slower per step than one thread
    (benchmarks/results/train_bench.json)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overrides(data_root: Path, out_dir: Path, iterations: int = 2, **extra: object) -> List[str]:
    """--set arguments of a tiny CPU run (random init, batch 2, 64x64, every step logged)."""
    values: Dict[str, object] = {
        "data.root": str(data_root),
        "data.window": WINDOW,
        "init.imagenet": "none",
        "train.iterations": iterations,
        "train.batch_size": 2,
        "train.amp": "none",
        "train.device": "cpu",
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.checkpoint_every": iterations,
        "train.log_backend": "none",
        "train.out_dir": str(out_dir),
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def train_command(framework: str, sets: List[str], resume: Optional[str] = None) -> List[str]:
    command = [sys.executable, "-m", MODULES[framework], "--config", CONFIG, "--no-progress", "--set", *sets]
    return command + (["--resume", resume] if resume else [])


def run_train(framework: str, sets: List[str], resume: Optional[str] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_command(framework, sets, resume), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_metrics(out_dir: Path) -> List[dict]:
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def load_weights(path: Path) -> "OrderedDict[str, np.ndarray]":
    from convert import load_state_dict_file

    return load_state_dict_file(path)


def differing_keys(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[str]:
    assert list(a) == list(b)
    return [key for key in a if not np.array_equal(a[key], b[key])]


# ----------------------------------------------------------------------------- resume


def kill_after_first_checkpoint(framework: str, sets: List[str], out_dir: Path) -> None:
    """Start a run, SIGKILL it as soon as its iteration-1 checkpoint exists."""
    checkpoint = out_dir / "checkpoints" / f"ckpt_0000001{CHECKPOINT_SUFFIX[framework]}"
    process = subprocess.Popen(
        train_command(framework, sets), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not checkpoint.exists():
            if process.poll() is not None:
                pytest.fail(f"run ended before its first checkpoint: {process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the time limit")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    # Killed in the middle: by the signal, before the end of the run.
    assert process.returncode == -signal.SIGKILL
    assert not (out_dir / FINAL[framework]).exists()


@pytest.fixture(scope="module")
def resume_runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    """Per framework, once: an uninterrupted 2-iteration run, and the same run killed with
    SIGKILL after its first checkpoint and resumed with ``--resume auto`` (a copy of that
    checkpoint is kept for the planted-bug test)."""
    root = tmp_path_factory.mktemp("resume")
    cache: Dict[str, Dict[str, object]] = {}

    def get(framework: str) -> Dict[str, object]:
        if framework not in cache:
            straight, killed = root / f"{framework}_straight", root / f"{framework}_killed"
            # The uninterrupted run also writes TensorBoard / VisualDL logs.
            run_train(framework, overrides(prepared, straight, **{"train.log_backend": "auto"}))
            sets = overrides(prepared, killed, **{"train.checkpoint_every": 1})
            kill_after_first_checkpoint(framework, sets, killed)
            name = f"ckpt_0000001{CHECKPOINT_SUFFIX[framework]}"
            shutil.copyfile(killed / "checkpoints" / name, root / f"{framework}_{name}")
            resumed = run_train(framework, sets, resume="auto")
            cache[framework] = {
                "straight": straight,
                "killed": killed,
                "stdout": resumed.stdout,
                "checkpoint": root / f"{framework}_{name}",
            }
        return cache[framework]

    return get


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_resume_after_sigkill_is_bit_identical(framework: str, resume_runs) -> None:
    """A run killed with SIGKILL after its first checkpoint and resumed with --resume auto
    logs the same losses and ends with the same weights, bit for bit, as one that was never
    interrupted (one thread per process: both frameworks are deterministic on CPU then)."""
    runs = resume_runs(framework)
    straight, killed = runs["straight"], runs["killed"]
    assert "resumed from" in runs["stdout"] and "at iteration 1" in runs["stdout"]
    log_folder = straight / ("tensorboard" if framework == "torch" else "visualdl")
    assert any(path.is_file() for path in log_folder.rglob("*"))
    rows_straight, rows_killed = read_metrics(straight), read_metrics(killed)
    assert [r["iteration"] for r in rows_straight] == [1, 2]
    assert [r["iteration"] for r in rows_killed] == [1, 2]
    assert [r["loss"] for r in rows_killed] == [r["loss"] for r in rows_straight]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in rows_killed)
    # Poly schedule per iteration, no warm-up: lr_k = 0.007 (1 - k/N)^0.9 for k = 0, 1.
    for row in rows_killed:
        expected = 0.007 * (1 - (row["iteration"] - 1) / 2) ** 0.9
        assert row["lr"] == pytest.approx(expected, rel=1e-12)
    # The weights after step 2 depend on the restored momentum, BN statistics, buffer_step and
    # lr: all of them must have come back exactly.
    final_straight = load_weights(straight / FINAL[framework])
    final_killed = load_weights(killed / FINAL[framework])
    assert differing_keys(final_straight, final_killed) == []


def test_resume_comparison_catches_a_lost_optimizer_state(resume_runs, prepared: Path, tmp_path: Path) -> None:
    """Planted bug: a resume that loses the momentum buffers (rewritten checkpoint) no longer
    reproduces the uninterrupted weights, so the bit-identity check above is not vacuous."""
    import torch

    runs = resume_runs("torch")
    broken = tmp_path / "broken"
    checkpoint = broken / "checkpoints" / "ckpt_0000001.pt"
    checkpoint.parent.mkdir(parents=True)
    state = torch.load(runs["checkpoint"], weights_only=True)
    for buffers in state["optimizer"]["state"].values():
        buffers["momentum_buffer"].zero_()
    torch.save(state, checkpoint)
    write_checksum(str(checkpoint))  # edited on purpose: sign it, as a user would after editing
    run_train("torch", overrides(prepared, broken, **{"train.checkpoint_every": 1}), resume=str(checkpoint))
    # Step 2's loss does not see the momentum yet; the weights after step 2 do.
    assert read_metrics(broken)[-1]["loss"] == read_metrics(runs["straight"])[-1]["loss"]
    changed = differing_keys(
        load_weights(runs["straight"] / "model_final.pth"), load_weights(broken / "model_final.pth")
    )
    assert any(key.endswith(".weight") for key in changed)


def test_resume_refuses_a_changed_recipe(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint of another recipe (here: another lr) is refused, naming the change."""
    import torch

    from torch_ref.train import CHECKPOINT_FORMAT, main

    out = tmp_path / "run"
    checkpoint = tmp_path / "ckpt_0000001.pt"
    other = load_config(CONFIG, overrides(prepared, out, **{"train.lr": 0.01}))
    torch.save({"format": CHECKPOINT_FORMAT, "iteration": 1, "config": other}, checkpoint)
    write_checksum(str(checkpoint))
    code = main(["--config", CONFIG, "--no-progress", "--resume", str(checkpoint), "--set", *overrides(prepared, out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.lr: 0.01 -> 0.007" in err


# ------------------------------------------------------------------------- data parallel


def test_torch_two_process_cpu_data_parallel(prepared: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes on CPU (gloo, plain BatchNorm: SyncBN is GPU-only)."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        MODULES["torch"],
        "--config",
        CONFIG,
        "--no-progress",
        "--set",
        *overrides(prepared, out),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 2 on 2 process(es) (cpu)" in result.stdout
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert len(load_weights(out / "model_final.pth")) == 451  # official FarSeg layout


def test_paddle_two_process_cpu_data_parallel(prepared: Path, tmp_path: Path) -> None:
    """paddle.distributed.launch with 2 processes on CPU (gloo, plain BatchNorm)."""
    out, logs = tmp_path / "ddp", tmp_path / "launch_logs"
    command = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(logs),
        "paddle_impl/train.py",
        "--config",
        CONFIG,
        "--no-progress",
        "--set",
        *overrides(prepared, out),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    worker0 = (logs / "workerlog.0").read_text(errors="replace") if (logs / "workerlog.0").exists() else ""
    assert result.returncode == 0, (result.stdout + result.stderr + worker0)[-3000:]
    assert "global batch 2 on 2 process(es) (cpu)" in worker0
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert (out / "model_final.pdparams").exists()


# ----------------------------------------------------------------------------- configs


def test_config_overrides_are_yaml_typed() -> None:
    config = load_config(
        CONFIG,
        [
            "train.iterations=100",
            "train.lr=1e-3",
            "train.amp=bf16",
            "init.imagenet=none",
            "train.channels_last=true",
            "data.root=/data/isaid",
            "augment.hflip=0",
        ],
    )
    assert config["train"]["iterations"] == 100 and isinstance(config["train"]["iterations"], int)
    assert config["train"]["lr"] == 1e-3 and isinstance(config["train"]["lr"], float)
    assert config["train"]["amp"] == "bf16"
    assert config["init"]["imagenet"] is None
    assert config["train"]["channels_last"] is True
    assert config["augment"]["hflip"] == 0.0
    assert parse_override("data.split=2017") == ("data.split", 2017)
    assert load_config(CONFIG, ["data.split=2017"])["data"]["split"] == "2017"


def test_configs_hold_the_official_recipe() -> None:
    for name in ("farseg", "factseg"):
        config = load_config(str(ROOT / "configs" / f"{name}_isaid.yaml"))
        assert config["model"]["name"] == name
        train = config["train"]
        assert (
            train["iterations"],
            train["batch_size"],
            train["lr"],
            train["momentum"],
            train["weight_decay"],
            train["poly_power"],
            train["clip_norm"],
            train["seed"],
        ) == (60000, 8, 0.007, 0.9, 1e-4, 0.9, 35.0, 2333)
        assert config["data"]["window"] == 896
        assert config["augment"] == {"hflip": 0.5, "vflip": 0.5, "rot90": True}
        assert config["init"]["imagenet"] is not None  # ImageNet init unless told otherwise


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train.lrr=0.1", "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        ("trian.lr=0.1", "unknown key 'trian.lr'"),
        ("train.iterations=ten", "train.iterations: expected an integer"),
        ("train.amp=fp8", "train.amp: 'fp8' is not one of none, fp16, bf16"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_give_one_line_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(CONFIG, [text])
    message = str(error.value)
    assert expected in message and "\n" not in message
    if "unknown key" in expected:
        assert CONFIG in message  # names the file the key is unknown to


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torch_ref.train import main

    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  name: farseg\ntrain:\n  lr: 0.007\n  warmup: 100\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'train.warmup'"):
        load_config(str(path))
    assert main(["--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'train.warmup'" in err and str(path) in err
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(str(path))
    path.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(str(path))


def test_print_config_shows_the_overridden_recipe(capsys: pytest.CaptureFixture) -> None:
    from paddle_impl.train import main

    assert main(["--config", CONFIG, "--print-config", "--set", "train.iterations=7"]) == 0
    printed = capsys.readouterr().out
    assert "iterations: 7" in printed and "lr: 0.007" in printed
    assert default_config()["train"]["iterations"] == 60000


# ------------------------------------------------------------------------ ImageNet init


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_missing_imagenet_file_is_a_one_line_error(
    framework: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import importlib

    main = importlib.import_module(MODULES[framework]).main
    missing = tmp_path / "nowhere" / "resnet50_encoder.pdparams"
    out = tmp_path / "run"
    sets = overrides(prepared, out, **{"init.imagenet": str(missing)})
    assert main(["--config", CONFIG, "--no-progress", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: init.imagenet: ")
    assert str(missing) in err and "resnet50-19c8e357.pth" in err
    assert "python -m convert resnet50-19c8e357.pth --model resnet50 --target farseg" in err
    assert not out.exists()  # nothing written


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A torchvision-layout ResNet-50 file with random values, and its convert outputs."""
    import torch

    from convert import convert_file
    from torch_ref import build_model
    from weights import ENCODER_PREFIX

    folder = tmp_path_factory.mktemp("imagenet")
    prefix = ENCODER_PREFIX["farseg"]
    generator = torch.Generator().manual_seed(0)
    state = OrderedDict()
    for key, value in build_model("farseg").state_dict().items():
        if key.startswith(prefix) and not key.endswith("num_batches_tracked"):
            state[key[len(prefix) :]] = torch.rand(value.shape, generator=generator) + 0.5
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    raw = folder / "resnet50-19c8e357.pth"
    torch.save(state, raw)
    return {
        "raw": raw,
        "paddle": convert_file(raw, folder / "farseg_encoder.pdparams", model="resnet50", target="farseg"),
        "torch": convert_file(raw, folder / "farseg_encoder.pth", model="resnet50", to="torch", target="farseg"),
        "factseg": convert_file(raw, folder / "factseg_encoder.pdparams", model="resnet50", target="factseg"),
    }


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_imagenet_init_from_every_accepted_file(framework: str, fake_imagenet: Dict[str, Path]) -> None:
    """The encoder of FarSeg gets exactly the file's values, whichever form the file has
    (torchvision's own, converted for Paddle or torch, converted for the other model)."""
    import importlib

    import torch

    from convert import CheckpointError
    from weights import ENCODER_PREFIX

    module = importlib.import_module(MODULES[framework])
    build = importlib.import_module("torch_ref" if framework == "torch" else "paddle_impl").build_model
    raw = torch.load(fake_imagenet["raw"], weights_only=True)
    prefix = ENCODER_PREFIX["farseg"]
    bn_names = {"running_mean": "_mean", "running_var": "_variance"}
    for form in ("raw", "paddle", "torch", "factseg"):
        net = build("farseg")
        assert module.load_imagenet(net, str(fake_imagenet[form]), "farseg") > 0
        own = {
            k: np.asarray(v.numpy() if framework == "paddle" else v.detach().numpy())
            for k, v in net.state_dict().items()
        }
        for key, value in raw.items():
            if key.startswith("fc."):
                continue
            name = key
            if framework == "paddle":
                head, _, leaf = key.rpartition(".")
                name = f"{head}.{bn_names.get(leaf, leaf)}"
            np.testing.assert_array_equal(own[prefix + name], value.numpy(), err_msg=f"{form}: {key}")
    # Planted fault: a file whose shapes do not fit is refused with the file named.
    bad = dict(raw)
    bad["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    bad_path = fake_imagenet["raw"].with_name("bad.pth")
    torch.save(bad, bad_path)
    with pytest.raises(CheckpointError, match=r"bad\.pth: does not match torchvision's"):
        module.load_imagenet(build("farseg"), str(bad_path), "farseg")


# ------------------------------------------------------------------------ same batches


def torch_batches(root: Path, plan: SamplePlan, iterations: int) -> List[List[np.ndarray]]:
    import torch

    from torch_ref.data import build_loader, to_device

    patches = load_patch_index(str(root), "train", WINDOW)
    loader = build_loader(patches, plan, WINDOW, 0, iterations, num_workers=0, pin_memory=False)
    return [[t.numpy() for t in to_device(batch, torch.device("cpu"))] for batch in loader]


def paddle_batches(root: Path, plan: SamplePlan, iterations: int) -> List[List[np.ndarray]]:
    from paddle_impl.data import build_loader, to_device

    patches = load_patch_index(str(root), "train", WINDOW)
    loader = build_loader(patches, plan, WINDOW, 0, iterations, num_workers=0)
    return [[t.numpy() for t in to_device(batch, "cpu")] for batch in loader]


def test_torch_and_paddle_see_identical_batches(prepared: Path) -> None:
    """Same seed -> the same normalised images and labels, bit for bit, in both frameworks,
    equal to the numpy reference; another seed (planted difference) is caught."""
    iterations = 12  # 24 samples > 18 patches: crosses an epoch boundary
    plan = SamplePlan(18, 2, seed=2333)
    torch_side = torch_batches(prepared, SamplePlan(18, 2, seed=2333), iterations)
    paddle_side = paddle_batches(prepared, SamplePlan(18, 2, seed=2333), iterations)
    assert len(torch_side) == len(paddle_side) == iterations
    patches = load_patch_index(str(prepared), "train", WINDOW)
    for k, ((t_img, t_lab), (p_img, p_lab)) in enumerate(zip(torch_side, paddle_side)):
        assert t_img.dtype == p_img.dtype == np.float32 and t_img.shape == (2, 3, WINDOW, WINDOW)
        assert t_lab.dtype == p_lab.dtype == np.int64
        np.testing.assert_array_equal(t_img, p_img)
        np.testing.assert_array_equal(t_lab, p_lab)
        samples = [load_sample(patches, plan, p, WINDOW) for p in plan.positions(k)]
        np.testing.assert_array_equal(t_img, normalize_batch(np.stack([s[0] for s in samples])))
        np.testing.assert_array_equal(t_lab, np.stack([s[1] for s in samples]).astype(np.int64))
    other = torch_batches(prepared, SamplePlan(18, 2, seed=1), iterations)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(torch_side, other))


def test_sampling_is_deterministic_sharded_and_epoch_complete() -> None:
    plan = SamplePlan(10, 4, seed=7)
    first_epoch = [plan.sample_index(p) for p in range(10)]
    assert sorted(first_epoch) == list(range(10))  # every patch once per epoch
    assert [plan.sample_index(p) for p in range(10, 20)] != first_epoch  # reshuffled
    assert SamplePlan(10, 4, seed=7).sample_index(13) == plan.sample_index(13)  # no hidden state
    ranks = [SamplePlan(10, 4, seed=7, world_size=2, rank=r) for r in range(2)]
    for k in (0, 5):
        shards = [rank.positions(k) for rank in ranks]
        assert shards[0] + shards[1] == plan.positions(k)  # the global batch is the same
        assert [ranks[1].sample_index(p) for p in shards[1]] == [plan.sample_index(p) for p in shards[1]]
    with pytest.raises(ValueError, match="not divisible"):
        SamplePlan(10, 3, seed=7, world_size=2)


def test_augmentation_order_padding_and_draws() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    label = rng.integers(0, 16, (3, 5), dtype=np.uint8)
    out_image, out_label = augment(image, label, AugmentParams(True, True, 1), pad_to=8)
    expected = np.rot90(image[::-1, ::-1], 1, axes=(0, 1))  # hflip, vflip, then rotate
    assert out_image.shape == (8, 8, 3) and out_label.shape == (8, 8)
    np.testing.assert_array_equal(out_image[:5, :3], expected)
    np.testing.assert_array_equal(out_label[:5, :3], np.rot90(label[::-1, ::-1], 1))
    # Padding is added after rotating, at the bottom/right: image 0, label 255.
    assert (out_image[5:] == 0).all() and (out_image[:, 3:] == 0).all()
    assert (out_label[5:] == 255).all() and (out_label[:, 3:] == 255).all()
    draws = [draw_augment(2333, p) for p in range(4000)]
    assert abs(np.mean([d.hflip for d in draws]) - 0.5) < 0.04
    assert abs(np.mean([d.vflip for d in draws]) - 0.5) < 0.04
    assert np.bincount([d.k for d in draws], minlength=4).min() > 850
    assert draw_augment(2333, 17) == draws[17]
    assert not any(d.hflip for d in (draw_augment(2333, p, hflip=0.0) for p in range(50)))


# ------------------------------------------------------------------------------- AMP


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_torch_amp_step_on_cpu(amp: str) -> None:
    """One FarSeg step under CPU autocast: convolutions run in the low precision, the loss
    is finite and the weights move (fp16 with the GradScaler, as on GPU)."""
    import torch

    from torch_ref.train import Runtime, TrainStep, build_training

    config = load_config(CONFIG, ["init.imagenet=none", f"train.amp={amp}", "train.iterations=10"])
    runtime = Runtime(torch.device("cpu"), 0, 1, 0)
    torch.manual_seed(0)
    net, model, optimizer, scheduler, scaler = build_training(config, runtime, None)
    assert scaler.is_enabled() == (amp == "fp16")
    seen = []
    net.en.resnet.conv1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = net.cls_pred_conv.weight.detach().clone()
    step = TrainStep(model, net, optimizer, scheduler, scaler, config["train"], runtime.device)
    images = torch.randn(2, 3, 32, 32)  # CPU bf16/fp16 kernels are slow: smallest valid input
    labels = torch.randint(0, 16, (2, 32, 32))
    loss = step(images, labels).loss
    assert seen == [torch.bfloat16 if amp == "bf16" else torch.float16]
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    moved = not torch.equal(before, net.cls_pred_conv.weight)
    if amp == "bf16":
        assert moved
    else:
        # Dynamic loss scaling: either the step was taken at the initial scale 2^16, or the
        # scaled gradients overflowed float16, the step was skipped and the scale halved.
        assert (moved, scaler.get_scale()) in ((True, 2.0**16), (False, 2.0**15))


def test_paddle_amp_on_cpu(capsys: pytest.CaptureFixture, prepared: Path, tmp_path: Path) -> None:
    """Paddle 3.3.1 has no CPU mixed precision: measured here (auto_cast leaves a conv in
    float32), the trainer refuses amp on CPU with one line, and the test is skipped."""
    import paddle

    from paddle_impl.train import main

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("GPU build: AMP is exercised by the GPU benchmark, not this CPU check")
    conv = paddle.nn.Conv2D(3, 4, 3)
    with pytest.warns(UserWarning, match="amp_guard can only be enabled on CUDAPlace"):
        with paddle.amp.auto_cast(enable=True, dtype="bfloat16", level="O1"):
            out = conv(paddle.randn([1, 3, 8, 8]))
    assert out.dtype == paddle.float32
    sets = overrides(prepared, tmp_path / "run", **{"train.amp": "bf16"})
    assert main(["--config", CONFIG, "--no-progress", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Paddle has no mixed precision on CPU" in err
    pytest.skip(
        "Paddle 3.3.1 CPU: paddle.amp.auto_cast is a no-op (conv output float32, measured"
        " above); the trainer refuses train.amp on CPU"
    )


# ------------------------------------------------------------- checks before the first step


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_fp16_on_a_cpu_is_refused_in_one_line(
    framework: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 17 item 14: the shipped train.amp=fp16 on a CPU (float16 autocast is emulated
    there, minutes per step) is refused before anything is built or written, in both trainers
    by the one shared policy; torch's real CPU bf16 is still allowed."""
    import importlib

    from app.training import amp_policy

    main = importlib.import_module(MODULES[framework]).main
    out = tmp_path / "run"
    assert main(["--config", CONFIG, "--no-progress", "--set", *overrides(prepared, out, **{"train.amp": "fp16"})]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: train.amp=fp16: no float16 training on a CPU"), err
    assert not out.exists()
    assert amp_policy("cpu", "fp16", ("bf16",)).refusal.endswith("use train.amp=bf16 or none")
    assert amp_policy("cpu", "bf16", ("bf16",)).effective == "bf16"
    assert amp_policy("cpu", "bf16", (), "no bf16 here").refusal == "train.amp=bf16: no bf16 here; use train.amp=none"
    assert amp_policy("cuda:0", "fp16", ()).effective == "fp16" and amp_policy("gpu:1", "fp16", ()).refusal is None
    assert amp_policy("cpu", "none", ()) == amp_policy("gpu:0", "none", ())


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_a_batch_beyond_memory_is_refused_before_the_first_step(
    framework: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 17 item 12: train.batch_size=5000 (or whatever surely exceeds this machine's
    memory) is one line naming train.batch_size, exit 2, nothing written: no allocation
    traceback minutes later."""
    import importlib

    from app.train_loop import ACTIVATION_BYTES_PER_PIXEL
    from common.resources import available_memory

    available = available_memory()[0] or 2**40
    batch = max(5000, 2 * available // (WINDOW * WINDOW * ACTIVATION_BYTES_PER_PIXEL) + 2)
    main = importlib.import_module(MODULES[framework]).main
    out = tmp_path / "run"
    sets = overrides(prepared, out, **{"train.batch_size": batch})
    assert main(["--config", CONFIG, "--no-progress", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: train.batch_size={batch}: {batch} samples of 64x64"), err
    assert "GB of memory, more than the" in err and "lower train.batch_size" in err
    assert not out.exists()


def test_batch_memory_on_a_gpu_uses_its_free_memory() -> None:
    """The GPU branch of the check, with a stand-in framework: 1 GiB free refuses 64 samples
    of 512^2 (at least 32 GiB of activations) and accepts 1 of 64^2."""
    from app.train_loop import Runtime, check_batch_memory
    from app.training import TrainError

    class FakeGpu:
        def free_gpu_memory(self, runtime: Runtime) -> int:
            return 2**30

    def config(batch: int, window: int) -> dict:
        return {"train": {"batch_size": batch, "amp": "bf16"}, "data": {"window": window}}

    runtime = Runtime("gpu:0", 0, 2, 0)
    with pytest.raises(TrainError, match=r"^train.batch_size=128: 64 samples of 512x512 per process need about"):
        check_batch_memory(FakeGpu(), config(128, 512), runtime)
    check_batch_memory(FakeGpu(), config(2, 64), runtime)

    class SilentDriver:
        def free_gpu_memory(self, runtime: Runtime) -> int:
            raise RuntimeError("no memory query on this driver")

    check_batch_memory(SilentDriver(), config(128, 512), runtime)  # unknown: not refused


def test_workers_are_capped_at_the_cores(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.num_workers: 8 on a 2-core machine: the loader gets 2 workers and one info line
    says so (no DataLoader warnings)."""
    import torch_ref.train as trainer
    from app.train_loop import worker_count
    from isaid.augment import DataError

    assert worker_count(8, cores=2) == (2, "info: train.num_workers=8 capped at 2, the CPU cores this process may use")
    assert worker_count(2, cores=2) == (2, None) and worker_count(0, cores=1) == (0, None)
    seen = []

    def loader_stub(patches, plan, window, start, end, num_workers, pin_memory):
        seen.append(num_workers)
        raise DataError("stopped by the test")

    monkeypatch.setattr(trainer, "build_loader", loader_stub)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    sets = overrides(prepared, tmp_path / "run", **{"train.num_workers": 8})
    assert trainer.main(["--config", CONFIG, "--no-progress", "--set", *sets]) == 2
    captured = capsys.readouterr()
    assert seen == [2]
    assert "info: train.num_workers=8 capped at 2, the CPU cores this process may use\n" in captured.out
    assert captured.err == "error: stopped by the test\n"


def test_hooks_run_after_every_checkpoint(prepared: Path, tmp_path: Path) -> None:
    """The loop's evaluation hook point: ``hook(iteration, training)`` after each checkpoint
    is on disk (here every iteration), with the live model."""
    from app import train_loop
    from torch_ref.train import PARTS

    out = tmp_path / "run"
    config = load_config(CONFIG, overrides(prepared, out, **{"train.checkpoint_every": 1}))
    calls = []

    def hook(iteration: int, training: train_loop.Training) -> None:
        assert (out / "checkpoints" / f"ckpt_{iteration:07d}.pt").is_file()
        calls.append((iteration, type(training.net).__name__))

    train_loop.train(PARTS, config, None, None, progress=False, hooks=[hook])
    assert calls == [(1, "FarSeg"), (2, "FarSeg")]


def test_both_trainers_implement_the_whole_parts_protocol() -> None:
    """Every member the shared loop calls exists in TorchTrainerParts and PaddleTrainerParts
    (a missing one would fail mid-run, after minutes of training)."""
    import inspect

    from app.train_loop import TrainerParts
    from paddle_impl.train import PARTS as PADDLE_PARTS
    from torch_ref.train import PARTS as TORCH_PARTS

    members = [n for n in vars(TrainerParts) if not n.startswith("_")] + list(TrainerParts.__annotations__)
    assert len(members) > 20
    for parts in (TORCH_PARTS, PADDLE_PARTS):
        missing = [n for n in members if not hasattr(parts, n)]
        assert missing == [], type(parts).__name__
        for name in members:
            if inspect.isfunction(getattr(TrainerParts, name, None)):
                wanted = list(inspect.signature(getattr(TrainerParts, name)).parameters)
                assert list(inspect.signature(getattr(type(parts), name)).parameters) == wanted, name
