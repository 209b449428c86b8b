"""The published Paddle reproductions' checkpoint layouts, recognised from the keys and renamed
to the official layout.

Each layout is a named table of MODULE rules, like the torch <-> Paddle rules of ``rules.py``:
an official module path (``fpn.fpn_inner2``, ``en.resnet.layer1.0.bn1``) maps to the port's
module path (``neck.fpn.inner_blocks.1._conv``, ``backbone.resnet.layer10.bottleneck90.bn0``),
and the attributes of that module follow from its TYPE, read from the official rules
(``rules.model_rules``): a BatchNorm keeps ``weight``/``bias`` and stores its statistics as
``_mean``/``_variance`` (Paddle) or ``running_mean``/``running_var`` (torch names, both accepted),
with an optional stray ``num_batches_tracked`` (dropped); anything else keeps its attribute names.
Nothing is guessed from key names: a file is renamed only through a table, and every key and
shape is checked against it (missing, unexpected, wrong-shape and doubly-named keys are
listed, nothing is written).

The layouts were derived from the ports' public source (see ``LAYOUTS`` and README,
"Converting checkpoints"):

* PaddleSeg FarSeg (ucsk/FarSeg, ``PaddleSeg/paddleseg/models/farseg.py`` and
  ``backbones/resnet.py``): the trunk is X2Paddle's generated ResNet-50, the FPN a LayerList of
  ``_conv`` wrappers, the neck under ``neck.``, and the ImageNet classifier ``linear0`` is
  still inside the backbone.
* PaddleRS FarSeg (``paddlers/rs_models/seg/farseg.py``): paddle.vision's resnet50 (with its
  ``fc``) under ``encoder.resnet``, FPN LayerLists, the relation module as ``fsr``.
* PaddleRS-named FactSeg (liuhongen1234567/FactSeg_paddle ``model_rs_verify/`` and
  ``torch2paddleFactSeg_RS.py``: ``factseg50_paddle_RS.pdparams``): FPN LayerLists, the rest
  official, torch's ``num_batches_tracked`` kept in the .pdparams.
* The official layout inside a .pdparams with torch BatchNorm names and/or stray
  ``num_batches_tracked`` (FactSeg_paddle ``torch2paddleFactSeg.py``: ``factseg50_paddle.pdparams``).
* ImageNet ResNet-50: X2Paddle's conversion of torchvision's (``resnet50_pth.pdparams`` of
  ucsk/FarSeg: ``conv0``, ``layer10.bottleneck90`` ..., ``linear0``), and torchvision names
  with Paddle BatchNorm names (paddle.vision's ``resnet50``; FactSeg_paddle
  ``torch2paddleResnet50.py``).

PaddleRS's own FactSeg (``fpn_inner1`` ... via ``add_sublayer``, ``fc`` popped) and the
FactSeg_paddle port's module tree already have the official Paddle names: no table is needed.

``recognise`` is called by ``reader.read_checkpoint`` on every Paddle file, so every entry
point (convert, evaluate, predict, export, align, train init) reads these files as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from weights import MODEL_NAMES

from .errors import CheckpointError
from .rules import encoder_rules, format_shape, mismatch_summary, model_rules, paddle_layout
from .safe_load import LoadedCheckpoint

Shape = Tuple[int, ...]

# ----------------------------------------------------------------------------------------------
# Facts from the ports' source
# ----------------------------------------------------------------------------------------------

# Official FPN level (fpn_inner1..4 / fpn_layer1..4, c2..c5) -> index in the ports' LayerLists
# (inner_blocks / layer_blocks are built by enumerate(in_channels_list) without the offset).
FPN_LEVEL_INDEX: Dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3}

# X2Paddle's generated ResNet-50 (ucsk/FarSeg backbones/resnet.py): stage ``layerN`` becomes
# ``layerN0``, and each bottleneck an instance ``bottleneckK0`` of a generated class
# ``BottleneckK`` numbered by X2Paddle, NOT in trunk order. Trunk order, per stage:
X2PADDLE_BOTTLENECKS: Dict[int, Tuple[str, ...]] = {
    1: ("bottleneck90", "bottleneck50", "bottleneck140"),
    2: ("bottleneck110", "bottleneck40", "bottleneck60", "bottleneck00"),
    3: ("bottleneck120", "bottleneck10", "bottleneck70", "bottleneck30", "bottleneck80", "bottleneck20"),
    4: ("bottleneck100", "bottleneck150", "bottleneck130"),
}
# Inside a generated bottleneck the layers are numbered from 0 and the shortcut is a
# ``Layer1_0_downsample`` instance (the same class name in every stage).
X2PADDLE_BLOCK_LAYERS: Dict[str, str] = {
    "conv1": "conv0",
    "bn1": "bn0",
    "conv2": "conv1",
    "bn2": "bn1",
    "conv3": "conv2",
    "bn3": "bn2",
    "downsample.0": "layer1_0_downsample0.conv0",
    "downsample.1": "layer1_0_downsample0.bn0",
}
X2PADDLE_STEM: Dict[str, str] = {"conv1": "conv0", "bn1": "bn0"}

# Paddle names of a torch BatchNorm attribute in a port's file: Paddle's first, torch's accepted.
BN_PORT_NAMES: Dict[str, Tuple[str, ...]] = {
    "weight": ("weight",),
    "bias": ("bias",),
    "running_mean": ("_mean", "running_mean"),
    "running_var": ("_variance", "running_var"),
}
STRAY = "num_batches_tracked"  # torch's BN step counter: accepted in a .pdparams, dropped

# The ImageNet classifier's shapes: Paddle's Linear stores [in, out], torch [out, in].
CLASSIFIER_SHAPES = {"weight": ((2048, 1000), (1000, 2048)), "bias": ((1000,),)}


def x2paddle_trunk(path: str) -> str:
    """torchvision ResNet-50 module path (``layer2.0.downsample.1``) -> X2Paddle's
    (``layer20.bottleneck110.layer1_0_downsample0.bn0``)."""
    if path in X2PADDLE_STEM:
        return X2PADDLE_STEM[path]
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", path)
    if match is None or match.group(3) not in X2PADDLE_BLOCK_LAYERS:
        raise RuntimeError(f"no X2Paddle rule for the ResNet-50 module {path!r}")
    stage, block, layer = int(match.group(1)), int(match.group(2)), match.group(3)
    return f"layer{stage}0.{X2PADDLE_BOTTLENECKS[stage][block]}.{X2PADDLE_BLOCK_LAYERS[layer]}"


TRUNKS = {"torchvision": lambda path: path, "x2paddle": x2paddle_trunk}


@dataclass(frozen=True)
class PortLayout:
    """One port's state-dict layout as module rules onto an official layout.

    ``modules``: (official module pattern, port module template) pairs, first match wins; a
    template of None means the port has no such module (its state is filled with the neutral
    value: FarSeg's ``buffer_step`` = 0). Placeholders: ``{i}``/``{j}`` an index copied as is,
    ``{L}`` an FPN level (1..4) written as its LayerList index (``FPN_LEVEL_INDEX``),
    ``{trunk}`` a ResNet-50 module path written through ``TRUNKS[trunk]``, ``{path}`` any
    remaining path copied as is. ``unused``: port keys the official model has no use for
    (ImageNet classifiers), with their accepted shapes: checked, then dropped.
    """

    name: str
    label: str
    model: str  # farseg / factseg / resnet50
    modules: Tuple[Tuple[str, Optional[str]], ...]
    trunk: str = "torchvision"
    unused: Tuple[Tuple[str, Tuple[Shape, ...]], ...] = ()


def _classifier(prefix: str) -> Tuple[Tuple[str, Tuple[Shape, ...]], ...]:
    return tuple((f"{prefix}.{attr}", shapes) for attr, shapes in CLASSIFIER_SHAPES.items())


# The tables, most specific first (detection breaks ties in this order).
LAYOUTS: Tuple[PortLayout, ...] = (
    PortLayout(
        "paddleseg-farseg",
        "PaddleSeg FarSeg (ucsk/FarSeg)",
        "farseg",
        modules=(
            ("", None),  # FarSeg.buffer_step: the port counts steps outside the model
            ("en.resnet.{trunk}", "backbone.resnet.{trunk}"),
            ("fpn.fpn_inner{L}", "neck.fpn.inner_blocks.{L}._conv"),
            ("fpn.fpn_layer{L}", "neck.fpn.layer_blocks.{L}._conv"),
            ("sr.scene_encoder.{i}.{j}", "neck.sr.scene_encoder.{i}.{j}._conv"),
            ("sr.content_encoders.{i}.0", "neck.sr.content_encoders.{i}.0._conv"),
            ("sr.content_encoders.{i}.1", "neck.sr.content_encoders.{i}.1"),
            ("sr.feature_reencoders.{i}.0", "neck.sr.feature_reencoders.{i}.0._conv"),
            ("sr.feature_reencoders.{i}.1", "neck.sr.feature_reencoders.{i}.1"),
            ("decoder.blocks.{i}.{j}.0", "decoder.blocks.{i}.{j}.0._conv"),
            ("decoder.blocks.{i}.{j}.1", "decoder.blocks.{i}.{j}.1"),
            ("cls_pred_conv", "cls_head.0._conv"),
        ),
        trunk="x2paddle",
        unused=_classifier("backbone.resnet.linear0"),
    ),
    PortLayout(
        "paddlers-farseg",
        "PaddleRS FarSeg (paddlers.rs_models.seg.farseg)",
        "farseg",
        modules=(
            ("", None),
            ("en.resnet.{trunk}", "encoder.resnet.{trunk}"),
            ("fpn.fpn_inner{L}", "fpn.inner_blocks.{L}"),
            ("fpn.fpn_layer{L}", "fpn.layer_blocks.{L}"),
            ("sr.{path}", "fsr.{path}"),
            ("decoder.{path}", "decoder.{path}"),
            ("cls_pred_conv", "cls_head.0"),
        ),
        unused=_classifier("encoder.resnet.fc"),
    ),
    PortLayout(
        "paddlers-named-factseg",
        "PaddleRS-named FactSeg (FactSeg_paddle model_rs_verify, factseg50_paddle_RS)",
        "factseg",
        modules=(
            ("fgfpn.fpn_inner{L}", "fgfpn.inner_blocks.{L}"),
            ("fgfpn.fpn_layer{L}", "fgfpn.layer_blocks.{L}"),
            ("bifpn.fpn_inner{L}", "bifpn.inner_blocks.{L}"),
            ("bifpn.fpn_layer{L}", "bifpn.layer_blocks.{L}"),
            ("{path}", "{path}"),
        ),
    ),
    PortLayout(
        "official-pdparams-farseg",
        "official FarSeg layout in a .pdparams with torch BatchNorm names or num_batches_tracked",
        "farseg",
        modules=(("{path}", "{path}"),),
    ),
    PortLayout(
        "official-pdparams-factseg",
        "official FactSeg layout in a .pdparams with torch BatchNorm names or num_batches_tracked "
        "(FactSeg_paddle factseg50_paddle)",
        "factseg",
        modules=(("{path}", "{path}"),),
    ),
    PortLayout(
        "x2paddle-resnet50",
        "X2Paddle's ResNet-50 (ucsk/FarSeg resnet50_pth)",
        "resnet50",
        modules=(("{trunk}", "{trunk}"),),
        trunk="x2paddle",
        unused=_classifier("linear0"),
    ),
    PortLayout(
        "paddle-named-resnet50",
        "ResNet-50 with torchvision names and Paddle BatchNorm names (paddle.vision resnet50)",
        "resnet50",
        modules=(("{trunk}", "{trunk}"),),
        unused=_classifier("fc"),
    ),
)
LAYOUTS_BY_NAME = {layout.name: layout for layout in LAYOUTS}

# ----------------------------------------------------------------------------------------------
# Module patterns -> key plans
# ----------------------------------------------------------------------------------------------

_PLACEHOLDERS = {
    "{i}": r"(?P<i>\d+)",
    "{j}": r"(?P<j>\d+)",
    "{L}": r"(?P<L>[1-4])",
    "{trunk}": r"(?P<trunk>.+)",
    "{path}": r"(?P<path>.*)",
}


def _pattern(official: str) -> "re.Pattern[str]":
    regex = re.escape(official)
    for token, group in _PLACEHOLDERS.items():
        regex = regex.replace(re.escape(token), group)
    return re.compile(regex)


def port_module(layout: PortLayout, official_module: str) -> Optional[str]:
    """The port's module path for an official module path (None: the port has no such module).

    RuntimeError when no rule of the table matches (a table that does not cover the
    official model is a bug, never a property of the file)."""
    for official, template in layout.modules:
        match = _pattern(official).fullmatch(official_module)
        if match is None:
            continue
        if template is None:
            return None
        values = match.groupdict()
        if values.get("L") is not None:
            values["L"] = str(FPN_LEVEL_INDEX[int(values["L"])])
        if values.get("trunk") is not None:
            values["trunk"] = TRUNKS[layout.trunk](values["trunk"])
        return template.format(**{k: v for k, v in values.items() if v is not None})
    raise RuntimeError(f"layout {layout.name}: no module rule for the official module {official_module!r}")


@dataclass(frozen=True)
class KeyPlan:
    """Where one official tensor comes from in a port's file."""

    official: str  # official torch key (ImageNet: torchvision key)
    out: Optional[str]  # key in the translated state (None: dropped, a BN step counter)
    names: Tuple[str, ...]  # accepted names in the port's file (empty: the port lacks it -> fill)
    shape: Shape
    stray: bool = False  # num_batches_tracked: optional in the port's file, dropped


def _join(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


@functools.lru_cache(maxsize=None)
def key_plan(name: str) -> Tuple[KeyPlan, ...]:
    """The key-by-key plan of the layout ``name``, in official order (cached)."""
    layout = LAYOUTS_BY_NAME[name]
    if layout.model == "resnet50":
        # torchvision's keys; translated files keep torch names (the ImageNet layout's naming).
        rules = [(key, rule, key) for key, rule in encoder_rules("farseg")]
    else:
        rules = [(rule.torch_key, rule, rule.paddle_key) for rule in model_rules(layout.model)]
    plan: List[KeyPlan] = []
    for official, rule, out in rules:
        attr = official.rsplit(".", 1)[-1]
        module = official[: -len(attr)].rstrip(".")
        port = port_module(layout, module)
        if port is None:
            plan.append(KeyPlan(official, out, (), rule.shape))
        elif rule.kind == "batchnorm" and attr == STRAY:
            plan.append(KeyPlan(official, None, (_join(port, attr),), rule.shape, stray=True))
        elif rule.kind == "batchnorm":
            plan.append(KeyPlan(official, out, tuple(_join(port, a) for a in BN_PORT_NAMES[attr]), rule.shape))
        elif rule.kind == "other":
            plan.append(KeyPlan(official, out, (_join(port, attr),), rule.shape))
        else:  # no Linear in these models; a port's Linear weight would need a transpose rule
            raise RuntimeError(f"layout {name}: no rule for a {rule.kind} key {official!r}")
    return tuple(plan)


@functools.lru_cache(maxsize=None)
def known_names(name: str) -> frozenset:
    """Every key name the layout ``name`` accepts (for detection)."""
    names = {n for entry in key_plan(name) for n in entry.names}
    return frozenset(names | {key for key, _ in LAYOUTS_BY_NAME[name].unused})


# ----------------------------------------------------------------------------------------------
# Detection and translation
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _official_paddle_keys() -> Tuple[frozenset, ...]:
    return tuple(frozenset(paddle_layout(model)) for model in MODEL_NAMES)


def detect_layout(keys: Iterable[str]) -> Optional[PortLayout]:
    """The port layout a Paddle state dict's keys belong to, or None.

    None for keys of the official Paddle layout (all of a model, or part of it such as an
    encoder file: those are validated as today) and for keys no table covers well. Otherwise
    the table with the most keys in common wins (ties: the first in ``LAYOUTS``) if it covers
    at least half of the given keys or half of its own.
    """
    given = set(keys)
    if not given or any(given <= official for official in _official_paddle_keys()):
        return None
    best, best_hits = None, 0
    for layout in LAYOUTS:
        hits = len(given & known_names(layout.name))
        if hits > best_hits:
            best, best_hits = layout, hits
    if best is None:
        return None
    own = sum(1 for entry in key_plan(best.name) if entry.names and not entry.stray)
    return best if best_hits * 2 >= len(given) or best_hits * 2 >= own else None


@dataclass
class Translation:
    """A port's state dict renamed to the official layout, and what was dropped or filled."""

    layout: PortLayout
    state: "OrderedDict[str, np.ndarray]"
    dropped_unused: List[str] = field(default_factory=list)  # e.g. an ImageNet classifier
    dropped_stray: List[str] = field(default_factory=list)  # num_batches_tracked in a .pdparams
    filled: List[str] = field(default_factory=list)  # official keys the port lacks

    def notes(self) -> List[str]:
        """Summary-line notes: what was dropped or filled."""
        out = []
        if self.dropped_unused:
            out.append(f"{' and '.join(self.dropped_unused)} dropped (unused by the official model)")
        if self.dropped_stray:
            out.append(f"{len(self.dropped_stray)} stray {STRAY} dropped")
        if self.filled:
            out.append(f"{' and '.join(self.filled)} missing in the port, filled with 0")
        return out


def translate(state: Mapping[str, np.ndarray], layout: PortLayout) -> Translation:
    """Rename ``state`` (a file in ``layout``) to the official layout, checking every key and shape.

    Output: official Paddle names (FarSeg/FactSeg) or torchvision names (ResNet-50), in
    official order. CheckpointError lists missing, unexpected, wrong-shape and doubly-named
    keys (in the port's names, with the official key beside each).
    """
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    result = Translation(layout, out)
    consumed = set()
    missing: List[str] = []
    wrong: List[str] = []
    twice: List[str] = []
    for entry in key_plan(layout.name):
        if not entry.names:  # the port has no such state: the neutral value
            out[entry.out] = np.zeros(entry.shape, dtype=np.float32)
            result.filled.append(entry.official)
            continue
        present = [n for n in entry.names if n in state]
        consumed.update(present)
        if entry.stray:
            for n in present:
                if np.size(state[n]) != 1:
                    wrong.append(f"{n}  expected a single counter, found {format_shape(state[n].shape)}")
                result.dropped_stray.append(n)
            continue
        if not present:
            missing.append(f"{entry.names[0]}  expected {format_shape(entry.shape)} (official {entry.official})")
            continue
        if len(present) > 1:
            twice.append(f"{' and '.join(present)} (official {entry.official})")
            continue
        array = state[present[0]]
        if tuple(array.shape) != entry.shape:
            wrong.append(
                f"{present[0]}  expected {format_shape(entry.shape)}, found {format_shape(array.shape)} "
                f"(official {entry.official})"
            )
        elif entry.out is not None:
            out[entry.out] = array
    for key, shapes in layout.unused:
        if key in state:
            consumed.add(key)
            if tuple(state[key].shape) not in shapes:
                wrong.append(
                    f"{key}  expected {' or '.join(format_shape(s) for s in shapes)}, "
                    f"found {format_shape(state[key].shape)}"
                )
            result.dropped_unused.append(key)
    unexpected = [f"{k}  {format_shape(getattr(v, 'shape', ()))}" for k, v in state.items() if k not in consumed]
    if layout.trunk == "x2paddle" and not (missing or unexpected or wrong or twice):
        order = x2paddle_order_problems(state)
        if order:
            raise CheckpointError(
                f"looks like the {layout.label} layout, but its X2Paddle bottlenecks are stored in another "
                f"order than that file's: a different X2Paddle conversion, whose block numbering this "
                f"table does not know",
                order,
            )
    if missing or unexpected or wrong or twice:
        counts, details = mismatch_summary(
            [
                ("missing", "missing keys", missing),
                ("unexpected", "unexpected keys", unexpected),
                ("wrong shape", "wrong shape", wrong),
                ("stored under two names", "stored under both BatchNorm namings", twice),
            ]
        )
        raise CheckpointError(f"looks like the {layout.label} layout but does not match it: {counts}", details)
    return result


_X2PADDLE_BLOCK = re.compile(r"(?:^|\.)layer(\d)0\.(bottleneck\d+)\.")


def x2paddle_order_problems(state: Mapping[str, np.ndarray]) -> List[str]:
    """Stages whose bottlenecks the file stores in another order than ``X2PADDLE_BOTTLENECKS``.

    X2Paddle numbers its generated bottleneck classes in no fixed order (a local X2Paddle 1.6.0
    run numbers them differently from ucsk/FarSeg's file), but registers them in trunk order,
    and ``paddle.save`` keeps that order. Blocks 1.. of a stage have equal shapes, so this is
    what stops a file from another conversion from being renamed wrongly without a trace.
    """
    seen: Dict[int, List[str]] = {}
    for key in state:
        match = _X2PADDLE_BLOCK.search(key)
        if match:
            blocks = seen.setdefault(int(match.group(1)), [])
            if match.group(2) not in blocks:
                blocks.append(match.group(2))
    problems = []
    for stage, expected in X2PADDLE_BOTTLENECKS.items():
        found = seen.get(stage, [])
        if [b for b in expected if b in found] != [b for b in found if b in expected]:
            problems.append(f"  layer{stage}0: file order {', '.join(found)}; table order {', '.join(expected)}")
    return problems


@dataclass
class RecognisedCheckpoint(LoadedCheckpoint):
    """A port's checkpoint renamed to the official layout by ``recognise``.

    ``state`` holds the official names (Paddle names for FarSeg/FactSeg, ``framework`` =
    "paddle"; torchvision names for ResNet-50, ``framework`` = "torch");
    ``file_framework`` is the format of the file itself and ``n_file`` its tensor count.
    """

    layout: Optional[PortLayout] = None
    file_framework: str = "paddle"
    n_file: int = 0
    renamed: List[str] = field(default_factory=list)  # what was dropped or filled (Translation.notes)

    def describe(self) -> str:
        """E.g. ``bare state dict, PaddleSeg FarSeg (ucsk/FarSeg) layout, ... dropped, ... filled``
        (the convert summary and every entry point's "loaded" line)."""
        return ", ".join([super().describe(), f"{self.layout.label} layout", *self.renamed])


def recognise(loaded: LoadedCheckpoint) -> LoadedCheckpoint:
    """``loaded`` renamed to the official layout if it is a known port's Paddle file, else unchanged.

    Raises CheckpointError (naming the file) when the keys resemble a port's layout but do not
    match it key for key and shape for shape.
    """
    if loaded.framework != "paddle":
        return loaded
    layout = detect_layout(loaded.state)
    if layout is None:
        return loaded
    try:
        result = translate(loaded.state, layout)
    except CheckpointError as error:
        raise error.with_path(loaded.path) from None
    # Every field of the reader's result carried over by name, then the renamed state.
    base = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedCheckpoint)}
    base.update(state=result.state, framework="torch" if layout.model == "resnet50" else "paddle")
    return RecognisedCheckpoint(
        **base, layout=layout, file_framework=loaded.framework, n_file=len(loaded.state), renamed=result.notes()
    )


def layout_table() -> List[Tuple[str, str, str]]:
    """(name, label, model) of every known port layout (for documentation and tests)."""
    return [(layout.name, layout.label, layout.model) for layout in LAYOUTS]


__all__ = [
    "FPN_LEVEL_INDEX",
    "LAYOUTS",
    "PortLayout",
    "RecognisedCheckpoint",
    "Translation",
    "X2PADDLE_BOTTLENECKS",
    "detect_layout",
    "key_plan",
    "layout_table",
    "recognise",
    "translate",
    "x2paddle_order_problems",
    "x2paddle_trunk",
]
