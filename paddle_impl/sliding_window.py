"""Sliding-window inference with the official iSAID protocol, streamed by bands (PaddlePaddle).

Protocol (FarSeg ``isaid_eval.py``): the windows of :func:`isaid.windows.sliding_windows`
(896 at stride 512); each window is normalised with the ImageNet mean/std on RGB 0..255, then
zero-padded bottom/right to a multiple of 32 (AFTER normalisation, so the border is 0 in
normalised units), run in eval mode and cropped back; the class probabilities are summed over
overlapping windows in window order and divided by the per-pixel window count; argmax.

Memory: instead of a [16, H, W] map for the whole image, the engine keeps an accumulator of
one band of windows ([16, window, W] on the device: 745 MB in float32 for a 13,000-px-wide
scene at window 896) and emits rows as soon as no later window covers them
(:mod:`isaid.stitching`). The per-pixel sums are formed in the same order as the official
whole-image sums, so the averaged probabilities are bit-identical to them.

The weights of a checkpoint are loaded with :func:`load_weights` (safe loading, either
framework's file).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from tqdm import tqdm

from convert import CheckpointError, detect_model, read_checkpoint, torch_to_paddle, validate
from isaid.palette import MEAN, STD
from isaid.stitching import accumulator_rows, coverage_counts, plan_bands
from isaid.windows import pad_to_multiple

from .shapes import SIZE_MULTIPLE

# (y0, x0, y1, x1) -> uint8 [y1 - y0, x1 - x0, 3] RGB
ReadWindow = Callable[[int, int, int, int], np.ndarray]
Progress = Union[bool, tqdm]
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def resolve_device(device: str) -> str:
    """ "cpu", "gpu", "gpu:N"; torch's spelling "cuda" / "cuda:N" means the same GPU."""
    name = device.strip().lower()
    if name == "cuda" or name.startswith("cuda:"):
        name = "gpu" + name[4:]
    if name == "gpu":
        name = "gpu:0"
    if name != "cpu" and not (name.startswith("gpu:") and name[4:].isdigit()):
        raise ValueError(f"unknown device {device!r}: expected cpu, gpu or gpu:N")
    if name != "cpu" and not gpu_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available to this Paddle build")
    return name


def gpu_available() -> bool:
    """Whether a GPU can run the model (``--device auto`` picks it then)."""
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def load_weights(model: nn.Layer, name: str, path: str) -> str:
    """Load the checkpoint ``path`` into ``model`` (``name``: farseg / factseg), strictly.

    Read without executing code (``convert.read_checkpoint``): a Paddle ``.pdparams`` is
    validated against the Paddle layout; a torch file (official wrapper and ``module.``
    prefix accepted) is converted in memory (``convert.torch_to_paddle``, needs torch).
    Raises CheckpointError (one-line ``headline()`` naming the file). Returns how it was loaded.
    """
    loaded = read_checkpoint(path)
    try:
        if loaded.framework == "paddle":
            state = loaded.state
            validate(state, name, "paddle")
            how = "Paddle checkpoint"
        else:
            state = torch_to_paddle(loaded.state, name)
            how = "torch checkpoint converted on the fly"
    except CheckpointError as error:
        raise CheckpointError(error.message + _other_model_hint(loaded.state, name), error.details, path) from None
    missing, unexpected = model.set_state_dict(state)
    if missing or unexpected:  # validate() makes this unreachable; never load half a model
        raise CheckpointError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}", path=path)
    return f"{how}, {loaded.describe()}"


def _other_model_hint(state, name: str) -> str:
    try:
        found = detect_model(state)
    except CheckpointError:
        return ""
    return f" (the keys look like {found}: is --model {name} right?)" if found != name else ""


class SlidingWindowInference:
    """The official sliding-window protocol over an image of any size, streamed by bands.

    ``model``: a built FarSeg / FactSeg (or any layer mapping a normalised [B,3,H,W] batch,
    H and W multiples of 32, to class probabilities [B,C,H,W]); it is moved to ``device`` and
    put in eval mode. It runs in the dtype of its parameters (cast it to float64 for
    alignment checks: the accumulator follows). ``batch_size`` windows go through the model
    at once (all windows of an image have the same size; batches stay inside one band).
    ``amp``: None, "fp16" or "bf16" autocast for the forward pass (GPU use; probabilities are
    accumulated in float32 either way). Paddle creates new tensors on its current device, so
    the engine calls ``paddle.set_device(device)``.
    """

    def __init__(
        self,
        model: nn.Layer,
        window: int = 896,
        stride: int = 512,
        device: str = "cpu",
        batch_size: int = 1,
        amp: Optional[str] = None,
    ) -> None:
        for label, value in (("window", window), ("stride", stride), ("batch_size", batch_size)):
            if int(value) != value or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if stride > window:
            raise ValueError(f"stride {stride} larger than window {window} leaves pixels uncovered")
        if amp not in (None, *AMP_DTYPES):
            raise ValueError(f"unknown amp {amp!r}: expected None, 'fp16' or 'bf16'")
        self.window, self.stride, self.batch_size, self.amp = window, stride, batch_size, amp
        self.device = resolve_device(device)
        paddle.set_device(self.device)
        self.place = paddle.CPUPlace() if self.device == "cpu" else paddle.CUDAPlace(int(self.device[4:]))
        self.model = model.to(device=self.device)
        self.model.eval()
        self.dtype = self.model.parameters()[0].dtype
        if amp is not None and self.dtype != paddle.float32:
            raise ValueError(f"amp needs a float32 model, got {self.dtype}")
        # float64 models (alignment checks) accumulate in float64; everything else as officially.
        self.accumulate_dtype = paddle.float64 if self.dtype == paddle.float64 else paddle.float32
        self.mean = paddle.to_tensor(MEAN, dtype="float32", place=self.place).reshape([1, 3, 1, 1])
        self.std = paddle.to_tensor(STD, dtype="float32", place=self.place).reshape([1, 3, 1, 1])

    def to_device(self, array: np.ndarray) -> paddle.Tensor:
        """A host array as a tensor on the engine's device (labels, windows)."""
        return paddle.to_tensor(np.ascontiguousarray(array), place=self.place)

    def prepare(self, windows: np.ndarray) -> paddle.Tensor:
        """uint8 [B,h,w,3] RGB windows -> normalised, zero-padded model input [B,3,h',w'].

        Normalised in float32 on the device exactly as ``isaid.palette.normalize`` does on the
        host ((x - mean) / std, per channel), then padded: the official code pads the
        NORMALISED window with 0 (``th_divisible_pad``); padding the raw image with 0 first
        would put -mean/std in the border instead and change the border predictions.
        """
        height, width = windows.shape[1:3]
        x = self.to_device(windows).transpose([0, 3, 1, 2]).astype("float32")
        x = (x - self.mean) / self.std
        pad_h, pad_w = pad_to_multiple(height, width, SIZE_MULTIPLE)
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="constant", value=0.0, data_format="NCHW")
        x = x.astype(self.dtype)
        return x

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Class probabilities [B,C,h',w'] of a prepared batch, in the accumulator dtype."""
        amp_dtype = AMP_DTYPES.get(self.amp, "float16")
        with paddle.no_grad(), paddle.amp.auto_cast(enable=self.amp is not None, dtype=amp_dtype):
            probabilities = self.model(x)
        return probabilities.astype(self.accumulate_dtype)

    def run_probabilities(
        self, height: int, width: int, read_window: ReadWindow, progress: Progress = True
    ) -> Iterator[Tuple[int, int, paddle.Tensor]]:
        """Yield ``(row_start, row_end, probabilities [C, rows, width])`` on the device, in
        row order, each row exactly once: the averaged class probabilities of those rows.

        ``progress``: True for a tqdm bar over this image's windows, False for none, or a
        tqdm bar to advance (an evaluator's bar over all images).
        """
        bands = plan_bands(height, width, self.window, self.stride)
        rows = accumulator_rows(bands)
        row_counts = paddle.to_tensor(coverage_counts(height, self.window, self.stride), place=self.place).astype(
            self.accumulate_dtype
        )
        column_counts = paddle.to_tensor(coverage_counts(width, self.window, self.stride), place=self.place).astype(
            self.accumulate_dtype
        )
        bar = (
            progress
            if isinstance(progress, tqdm)
            else tqdm(total=sum(len(band.windows) for band in bands), unit="win", leave=False, disable=not progress)
        )
        accumulator: Optional[paddle.Tensor] = None  # allocated once the class count is known
        try:
            for band in bands:
                for first in range(0, len(band.windows), self.batch_size):
                    chunk = band.windows[first : first + self.batch_size]
                    batch = np.stack([_checked_window(read_window, win) for win in chunk])
                    probabilities = self.forward(self.prepare(batch))
                    if accumulator is None:
                        accumulator = paddle.zeros([probabilities.shape[1], rows, width], dtype=self.accumulate_dtype)
                    for i, (y0, x0, y1, x1) in enumerate(chunk):
                        top = y0 - band.top
                        accumulator[:, top : top + y1 - y0, x0:x1] += probabilities[i, :, : y1 - y0, : x1 - x0]
                    bar.update(len(chunk))
                emitted = band.emit_rows
                counts = row_counts[band.top : band.emit_until].unsqueeze(1) * column_counts.unsqueeze(0)
                yield band.top, band.emit_until, accumulator[:, :emitted] / counts
                # Rows still covered by the next band move to the top; the rest starts at 0.
                if band.carry:
                    accumulator[:, : band.carry] = accumulator[:, emitted : emitted + band.carry].clone()
                accumulator[:, band.carry :] = 0
        finally:
            if bar is not progress:
                bar.close()

    def run(
        self, height: int, width: int, read_window: ReadWindow, progress: Progress = True
    ) -> Iterator[Tuple[int, int, paddle.Tensor]]:
        """Yield ``(row_start, row_end, class_index [rows, width] int64)`` on the device, in
        row order, each row exactly once (argmax of :meth:`run_probabilities`)."""
        for row_start, row_end, probabilities in self.run_probabilities(height, width, read_window, progress):
            yield row_start, row_end, probabilities.argmax(axis=0)

    def predict_array(self, image: np.ndarray, progress: Progress = False) -> np.ndarray:
        """Whole uint8 [H,W,3] RGB image -> uint8 [H,W] class map (held on the host)."""
        image = _checked_image(image)
        height, width = image.shape[:2]
        out = np.empty((height, width), dtype=np.uint8)
        for row_start, row_end, classes in self.run(
            height, width, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], progress
        ):
            out[row_start:row_end] = classes.astype("uint8").numpy()
        return out


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H,W,3], got {image.dtype} {list(image.shape)}")
    return image


def _checked_window(read_window: ReadWindow, window: Tuple[int, int, int, int]) -> np.ndarray:
    y0, x0, y1, x1 = window
    pixels = np.asarray(read_window(y0, x0, y1, x1))
    if pixels.shape != (y1 - y0, x1 - x0, 3) or pixels.dtype != np.uint8:
        raise ValueError(
            f"read_window{window} returned {pixels.dtype} {list(pixels.shape)};"
            f" expected uint8 [{y1 - y0}, {x1 - x0}, 3]"
        )
    return pixels
