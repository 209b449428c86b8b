"""The train stage's curves: ``curves.json`` (every per-iteration value) and ``curves.png``."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from ..compare import TRAIN_EARLY, TRAIN_WINDOW, StageResult, Tolerance
from .compare import finite_or_text, relative_curve, window_relative
from .setup import STAGE, TRAIN_KINDS, TrainRun

# curves.png: 18 x 6.5 inches at 100 dpi = 1800 x 650 px (readable without zooming in).
PLOT_INCHES = (18.0, 6.5)
PLOT_DPI = 100


def curves_document(
    reference: TrainRun, other: TrainRun, result: StageResult, tols: Mapping[str, Tolerance]
) -> Dict[str, Any]:
    """What ``curves.json`` holds."""
    return {
        "stage": STAGE,
        "model": result.model,
        "passed": result.passed,
        "settings": result.settings,
        "iterations": list(range(1, len(reference.loss) + 1)),
        reference.label: reference.curves(),
        other.label: other.curves(),
        "relative_difference": {
            key: [finite_or_text(x) for x in relative_curve(getattr(reference, key), getattr(other, key))]
            for key in ("loss", "lr", "grad_norm")
        },
        "window_relative_difference": window_relative(reference, other),
        "miou": {reference.label: reference.miou, other.label: other.miou},
        "miou_fg": {reference.label: reference.miou_fg, other.label: other.miou_fg},
        "thresholds": {k: tols[k].rtol for k in TRAIN_KINDS},
        "first_divergence": None if result.first_divergence is None else asdict(result.first_divergence),
    }


def write_curves(out_dir: Path, document: Mapping[str, Any], reference: TrainRun, other: TrainRun) -> None:
    """``curves.json`` and ``curves.png`` in ``out_dir`` (each written atomically). Without
    matplotlib (the ``cpu`` extra alone) the PNG is skipped with one line on stderr."""
    from convert import atomic_write

    data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    atomic_write(out_dir / "curves.json", lambda f: f.write(data))
    if importlib.util.find_spec("matplotlib") is None:
        print(
            f"note: {out_dir / 'curves.png'} skipped: matplotlib is not installed (pip install matplotlib);"
            " curves.json holds every value",
            file=sys.stderr,
        )
        return
    png = plot_curves(document, reference, other)
    atomic_write(out_dir / "curves.png", lambda f: f.write(png))


def plot_curves(document: Mapping[str, Any], reference: TrainRun, other: TrainRun) -> bytes:
    """The PNG: loss curves (and lr), relative differences against the thresholds, the mIoUs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = curves_figure(document, reference, other)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _legend_below(ax: Any, handles: Any = None, labels: Any = None, columns: int = 2) -> None:
    """The legend under the panel (outside the plotted data)."""
    where = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "ncol": columns, "frameon": False}
    if handles is None:
        ax.legend(**where)
    else:
        ax.legend(handles, labels, **where)


def curves_figure(document: Mapping[str, Any], reference: TrainRun, other: TrainRun) -> Any:
    """The matplotlib figure of :func:`plot_curves` (the caller closes it).

    Readable at 100 % zoom: 18 x 6.5 inches at 100 dpi (1800 px wide), 11-13 pt text, and every
    legend below its panel, outside the data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        return _draw(plt, document, reference, other, np.asarray(document["iterations"]))


def _draw(plt: Any, document: Mapping[str, Any], reference: TrainRun, other: TrainRun, its: np.ndarray) -> Any:
    """The three panels of :func:`plot_curves` on a new figure."""
    fig, axes = plt.subplots(
        1, 3, figsize=PLOT_INCHES, gridspec_kw={"width_ratios": [3, 3, 1.3]}, constrained_layout=True
    )
    ax = axes[0]
    ax.plot(its, reference.loss, label=f"{reference.label} loss", color="tab:blue", lw=1.4)
    ax.plot(its, other.loss, label=f"{other.label} loss", color="tab:orange", lw=1.0, ls="--")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    lr_ax = ax.twinx()
    lr_ax.plot(its, reference.lr, color="tab:gray", lw=0.8, label=f"{reference.label} lr")
    lr_ax.plot(its, other.lr, color="tab:red", lw=0.8, ls=":", label=f"{other.label} lr")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    lines = ax.get_legend_handles_labels()
    more = lr_ax.get_legend_handles_labels()
    _legend_below(ax, lines[0] + more[0], lines[1] + more[1])
    ax.set_title(f"{document['model']}: both trainers")
    ax = axes[1]
    rel = document["relative_difference"]
    floor = 1e-9
    for key, colour in (("loss", "tab:blue"), ("grad_norm", "tab:green"), ("lr", "tab:red")):
        values = np.array([float(v) for v in rel[key]])
        ax.semilogy(
            its,
            np.maximum(values, floor),
            label=f"{key}",
            color=colour,
            lw=1.0,
            marker="o" if len(its) <= 30 else None,
            ms=2,
        )
    for n, window in enumerate(document["window_relative_difference"]):
        for key, colour in (("loss", "tab:blue"), ("grad_norm", "tab:green")):
            ax.hlines(
                max(float(window[key]), floor),
                window["first"] - 0.5,
                window["last"] + 0.5,
                colors=colour,
                lw=2.5,
                alpha=0.6,
                label=f"{key}, {TRAIN_WINDOW}-iteration mean" if n == 0 else None,
            )
    thresholds = document["thresholds"]
    early = min(len(its), TRAIN_EARLY) + 0.5
    ax.hlines(thresholds["train_early"], 1.5, early, colors="k", ls="--", lw=0.8, label="bands (loss, grad norm)")
    ax.hlines(thresholds["train_first_grad"], 0.5, 1.5, colors="k", ls="--", lw=0.8)
    if len(its) > TRAIN_EARLY:
        ax.hlines(thresholds["train_curve"], early, len(its) + 0.5, colors="k", ls="--", lw=0.8)
    ax.axhline(thresholds["train_lr"], color="tab:red", ls=":", lw=0.8, label="band (lr)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"|{reference.label} - {other.label}| / |{reference.label}|")
    ax.set_title("relative difference per iteration (floor 1e-9)")
    _legend_below(ax)
    ax = axes[2]
    values = [100 * reference.miou, 100 * other.miou]
    bars = ax.bar([reference.label, other.label], values, color=["tab:blue", "tab:orange"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom")
    ax.set_ylabel("val mIoU (%)")
    ax.set_ylim(0, max(values + [1.0]) * 1.25)
    verdict = "PASS" if document["passed"] else "FAIL"
    ax.set_title(f"mIoU ({verdict})")
    return fig
