"""Export a trained model to ONNX or TorchScript, checked against PyTorch before it is written.

    python -m detector.export --checkpoint best.pt --format onnx|torchscript --out FILE
                              [--image PATH] [--opset 17]

The exported model takes ONE single-channel image of any height and width: a float32 tensor of
shape (1, H, W) with values in [0, 1] (what `detector.data.to_tensor` makes of a file: 8-bit images
divided by 255, 16-bit ones by their own min..max), and returns `boxes` (N, 4) float32 x0 y0 x1 y1 in
the image's pixels, `labels` (N,) int64 (1..C: label c is class c of the model file's `class_names`
and category id `category_ids[c - 1]`, both stored in the exported file) and `scores` (N,) float32,
best first, after the model's own score threshold, NMS and detection cap. It runs in float32
whatever precision the model was trained in.

ONNX: opset 17 by default, through torch.onnx's TorchScript-based exporter (`dynamo=False`, the path
torchvision's detection models are tested on); dynamic axes: the image's height and width, and the
number of detections. The class names, category ids and the operating threshold (the score that
maximised F1 on validation; the model returns every detection down to its box_score_thresh) are in
the model's metadata (`class_names`, `category_ids`, `score_threshold`, JSON). TorchScript:
`torch.jit.script`; they are the extra files `class_names.json`, `category_ids.json` and
`score_threshold.json`.

Before anything is written, the exported model and the PyTorch model run on a real image
(`--image`; by default the first image of the embedded synthetic dataset) and must agree: the same
number of detections and labels, boxes within 1e-3 px, scores within 1e-4 (onnxruntime runs the
ONNX file). A model that disagrees is not written, and the largest difference is printed (exit 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detector.config import ConfigError
from detector.data import Report, decode_image, ensure_default_data, to_tensor
from detector.engine import LoadedModel, model_from_checkpoint

FORMATS = ("onnx", "torchscript")
BOX_TOL_PX, SCORE_TOL = 1e-3, 1e-4


class SingleImageDetector(nn.Module):
    """One (1, H, W) image in, (boxes, labels, scores) out: the exported model's interface."""

    def __init__(self, model: nn.Module, in_channels: int):
        super().__init__()
        self.model, self.in_channels = model.eval(), in_channels

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.expand(3, -1, -1) if self.in_channels == 3 else image
        if torch.jit.is_scripting():
            detections = self.model([x])[1]  # scripted torchvision detectors return (losses, detections)
        else:
            detections = self.model([x])
        d = detections[0]
        return d["boxes"], d["labels"], d["scores"]


def _metadata(loaded: LoadedModel) -> dict[str, str]:
    return {"class_names": json.dumps(loaded.class_names), "category_ids": json.dumps(loaded.category_ids),
            "score_threshold": json.dumps(loaded.score_threshold)}  # null: the model file has none


def export_onnx(net: SingleImageDetector, example: torch.Tensor, path: Path, opset: int, meta: dict) -> None:
    import onnx

    torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                      output_names=["boxes", "labels", "scores"],
                      dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                    "labels": {0: "detections"}, "scores": {0: "detections"}})
    proto = onnx.load(str(path))
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def run_onnx(path: Path, image: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["boxes", "labels", "scores"], {"image": image.numpy()})


def export_torchscript(net: SingleImageDetector, path: Path, meta: dict) -> None:
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(path), _extra_files={f"{k}.json": v for k, v in meta.items()})


def run_torchscript(path: Path, image: torch.Tensor) -> list[np.ndarray]:
    scripted = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [t.numpy() for t in scripted(image)]


def differences(reference: list[np.ndarray], exported: list[np.ndarray]) -> tuple[bool, str]:
    """(whether the exported model's output agrees with the reference, the largest differences)."""
    (rb, rl, rs), (eb, el, es) = reference, exported
    if len(rb) != len(eb):
        return False, f"{len(eb)} detections instead of {len(rb)}"
    if len(rb) == 0:
        return True, "no detections on the check image (nothing to compare: use an image with objects)"
    box, score = float(np.abs(rb - eb).max()), float(np.abs(rs - es).max())
    labels_differ = int((rl != el).sum())
    ok = box <= BOX_TOL_PX and score <= SCORE_TOL and labels_differ == 0
    return ok, (f"{len(rb)} detections; largest box difference {box:.2e} px (limit {BOX_TOL_PX:g}), score "
                f"{score:.2e} (limit {SCORE_TOL:g}), labels differing {labels_differ}")


def check_image(path: str | None) -> tuple[torch.Tensor, Path]:
    """The image the export is verified on, as the exported model takes it."""
    if path is None:
        ann = ensure_default_data()
        path = sorted((ann.parent / "images").glob("*.png"))[0]
    arr, rng = decode_image(Path(path), Report())
    return to_tensor(arr, rng), Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.pt of search.export, or model.pt of detector.train")
    p.add_argument("--format", required=True, help="onnx or torchscript")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--image", help="image to verify the export on (default: one of the embedded data's)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    a = p.parse_args(argv)
    if a.format not in FORMATS:
        print(f"error: --format {a.format}: must be one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    try:
        image, image_path = check_image(a.image)
    except OSError as e:
        print(f"error: --image {a.image}: not a readable image ({e})", file=sys.stderr)
        return 2
    try:
        loaded = model_from_checkpoint(a.checkpoint, "cpu")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    net = SingleImageDetector(loaded.model, loaded.cfg.in_channels).eval()
    with torch.no_grad():
        reference = [t.numpy() for t in net(image)]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if a.format == "onnx":
            export_onnx(net, image, tmp, a.opset, _metadata(loaded))
            exported = run_onnx(tmp, image)
        else:
            export_torchscript(net, tmp, _metadata(loaded))
            exported = run_torchscript(tmp, image)
        ok, diff = differences(reference, exported)
        if not ok:
            print(f"error: the {a.format} model disagrees with PyTorch on {image_path}: {diff}; nothing written",
                  file=sys.stderr)
            return 1
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's file is private; the model is an ordinary output file
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{out}: {a.format}, checked on {image_path} against PyTorch: {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
