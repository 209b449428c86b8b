"""ONNX exports (torch's exporter and paddle2onnx) run by onnxruntime, and export metadata checks.

What is proven here:

- ``python -m torch_ref.export --format onnx`` writes ``model.onnx`` + ``model.yml`` whose
  onnxruntime output equals torch_ref's eval forward (dynamic batch and size, another size than
  the traced one) within the export's tolerance, with the argmax agreeing; a planted weight
  change between the exported graph and the model is caught by the export check and nothing
  is written;
- ``python -m paddle_impl.export --format onnx`` (paddle2onnx on the float32-scale copy of the
  PIR program) equals the Paddle dynamic graph the same way, and ``paddle_impl.infer`` /
  ``predict --model-dir`` run it with onnxruntime;
- ``model.yml`` is checked against the program it describes: an edited ``model`` naming the
  other model is refused in one line (ONNX and Paddle exports), and the architecture is read
  from the convolution shapes (FarSeg and FactSeg are told apart, a truncated list is neither).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from model_helpers import randomise_batchnorm  # noqa: E402  (tests/model_helpers.py)

import paddle_impl  # noqa: E402
import paddle_impl.infer as infer  # noqa: E402
import torch_ref  # noqa: E402
import torch_ref.export as torch_export  # noqa: E402
from app.export_inspect import layout_conv_shapes  # noqa: E402
from app.exported import ExportError, OnnxModel, compare_probabilities, identify, read_deploy_config  # noqa: E402
from convert import save_torch  # noqa: E402
from paddle_impl.sliding_window import load_weights as paddle_load_weights  # noqa: E402

TOLERANCE = torch_export.DEFAULT_TOLERANCE


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    paddle.set_device("cpu")
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def torch_farseg(tmp_path_factory):
    torch.manual_seed(0)
    model = torch_ref.build_model("farseg")
    randomise_batchnorm(model, 0)  # so that onnxruntime's BatchNorm folding has work to do
    model.eval()
    path = tmp_path_factory.mktemp("weights") / "farseg.pth"
    save_torch(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def torch_onnx(tmp_path_factory, torch_farseg) -> Path:
    model, path = torch_farseg
    out = tmp_path_factory.mktemp("onnx") / "farseg_torch"
    assert torch_export.main(["--model", "farseg", "--weights", str(path), "--out", str(out)]) == 0
    return out


def _eval(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_torch_onnx_export_equals_eval_forward_at_other_sizes(torch_onnx: Path, torch_farseg) -> None:
    model, _ = torch_farseg
    config = read_deploy_config(str(torch_onnx))
    assert config["format"] == "onnx" and config["model"] == "farseg"
    assert sorted(os.listdir(torch_onnx)) == ["model.onnx", "model.yml"]
    onnx_model = OnnxModel(str(torch_onnx), threads=1)
    # Batch 3 and 96x128: neither the traced (1, 64x96) nor the checked (2, 64x96) shape.
    x = np.random.default_rng(5).standard_normal((3, 3, 96, 128)).astype(np.float32)
    difference, agreement = compare_probabilities(_eval(model, x), onnx_model(x))
    assert difference <= TOLERANCE and agreement >= 0.999
    # A whole image through the shared padding path: same classes as the engine-free forward.
    image = np.random.default_rng(6).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    assert onnx_model.predict_image(image).shape == (70, 90)


def test_torch_onnx_check_catches_a_planted_weight_change(tmp_path: Path, torch_farseg, monkeypatch) -> None:
    model, path = torch_farseg
    original = torch_export.export_onnx

    def export_a_changed_model(exported, onnx_path, size=None, opset=torch_export.DEFAULT_OPSET):
        changed = torch_ref.build_model("farseg")
        changed.load_state_dict(exported.state_dict())
        with torch.no_grad():
            changed.decoder.blocks[0][0][1].running_var.mul_(1.1)  # one BN variance off by 10%
        original(changed, onnx_path, size, opset)

    monkeypatch.setattr(torch_export, "export_onnx", export_a_changed_model)
    out = tmp_path / "bad"
    with pytest.raises(ExportError, match="differs from the eval forward"):
        torch_export.export("farseg", None, str(out), model=model)
    assert not out.exists() and os.listdir(tmp_path) == []  # no staging folder left either


def test_edited_model_yml_naming_the_other_model_is_refused(torch_onnx: Path, tmp_path: Path, capsys) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(torch_onnx, edited)
    text = (edited / "model.yml").read_text()
    (edited / "model.yml").write_text(text.replace("model: farseg", "model: factseg", 1))
    with pytest.raises(ExportError, match="says model 'factseg' but the program's convolutions are farseg's"):
        read_deploy_config(str(edited))
    assert infer.main(["--model-dir", str(edited), "--image", str(tmp_path / "unused.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing a mismatched export" in err[0]


def test_architecture_is_identified_from_convolution_shapes() -> None:
    farseg, factseg = layout_conv_shapes("farseg"), layout_conv_shapes("factseg")
    assert identify(farseg) == "farseg" and identify(factseg) == "factseg"
    assert identify(farseg[:-1]) is None and identify(farseg + [(1, 128, 1, 1)]) is None


@pytest.mark.slow
def test_paddle_onnx_export_runs_in_infer_and_predict(tmp_path: Path, torch_farseg) -> None:
    _, path = torch_farseg
    model = paddle_impl.build_model("farseg")
    paddle_load_weights(model, "farseg", str(path))
    model.eval()
    from paddle_impl.export import export

    out = tmp_path / "farseg_paddle_onnx"
    summary = export("farseg", None, str(out), model=model, fmt="onnx")
    assert summary["checks"][0][0] == "onnxruntime" and summary["checks"][0][1] <= TOLERANCE
    assert sorted(os.listdir(out)) == ["model.onnx", "model.yml"]
    deployed = infer.create_predictor(str(out))
    assert deployed.backend == "onnxruntime"
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    difference, agreement = compare_probabilities(expected, deployed(x))
    assert difference <= TOLERANCE and agreement >= 0.999
    with pytest.raises(infer.InferenceError, match="ONNX export"):
        infer.create_predictor(str(out), backend="onednn")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two small synthetic val scenes with index labels (the evaluator's input layout)."""
    from isaid.imageio import write_png_atomic
    from isaid.synth import make_scene

    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for number, (height, width) in enumerate([(72, 90), (100, 64)]):
        rgb, index = make_scene(np.random.default_rng(number), height, width)
        write_png_atomic(root / "images" / f"P{number:04d}.png", rgb)
        write_png_atomic(root / "labels" / f"P{number:04d}.png", index, index_palette=True)
    return root


def _evaluate(module, scenes: Path, source: list, json_path: Path, *extra: str) -> int:
    return module.main(
        [
            "--model",
            "farseg",
            *source,
            "--images",
            str(scenes / "images"),
            "--masks",
            str(scenes / "labels"),
            "--window",
            "64",
            "--stride",
            "48",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            str(json_path),
            *extra,
        ]
    )


def test_evaluate_and_predict_run_an_onnx_export_in_both_frameworks(
    torch_onnx: Path, torch_farseg, scenes: Path, tmp_path: Path, capsys
) -> None:
    import json

    import paddle_impl.evaluate as paddle_evaluate
    import torch_ref.evaluate as torch_evaluate
    import torch_ref.predict as torch_predict

    _, weights = torch_farseg
    assert _evaluate(torch_evaluate, scenes, ["--weights", str(weights)], tmp_path / "w.json") == 0
    assert _evaluate(torch_evaluate, scenes, ["--model-dir", str(torch_onnx)], tmp_path / "t.json") == 0
    assert _evaluate(paddle_evaluate, scenes, ["--model-dir", str(torch_onnx)], tmp_path / "p.json") == 0
    reference = np.array(json.loads((tmp_path / "w.json").read_text())["confusion"])
    for name in ("t.json", "p.json"):
        result = json.loads((tmp_path / name).read_text())
        confusion = np.array(result["confusion"])
        assert confusion.sum() == reference.sum() == 72 * 90 + 100 * 64
        # Same argmax up to float32 near-ties: per true class, the predicted counts move by a few pixels.
        assert np.abs(confusion - reference).sum() <= 0.002 * reference.sum() * 2
        assert "onnxruntime" in result["weights"]["loaded_as"]
    # An export of the other model than --model: one line, exit 2.
    assert (
        torch_evaluate.main(
            [
                "--model",
                "factseg",
                "--model-dir",
                str(torch_onnx),
                "--images",
                str(scenes / "images"),
                "--masks",
                str(scenes / "labels"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds farseg, not --model factseg" in err[0]
    out = tmp_path / "classes.png"
    assert (
        torch_predict.main(
            [
                "--model-dir",
                str(torch_onnx),
                "--image",
                str(scenes / "images" / "P0000.png"),
                "--out",
                str(out),
                "--window",
                "64",
                "--stride",
                "48",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert out.exists()


def test_paddle_dynamic_graph_refuses_cpu_amp_in_one_line(torch_farseg, scenes: Path, tmp_path: Path, capsys) -> None:
    """Paddle 3.3.1's auto_cast on the CPU silently stays float32: asking for it is an error."""
    import paddle_impl.evaluate as paddle_evaluate

    _, weights = torch_farseg
    assert (
        _evaluate(
            paddle_evaluate,
            scenes,
            ["--weights", str(weights), "--engine", "dygraph"],
            tmp_path / "x.json",
            "--amp",
            "bf16",
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CPU mixed precision" in err[0] and "--model-dir" in err[0]
    assert not (tmp_path / "x.json").exists()


def test_fixed_size_export_records_its_window_and_refuses_others_in_one_line(
    torch_farseg, scenes: Path, tmp_path: Path, capsys
) -> None:
    """--size 64 64 records window 64 in model.yml (so predict runs it as it is); a larger
    --window is one line and exit 2 in predict and evaluate, never a traceback."""
    import torch_ref.evaluate as torch_evaluate
    import torch_ref.predict as torch_predict

    _, weights = torch_farseg
    fixed = tmp_path / "fixed"
    args = ["--model", "farseg", "--weights", str(weights), "--out", str(fixed), "--size", "64", "64"]
    assert torch_export.main(args) == 0
    assert read_deploy_config(str(fixed))["sliding_window"]["window"] == 64
    image = str(scenes / "images" / "P0000.png")
    predict = ["--model-dir", str(fixed), "--image", image, "--device", "cpu", "--no-progress"]
    assert torch_predict.main([*predict, "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    assert torch_predict.main([*predict, "--out", str(tmp_path / "b.png"), "--window", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for 64x64 inputs" in err[0]
    assert _evaluate(torch_evaluate, scenes, ["--model-dir", str(fixed)], tmp_path / "e.json", "--window", "128") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for 64x64 inputs" in err[0]
