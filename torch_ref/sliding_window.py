"""Sliding-window inference with the official iSAID protocol, streamed by bands (PyTorch).

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

import copy
from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from convert import CheckpointError, as_torch, detect_model, paddle_to_torch, read_checkpoint, validate
from isaid.palette import MEAN, STD
from isaid.stitching import accumulator_rows, coverage_counts, plan_bands
from isaid.windows import pad_to_multiple

from .shapes import SIZE_MULTIPLE

# (y0, x0, y1, x1) -> uint8 [y1 - y0, x1 - x0, 3] RGB
ReadWindow = Callable[[int, int, int, int], np.ndarray]
Progress = Union[bool, tqdm]
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """ "cpu", "cuda", "cuda:N"; Paddle's spelling "gpu" / "gpu:N" means the same GPU."""
    name = device.strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: expected cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available to this torch build")
    return resolved


def gpu_available() -> bool:
    """Whether a GPU can run the model (``--device auto`` picks it then)."""
    return torch.cuda.is_available()


def load_weights(model: nn.Module, name: str, path: str) -> str:
    """Load the checkpoint ``path`` into ``model`` (``name``: farseg / factseg), strictly.

    Read without executing code (``convert.read_checkpoint``): a torch file (official wrapper
    and ``module.`` prefix accepted) is validated against the official layout; a Paddle
    ``.pdparams`` is converted in memory (``convert.paddle_to_torch``). Raises
    CheckpointError (one-line ``headline()`` naming the file). Returns how it was loaded.
    """
    loaded = read_checkpoint(path)
    try:
        if loaded.framework == "torch":
            state = loaded.state
            validate(state, name, "torch")
            how = "torch checkpoint"
        else:
            state = paddle_to_torch(loaded.state, name)
            how = "Paddle checkpoint converted on the fly"
    except CheckpointError as error:
        raise CheckpointError(error.message + _other_model_hint(loaded.state, name), error.details, path) from None
    model.load_state_dict(as_torch(state), strict=True)
    return f"{how}, {loaded.describe()}"


def _other_model_hint(state, name: str) -> str:
    try:
        found = detect_model(state)
    except CheckpointError:
        return ""
    return f" (the keys look like {found}: is --model {name} right?)" if found != name else ""


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, exact: bool = True) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` in eval mode (BatchNorm's running statistics).

    ``exact`` (default): the folded weight ``w * gamma / sqrt(var + eps)`` and bias
    ``(b - mean) * gamma / sqrt(var + eps) + beta`` are computed in float64 and rounded to the
    parameters' dtype once, so each folded value is the correctly rounded one. ``exact=False``
    is torch's ``fuse_conv_bn_eval`` (every step rounded in float32), kept for the bf16 cost
    benchmark's comparison.
    """
    if not exact:
        return fuse_conv_bn_eval(conv, bn)
    dtype = conv.weight.dtype
    with torch.no_grad():
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(bn.running_var, dtype=torch.float64)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale + beta
        fused = copy.deepcopy(conv)
        fused.weight = nn.Parameter(weight.to(dtype), requires_grad=conv.weight.requires_grad)
        fused.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
    return fused


def fold_batch_norms(model: nn.Module, exact: bool = True) -> Tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the convolution before it.

    Pairs are a Conv2d followed by a BatchNorm2d in an ``nn.Sequential``, or children named
    ``convN`` / ``bnN`` of one module (the ResNet stem and bottlenecks); the BatchNorm becomes
    an Identity. Folding is exact to float32 (``exact``: computed in float64, rounded once;
    :func:`fold_conv_bn`), but a folded model still rounds differently from the unfolded one
    (the convolution sums already-scaled weights), and in bf16 the folded weights and biases
    are what gets rounded to 8 bits: ``benchmarks/bf16_cost.py`` measures what that costs, and
    :class:`SlidingWindowInference` folds only where it was measured to help (see there).
    Returns (the copy, the number of BatchNorms folded); ``model`` is untouched.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in list(folded.modules()):
        children = dict(module.named_children())
        pairs = []
        if isinstance(module, nn.Sequential):
            names = list(children)
            pairs += [(a, b) for a, b in zip(names, names[1:])]
        pairs += [
            (name, "bn" + name[4:]) for name in children if name.startswith("conv") and "bn" + name[4:] in children
        ]
        for conv_name, bn_name in pairs:
            conv, bn = children[conv_name], children[bn_name]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
                setattr(module, conv_name, fold_conv_bn(conv, bn, exact))
                setattr(module, bn_name, nn.Identity())
                children[bn_name] = nn.Identity()
                count += 1
    return folded, count


def precast_convolutions(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every Conv2d's weight and bias in ``dtype`` (in place); returns how many.

    Under autocast a convolution runs in the autocast dtype whatever its weights' dtype, so
    the outputs are unchanged; only the per-forward casts of the weights are saved.
    """
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.to(dtype)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(dtype)
                count += 1
    return count


FOLDS = ("none", "exact", "float32")
# BatchNorm folding for bf16 on the CPU, decided by benchmarks/bf16_cost.py (docs/speed.md):
# folded (even exactly) moved more pixels than unfolded (random weights: 2.55% vs 2.45%; real
# iSAID in issue 21: 0.368% vs 0.140%) at the same speed within the noise, so it is off.
BF16_CPU_FOLD = "none"


class SlidingWindowInference:
    """The official sliding-window protocol over an image of any size, streamed by bands.

    ``model``: a built FarSeg / FactSeg (or any module mapping a normalised [B,3,H,W] batch,
    H and W multiples of 32, to class probabilities [B,C,H,W]); it is moved to ``device`` and
    put in eval mode. It runs in the dtype of its parameters (cast it to float64 for
    alignment checks: the accumulator follows). ``batch_size`` windows go through the model
    at once (all windows of an image have the same size; batches stay inside one band).
    ``amp``: None, "fp16" or "bf16" autocast for the forward pass (probabilities are
    accumulated in float32 either way); "bf16" is the fast CPU path on CPUs with bf16 units.
    ``channels_last`` (torch only): NHWC convolutions; default on for float32 models on CUDA
    (cuDNN) and on CPU (oneDNN), off for float64 (the alignment dtype, which oneDNN does not
    run). Measured on CPU (FarSeg, 896x896, 2 threads): float32 1.76 s NCHW / 1.10 s NHWC;
    bf16 autocast 3.97 s NCHW (slower than float32: oneDNN reorders every activation) /
    0.48 s NHWC. That NCHW bf16 path is why ``--amp bf16`` used to be no faster than float32.
    ``fold``: fold BatchNorm into the convolutions before running ("exact": in float64, rounded
    once; "float32": torch's ``fuse_conv_bn_eval``; "none"); default :data:`BF16_CPU_FOLD` for
    bf16 on the CPU, "none" otherwise (folding changes float32 rounding). ``precast``: store
    the convolution weights in bf16 once (:func:`precast_convolutions`; default on for bf16 on
    the CPU; the outputs are the same, the per-forward weight casts are saved).
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 896,
        stride: int = 512,
        device: str = "cpu",
        batch_size: int = 1,
        amp: Optional[str] = None,
        channels_last: Optional[bool] = None,
        fold: Optional[str] = None,
        precast: Optional[bool] = None,
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
        self.model = model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype
        if amp is not None and self.dtype != torch.float32:
            raise ValueError(f"amp needs a float32 model, got {self.dtype}")
        # float64 models (alignment checks) accumulate in float64; everything else as officially.
        self.accumulate_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.channels_last = self.dtype == torch.float32 if channels_last is None else channels_last
        if fold is None:
            fold = BF16_CPU_FOLD if amp is not None and self.device.type == "cpu" else "none"
        if fold not in FOLDS:
            raise ValueError(f"unknown fold {fold!r}: expected one of {', '.join(FOLDS)}")
        self.fold = fold
        self.folded_batch_norms = 0
        if fold != "none":
            self.model, self.folded_batch_norms = fold_batch_norms(self.model, exact=fold == "exact")
        # Autocast casts every convolution's float32 weight to bf16 again on every forward (its
        # cast cache lives only inside one autocast region): cast them once instead. Same values.
        self.precast = amp == "bf16" and self.device.type == "cpu" if precast is None else precast
        if self.precast:
            if self.model is model:
                self.model = copy.deepcopy(model)
            precast_convolutions(self.model, AMP_DTYPES[amp or "bf16"])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(MEAN, dtype=torch.float32, device=self.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32, device=self.device).reshape(1, 3, 1, 1)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array as a tensor on the engine's device (labels, windows)."""
        if not array.flags.writeable:
            array = array.copy()  # PIL gives read-only arrays; torch.from_numpy warns on them
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            # Pinned staging and an asynchronous copy: the host does not wait for the GPU's
            # queue here (a pageable copy would synchronise the stream).
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def prepare(self, windows: np.ndarray) -> torch.Tensor:
        """uint8 [B,h,w,3] RGB windows -> normalised, zero-padded model input [B,3,h',w'].

        Normalised in float32 on the device exactly as ``isaid.palette.normalize`` does on the
        host ((x - mean) / std, per channel), then padded: the official code pads the
        NORMALISED window with 0 (``th_divisible_pad``); padding the raw image with 0 first
        would put -mean/std in the border instead and change the border predictions.
        """
        height, width = windows.shape[1:3]
        x = self.to_device(windows).permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) / self.std
        pad_h, pad_w = pad_to_multiple(height, width, SIZE_MULTIPLE)
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
        # The permuted input is NHWC in memory; make the layout explicit (NCHW as officially,
        # or channels-last on request), since a convolution's rounding depends on it.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.dtype).contiguous(memory_format=layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B,C,h',w'] of a prepared batch, in the accumulator dtype."""
        amp_dtype = AMP_DTYPES.get(self.amp, torch.float16)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp is not None):
            probabilities = self.model(x)
        return probabilities.to(self.accumulate_dtype)

    def run_probabilities(
        self, height: int, width: int, read_window: ReadWindow, progress: Progress = True
    ) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yield ``(row_start, row_end, probabilities [C, rows, width])`` on the device, in
        row order, each row exactly once: the averaged class probabilities of those rows.

        ``progress``: True for a tqdm bar over this image's windows, False for none, or a
        tqdm bar to advance (an evaluator's bar over all images).
        """
        bands = plan_bands(height, width, self.window, self.stride)
        rows = accumulator_rows(bands)
        row_counts = torch.from_numpy(coverage_counts(height, self.window, self.stride)).to(
            self.device, self.accumulate_dtype
        )
        column_counts = torch.from_numpy(coverage_counts(width, self.window, self.stride)).to(
            self.device, self.accumulate_dtype
        )
        bar = (
            progress
            if isinstance(progress, tqdm)
            else tqdm(total=sum(len(band.windows) for band in bands), unit="win", leave=False, disable=not progress)
        )
        accumulator: Optional[torch.Tensor] = None  # allocated once the class count is known
        try:
            for band in bands:
                for first in range(0, len(band.windows), self.batch_size):
                    chunk = band.windows[first : first + self.batch_size]
                    batch = np.stack([_checked_window(read_window, win) for win in chunk])
                    probabilities = self.forward(self.prepare(batch))
                    if accumulator is None:
                        accumulator = torch.zeros(
                            [probabilities.shape[1], rows, width], dtype=self.accumulate_dtype, device=self.device
                        )
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
    ) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yield ``(row_start, row_end, class_index [rows, width] int64)`` on the device, in
        row order, each row exactly once (argmax of :meth:`run_probabilities`)."""
        for row_start, row_end, probabilities in self.run_probabilities(height, width, read_window, progress):
            yield row_start, row_end, probabilities.argmax(dim=0)

    def predict_array(self, image: np.ndarray, progress: Progress = False) -> np.ndarray:
        """Whole uint8 [H,W,3] RGB image -> uint8 [H,W] class map (held on the host)."""
        image = _checked_image(image)
        height, width = image.shape[:2]
        out = np.empty((height, width), dtype=np.uint8)
        for row_start, row_end, classes in self.run(
            height, width, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], progress
        ):
            out[row_start:row_end] = classes.to(torch.uint8).cpu().numpy()
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


class DeployedModule(nn.Module):
    """An exported model run outside torch (onnxruntime), as a module the engine can drive.

    ``deployed(x)`` maps a normalised float32 numpy batch [B,3,H,W] to probabilities
    [B,C,H,W] (:class:`app.exported.OnnxModel`). The engine reads the dtype of the first
    parameter and moves the module to its device, so this module carries one float32 marker
    parameter; each window batch goes through host memory.
    """

    def __init__(self, deployed: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.deployed = deployed
        self.dtype_marker = nn.Parameter(torch.zeros(1), requires_grad=False)  # read by the engine only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.deployed(x.float().contiguous().cpu().numpy())).to(x.device)
