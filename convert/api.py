"""File-to-file conversion: read safely, detect, validate, map, write atomically."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from common.atomic import InputOverwriteError, refuse_overwriting_inputs
from weights import ENCODER_PREFIX, MODEL_NAMES, check_model_name

from .checkpoint import read_checkpoint
from .errors import CheckpointError
from .foreign import RecognisedCheckpoint
from .rules import (
    DETECTABLE,
    FRAMEWORKS,
    IMAGENET_HEAD,
    check_layout,
    counter_keys,
    detect_model,
    expected_layout,
    imagenet_resnet50_to,
    model_rules,
    paddle_to_torch,
    torch_to_paddle,
    validate,
)
from .safe_load import torch_import_seconds
from .writers import save_paddle, save_torch

PathLike = Union[str, "os.PathLike[str]"]

EXTENSION = {"paddle": ".pdparams", "torch": ".pth"}
MODEL_CHOICES = ("auto",) + DETECTABLE


@dataclass
class ConversionResult:
    """What ``run_conversion`` did; ``summary()`` is the CLI's one success line."""

    in_path: Path
    out_path: Path
    model: str  # detected or given: farseg / factseg / resnet50
    source: str  # naming of the input: torch / paddle
    to: str  # naming of the output: torch / paddle
    input_description: str  # "official wrapper, module. prefix"
    n_in: int
    n_out: int
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    import_seconds: float = 0.0  # part of ``seconds`` spent importing torch
    nonfinite: List[str] = field(default_factory=list)  # keys with NaN/Inf converted anyway
    replaced: bool = False  # -o named an existing file, now replaced (atomically)

    def warning(self) -> Optional[str]:
        """The warning line for non-finite values converted with ``allow_nonfinite`` (or None)."""
        if not self.nonfinite:
            return None
        shown = ", ".join(repr(k) for k in self.nonfinite[:3]) + (", ..." if len(self.nonfinite) > 3 else "")
        return (
            f"warning: {self.in_path}: {len(self.nonfinite)} tensors hold NaN/Inf values ({shown}); "
            f"converted anyway (--allow-nonfinite): predictions from these weights are not meaningful"
        )

    def summary(self) -> str:
        label = "resnet50 ImageNet" if self.model == "resnet50" else self.model
        out_notes = "".join(f", {n}" for n in self.notes)
        timing = f"in {self.seconds:.1f}s"
        if self.import_seconds >= 0.05:
            timing += f" (of which {self.import_seconds:.1f}s importing torch)"
        return (
            f"converted {self.in_path} ({label}, {self.input_description}, {self.n_in} tensors) "
            f"-> {self.out_path} ({'replaced; ' if self.replaced else ''}{self.n_out} tensors{out_notes}) {timing}"
        )


def default_output_path(in_path: PathLike, to: str, model: str, target: str = "farseg") -> Path:
    """Where the output goes when no ``-o`` is given.

    Next to the input with the extension of ``to``: ``farseg50.pth`` -> ``farseg50.pdparams``
    and back. ImageNet input: ``resnet50-19c8e357_farseg_encoder.pdparams`` (the file holds
    only the encoder of that target model). A same-format conversion, whose swapped name
    would be the input itself, inserts ``.converted``: ``farseg50.converted.pth``.
    """
    in_path = Path(in_path)
    ext = EXTENSION[to]
    stem = in_path.stem if in_path.suffix else in_path.name
    if model == "resnet50":
        name = f"{stem}_{target}_encoder{ext}"
    else:
        name = stem + ext
    if name == in_path.name:
        name = f"{stem}.converted{ext}"
    return in_path.with_name(name)


def run_conversion(
    in_path: PathLike,
    out_path: Optional[PathLike] = None,
    model: str = "auto",
    to: Optional[str] = None,
    target: Optional[str] = None,
    allow_nonfinite: bool = False,
) -> ConversionResult:
    """Convert one checkpoint file; see ``convert_file``. Returns what was done.

    NaN/Inf values are refused (CheckpointError naming the key) unless ``allow_nonfinite``;
    then they are converted and listed in the result (``ConversionResult.warning``).
    """
    start = time.perf_counter()
    imports_before = torch_import_seconds()
    in_path = Path(in_path)
    check_model_name(model, choices=MODEL_CHOICES)
    if to is not None and to not in FRAMEWORKS:
        raise ValueError(f"unknown output format {to!r}: expected paddle or torch")
    if target is not None:
        check_model_name(target, what="target")

    # A port's layout comes back renamed to the official one (convert.foreign).
    loaded = read_checkpoint(in_path, allow_nonfinite=allow_nonfinite)
    state, source = loaded.state, loaded.framework
    # The input's own format decides the default direction (content, not extension).
    recognised = loaded if isinstance(loaded, RecognisedCheckpoint) else None
    file_framework = recognised.file_framework if recognised else source
    to = to or ("paddle" if file_framework == "torch" else "torch")
    try:
        name = detect_model(state) if model == "auto" else model
        if name == "resnet50" and source != "torch":
            raise CheckpointError(
                "ImageNet resnet50 weights are read from torchvision's .pth or a known Paddle "
                "ResNet-50 layout (X2Paddle's, paddle.vision's names)"
            )
        notes: List[str] = []
        if name != "resnet50" and target is not None:
            notes.append(f"target {target} ignored (only used for ImageNet resnet50 input)")
        if name == "resnet50":
            target = target or "farseg"
            out_state = imagenet_resnet50_to(state, target, to)
            dropped = [k for k in IMAGENET_HEAD if k in state]
            notes.append(f"{target} encoder {ENCODER_PREFIX[target]}* only")
            if dropped:
                notes.append(f"{' and '.join(dropped)} dropped")
            if to == "torch":
                created = sum(
                    1
                    for r in model_rules(target)
                    if r.paddle_key is None
                    and r.torch_key.startswith(ENCODER_PREFIX[target])
                    and r.torch_key[len(ENCODER_PREFIX[target]) :] not in state
                )
                if created:
                    notes.append(f"{created} num_batches_tracked created as 0")
        elif source == "torch" and to == "paddle":
            out_state = torch_to_paddle(state, name)
            notes.append(f"{len(state) - len(out_state)} num_batches_tracked dropped")
        elif source == "paddle" and to == "torch":
            out_state = paddle_to_torch(state, name)
            notes.append(f"{len(out_state) - len(state)} num_batches_tracked recreated as 0")
        else:
            # Same naming on both sides: validate, drop wrapper/prefix, write in official order.
            validate(state, name, source)
            order = expected_layout(name, source)[0]
            out_state = OrderedDict((k, state[k]) for k in order)
            notes.append("official layout" if recognised else "validated, wrapper/prefix removed")
    except CheckpointError as exc:
        hint = ""
        if model != "auto":
            try:
                guessed = detect_model(state)
                if guessed != model:
                    hint = f" (the keys look like {guessed})"
            except CheckpointError:
                pass
        raise CheckpointError(exc.message + hint, exc.details, in_path) from None
    for key, arr in out_state.items():  # paranoia: never hand a writer a non-array
        assert isinstance(arr, np.ndarray), key

    out = Path(out_path) if out_path is not None else default_output_path(in_path, to, name, target or "farseg")
    replaced = _check_output(in_path, out, chosen=out_path is not None)
    try:
        # A default name never replaces a file, even one created since the check above.
        (save_paddle if to == "paddle" else save_torch)(out_state, out, replace=out_path is not None)
    except FileExistsError:
        raise CheckpointError(_default_exists(out), path=in_path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot write: {exc.strerror or exc}", path=out) from None
    return ConversionResult(
        in_path=in_path,
        out_path=out,
        model=name,
        source=source,
        to=to,
        input_description=loaded.describe() + "".join(f", {n}" for n in loaded.notes),
        n_in=recognised.n_file if recognised else len(state),
        n_out=len(out_state),
        notes=notes,
        seconds=time.perf_counter() - start,
        import_seconds=torch_import_seconds() - imports_before,
        nonfinite=list(loaded.nonfinite),
        replaced=replaced,
    )


def _default_exists(out: Path) -> str:
    return (
        f"the default output {out} exists already and is not replaced: give -o {out} to replace"
        f" it, or -o with another name"
    )


def _check_output(in_path: Path, out: Path, chosen: bool) -> bool:
    """Refuse an output that is the input (the project's one guard, :mod:`common.atomic`), a
    folder, or an existing file under a default name (``chosen``: given with ``-o``, which may
    replace). Returns whether an existing file will be replaced."""
    try:
        refuse_overwriting_inputs([("-o", out)], [("IN", in_path)])
    except InputOverwriteError as error:
        raise CheckpointError(error.problem, path=out) from None
    if out.is_dir():
        raise CheckpointError("output path is a directory", path=out)
    exists = os.path.lexists(out)
    if exists and not chosen:
        raise CheckpointError(_default_exists(out), path=in_path)
    return exists


def convert_file(
    in_path: PathLike,
    out_path: Optional[PathLike] = None,
    model: str = "auto",
    to: Optional[str] = None,
    target: Optional[str] = None,
) -> Path:
    """Convert the checkpoint ``in_path`` and return the path written.

    model: "auto" (detect from the keys), "farseg", "factseg" or "resnet50" (torchvision
    ImageNet file). to: "paddle" or "torch"; default: the other framework than the input's
    (a torch file becomes .pdparams, a .pdparams becomes .pth). target: for ImageNet input,
    which model's encoder keys to produce ("farseg" -> ``en.resnet.*``, "factseg" ->
    ``resencoder.resnet.*``; default farseg); ignored for other inputs. out_path: default
    ``default_output_path``. Nothing is written unless the whole input validates; raises
    CheckpointError (bad input) or ValueError (bad arguments).
    """
    return run_conversion(in_path, out_path, model, to, target).out_path


def imagenet_encoder_state(path: PathLike, model_name: str, framework: str) -> "OrderedDict[str, np.ndarray]":
    """Encoder weights of ``model_name`` in ``framework``'s key names, from the file ``path``.

    Accepted (read without executing code): the output of ``python -m convert
    resnet50-19c8e357.pth --model resnet50 --target <model>`` in either framework's format and
    for either model's encoder prefix, or torchvision's ``resnet50-19c8e357.pth`` itself.
    """
    try:
        return _imagenet_encoder_state(path, model_name, framework)
    except CheckpointError as error:
        raise error.with_path(path) from None  # the layout checks do not know the file


def _imagenet_encoder_state(path: PathLike, model_name: str, framework: str) -> "OrderedDict[str, np.ndarray]":
    loaded = read_checkpoint(path)
    state, prefix = loaded.state, ENCODER_PREFIX[model_name]
    if all(key.startswith(prefix) for key in state) and loaded.framework == framework:
        # Already this model's encoder in this framework: check keys, shapes and dtypes as is.
        rules = [r for r in model_rules(model_name) if r.torch_key.startswith(prefix)]
        layout = (
            OrderedDict((r.torch_key, r.shape) for r in rules)
            if framework == "torch"
            else OrderedDict((r.paddle_key, r.paddle_shape) for r in rules if r.paddle_key)
        )
        check_layout(
            state,
            layout,
            what=f"the {model_name} encoder layout ({framework} names)",
            counters=counter_keys(model_name, framework),
        )
        return state
    source = next((name for name, p in ENCODER_PREFIX.items() if all(key.startswith(p) for key in state)), None)
    if source is None:  # torchvision's own file: imagenet_resnet50_to checks its layout
        return imagenet_resnet50_to(state, model_name, framework)
    # An encoder file in the other naming or for the other model: back to torchvision's
    # names through the model rules, then forward again, so every key is checked once.
    source_prefix = ENCODER_PREFIX[source]
    rules = {
        (rule.paddle_key if loaded.framework == "paddle" else rule.torch_key): rule
        for rule in model_rules(source)
        if rule.torch_key.startswith(source_prefix)
    }
    torchvision: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, array in state.items():
        rule = rules.get(key)
        if rule is None:
            raise CheckpointError(f"key {key!r} is not a ResNet-50 encoder key", path=path)
        transposed = rule.transpose and loaded.framework == "paddle"
        torchvision[rule.torch_key[len(source_prefix) :]] = array.T if transposed else array
    return imagenet_resnet50_to(torchvision, model_name, framework)


def detect_architecture(path: PathLike) -> str:
    """ "farseg" or "factseg" from the keys of the checkpoint ``path`` (read without executing
    code); CheckpointError for any other state dict."""
    name = detect_model(read_checkpoint(path).state.keys())
    if name not in MODEL_NAMES:
        raise CheckpointError(f"holds a {name} state dict, not a FarSeg / FactSeg model", path=path)
    return name
