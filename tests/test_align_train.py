"""The train stage (``python -m align.train``): both real trainers compared run against run.

Tiny runs (FarSeg, 64x64 synthetic patches, batch 2, 3 iterations, one val scene) exercise the
whole path: synth -> prepare -> both frameworks' loaders (bit-identical batches) -> both trainers
from one converted initial state -> both evaluators -> rows, curves.json and curves.png. The
planted bug is an lr x2 in ONE trainer's own ``build_optimizer`` (monkeypatched there, never in
align): the stage must fail and name iteration 1's learning rate. The default-size numbers and
the band behind the thresholds are measured by ``benchmarks/train_align_floor.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_module

from align import AlignConfig
from align.compare import TRAIN_FLOOR, TRAIN_TOLERANCES, format_report

TINY = dict(model="farseg", size=64, batch=2, train_iterations=3, val_scenes=1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread, as in CI (the band was measured with the reference on one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_stage(out: Path):
    from align.train import run

    return run(AlignConfig(out=str(out), **TINY).validate())


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("align_train")
    return out, run_stage(out)


def test_train_stage_passes_on_the_real_trainers_and_writes_its_files(clean):
    out, result = clean
    assert result.passed, format_report(result)
    assert result.first_divergence is None
    names = {r.name for r in result.rows}
    assert {
        "batches/identical",
        "lr/iter/1",
        "loss/iter/3",
        "grad_norm/iter/3",
        "loss/run_mean",
        "params/final",
        "buffer_step/final",
        "miou/final",
    } <= names
    assert result.row("batches/identical").rel == 0.0
    assert result.row("lr/iter/2").rel <= TRAIN_TOLERANCES["train_lr"].rtol
    folder = out / "farseg" / "train"
    curves = json.loads((folder / "curves.json").read_text())
    assert curves["passed"] and curves["iterations"] == [1, 2, 3]
    for side in ("torch", "paddle"):
        assert len(curves[side]["loss"]) == len(curves[side]["lr"]) == len(curves[side]["grad_norm"]) == 3
        assert 0.0 <= curves["miou"][side] <= 1.0
    # The curves are the trainers' own metrics.jsonl rows, one per iteration.
    rows = [json.loads(line) for line in (folder / "runs" / "paddle" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == curves["paddle"]["loss"]
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "diff.json").read_text())["passed"]


def test_lr_doubled_in_one_trainer_is_caught_at_iteration_1(monkeypatch, tmp_path):
    """Planted in paddle_impl.train's own build_optimizer (the trainer's recipe path).

    This run takes the full-scale code path (``--config`` + ``--data`` of an isaid.prepare
    output, recipe window and batch set with ``--set``), at tiny sizes on the CPU.
    """
    import paddle_impl.train as paddle_train
    from align.train import make_synthetic_data, run

    data = make_synthetic_data(str(tmp_path / "data"), 64, seed=5)
    real = paddle_train.build_optimizer

    def doubled(model, recipe):
        return real(model, {**recipe, "lr": 2 * recipe["lr"]})

    monkeypatch.setattr(paddle_train, "build_optimizer", doubled)
    config = AlignConfig(
        out=str(tmp_path),
        train_config=str(ROOT / "configs" / "farseg_isaid.yaml"),
        data=data,
        sets=("data.window=64", "train.batch_size=2", "init.imagenet=none", "train.num_workers=0"),
        **TINY,
    )
    result = run(config.validate())
    assert result.settings["data"] == data and result.settings["window"] == 64
    assert not result.passed
    divergence = result.first_divergence
    assert divergence.value == "lr/iter/1" and divergence.where == "iteration 1", divergence
    assert "ratio 2" in divergence.summary and "learning-rate" in divergence.summary
    assert all(not result.row(f"lr/iter/{i}").passed for i in (1, 2, 3))
    # The loss of iteration 1 comes before any update: still equal.
    assert result.row("loss/iter/1").passed
    assert not json.loads((tmp_path / "farseg" / "train" / "curves.json").read_text())["passed"]


def test_thresholds_sit_above_the_measured_floor():
    """compare.py's train thresholds match the committed measurement, with a margin."""
    document = json.loads((ROOT / "benchmarks" / "results" / "train_align_floor.json").read_text())
    for kind, values in document["summary"].items():
        floor = values["floor_torch_vs_torch"]
        assert TRAIN_FLOOR[kind] == pytest.approx(floor, rel=1e-3, abs=1e-15), kind
        assert TRAIN_TOLERANCES[kind].rtol >= 2 * floor, kind
        if values["torch_vs_paddle"] is not None:  # the port, at the default set-up, passes
            assert values["torch_vs_paddle"] <= TRAIN_TOLERANCES[kind].rtol, kind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--data", "no/such/dir"], "no/such/dir: no such folder"),
        (["--config", "no/such.yaml"], "no/such.yaml: no such file"),
        (["--set", "train.lrr=1"], "unknown key 'train.lrr'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_module("align.train", "--model", "farseg", "--out", tmp_path / "o", *args, timeout=300)
    lines = [line for line in proc.stderr.strip().splitlines() if "Warning" not in line and line.strip()]
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert len([line for line in lines if "error:" in line]) == 1
    assert not (tmp_path / "o" / "farseg" / "train" / "diff.json").exists()


def _run(label: str, grad_norm: list):  # -> align.train.TrainRun
    from collections import OrderedDict

    from align.train import TrainRun

    n = len(grad_norm)
    state = OrderedDict(
        [("buffer_step", np.array(float(n), np.float32)), ("w.weight", np.arange(4, dtype=np.float32) + 1.0)]
    )
    confusion = np.eye(16, dtype=np.int64) * 10
    return TrainRun(
        label, np.linspace(2.0, 1.0, n), np.full(n, 0.007), np.array(grad_norm, float), state, confusion, 1.0, 1.0, ""
    )


def test_loss_scaler_skips_count_only_when_both_trainers_skip_the_same_steps() -> None:
    """fp16: a step the GradScaler skips logs an infinite gradient norm. Skipped by both sides:
    left out of the gradient-norm rows; skipped by one side only: the "finite" row fails."""
    from collections import OrderedDict

    from align.compare import tolerances
    from align.train import compare_runs

    tols = tolerances("float32")
    start = OrderedDict([("buffer_step", np.array(0.0, np.float32)), ("w.weight", np.zeros(4, np.float32))])
    norms = [5.0, float("inf"), 4.0] + [3.0] * 12
    rows, divergence = compare_runs(_run("torch", norms), _run("paddle", norms), start, tols, "farseg")
    assert divergence is None and all(row.passed for row in rows)
    assert not any(row.name == "grad_norm/iter/2" for row in rows)
    shifted = [5.0, 4.0, float("inf")] + [3.0] * 12
    rows, divergence = compare_runs(_run("torch", norms), _run("paddle", shifted), start, tols, "farseg")
    assert any(row.name == "finite/loss_and_grad_norm" and not row.passed for row in rows)


# ------------------------------------------------------------------------------ readable outputs


def png_size(data: bytes) -> tuple:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def nan_in_passing_rows(diff_txt: str) -> list:
    """The lines of a diff.txt table that pass ("ok") yet print ``nan``."""
    return [line for line in diff_txt.splitlines() if " ok" in line and "nan" in line.split("(")[0]]


def unreadable_figure(figure) -> list:
    """Why ``figure`` is not readable at 100 % zoom: under 1400 px wide, text under 10 pt, or a
    legend drawn over its panel's data area."""
    from align.train import plot

    problems = []
    width = figure.get_figwidth() * plot.PLOT_DPI
    if width < 1400:
        problems.append(f"{width:.0f} px wide")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        if box.overlaps(area):
            problems.append(f"legend over the data of {ax.get_title()!r}")
        sizes = [text.get_fontsize() for text in legend.get_texts()]
        if min(sizes) < 10:
            problems.append(f"legend text {min(sizes)} pt")
    return problems


def test_curves_png_is_readable_and_passing_rows_print_no_nan(clean):
    """curves.png at least 1400 px wide; diff.txt's passing rows (params/final included, whose
    max|d| and mean|d| were NaN placeholders) print numbers."""
    out, _ = clean
    folder = out / "farseg" / "train"
    width, _ = png_size((folder / "curves.png").read_bytes())
    assert width >= 1400
    assert nan_in_passing_rows((folder / "diff.txt").read_text()) == []
    params = [line for line in (folder / "diff.txt").read_text().splitlines() if line.startswith("params/final")]
    assert params and "nan" not in params[0]


def test_planted_nan_row_and_unreadable_plot_are_caught(monkeypatch):
    """The checks above see the old outputs: a NaN placeholder in a passing row, a legend
    inside a panel at 7 pt, a 960 px figure."""
    import matplotlib.pyplot as plt

    from align.compare import Row, format_rows, tolerances
    from align.train import compare_runs, curves_document, plot

    old_row = Row(
        "params/final",
        "train_param",
        [2],
        float("nan"),
        float("nan"),
        0.1,
        float("nan"),
        tolerances("float32")["train_param"],
        True,
    )
    assert nan_in_passing_rows("\n".join(format_rows([old_row])))

    from collections import OrderedDict

    from align.compare import StageResult

    norms = [5.0, 4.0, 3.0] + [3.0] * 12
    start = OrderedDict([("buffer_step", np.array(0.0, np.float32)), ("w.weight", np.zeros(4, np.float32))])
    tols = tolerances("float32")
    reference, other = _run("torch", norms), _run("paddle", norms)
    rows, _ = compare_runs(reference, other, start, tols, "farseg")
    assert nan_in_passing_rows("\n".join(format_rows(rows))) == []
    result = StageResult("train", "farseg", "float32")
    result.rows = rows
    document = curves_document(reference, other, result, tols)
    figure = plot.curves_figure(document, reference, other)
    assert unreadable_figure(figure) == []
    plt.close(figure)

    def legend_inside(ax, handles=None, labels=None, columns=2):
        (
            ax.legend(fontsize=7, loc="upper right")
            if handles is None
            else ax.legend(handles, labels, fontsize=7, loc="upper right")
        )

    monkeypatch.setattr(plot, "_legend_below", legend_inside)
    monkeypatch.setattr(plot, "PLOT_DPI", 80)
    monkeypatch.setattr(plot, "PLOT_INCHES", (12.0, 3.4))
    figure = plot.curves_figure(document, reference, other)
    problems = unreadable_figure(figure)
    plt.close(figure)
    assert any("px wide" in p for p in problems) and any("legend over" in p for p in problems), problems
    assert any("pt" in p for p in problems), problems
