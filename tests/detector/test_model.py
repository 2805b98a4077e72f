"""Model builder: every valid combination builds, trains a step and infers; freezing is exact."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from detector import config as C
from detector import weights as W
from detector.model import build_model, summary
from tests.conftest import TINY

# Body parameter-name prefixes that train, per policy: torchvision's trainable_backbone_layers
# counts ResNet stages from the top; 5 adds conv1 and bn1; 'stem' is the study's partial freezing.
TRAINABLE_PREFIXES = {
    0: (), 1: ("layer4",), 2: ("layer4", "layer3"), 3: ("layer4", "layer3", "layer2"),
    4: ("layer4", "layer3", "layer2", "layer1"),
    5: ("layer4", "layer3", "layer2", "layer1", "conv1", "bn1"), "stem": ("conv1",),
}
POLICIES = list(TRAINABLE_PREFIXES)


def valid_combos():
    for backbone, version in itertools.product(C.BACKBONES, C.VERSIONS):
        yield backbone, version, "none", 5
        for tl in POLICIES:
            yield backbone, version, "imagenet", tl
            if backbone == "resnet50":
                yield backbone, version, "coco", tl


def trained_combos():
    """What `test_every_combination_trains_a_step_and_infers` trains (35 of the 78 valid combinations;
    test_summary_for_every_combination_offline builds all 78): every depth and version from scratch
    and from ImageNet weights; every freezing policy on resnet18 with ImageNet weights (both
    versions); and every policy once on the COCO weights, the versions taking turns. Freezing is the
    same code at every depth (torchvision's stage names)."""
    for backbone, version in itertools.product(C.BACKBONES, C.VERSIONS):
        yield backbone, version, "none", 5
        policies = POLICIES if backbone == "resnet18" else [3]
        for tl in policies:
            yield backbone, version, "imagenet", tl
    for i, tl in enumerate(POLICIES):
        yield "resnet50", C.VERSIONS[i % 2], "coco", tl


@pytest.fixture(scope="module")
def weights_read_once(torch_home):
    """detector.weights.load_state_dict reads each generated file once for this module (they are
    45-170 MB; the builder copies the tensors into its model and never changes the dict)."""
    real, cache = W.load_state_dict, {}

    def load(wf):
        if wf.path not in cache:
            cache[wf.path] = real(wf)
        return dict(cache[wf.path])

    W.load_state_dict = load
    try:
        yield cache
    finally:
        W.load_state_dict = real


def _images_and_targets():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(1, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 20.0, 18.0], [30.0, 40.0, 36.0, 47.0]]),
                "labels": torch.tensor([1, 1])} for _ in range(2)]
    return imgs, targets


@pytest.mark.parametrize("backbone,version,weights,tl", list(trained_combos()),
                         ids=lambda v: str(v))
def test_every_combination_trains_a_step_and_infers(weights_read_once, backbone, version, weights, tl):
    cfg = C.from_dict({**TINY, "backbone": backbone, "version": version, "weights": weights,
                       "trainable_layers": tl})
    torch.manual_seed(0)
    model = build_model(cfg)
    body = model.backbone.body
    assert body.conv1.in_channels == 1
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # background + 1 class
    imgs, targets = _images_and_targets()
    model.train()
    losses = model(imgs, targets)
    sum(losses.values()).backward()
    for name, p in body.named_parameters():
        should_train = name.startswith(TRAINABLE_PREFIXES[tl])
        assert p.requires_grad == should_train, name
        assert (p.grad is not None) == should_train, name
    # Everything outside the backbone body (FPN, RPN, box head, predictor) always trains.
    for name, p in model.named_parameters():
        if not name.startswith("backbone.body."):
            assert p.requires_grad and p.grad is not None, name
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}


def test_v1_v2_heads_differ_as_torchvision_defines_them():
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

    v1 = build_model(C.TrainConfig(backbone="resnet18", version="v1"))
    v2 = build_model(C.TrainConfig(backbone="resnet18", version="v2"))
    assert isinstance(v1.roi_heads.box_head, TwoMLPHead)
    assert isinstance(v2.roi_heads.box_head, FastRCNNConvFCHead)
    assert len(v1.rpn.head.conv) == 1 and len(v2.rpn.head.conv) == 2


def test_pretrained_first_conv_is_the_rgb_sum_or_mean_and_other_layers_load(torch_home):
    # The generated files hold 1, 2, 3 in the R, G, B kernels: the grey kernel must be exactly 6
    # (stem_init: sum, the default) or 2 (mean, the study's).
    for weights, version in (("imagenet", "v1"), ("coco", "v1"), ("coco", "v2")):
        for stem_init, value in (("sum", 6.0), ("mean", 2.0)):
            m = build_model(C.TrainConfig(backbone="resnet50", version=version, weights=weights, trainable_layers=3,
                                          stem_init=stem_init))
            assert m.backbone.body.conv1.weight.shape == (64, 1, 7, 7)
            assert torch.equal(m.backbone.body.conv1.weight, torch.full((64, 1, 7, 7), value)), (weights, stem_init)
    state = torch.load(W.WeightFile(W.IMAGENET_WEIGHTS["resnet34"]).path, weights_only=True)
    m = build_model(C.TrainConfig(backbone="resnet34", weights="imagenet", trainable_layers=5))
    assert torch.equal(m.backbone.body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    # Three-channel input keeps the pretrained kernel unchanged.
    m3 = build_model(C.TrainConfig(backbone="resnet34", weights="imagenet", in_channels=3))
    assert torch.equal(m3.backbone.body.conv1.weight, state["conv1.weight"])


def test_grey_stem_gives_the_pretrained_activation_of_the_same_image_in_three_channels(torch_home, tmp_path):
    """conv1 of the 1-channel model on a grey image vs conv1 of the RGB model on that image repeated
    in R, G and B, each input normalised by its own model (grey: the RGB statistics averaged)."""
    import os

    import torchvision

    from tests.conftest import write_fake_hub_file

    # A file of the real name and layout whose conv1 is a real-looking kernel: random, with R, G and
    # B correlated as in trained networks (a shared part plus a smaller per-channel part).
    torch.manual_seed(0)
    home = tmp_path / "home"
    state = torchvision.models.resnet18(weights=None).state_dict()
    shared = torch.randn(64, 1, 7, 7)
    state["conv1.weight"] = shared + 0.3 * torch.randn(64, 3, 7, 7)
    write_fake_hub_file(home / "hub" / "checkpoints", W.WeightFile(W.IMAGENET_WEIGHTS["resnet18"]), state)
    old = os.environ["TORCH_HOME"]
    os.environ["TORCH_HOME"] = str(home)
    try:
        models = {(ch, init): build_model(C.TrainConfig(backbone="resnet18", weights="imagenet", trainable_layers=3,
                                                        in_channels=ch, stem_init=init)).eval()
                  for ch, init in ((3, "sum"), (1, "sum"), (1, "mean"))}
    finally:
        os.environ["TORCH_HOME"] = old
    grey = torch.rand(1, 96, 96) * 0.6 + 0.2  # an image of intensities 0.2-0.8

    def conv1(model, image):
        with torch.no_grad():
            return model.backbone.body.conv1(model.transform.normalize(image)[None])

    rgb = conv1(models[3, "sum"], grey.expand(3, -1, -1))
    rel = {init: ((conv1(models[1, init], grey) - rgb).norm() / rgb.norm()).item() for init in ("sum", "mean")}
    ratio = (conv1(models[1, "mean"], grey).norm() / rgb.norm()).item()
    # sum: equal up to the per-channel normalisation (means 0.406-0.485, stds 0.224-0.229 against
    # their averages: 2.8% of the activation here, against 67% with mean).
    assert rel["sum"] < 0.05
    # mean: a third of the activation the pretrained BatchNorm after conv1 expects.
    assert ratio == pytest.approx(1 / 3, abs=0.01)


def test_pretrained_v1_uses_frozen_batchnorm_like_torchvision(torch_home):
    from torchvision.ops.misc import FrozenBatchNorm2d

    m = build_model(C.TrainConfig(backbone="resnet18", weights="imagenet"))
    assert isinstance(m.backbone.body.bn1, FrozenBatchNorm2d)
    scratch = build_model(C.TrainConfig(backbone="resnet18"))
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)


def test_checkpoint_transfer_reports_and_skips_other_shapes(tmp_path, capsys):
    src = build_model(C.TrainConfig(backbone="resnet18", num_classes=3))
    path = tmp_path / "model.pt"
    torch.save({"model": src.state_dict()}, path)
    dst = build_model(C.TrainConfig(backbone="resnet18", weights=str(path), num_classes=1))
    assert torch.equal(dst.backbone.body.layer2[0].conv1.weight, src.backbone.body.layer2[0].conv1.weight)
    assert dst.roi_heads.box_predictor.cls_score.out_features == 2
    err = capsys.readouterr().err
    assert "roi_heads.box_predictor.cls_score.weight" in err


def test_param_counts_match_the_study():
    # The study's tables: ImageNet backbones, single-channel input, background + 1 class (millions,
    # two decimals). Counted on the structure the weights load into (frozen BatchNorm for v1).
    expected = {("resnet18", "v1"): 28.27, ("resnet34", "v1"): 38.37, ("resnet50", "v1"): 41.29,
                ("resnet101", "v1"): 60.23, ("resnet50", "v2"): 43.25}
    for (backbone, version), millions in expected.items():
        s = summary(C.TrainConfig(backbone=backbone, version=version, weights="imagenet"))
        assert s["params_total_m"] == millions


@pytest.mark.parametrize("changes,fragment", [
    ({"backbone": "resnet152"}, "backbone: must be one of ['resnet18', 'resnet34', 'resnet50', 'resnet101']"),
    ({"version": "v3"}, "version: must be one of ['v1', 'v2']"),
    ({"weights": "coco", "backbone": "resnet18", "trainable_layers": 3},
     "COCO weights exist only for backbone resnet50 (versions v1 and v2)"),
    ({"weights": "imagenet", "trainable_layers": 6}, "trainable_layers: must be an integer 0-5 or 'stem', got 6"),
    ({"weights": "none", "trainable_layers": 2}, "freezing means nothing without pretrained weights"),
    ({"weights": "places365"}, "weights: must be one of ['none', 'imagenet', 'coco'] or a checkpoint path"),
    ({"in_channels": 2}, "in_channels: must be 1 or 3, got 2"),
    ({"anchor_sizes": [8, 16]}, "anchor_sizes: must be 5 positive integers"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction: val_fraction + test_fraction must be < 1"),
    ({"test_fraction": -0.1}, "test_fraction: must be a number in [0, 1), got -0.1"),
    ({"split_seed": -1}, "split_seed: must be an integer >= 0, got -1"),
])
def test_invalid_values_name_field_value_and_rule(changes, fragment):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(changes, source="t.yaml")
    assert fragment in str(e.value) and str(e.value).startswith("t.yaml: ")


def test_missing_weights_error_names_file_and_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(W.WeightsNotFoundError) as e:
        build_model(C.TrainConfig(backbone="resnet18", weights="imagenet"))
    msg = str(e.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "python -m detector.weights fetch" in msg


def test_detections_per_image_follow_the_data():
    from detector.model import DataStats

    m = build_model(C.TrainConfig(backbone="resnet18"), DataStats(num_classes=2, max_objects=150))
    assert m.roi_heads.detections_per_img == 300
    assert m.roi_heads.box_predictor.cls_score.out_features == 3


@pytest.mark.parametrize("backbone,version,weights", [("resnet101", "v2", "imagenet"), ("resnet50", "v2", "coco")])
def test_summary_command_works_offline(tmp_path, backbone, version, weights):
    env = {"TORCH_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "detector.model", "--backbone", backbone, "--version", version,
                          "--weights", weights, "--trainable-layers", "3", "--json"],
                         capture_output=True, text=True, env=env, check=True)
    s = json.loads(out.stdout)
    assert isinstance(s["params_total"], int) and s["params_trainable"] < s["params_total"]
    assert s["weight_files"][0]["present"] is False
    assert s["frozen_modules"] == ["conv1", "bn1", "layer1"]  # v2 keeps trainable-type BatchNorm, frozen here


def test_summary_for_every_combination_offline():
    """Freezing changes what trains, never the model: per architecture one total; every layer trains
    at trainable_layers 5; each stage unfrozen adds trainable parameters; 'stem' (the first conv
    only) trains more than 0 and less than 1 (layer4)."""
    counts: dict = {}
    for backbone, version, weights, tl in valid_combos():
        s = summary(C.TrainConfig(backbone=backbone, version=version, weights=weights, trainable_layers=tl))
        assert (s["weight_files"] == []) == (weights == "none")
        counts.setdefault((backbone, version, weights), {})[tl] = (s["params_total"], s["params_trainable"])
    assert len(counts) >= 8
    for arch, by_tl in counts.items():
        assert len({total for total, _ in by_tl.values()}) == 1, arch
        assert by_tl[5][1] == by_tl[5][0], arch
        layers = sorted(t for t in by_tl if t != "stem")
        trainable = [by_tl[t][1] for t in layers]
        assert trainable == sorted(set(trainable)), (arch, layers, trainable)  # strictly increasing
        if "stem" in by_tl and {0, 1} <= set(by_tl):
            assert by_tl[0][1] < by_tl["stem"][1] < by_tl[1][1], arch


def test_weights_list_names_every_file_a_space_can_use(tmp_path):
    space = __import__("pathlib").Path(__file__).resolve().parents[2] / "spaces" / "full.yaml"
    out = subprocess.run([sys.executable, "-m", "detector.weights", "list", "--space", str(space)],
                         capture_output=True, text=True, env={"TORCH_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("missing") for line in lines)
    for name in ("resnet18-f37072fd.pth", "resnet101-63fe2227.pth", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
                 "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"):
        assert any(str(tmp_path / "hub" / "checkpoints" / name) in line for line in lines), name
