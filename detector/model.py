"""Build a torchvision Faster R-CNN from one configuration.

Every combination of the study (and what it wished it had compared):
  backbone  resnet18 | resnet34 | resnet50 | resnet101, each with torchvision's ResNet-FPN
  version   v1: torchvision's original heads (one-conv RPN head, two-FC box head)
            v2: the `fasterrcnn_resnet50_fpn_v2` recipe (FPN with BatchNorm, two-conv RPN head,
                conv+FC box head) on *any* depth: torchvision's builder is resnet50-only, its parts are not
  weights   none | imagenet (backbone) | coco (whole detector, resnet50 only) | a checkpoint path
  freezing  trainable_layers 0-5 (torchvision's meaning) or 'stem' (only the replaced first conv)

The models are torchvision's own classes; this module only assembles them.

    python -m detector.model --backbone resnet50 --version v2 --weights coco --json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import FasterRCNN
# The one function both of torchvision's Faster R-CNN builders (and resnet_fpn_backbone) use to put
# an FPN on a ResNet; resnet_fpn_backbone itself cannot set the FPN's norm layer that v2 needs.
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, RPNHead
from torchvision.ops.misc import FrozenBatchNorm2d

from detector import weights as W
from detector.config import ANCHOR_PRESETS, TrainConfig
from detector.precision import Float32AnchorGenerator, keep_boxes_in_float32

RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
# ImageNet's RGB statistics; a greyscale image gets their mean. A grey image fed to the RGB network as
# three equal channels gives conv1 = sum_c w_c * (x - m_c) / s_c, which the 1-channel stem reproduces
# with the summed kernel and these averaged statistics (`stem_init: sum`; see _first_conv).
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (sum(RGB_MEAN) / 3,), (sum(RGB_STD) / 3,)
COCO_NUM_CLASSES = 91


@dataclass(frozen=True)
class DataStats:
    """What the model builder needs to know of a dataset (see detector.data.DecodedDataset.stats)."""

    num_classes: int = 1            # object classes, background excluded
    max_objects: int = 0            # most objects in any one image
    box_size_quantiles: tuple = ()  # (q05, q50, q95) of sqrt(w*h) in px, at the image's own scale


def weight_kind(weights: str) -> str:
    return weights if weights in ("none", "imagenet", "coco") else "checkpoint"


def detections_per_img(cfg: TrainConfig, stats: DataStats | None) -> int:
    """`box_detections_per_img`: explicit, or at least twice the most objects in any image (min 100)."""
    if cfg.box_detections_per_img != "auto":
        return cfg.box_detections_per_img
    return max(100, 2 * stats.max_objects) if stats else 100


def anchor_sizes(cfg: TrainConfig, stats: DataStats | None, image_scale: float = 1.0) -> tuple[int, ...]:
    """One anchor size per FPN level (P2..P6), in px of the model's input.

    'auto' starts the smallest anchor at the 5th percentile of the objects' size after the
    transform's resize (`image_scale` = min_size / image short side), doubling per level.
    """
    if isinstance(cfg.anchor_sizes, tuple):
        return cfg.anchor_sizes
    if cfg.anchor_sizes != "auto":
        return ANCHOR_PRESETS[cfg.anchor_sizes]
    if not stats or not stats.box_size_quantiles:
        return ANCHOR_PRESETS["default"]
    smallest = max(4, int(round(stats.box_size_quantiles[0] * image_scale)))
    return tuple(smallest * 2 ** i for i in range(5))


def model_kwargs(cfg: TrainConfig, stats: DataStats | None = None, image_scale: float = 1.0) -> dict[str, Any]:
    """The configuration as torchvision `FasterRCNN` keyword arguments (the one edge where it is read)."""
    return dict(
        min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(GREY_MEAN if cfg.in_channels == 1 else RGB_MEAN),
        image_std=list(GREY_STD if cfg.in_channels == 1 else RGB_STD),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=detections_per_img(cfg, stats),
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        rpn_anchor_generator=Float32AnchorGenerator(
            sizes=tuple((s,) for s in anchor_sizes(cfg, stats, image_scale)),
            aspect_ratios=(tuple(cfg.aspect_ratios),) * 5),
    )


def build_model(cfg: TrainConfig, stats: DataStats | None = None, *, load_weights: bool = True,
                image_scale: float = 1.0) -> FasterRCNN:
    """A torchvision FasterRCNN for `cfg`.

    Args:
        cfg: the configuration (architecture fields are read here).
        stats: dataset statistics; sets the class count (unless cfg.num_classes), detections per
            image and 'auto' anchors.
        load_weights: False builds the exact structure the weights would load into, without
            reading any file (for summaries and offline checks).
        image_scale: input resize factor, for 'auto' anchors.
    """
    kind = weight_kind(cfg.weights)
    pretrained = kind != "none"
    num_classes = cfg.num_classes or (stats.num_classes if stats else 1)

    # Pretrained v1 builds freeze BatchNorm in the backbone, as torchvision's builders do; the v2
    # recipe keeps ordinary BatchNorm in the backbone and adds it to the FPN and box head.
    bn = FrozenBatchNorm2d if (pretrained and cfg.version == "v1") else nn.BatchNorm2d
    resnet = RESNETS[cfg.backbone](weights=None, norm_layer=bn)
    if kind == "imagenet" and load_weights:
        state = W.load_state_dict(W.weight_file(cfg.backbone, cfg.version, "imagenet"))
        resnet.load_state_dict(state)
    if kind != "coco":  # the COCO file holds a 3-channel conv1: adapt it after loading
        resnet.conv1 = _first_conv(resnet.conv1, cfg.in_channels, cfg.stem_init if kind == "imagenet" and load_weights
                                   else None)

    layers = 0 if cfg.trainable_layers == "stem" else cfg.trainable_layers
    backbone = _resnet_fpn_extractor(resnet, layers, norm_layer=nn.BatchNorm2d if cfg.version == "v2" else None)

    kwargs = model_kwargs(cfg, stats, image_scale)
    num_anchors = kwargs["rpn_anchor_generator"].num_anchors_per_location()[0]
    if cfg.version == "v2":
        kwargs["rpn_head"] = RPNHead(backbone.out_channels, num_anchors, conv_depth=2)
        kwargs["box_head"] = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024],
                                                norm_layer=nn.BatchNorm2d)
    else:
        kwargs["rpn_head"] = RPNHead(backbone.out_channels, num_anchors)

    model = FasterRCNN(backbone, num_classes=COCO_NUM_CLASSES if kind == "coco" else num_classes + 1, **kwargs)

    if kind == "coco":
        if load_weights:
            state = W.load_state_dict(W.weight_file(cfg.backbone, cfg.version, "coco"))
            skipped = load_matching(model, state)
            if skipped:
                print(f"note: COCO weights: {len(skipped)} tensors of another shape left initialised: "
                      f"{skipped[:4]}", file=sys.stderr)
        body = model.backbone.body
        body.conv1 = _first_conv(body.conv1, cfg.in_channels, cfg.stem_init if load_weights else None)
        # Replace the 91-class predictor, as the study does (background + N classes).
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes + 1)
    elif kind == "checkpoint" and load_weights:
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        skipped = load_matching(model, state.get("model", state))
        if skipped:
            print(f"note: {cfg.weights}: tensors of another shape left initialised: {skipped}", file=sys.stderr)

    _apply_freezing(model, cfg.trainable_layers)
    keep_boxes_in_float32(model)  # boxes stay float32 under any autocast (detector/precision.py)
    return model


def _first_conv(old: nn.Conv2d, in_channels: int, init: str | None) -> nn.Conv2d:
    """The ResNet stem conv for `in_channels`. With pretrained weights (`init` set) and one channel,
    its kernel comes from the pretrained RGB kernel (64, 3, 7, 7) -> (64, 1, 7, 7):

    - 'sum' (timm's `adapt_input_conv`): the sum over R, G, B. A grey image then gives the activation
      the pretrained network gives the same image as three equal channels, which the BatchNorm after
      it (frozen with `trainable_layers` < 5) was fitted to.
    - 'mean' (the study's snippet): the mean, a third of that activation.

    `init` None leaves the new conv randomly initialised (no pretrained weights)."""
    if in_channels == old.in_channels:
        return old
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, bias=False)
    if init is not None:
        reduce = {"sum": old.weight.sum, "mean": old.weight.mean}[init]
        with torch.no_grad():
            new.weight.copy_(reduce(dim=1, keepdim=True).expand_as(new.weight))  # (64, 1, 7, 7)
    return new


def _apply_freezing(model: FasterRCNN, trainable_layers: int | str) -> None:
    """Set requires_grad on the backbone body to match the policy.

    torchvision's extractor already froze the stages outside `trainable_layers`; this also covers the
    conv1 swapped in after it ran (COCO builds) and the 'stem' policy (only conv1 trains).
    """
    body = model.backbone.body
    if trainable_layers == "stem":
        for name, p in body.named_parameters():
            p.requires_grad_(name.startswith("conv1."))
    elif trainable_layers == 5:
        for p in body.parameters():
            p.requires_grad_(True)
    else:
        body.conv1.weight.requires_grad_(False)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names left as initialised.

    Transfer from another head size (the predictor) or another first conv is reported, not fatal.
    """
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(k for k in own if k not in matching and not k.endswith("num_batches_tracked"))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def frozen_modules(model: FasterRCNN) -> list[str]:
    """Backbone children whose parameters are all frozen (e.g. ['conv1', 'layer1'])."""
    out = []
    for name, mod in model.backbone.body.named_children():
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def summary(cfg: TrainConfig, stats: DataStats | None = None) -> dict[str, Any]:
    """Architecture summary (offline: builds the structure without reading weight files)."""
    model = build_model(cfg, stats, load_weights=False)
    total, trainable = count_params(model)
    wf = W.weight_file(cfg.backbone, cfg.version, cfg.weights) if weight_kind(cfg.weights) != "checkpoint" else None
    return {
        "backbone": cfg.backbone, "version": cfg.version, "weights": cfg.weights,
        "trainable_layers": cfg.trainable_layers, "in_channels": cfg.in_channels,
        "num_classes": cfg.num_classes or (stats.num_classes if stats else 1),
        "params_total": total, "params_trainable": trainable,
        "params_total_m": round(total / 1e6, 2), "params_trainable_m": round(trainable / 1e6, 2),
        "frozen_modules": frozen_modules(model),
        "anchor_sizes": list(anchor_sizes(cfg, stats)),
        "box_detections_per_img": detections_per_img(cfg, stats),
        "weight_files": [] if wf is None else [{"name": wf.name, "path": str(wf.path), "present": wf.present}],
    }


def main(argv: list[str] | None = None) -> int:
    from detector.config import ConfigError, from_dict

    p = argparse.ArgumentParser(prog="python -m detector.model", description="Print an architecture summary.")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--version", default="v1")
    p.add_argument("--weights", default="none")
    p.add_argument("--trainable-layers", default=None,
                   help="0-5 or 'stem' (default: 3 with pretrained weights, as torchvision; 5 without)")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    tl: Any = a.trainable_layers
    if tl is None:
        tl = 5 if a.weights == "none" else 3
    elif tl != "stem":
        tl = int(tl) if tl.isdigit() else tl
    try:
        cfg = from_dict(dict(backbone=a.backbone, version=a.version, weights=a.weights, trainable_layers=tl,
                             in_channels=a.in_channels, num_classes=a.num_classes), source="arguments")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = summary(cfg)
    if a.json:
        print(json.dumps(s))
        return 0
    print(f"Faster R-CNN {s['version']}  {s['backbone']}-FPN  weights={s['weights']}  "
          f"trainable_layers={s['trainable_layers']}  in_channels={s['in_channels']}  classes={s['num_classes']}+bg")
    print(f"parameters   total {s['params_total_m']:.2f} M   trainable {s['params_trainable_m']:.2f} M")
    print(f"frozen       {', '.join(s['frozen_modules']) or '(none)'}")
    print(f"anchors      {s['anchor_sizes']} px, aspect ratios {list(cfg.aspect_ratios)}")
    for wf in s["weight_files"]:
        print(f"weights      {wf['name']}  {wf['path']}  [{'present' if wf['present'] else 'missing'}]")
    if not s["weight_files"]:
        print("weights      (no pretrained file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
