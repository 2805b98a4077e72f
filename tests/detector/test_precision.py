"""Mixed precision: boxes stay float32 under bf16 autocast, `amp` modes, resume across precisions.

CPU autocast with bfloat16 has CUDA autocast's dtype flow (the convolutions' outputs are bfloat16),
so these tests reproduce on the CPU what a GPU run would do to the boxes. Their images are wide, not
large (coordinates past 2000 px where bfloat16's steps are 8 px, few rows), and the models they build
themselves hold their convolution weights channels-last: on a CPU without AVX512-BF16, PyTorch runs
a bfloat16 convolution in its default layout through a slow matrix product (this file took over 33
minutes on such a CPU; a forward pass of the resnet18 detector on a 32 x 2048 image took 48.8 s in
bfloat16 against 0.9 s in float32, and 5.9 s channels-last). The layout changes no dtype.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

from detector import config as C
from detector import synth
from detector.data import DetectionDataset, load_splits
from detector.engine import Setup, detect, evaluate, fit, load_checkpoint
from detector.model import DataStats, build_model
from detector.precision import Float32AnchorGenerator, autocast
from tests.conftest import TINY

BF16 = torch.bfloat16
# Mosaics of the 64-px validation images at a 96-px pitch: 192 x 2016 px, half the objects at
# x >= 1024 (8-px bfloat16 steps). The 32-px gaps hold the grey mean, which normalises to 0: the
# border the model was trained with (its convolutions' zero padding), not a neighbouring tile.
MOSAIC_ROWS, MOSAIC_COLS, PITCH = 2, 21, 96
GREY_MEAN = 0.449


def _channels_last(model):
    """`model` with its convolution weights channels-last (the module docstring says why)."""
    return model.to(memory_format=torch.channels_last)


def _untrained(**changes):
    """An untrained resnet18 for 32-px-high images up to 2048 px wide, kept at scale 1."""
    cfg = C.from_dict({**TINY, "backbone": "resnet18", "min_size": 32, "max_size": 2048,
                       "rpn_pre_nms_top_n_test": 2000, "rpn_post_nms_top_n_test": 1000, **changes})
    torch.manual_seed(0)
    return _channels_last(build_model(cfg).eval())


def test_boxes_decoded_from_the_same_deltas_agree_within_a_hundredth_of_a_pixel_under_bf16():
    model = _untrained()
    images, _ = model.transform([torch.rand(1, 32, 2048)])
    with torch.no_grad():
        with autocast(torch.device("cpu"), BF16):
            feats = model.backbone(images.tensors)
            levels = list(feats.values())
            objectness, deltas = model.rpn.head(levels)
            anchors = model.rpn.anchor_generator(images, levels)
            assert levels[0].dtype == BF16  # the convolutions did run in bfloat16
            assert all(d.dtype == torch.float32 for d in deltas + objectness) and anchors[0].dtype == torch.float32
            from torchvision.models.detection.rpn import concat_box_prediction_layers
            _, flat = concat_box_prediction_layers(objectness, deltas)
            proposals = model.rpn.box_coder.decode(flat, anchors)
        fp32_anchors = model.rpn.anchor_generator(images, [f.float() for f in levels])
        # The reference: the same deltas and anchors decoded in float64.
        exact = model.rpn.box_coder.decode(flat.double(), [a.double() for a in fp32_anchors])
    assert torch.equal(anchors[0], fp32_anchors[0])
    assert anchors[0][:, 2].max() > 2000  # coordinates where bfloat16 steps are 8 px
    assert (proposals.double() - exact).abs().max() < 0.01

    # The box head: its deltas leave the predictor in float32 and decode against float32 proposals.
    boxes = [exact.reshape(-1, 4)[:500].float()]
    with torch.no_grad(), autocast(torch.device("cpu"), BF16):
        pooled = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, boxes, images.image_sizes))
        logits, box_deltas = model.roi_heads.box_predictor(pooled)
        decoded = model.roi_heads.box_coder.decode(box_deltas, boxes)
    assert logits.dtype == box_deltas.dtype == decoded.dtype == torch.float32
    exact_box = model.roi_heads.box_coder.decode(box_deltas.double(), [boxes[0].double()])
    assert (decoded.double() - exact_box).abs().max() < 0.01


def test_a_model_under_a_user_s_own_autocast_returns_float32_boxes():
    model = _untrained(box_score_thresh=0.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out = model([torch.rand(1, 32, 1100)])[0]
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32 and len(out["boxes"]) > 0
    # The generator really is torchvision's, with one method changed.
    assert isinstance(model.rpn.anchor_generator, AnchorGenerator)
    assert isinstance(model.rpn.anchor_generator, Float32AnchorGenerator)
    torch.jit.script(model)  # the float32 parts keep torchvision's model scriptable


def test_training_targets_are_encoded_from_float32_boxes_under_bf16():
    """The RPN's and the box head's regression targets: both sides of every encode are float32 in a
    bf16 training step (anchors and proposals included), and the losses come out float32."""
    model = _untrained().train()
    seen = []
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        encode = coder.encode

        def spy(reference_boxes, proposals, encode=encode):
            seen.append({b.dtype for b in reference_boxes} | {p.dtype for p in proposals})
            return encode(reference_boxes, proposals)

        coder.encode = spy
    boxes = torch.tensor([[1500.0, 4.0, 1512.0, 16.0], [1900.0, 14.0, 1910.0, 25.0]])
    with autocast(torch.device("cpu"), BF16):
        losses = model([torch.rand(1, 32, 2048)], [{"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64)}])
    assert seen == [{torch.float32}, {torch.float32}]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18 trained 6 epochs on 24 synthetic 64-px images (about 35 s here; validation mAP50
    0.24), its validation images and its files (model.pt: the best epoch's; checkpoint.pt: the last)."""
    root = tmp_path_factory.mktemp("trained")
    data = synth.write_dataset(root / "data", n_images=32, size=64, seed=3)
    train, val = load_splits(str(data), val_fraction=0.25, seed=0)[:2]
    cfg = C.from_dict({**TINY, "backbone": "resnet18", "epochs": 6, "lr": 0.02, "warmup_epochs": 0.5, "seed": 1,
                       "rpn_pre_nms_top_n_test": 600, "rpn_post_nms_top_n_test": 300})
    summary = fit(cfg, train, val, root / "run")
    return {"val": val, "model_pt": root / "run" / "model.pt", "last_pt": root / "run" / "checkpoint.pt",
            "best_map50": summary["best"]["map50"], "data": data}


def _mosaics(val) -> list:
    """Two 192 x 2016 batches tiled from the 64-px validation images: objects keep their trained scale."""
    tiles = DetectionDataset(val)
    batches = []
    for offset in (0, 3):
        img = torch.full((1, PITCH * MOSAIC_ROWS, PITCH * MOSAIC_COLS), GREY_MEAN)
        boxes, labels = [], []
        for k in range(MOSAIC_ROWS * MOSAIC_COLS):
            x, t = tiles[(k + offset) % len(tiles)]
            r, c = divmod(k, MOSAIC_COLS)
            img[:, PITCH * r:PITCH * r + 64, PITCH * c:PITCH * c + 64] = x
            boxes.append(t["boxes"] + torch.tensor([float(PITCH * c), float(PITCH * r)] * 2))
            labels.append(t["labels"])
        batches.append(([img], [{"boxes": torch.cat(boxes), "labels": torch.cat(labels)}]))
    return batches


TILES = MOSAIC_ROWS * MOSAIC_COLS


def _mosaic_model(model_pt, float32_boxes: bool = True):
    """The trained weights in a model sized for the mosaics (the transform keeps them at scale 1),
    with the proposal and detection budgets of TINY per tile (200 / 100 / 100): a smaller budget
    for the whole mosaic leaves each tile a few proposals and makes its score a matter of luck."""
    ck = load_checkpoint(model_pt)
    cfg = C.from_dict(ck["config"]).replace(
        min_size=PITCH * MOSAIC_ROWS, max_size=PITCH * MOSAIC_COLS, rpn_pre_nms_top_n_test=200 * TILES,
        rpn_post_nms_top_n_test=100 * TILES, box_detections_per_img=100 * TILES)
    stats = DataStats(**{**ck["stats"], "box_size_quantiles": tuple(ck["stats"]["box_size_quantiles"])})
    model = build_model(cfg, stats, load_weights=False, image_scale=ck["image_scale"])
    model.load_state_dict(ck["model"])
    if not float32_boxes:  # torchvision as it comes: anchors and head outputs in the autocast dtype
        ag = model.rpn.anchor_generator
        model.rpn.anchor_generator = AnchorGenerator(ag.sizes, ag.aspect_ratios)
        model.rpn.head._forward_hooks.clear()
        model.roi_heads.box_predictor._forward_hooks.clear()
    return _channels_last(model.eval()), stats


def _shift_px(reference: list[dict], other: list[dict]) -> float:
    """The median over `reference`'s confident detections (score >= 0.3) centred at x >= 1024 (where
    bfloat16's steps are 8 px) of the largest coordinate difference to `other`'s detection that
    overlaps it most, in px."""
    shifts = []
    for ref, oth in zip(reference, other):
        keep = (ref["scores"] >= 0.3) & ((ref["boxes"][:, 0] + ref["boxes"][:, 2]) / 2 >= 1024)
        if keep.any() and len(oth["boxes"]):
            best = box_iou(ref["boxes"][keep], oth["boxes"]).argmax(dim=1)
            shifts += (ref["boxes"][keep] - oth["boxes"][best]).abs().amax(dim=1).tolist()
    assert len(shifts) >= 20, len(shifts)
    return float(torch.tensor(shifts).median())


@pytest.mark.slow
def test_a_trained_model_scores_the_same_map50_under_bf16_as_in_fp32_on_2000_px_images(trained):
    batches = _mosaics(trained["val"])
    scores, detections = {}, {}
    for name, float32_boxes, dtype in (("fp32", True, None), ("bf16", True, BF16), ("bf16, torchvision's", False, BF16)):
        # The last epoch's weights (checkpoint.pt), not the best epoch's: the same model whichever
        # epoch validation happened to prefer.
        model, stats = _mosaic_model(trained["last_pt"], float32_boxes)
        seen = detections[name] = []
        model.register_forward_hook(lambda module, inputs, out, seen=seen: seen.extend(out))
        scores[name] = evaluate(model, batches, Setup(torch.device("cpu"), stats, 1.0, dtype), 100 * TILES)["map50"]
    shifts = {name: _shift_px(detections["fp32"], detections[name]) for name in ("bf16", "bf16, torchvision's")}
    print(json.dumps({"map50": scores, "median shift px": shifts}))
    assert trained["best_map50"] > 0.2 and scores["fp32"] > 0.1  # a model that detects, at its trained scale
    assert abs(scores["bf16"] - scores["fp32"]) <= 0.01
    # What the float32 boxes prevent: under torchvision's own dtype flow the same model's boxes move
    # by bfloat16's steps (a median 7.7 px against 0.04 with them, here), and it scores lower (by
    # 0.026 and 0.012 on two CPUs).
    assert shifts["bf16"] < 0.5 and shifts["bf16, torchvision's"] > 2.0
    assert scores["bf16, torchvision's"] < scores["fp32"]


@pytest.mark.slow
def test_predict_runs_in_the_precision_of_evaluation(trained, tmp_path):
    from detector import predict

    ck = load_checkpoint(trained["model_pt"])
    ck["config"]["amp"] = "bf16"
    torch.save(ck, tmp_path / "model.pt")
    images = trained["data"].parent / "images"
    assert predict.main(["--checkpoint", str(tmp_path / "model.pt"), "--images", str(images),
                         "--out", str(tmp_path / "det.json"), "--device", "cpu", "--score-thresh", "0.05"]) == 0
    written = json.loads((tmp_path / "det.json").read_text())
    first = sorted(images.rglob("*.png"))[0]
    from detector.data import Report, decode_image, to_tensor
    from detector.engine import model_from_checkpoint

    model = model_from_checkpoint(tmp_path / "model.pt").model
    x = to_tensor(*decode_image(first, Report()))
    mine = [d for d in written if d["image_id"] == 1]
    for dtype, same in ((BF16, True), (None, False)):
        out = detect(model, [x], torch.device("cpu"), dtype)[0]
        keep = out["scores"] >= 0.05
        expected = [round(s, 5) for s in out["scores"][keep].tolist()]
        assert ([d["score"] for d in mine] == expected) is same, dtype


@pytest.mark.parametrize("value, expected", [(True, "bf16"), (False, "off"), ("fp16", "fp16"), ("off", "off")])
def test_amp_is_a_mode_and_the_old_boolean_still_reads(value, expected):
    assert C.from_dict({"amp": value}).amp == expected


def test_amp_rejects_other_values_naming_the_modes(tmp_path):
    (tmp_path / "c.yaml").write_text("amp: float8\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml: amp: must be one of \['off', 'bf16', 'fp16'\], got 'float8'"):
        C.load(tmp_path / "c.yaml")
    # YAML's own `off` is a boolean: it still means float32.
    (tmp_path / "c.yaml").write_text("amp: off\n")
    assert C.load(tmp_path / "c.yaml").amp == "off"


@pytest.fixture(scope="module")
def tiny_splits(tiny_data):
    return load_splits(str(tiny_data), val_fraction=0.3, seed=0)[:2]


class _Stop(Exception):
    pass


def _stop_after(n):
    def cb(m, ck):
        if m["epoch"] == n:
            raise _Stop
    return cb


@pytest.mark.parametrize("first, then", [pytest.param("bf16", "fp16", marks=pytest.mark.slow),  # fp16 on a CPU: 45 s
                                         ("fp16", "off")])
def test_resume_continues_in_another_precision(tiny_splits, tmp_path, first, then):
    """The rule (engine.RESUME_MAY_CHANGE): amp may change on resume; the gradient scaler starts fresh
    when the checkpoint has none (bf16 and off save an empty one) and is dropped when fp16 ends."""
    base = {**TINY, "backbone": "resnet18", "epochs": 2, "lr": 0.01, "warmup_epochs": 0.5, "seed": 1}
    with pytest.raises(_Stop):
        fit(C.from_dict({**base, "amp": first}), *tiny_splits, tmp_path, on_epoch=_stop_after(1))
    assert bool(load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]) is (first == "fp16")
    logs = []
    s = fit(C.from_dict({**base, "amp": then}), *tiny_splits, tmp_path, resume=True, log=logs.append)
    assert s["epochs_run"] == 2 and s["amp"] == then and math.isfinite(s["best"]["loss"])
    assert f"amp {first} -> {then}" in logs[0]
    assert bool(load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]) is (then == "fp16")


def test_resume_refuses_any_other_changed_field_and_says_which_may_change(tiny_splits, tmp_path):
    base = {**TINY, "backbone": "resnet18", "epochs": 2, "seed": 1}
    with pytest.raises(_Stop):
        fit(C.from_dict(base), *tiny_splits, tmp_path, on_epoch=_stop_after(1))
    with pytest.raises(C.ConfigError, match=r"differing fields: \['lr', 'amp'\]; only \['amp'\] may change"):
        fit(C.from_dict({**base, "amp": "bf16", "lr": 0.02}), *tiny_splits, tmp_path, resume=True)
