"""Training configuration: YAML files, ``--set a.b=c`` overrides, and their validation.

Framework-free (PyYAML only): ``torch_ref.train`` and ``paddle_impl.train`` read the same
files through this module, so one YAML file describes one recipe for both frameworks.

Every key a config may hold is listed once in :data:`SCHEMA` with its default, its type and
what it means. A YAML file or an override naming any other key is refused with a one-line
:class:`ConfigError` that names the key and the file (a typo such as ``train.lrr`` must not
silently train with the default). Override values are parsed as YAML scalars
(``train.amp=bf16``, ``train.iterations=100``, ``init.imagenet=none``, ``train.lr=1e-3``).
"""

from __future__ import annotations

import argparse
import copy
import difflib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from common.bounded_yaml import BoundedYamlError, brief, parse_yaml, read_yaml
from isaid.palette import NUM_CLASSES
from weights import MODEL_NAMES

MODEL_CHOICES = MODEL_NAMES
AMP_CHOICES = ("none", "fp16", "bf16")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "gpu")
LOG_BACKEND_CHOICES = ("auto", "none")
# Spellings of "no file" accepted for nullable path keys (``--set init.imagenet=none``).
NONE_SPELLINGS = ("none", "null", "~", "")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Field:
    """One config key: default, type ("int", "float", "bool", "str"), constraints, help."""

    default: Any
    kind: str
    help: str
    choices: Optional[Tuple[str, ...]] = None
    minimum: Optional[float] = None  # inclusive lower bound for numbers
    nullable: bool = False  # str keys only: None (or "none") allowed
    below: Optional[float] = None  # exclusive upper bound for numbers
    maximum: Optional[float] = None  # inclusive upper bound for numbers
    multiple_of: Optional[int] = None  # int keys only
    equals: Optional[Any] = None  # the one value the data allows (with the reason in help)


# The official recipe (docs/official_models.md, "Training recipe") is the default of every key; the YAML files in
# configs/ spell it out in full so that a reader sees the whole recipe in one place.
SCHEMA: Dict[str, Field] = {
    "model.name": Field("farseg", "str", "model to train", choices=MODEL_CHOICES),
    "model.num_classes": Field(
        NUM_CLASSES,
        "int",
        "number of classes: must be the dataset's"
        f" {NUM_CLASSES} (iSAID, background included; what isaid.prepare"
        " writes, the official checkpoints and the converter's layouts)",
        equals=NUM_CLASSES,
    ),
    "data.root": Field("data/isaid", "str", "OUT folder of `python -m isaid.prepare` (holds train/index.json)"),
    "data.split": Field("train", "str", "split folder under data.root to train on"),
    "data.window": Field(
        896,
        "int",
        "patch side: must equal the --window given to isaid.prepare; patches"
        " are padded to it after augmentation; a multiple of 32 (the models'"
        " output stride)",
        minimum=32,
        multiple_of=32,
    ),
    "data.stride": Field(
        512,
        "int",
        "distance between sliding-window starts: isaid.prepare's --stride, and what evaluate /"
        " predict --config use (at most data.window there)",
        minimum=1,
    ),
    "init.imagenet": Field(
        "weights/resnet50-19c8e357_{model}_encoder.pdparams",
        "str",
        "ImageNet ResNet-50 encoder weights: the output of `python -m convert"
        " resnet50-19c8e357.pth --model resnet50 --target <model>` (either"
        " format), or torchvision's file itself; {model} is replaced;"
        " none = random initialisation (explicitly)",
        nullable=True,
    ),
    "train.iterations": Field(60000, "int", "optimizer steps", minimum=1),
    "train.batch_size": Field(8, "int", "GLOBAL batch (split evenly over the processes)", minimum=1),
    "train.lr": Field(0.007, "float", "base learning rate", minimum=0.0),
    "train.momentum": Field(0.9, "float", "SGD momentum, in [0, 1)", minimum=0.0, below=1.0),
    "train.weight_decay": Field(
        0.0001, "float", "L2 weight decay on all parameters, in [0, 1)", minimum=0.0, below=1.0
    ),
    "train.poly_power": Field(0.9, "float", "lr = lr * (1 - k / iterations) ** poly_power, per iteration", minimum=0.0),
    "train.clip_norm": Field(35.0, "float", "gradient clipping by GLOBAL L2 norm; 0 = off", minimum=0.0),
    "train.seed": Field(2333, "int", "seed of sampling, augmentation and initialisation", minimum=0),
    "train.amp": Field(
        "fp16",
        "str",
        "mixed precision: fp16 (autocast + dynamic loss"
        " scaling, like the official apex O1), bf16 (autocast), none (float32)",
        choices=AMP_CHOICES,
    ),
    "train.channels_last": Field(
        False, "bool", "torch only: NHWC memory format (faster on tensor-core GPUs); ignored by Paddle"
    ),
    "train.sync_bn": Field(
        True, "bool", "SyncBatchNorm when training on several GPUs (never on CPU: GPU-only kernels in both frameworks)"
    ),
    "train.compile": Field(False, "bool", "torch only: torch.compile the model; ignored by Paddle"),
    "train.device": Field("auto", "str", "auto (GPU when available), cpu, cuda / gpu", choices=DEVICE_CHOICES),
    "train.num_workers": Field(8, "int", "DataLoader worker processes per training process", minimum=0),
    "train.checkpoint_every": Field(
        2000, "int", "save a resumable checkpoint every N iterations (and at the end)", minimum=1
    ),
    "train.keep_checkpoints": Field(3, "int", "keep the newest N checkpoints; 0 = keep all", minimum=0),
    "train.log_every": Field(20, "int", "log loss / lr / images per s every N iterations", minimum=1),
    "train.log_backend": Field(
        "auto",
        "str",
        "auto: TensorBoard (torch) / VisualDL (Paddle) when installed; none: metrics.jsonl only",
        choices=LOG_BACKEND_CHOICES,
    ),
    "train.out_dir": Field("runs/{model}_{framework}", "str", "output folder; {model} and {framework} are replaced"),
    "train.skip_nonfinite": Field(
        False,
        "bool",
        "a NaN/Inf training loss stops the run with an"
        " error naming the iteration (false), or its batch is undone"
        " (weights, optimiser, schedule as before it), counted and logged"
        " (true)",
    ),
    "train.max_nonfinite": Field(
        100, "int", "with train.skip_nonfinite: stop anyway after this many skipped batches", minimum=1
    ),
    "augment.hflip": Field(0.5, "float", "probability of a horizontal flip, in [0, 1]", minimum=0.0, maximum=1.0),
    "augment.vflip": Field(0.5, "float", "probability of a vertical flip, in [0, 1]", minimum=0.0, maximum=1.0),
    "augment.rot90": Field(True, "bool", "rotate by k*90 degrees, k uniform in {0,1,2,3}"),
}

SECTIONS: Tuple[str, ...] = tuple(dict.fromkeys(key.split(".")[0] for key in SCHEMA))

Config = Dict[str, Dict[str, Any]]


def default_config() -> Config:
    """The nested config made of every key's default."""
    config: Config = {section: {} for section in SECTIONS}
    for key, field in SCHEMA.items():
        section, name = key.split(".", 1)
        config[section][name] = copy.deepcopy(field.default)
    return config


def flatten(config: Config) -> Dict[str, Any]:
    """``{"train.lr": 0.007, ...}`` from the nested config."""
    return {f"{section}.{name}": value for section, values in config.items() for name, value in values.items()}


def _suggest(key: str) -> str:
    if len(key) > 100:  # nothing in SCHEMA is close; and difflib's time grows with the length
        return ""
    close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key_message(key: str, where: str) -> str:
    section = key.split(".")[0]
    if section in SECTIONS:
        known = ", ".join(k.split(".", 1)[1] for k in SCHEMA if k.startswith(section + "."))
        return f"{where}: unknown key {brief(key)}{_suggest(key)} (keys of {section!r}: {known})"
    return f"{where}: unknown key {brief(key)}{_suggest(key)} (sections: {', '.join(SECTIONS)})"


def _describe(value: Any) -> str:
    return f"{brief(value)} ({type(value).__name__})"


def coerce(key: str, value: Any, where: str) -> Any:
    """``value`` checked and converted to the type of ``key``; ConfigError otherwise."""
    field = SCHEMA[key]
    if field.nullable and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_SPELLINGS)):
        return None
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {_describe(value)}")
        return value
    if field.kind == "int":
        # bool is an int subclass in Python; "true" for a count is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {_describe(value)}")
        result: Any = value
    elif field.kind == "float":
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept any float spelling.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {key}: expected a number, got {_describe(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {_describe(value)}")
        result = float(value)
        if result != result or result in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {key}: expected a finite number, got {brief(value)}")
    else:  # str
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. data.split=2017 parsed by YAML as a number
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {_describe(value)}")
        result = value
    if field.choices is not None and result not in field.choices:
        raise ConfigError(f"{where}: {key}: {brief(result)} is not one of {', '.join(field.choices)}")
    if field.minimum is not None and result < field.minimum:
        raise ConfigError(f"{where}: {key}: must be >= {field.minimum:g}, got {brief(result)}")
    if field.below is not None and result >= field.below:
        raise ConfigError(f"{where}: {key}: must be < {field.below:g}, got {brief(result)} ({field.help})")
    if field.maximum is not None and result > field.maximum:
        raise ConfigError(f"{where}: {key}: must be <= {field.maximum:g}, got {brief(result)} ({field.help})")
    if field.multiple_of is not None and result % field.multiple_of:
        raise ConfigError(
            f"{where}: {key}: must be a multiple of {field.multiple_of}, got {brief(result)}"
            f" (e.g. {max(field.multiple_of, result // field.multiple_of * field.multiple_of)})"
        )
    if field.equals is not None and result != field.equals:
        raise ConfigError(f"{where}: {key}: must be {field.equals!r}, got {brief(result)} ({field.help})")
    return result


def _check_cross_field(config: Config, where: str) -> None:
    for key in ("augment.hflip", "augment.vflip"):
        section, name = key.split(".")
        if config[section][name] > 1.0:
            raise ConfigError(f"{where}: {key}: a probability must lie in [0, 1], got {config[section][name]!r}")


def _read_yaml(path: str) -> Any:
    try:
        return read_yaml(path, what="config file")
    except BoundedYamlError as error:
        raise ConfigError(str(error)) from None


def parse_override(text: str) -> Tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", "1e-3" parsed as YAML)``; ConfigError if malformed."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.iterations=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key")
    try:
        value = parse_yaml(raw, f"--set {key}", max_bytes=4096) if raw.strip() else ""
    except BoundedYamlError:
        value = raw  # not a YAML scalar (e.g. "a: b"): keep the text; coerce() judges it
    if isinstance(value, (dict, list)):
        raise ConfigError(f"--set {text}: {key}: expected a single value, got a YAML {type(value).__name__}")
    return key, value


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Read the YAML file ``path``, apply ``overrides`` ("a.b=c"), validate every key.

    Keys absent from the file take their :data:`SCHEMA` default. Raises ConfigError (one
    line, naming the file or the override and the key) for an unknown key, a wrong type, a
    value outside its choices, or an unreadable file.
    """
    raw = _read_yaml(path)
    config = default_config()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections ({', '.join(SECTIONS)}), got a YAML {type(raw).__name__}"
        )
    for section, values in raw.items():
        if not isinstance(section, str) or section not in SECTIONS:
            raise ConfigError(_unknown_key_message(section if isinstance(section, str) else brief(section), path))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: section {section!r} must be a mapping of keys, got a YAML {type(values).__name__}"
            )
        for name, value in values.items():
            key = f"{section}.{name}"
            if key not in SCHEMA:
                raise ConfigError(_unknown_key_message(key, path))
            config[section][name] = coerce(key, value, path)
    for text in overrides:
        key, value = parse_override(text)
        where = f"--set {text}"
        if key not in SCHEMA:
            raise ConfigError(_unknown_key_message(key, f"{where} (config {path})"))
        section, name = key.split(".", 1)
        config[section][name] = coerce(key, value, where)
    _check_cross_field(config, path)
    return config


def resolve_out_dir(config: Config, framework: str) -> str:
    """``train.out_dir`` with ``{model}`` and ``{framework}`` filled in."""
    template = config["train"]["out_dir"]
    try:
        return template.format(model=config["model"]["name"], framework=framework)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            f"train.out_dir: {template!r}: only {{model}} and {{framework}} may be used ({error})"
        ) from None


def resolve_imagenet_path(config: Config) -> Optional[str]:
    """``init.imagenet`` with ``{model}`` filled in; None for an explicit random start."""
    template = config["init"]["imagenet"]
    if template is None:
        return None
    try:
        return template.format(model=config["model"]["name"])
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"init.imagenet: {template!r}: only {{model}} may be used ({error})") from None


def dump_config(config: Config) -> str:
    """The config as YAML text (sections and keys in :data:`SCHEMA` order)."""
    ordered = {
        section: {
            name: config[section][name] for name in (k.split(".", 1)[1] for k in SCHEMA if k.startswith(section + "."))
        }
        for section in SECTIONS
    }
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False)


def describe_keys() -> List[str]:
    """One ``key (default): help`` line per key, for ``--help`` epilogs and the README."""
    return [f"  {key} (default {field.default!r}): {field.help}" for key, field in SCHEMA.items()]


def changed_keys(a: Config, b: Config, keys: Iterable[str]) -> List[str]:
    """``key: a -> b`` for every key in ``keys`` whose values differ between two configs."""
    flat_a, flat_b = flatten(a), flatten(b)
    return [f"{key}: {flat_a.get(key)!r} -> {flat_b.get(key)!r}" for key in keys if flat_a.get(key) != flat_b.get(key)]


def apply_inference_config(args: argparse.Namespace, explicit: Iterable[str], model: bool = True) -> None:
    """``--config`` of evaluate and predict: ``args.model`` (when ``model``), ``args.window`` and
    ``args.stride`` from the training YAML ``args.config``, except those in ``explicit`` (the
    options the user typed win). No-op without ``--config``. Raises ConfigError (one line) for
    an unreadable or invalid file, or a stride larger than the window it ends up with."""
    path = getattr(args, "config", None)
    if path is None:
        return
    config = load_config(path)
    given = set(explicit)
    if model and "model" not in given:
        args.model = config["model"]["name"]
    if "window" not in given:
        args.window = config["data"]["window"]
    if "stride" not in given:
        args.stride = config["data"]["stride"]
        if args.window is not None and args.stride > args.window:
            raise ConfigError(
                f"{path}: data.stride {args.stride} is larger than the window {args.window}, which would leave"
                " pixels in no window; set data.stride in the file or give --stride"
            )
