"""Augmentations for top-down, greyscale, small-object imagery; boxes follow every transform exactly.

Each transform takes an image (C, H, W) and boxes (N, 4) xyxy in px and returns both; the random
composition `Augment` also returns which boxes it kept. Coordinates are continuous: pixel column x
spans [x, x + 1), so a flip maps x to W - x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def hflip(img: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    w = img.shape[-1]
    return img.flip(-1), torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)


def vflip(img: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    h = img.shape[-2]
    return img.flip(-2), torch.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], dim=1)


def rot90(img: Tensor, boxes: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Rotate by k x 90 degrees counter-clockwise (torch.rot90 on the (H, W) plane)."""
    for _ in range(k % 4):
        w = img.shape[-1]
        img = torch.rot90(img, 1, dims=(-2, -1))
        # Counter-clockwise: the point (x, y) moves to (y, W - x).
        boxes = torch.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], dim=1)
    return img, boxes


def crop(img: Tensor, boxes: Tensor, top: int, left: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Crop a window; boxes are shifted and clipped, and those left with no area dropped (-> keep mask)."""
    img = img[..., top:top + height, left:left + width]
    b = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    b[:, 0::2] = b[:, 0::2].clamp(0, img.shape[-1])
    b[:, 1::2] = b[:, 1::2].clamp(0, img.shape[-2])
    # A sliver under one pixel left of an object is no object: drop it.
    keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
    return img, b[keep], keep


def resize(img: Tensor, boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Bilinear resize to (height, width); boxes scale by the exact per-axis factors."""
    sy, sx = height / img.shape[-2], width / img.shape[-1]
    img = F.interpolate(img[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return img, boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


class Augment:
    """Random flips, 90-degree rotations, scale jitter and crops, drawn from a given generator.

    Args:
        hflip, vflip, rot90: apply each with probability 1/2 (rot90: k uniform in 0..3).
        scale_jitter: (low, high) factor range, or None.
        crop_size: side of a random square crop in px (after scaling), or None.
    """

    def __init__(self, hflip: bool = True, vflip: bool = True, rot90: bool = True,
                 scale_jitter: tuple | None = None, crop_size: int | None = None):
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.scale_jitter, self.crop_size = scale_jitter, crop_size

    def __call__(self, img: Tensor, boxes: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        keep = torch.ones(len(boxes), dtype=torch.bool)
        u = torch.rand(4, generator=g).tolist()
        if self.scale_jitter is not None:
            lo, hi = self.scale_jitter
            s = lo + (hi - lo) * u[3]
            img, boxes = resize(img, boxes, max(1, round(img.shape[-2] * s)), max(1, round(img.shape[-1] * s)))
        if self.crop_size is not None and (img.shape[-2] > self.crop_size or img.shape[-1] > self.crop_size):
            ch, cw = min(self.crop_size, img.shape[-2]), min(self.crop_size, img.shape[-1])
            top = int(torch.randint(0, img.shape[-2] - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, img.shape[-1] - cw + 1, (1,), generator=g))
            img, boxes, keep = crop(img, boxes, top, left, ch, cw)
        if self.hflip and u[0] < 0.5:
            img, boxes = hflip(img, boxes)
        if self.vflip and u[1] < 0.5:
            img, boxes = vflip(img, boxes)
        if self.rot90:
            img, boxes = rot90(img, boxes, int(u[2] * 4))
        return img.contiguous(), boxes, keep
