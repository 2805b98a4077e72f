"""One frozen, typed training configuration: the currency between `detector/` and `search/`.

Every field a trial can vary lives here, named after torchvision's `FasterRCNN` keyword
arguments where one exists. The configuration is read from and written to YAML losslessly
(`yaml.safe_load` only); unknown fields and impossible values are rejected when it is read,
with a message naming the field, the value and the rule.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import yaml

from detector.metrics import METRICS

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
VERSIONS = ("v1", "v2")
WEIGHT_SOURCES = ("none", "imagenet", "coco")  # or a path to a checkpoint of this project
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
STEM_INITS = ("sum", "mean")
AMP_MODES = ("off", "bf16", "fp16")  # detector/precision.py maps them to autocast dtypes
# Anchor presets, one size per FPN level (P2..P6). "default" is torchvision's; "small" suits
# objects of 4-24 px at scale 1; "auto" derives the sizes from the dataset's box sizes.
ANCHOR_PRESETS = {
    "default": (32, 64, 128, 256, 512),
    "small": (8, 16, 32, 64, 128),
}


class ConfigError(ValueError):
    """A configuration value breaks a rule. The message names the field, the value and the rule."""


@dataclass(frozen=True)
class TrainConfig:
    # --- architecture -------------------------------------------------------------------
    backbone: str = "resnet50"
    version: str = "v1"
    weights: str = "none"
    trainable_layers: Union[int, str] = 5
    in_channels: int = 1
    stem_init: str = "sum"
    num_classes: Union[int, None] = None
    anchor_sizes: Union[str, tuple] = "default"
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    min_size: int = 512
    max_size: int = 1024
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: Union[int, str] = "auto"
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    # --- data ---------------------------------------------------------------------------
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    crop_size: Union[int, None] = None
    scale_jitter: Union[tuple, None] = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    num_workers: int = 2
    # --- optimisation -------------------------------------------------------------------
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    warmup_iters: Union[int, None] = None
    warmup_factor: float = 0.001
    schedule: str = "cosine"
    milestones: tuple = ()
    gamma: float = 0.1
    batch_size: int = 4
    epochs: int = 20
    clip_grad_norm: Union[float, None] = 10.0
    amp: str = "off"
    channels_last: bool = False
    seed: int = 0
    metric: str = "map50"
    patience: Union[int, None] = None
    nonfinite_patience: int = 3

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated like any other)."""
        return from_dict({**to_dict(self), **changes}, source="replace()")


# One line of documentation per field: printed by `python -m detector.train --print-config`.
FIELD_DOCS = {
    "backbone": f"ResNet depth of the FPN backbone: one of {', '.join(BACKBONES)}",
    "version": "v1 (one-conv RPN head, two-FC box head) or v2 (norm-layer FPN, two-conv RPN head, conv+FC box head)",
    "weights": "none | imagenet (backbone) | coco (whole detector; resnet50 only) | path to a checkpoint of this project",
    "trainable_layers": "0-5 trainable ResNet stages counted from the top (torchvision's meaning), or 'stem' (only the first conv)",
    "in_channels": "1 (greyscale, the default) or 3",
    "stem_init": "how a 1-channel first conv is made from pretrained RGB weights: sum (the kernels' sum over R, G, B: a grey image gives the pretrained activation; timm's choice) or mean (the study's: a third of it)",
    "num_classes": "object classes without background; null = taken from the dataset",
    "anchor_sizes": "one anchor size per FPN level (5 ints, px), or a preset: default (32..512), small (8..128), auto (from the data)",
    "aspect_ratios": "anchor aspect ratios (height/width), shared by all levels",
    "min_size": "images are resized so the shorter side is this many px (torchvision's GeneralizedRCNNTransform)",
    "max_size": "...unless the longer side would exceed this many px",
    "rpn_pre_nms_top_n_train": "proposals kept per FPN level before NMS, training",
    "rpn_pre_nms_top_n_test": "proposals kept per FPN level before NMS, evaluation",
    "rpn_post_nms_top_n_train": "proposals kept after NMS, training",
    "rpn_post_nms_top_n_test": "proposals kept after NMS, evaluation",
    "rpn_batch_size_per_image": "anchors sampled per image for the RPN loss",
    "box_batch_size_per_image": "RoIs sampled per image for the box-head loss (small = faster on the CPU)",
    "box_detections_per_img": "detections kept per image; 'auto' = max(100, 2 x the most objects in any image of the data)",
    "box_score_thresh": "detections below this score are dropped",
    "box_nms_thresh": "NMS IoU threshold of the box head",
    "hflip": "random horizontal flips (on by default: bench/parity.py found no loss from flips or rot90 in 6-epoch runs on two synthetic sets; bench/RESULTS.md)",
    "vflip": "random vertical flips (on by default, as hflip; on data whose orientation matters turn them off, or search them as a categorical parameter)",
    "rot90": "random rotations by multiples of 90 degrees (on by default; flips+rot90 vs none, mAP50 after 6 epochs, 3 seeds: 0.242 vs 0.220 and 0.692 vs 0.671, within the seed spread)",
    "crop_size": "random square crops of this many px (null = off)",
    "scale_jitter": "random rescale by a factor in [low, high] (null = off)",
    "val_fraction": "share of all images held out for validation when no separate validation file is given",
    "test_fraction": "share of all images held out as test images (split off first, by split_seed) when no separate test file is given; 0 = no test images",
    "split_seed": "seed of the train/validation/test split (its own seed: trials with other seeds see the same images)",
    "num_workers": "data-loader worker processes",
    "optimizer": "sgd (momentum, optional Nesterov) or adamw",
    "lr": "peak learning rate, reached after warm-up",
    "momentum": "SGD momentum (ignored by adamw)",
    "nesterov": "Nesterov momentum (sgd only)",
    "weight_decay": "L2 weight decay",
    "warmup_epochs": "linear warm-up length in epochs (may be fractional)",
    "warmup_iters": "linear warm-up length in iterations; overrides warmup_epochs when set",
    "warmup_factor": "learning-rate factor at the first iteration of warm-up",
    "schedule": "cosine (to zero at the last epoch), step (x gamma at each milestone) or constant",
    "milestones": "epochs at which the step schedule multiplies the learning rate by gamma",
    "gamma": "factor of the step schedule",
    "batch_size": "images per training step",
    "epochs": "training epochs",
    "clip_grad_norm": "gradient-norm clipping threshold (null = off)",
    "amp": "mixed precision: off (float32), bf16 (bfloat16 autocast, on CUDA and on the CPU) or fp16 (float16 autocast with a gradient scaler); boxes stay float32 in every mode. true/false of older files read as bf16/off",
    "channels_last": "channels-last memory format for the model and images",
    "seed": "seed of shuffling, augmentation and initialisation (the split has its own: split_seed)",
    "metric": f"validation metric that chooses the best epoch (model.pt) and drives patience, maximised: one of {', '.join(METRICS)}",
    "patience": "stop after this many epochs without a better `metric` (null = off)",
    "nonfinite_patience": "fail after this many consecutive steps with a non-finite loss",
}

_TUPLE_FIELDS = {"anchor_sizes", "aspect_ratios", "milestones", "scale_jitter"}


def _rule(cond: bool, name: str, value: Any, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {rule}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _validate(c: TrainConfig) -> None:
    """Check every field; raise ConfigError naming the first broken rule."""
    _rule(c.backbone in BACKBONES, "backbone", c.backbone, f"must be one of {list(BACKBONES)}")
    _rule(c.version in VERSIONS, "version", c.version, f"must be one of {list(VERSIONS)}")
    _rule(isinstance(c.weights, str) and c.weights != "", "weights", c.weights,
          f"must be one of {list(WEIGHT_SOURCES)} or a checkpoint path")
    if c.weights == "coco":
        _rule(c.backbone == "resnet50", "weights", c.weights,
              "COCO weights exist only for backbone resnet50 (versions v1 and v2); "
              f"backbone is {c.backbone!r}")
    elif c.weights not in WEIGHT_SOURCES and not (c.weights.endswith(".pt") or c.weights.endswith(".pth")
                                                 or os.sep in c.weights):
        raise ConfigError(f"weights: must be one of {list(WEIGHT_SOURCES)} or a checkpoint path "
                          f"(ending in .pt/.pth), got {c.weights!r}")
    _rule(c.trainable_layers == "stem" or (_is_int(c.trainable_layers) and 0 <= c.trainable_layers <= 5),
          "trainable_layers", c.trainable_layers, "must be an integer 0-5 or 'stem'")
    if c.weights == "none":
        _rule(c.trainable_layers == 5, "trainable_layers", c.trainable_layers,
              "freezing means nothing without pretrained weights: must be 5 when weights is 'none'")
    _rule(c.in_channels in (1, 3) and _is_int(c.in_channels), "in_channels", c.in_channels, "must be 1 or 3")
    _rule(c.stem_init in STEM_INITS, "stem_init", c.stem_init, f"must be one of {list(STEM_INITS)}")
    _rule(c.num_classes is None or (_is_int(c.num_classes) and c.num_classes >= 1), "num_classes",
          c.num_classes, "must be null or an integer >= 1")
    if isinstance(c.anchor_sizes, str):
        _rule(c.anchor_sizes in (*ANCHOR_PRESETS, "auto"), "anchor_sizes", c.anchor_sizes,
              f"must be a preset {[*ANCHOR_PRESETS, 'auto']} or 5 positive integers")
    else:
        _rule(len(c.anchor_sizes) == 5 and all(_is_int(s) and s > 0 for s in c.anchor_sizes),
              "anchor_sizes", list(c.anchor_sizes), "must be 5 positive integers, one per FPN level")
    _rule(len(c.aspect_ratios) >= 1 and all(_is_num(r) and r > 0 for r in c.aspect_ratios),
          "aspect_ratios", list(c.aspect_ratios), "must be a non-empty list of positive numbers")
    for name in ("min_size", "max_size", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                 "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                 "box_batch_size_per_image", "batch_size", "epochs", "nonfinite_patience"):
        v = getattr(c, name)
        _rule(_is_int(v) and v >= 1, name, v, "must be an integer >= 1")
    _rule(c.max_size >= c.min_size, "max_size", c.max_size, f"must be >= min_size ({c.min_size})")
    _rule(c.box_detections_per_img == "auto" or (_is_int(c.box_detections_per_img) and c.box_detections_per_img >= 1),
          "box_detections_per_img", c.box_detections_per_img, "must be 'auto' or an integer >= 1")
    for name in ("box_score_thresh", "box_nms_thresh", "warmup_factor"):
        v = getattr(c, name)
        _rule(_is_num(v) and 0.0 <= v <= 1.0, name, v, "must be a number in [0, 1]")
    _rule(c.amp in AMP_MODES, "amp", c.amp, f"must be one of {list(AMP_MODES)}")
    for name in ("hflip", "vflip", "rot90", "nesterov", "channels_last"):
        v = getattr(c, name)
        _rule(isinstance(v, bool), name, v, "must be true or false")
    _rule(c.crop_size is None or (_is_int(c.crop_size) and c.crop_size >= 16), "crop_size", c.crop_size,
          "must be null or an integer >= 16")
    if c.scale_jitter is not None:
        _rule(len(c.scale_jitter) == 2 and all(_is_num(s) and s > 0 for s in c.scale_jitter)
              and c.scale_jitter[0] <= c.scale_jitter[1], "scale_jitter", list(c.scale_jitter),
              "must be null or [low, high] with 0 < low <= high")
    _rule(_is_num(c.val_fraction) and 0.0 < c.val_fraction < 1.0, "val_fraction", c.val_fraction,
          "must be a number in (0, 1)")
    _rule(_is_num(c.test_fraction) and 0.0 <= c.test_fraction < 1.0, "test_fraction", c.test_fraction,
          "must be a number in [0, 1)")
    _rule(c.val_fraction + c.test_fraction < 1.0, "test_fraction", c.test_fraction,
          f"val_fraction + test_fraction must be < 1 (val_fraction is {c.val_fraction}): no image would be left to train on")
    _rule(_is_int(c.split_seed) and c.split_seed >= 0, "split_seed", c.split_seed, "must be an integer >= 0")
    _rule(_is_int(c.num_workers) and c.num_workers >= 0, "num_workers", c.num_workers, "must be an integer >= 0")
    _rule(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, f"must be one of {list(OPTIMIZERS)}")
    _rule(_is_num(c.lr) and c.lr > 0, "lr", c.lr, "must be a number > 0")
    _rule(_is_num(c.momentum) and 0.0 <= c.momentum < 1.0, "momentum", c.momentum, "must be a number in [0, 1)")
    if c.nesterov:
        _rule(c.optimizer == "sgd" and c.momentum > 0, "nesterov", c.nesterov,
              "needs optimizer 'sgd' with momentum > 0")
    _rule(_is_num(c.weight_decay) and c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be a number >= 0")
    _rule(_is_num(c.warmup_epochs) and c.warmup_epochs >= 0, "warmup_epochs", c.warmup_epochs,
          "must be a number >= 0")
    _rule(c.warmup_iters is None or (_is_int(c.warmup_iters) and c.warmup_iters >= 0), "warmup_iters",
          c.warmup_iters, "must be null or an integer >= 0")
    _rule(c.schedule in SCHEDULES, "schedule", c.schedule, f"must be one of {list(SCHEDULES)}")
    _rule(all(_is_int(m) and m >= 1 for m in c.milestones) and list(c.milestones) == sorted(set(c.milestones)),
          "milestones", list(c.milestones), "must be increasing integers >= 1")
    if c.schedule == "step":
        _rule(len(c.milestones) > 0, "milestones", list(c.milestones), "must not be empty when schedule is 'step'")
    _rule(_is_num(c.gamma) and 0 < c.gamma <= 1, "gamma", c.gamma, "must be a number in (0, 1]")
    _rule(c.clip_grad_norm is None or (_is_num(c.clip_grad_norm) and c.clip_grad_norm > 0), "clip_grad_norm",
          c.clip_grad_norm, "must be null or a number > 0")
    _rule(_is_int(c.seed) and c.seed >= 0, "seed", c.seed, "must be an integer >= 0")
    _rule(c.metric in METRICS, "metric", c.metric, f"must be one of {list(METRICS)}")
    _rule(c.patience is None or (_is_int(c.patience) and c.patience >= 1), "patience", c.patience,
          "must be null or an integer >= 1")


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def arm_name(backbone: str, version: str, weights: str, trainable_layers: Any) -> str:
    """What files, tables and trackers call an architecture, e.g. `resnet50-v2-coco-t5` (a checkpoint
    path as weights is `ckpt`)."""
    w = weights if weights in WEIGHT_SOURCES else "ckpt"
    return f"{backbone}-{version}-{w}-t{trainable_layers}"


def from_dict(data: dict, source: str = "config") -> TrainConfig:
    """Build a configuration from a plain mapping (as read from YAML).

    Raises ConfigError naming `source`, the field, the value and the rule. Unknown keys are errors.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of field: value, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; valid fields are {list(FIELD_NAMES)}")
    values = {}
    for k, v in data.items():
        if k in _TUPLE_FIELDS and isinstance(v, list):
            v = tuple(v)
        if k in ("lr", "weight_decay", "momentum", "gamma", "warmup_epochs", "warmup_factor", "box_score_thresh",
                 "box_nms_thresh", "val_fraction", "test_fraction", "clip_grad_norm") and _is_int(v):
            v = float(v)  # YAML `lr: 1` is an int; the field is a float
        if k == "amp" and isinstance(v, bool):
            v = "bf16" if v else "off"  # the boolean of earlier versions (YAML reads `amp: off` as false too)
        values[k] = v
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(cfg: TrainConfig) -> dict:
    """Plain, YAML-safe mapping of every field (tuples become lists)."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def load(path: str | os.PathLike) -> TrainConfig:
    """Read a configuration YAML file. A leading `# ...` header and a `search:` block of
    metadata (written by `search.export`) are allowed; every other key must be a field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "search"}
    return from_dict(data, source=str(path))


def dump(cfg: TrainConfig, header: str = "", comments: bool = False) -> str:
    """YAML text for `cfg`. With `comments`, each field is preceded by its documentation."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()] if header else []
    for name, value in to_dict(cfg).items():
        if comments:
            lines.append(f"# {FIELD_DOCS[name]}")
        if isinstance(value, list):
            lines.append(f"{name}: {yaml.safe_dump(value, default_flow_style=True).strip()}")
        else:
            lines.append(yaml.safe_dump({name: value}, sort_keys=False).strip())
    return "\n".join(lines) + "\n"


def save(cfg: TrainConfig, path: str | os.PathLike, header: str = "") -> None:
    """Write `cfg` as YAML (atomically: write then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump(cfg, header=header))
    os.replace(tmp, path)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is parsed as YAML (`lr=0.01`, `milestones=[8,11]`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


assert set(FIELD_DOCS) == set(FIELD_NAMES), "every field needs a line of documentation"
