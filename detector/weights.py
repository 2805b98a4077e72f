"""Pretrained weights: which files a configuration needs, where they live, and fetching them once.

Weights come from torchvision's weight enums through the standard torch hub cache
(`$TORCH_HOME/hub/checkpoints/<file name of the enum's URL>`). Loading never downloads: a trial
on a cluster must not start a download by itself. `python -m detector.weights fetch` downloads
every file a space can use, once, on a machine with internet access.

    python -m detector.weights fetch --space spaces/full.yaml
    python -m detector.weights fetch --all
    python -m detector.weights list --all
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import yaml
from torchvision.models import (ResNet18_Weights, ResNet34_Weights, ResNet50_Weights,
                                ResNet101_Weights)
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import (FasterRCNN_ResNet50_FPN_V2_Weights,
                                          FasterRCNN_ResNet50_FPN_Weights)

from detector.config import BACKBONES, VERSIONS

# torchvision's own builders use IMAGENET1K_V1 backbones for Faster R-CNN; so do we.
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
}
COCO_WEIGHTS: dict[tuple[str, str], WeightsEnum] = {
    ("resnet50", "v1"): FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    ("resnet50", "v2"): FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}
FETCH_HINT = "python -m detector.weights fetch --space SPACE.yaml (or --all) on a machine with internet access"


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weight file is not in the torch hub cache."""


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: the torchvision enum it comes from and its cache path."""

    enum: WeightsEnum

    @property
    def name(self) -> str:
        return f"{type(self.enum).__name__}.{self.enum.name}"

    @property
    def url(self) -> str:
        return self.enum.url

    @property
    def path(self) -> Path:
        # The same rule as torch.hub.load_state_dict_from_url: <hub dir>/checkpoints/<url basename>.
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)

    @property
    def present(self) -> bool:
        return self.path.is_file()


def weight_file(backbone: str, version: str, weights: str) -> WeightFile | None:
    """The pretrained file an architecture loads, or None for `none` and checkpoint paths."""
    if weights == "imagenet":
        return WeightFile(IMAGENET_WEIGHTS[backbone])
    if weights == "coco":
        if (backbone, version) not in COCO_WEIGHTS:
            raise ValueError(f"weights: 'coco' exists only for {sorted(COCO_WEIGHTS)}, "
                             f"got backbone={backbone!r} version={version!r}")
        return WeightFile(COCO_WEIGHTS[(backbone, version)])
    return None


def load_state_dict(wf: WeightFile) -> dict[str, torch.Tensor]:
    """Read a cached pretrained file; never downloads.

    Raises WeightsNotFoundError naming the weights, the expected path and the fetch command.
    """
    if not wf.present:
        raise WeightsNotFoundError(
            f"pretrained weights {wf.name} are not in the torch hub cache: expected {wf.path} "
            f"(TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}). Fetch them with: {FETCH_HINT}")
    # The same call torchvision's WeightsEnum.get_state_dict makes; the file exists, so it only loads.
    return torch.hub.load_state_dict_from_url(wf.url, progress=False, weights_only=True)


def files_for(combos) -> list[WeightFile]:
    """Distinct pretrained files used by an iterable of (backbone, version, weights)."""
    seen: dict[str, WeightFile] = {}
    for backbone, version, weights in combos:
        if weights == "coco" and (backbone, version) not in COCO_WEIGHTS:
            continue  # impossible combination: the search skips it, so nothing to fetch
        wf = weight_file(backbone, version, weights)
        if wf is not None:
            seen.setdefault(wf.name, wf)
    return list(seen.values())


def all_combos():
    return itertools.product(BACKBONES, VERSIONS, ("imagenet", "coco"))


def space_combos(path: str | os.PathLike):
    """(backbone, version, weights) combinations named by a space file's `arms:` axes.

    Read here with a few lines of YAML rather than through `search.space`, because `detector/`
    must run (on a cluster node's setup, on a GPU box) without the search side installed.
    """
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    arms = data.get("arms", {}) or {}

    def axis(key, default):
        v = arms.get(key, default)
        return v if isinstance(v, list) else [v]

    return itertools.product(axis("backbone", "resnet50"), axis("version", "v1"), axis("weights", "none"))


def fetch(files: list[WeightFile]) -> None:
    """Download files missing from the cache (torch hub checks the hash in the file name)."""
    for wf in files:
        if wf.present:
            print(f"present  {wf.name}  {wf.path}")
            continue
        print(f"fetching {wf.name}  {wf.url}")
        torch.hub.load_state_dict_from_url(wf.url, progress=True, check_hash=True, weights_only=True)
        print(f"saved    {wf.path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.weights", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["fetch", "list"])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--space", help="a space YAML file: every weight file its arms can use")
    g.add_argument("--all", action="store_true", help="every ImageNet and COCO file any architecture uses")
    args = p.parse_args(argv)
    files = files_for(all_combos() if args.all else space_combos(args.space))
    if args.action == "list":
        for wf in files:
            print(f"{'present' if wf.present else 'missing'}  {wf.name}  {wf.path}")
        return 0
    try:
        fetch(files)
    except Exception as e:  # network errors come in many types; say what failed and stop
        print(f"error: could not download: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
