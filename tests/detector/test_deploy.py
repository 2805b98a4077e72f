"""A trained model as users take it out. detector.predict writes detections in the user's own ids:
pycocotools' COCOeval, the reference COCO evaluation, scores its output against the user's
annotation file directly and gets the number the project's own evaluation gives the same model on
the same images. detector.export writes ONNX (run by onnxruntime) and TorchScript models that give
PyTorch's detections on images of other sizes than the one they were checked on."""
from __future__ import annotations

import json
import os

import pytest
import torch

from detector import config as C
from detector import export, predict, synth
from detector.data import DetectionDataset, Report, collate, decode_image, load_any, load_splits, to_tensor
from detector.engine import Setup, evaluate, fit, load_checkpoint, model_from_checkpoint
from tests.conftest import TINY

CATEGORY = 7          # the user's id of the one class
FIRST_IMAGE_ID = 501  # the user's image ids: 501, 504, 507, ...


def _as_users_file(coco: dict, images: list[dict]) -> dict:
    """`coco` (one category, ids from 1) renumbered the way labelling tools write files: the class is
    id 7, an unused id-0 supercategory comes first (Roboflow's), image ids start at 501 in steps of 3."""
    new_id = {im["id"]: FIRST_IMAGE_ID + 3 * k for k, im in enumerate(coco["images"])}
    keep = {im["id"] for im in images}
    return {"images": [{**im, "id": new_id[im["id"]]} for im in images],
            "annotations": [{**a, "image_id": new_id[a["image_id"]], "category_id": CATEGORY}
                            for a in coco["annotations"] if a["image_id"] in keep],
            "categories": [{"id": 0, "name": "objects", "supercategory": "none"},
                           {"id": CATEGORY, "name": "object", "supercategory": "objects"}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18 trained 6 epochs on 24 of 32 synthetic 64-px images written in the user's ids
    (about 35 s here); `val.json`: the other 8, in the same ids."""
    root = tmp_path_factory.mktemp("predict")
    ann = synth.write_dataset(root, n_images=32, size=64, seed=3)
    coco = json.loads(ann.read_text())
    (root / "user.json").write_text(json.dumps(_as_users_file(coco, coco["images"])))
    train, val = load_splits(str(root / "user.json"), val_fraction=0.25, seed=0)[:2]
    val_names = {p.split("/")[-1] for p in val.file_names}
    (root / "val.json").write_text(json.dumps(_as_users_file(
        coco, [im for im in coco["images"] if im["file_name"].split("/")[-1] in val_names])))
    cfg = C.from_dict({**TINY, "backbone": "resnet18", "epochs": 6, "lr": 0.02, "warmup_epochs": 0.5, "seed": 1})
    fit(cfg, train, val, root / "run")
    return root


def test_categories_are_the_ones_annotations_use_with_the_files_own_ids(trained):
    ds = load_any(trained / "user.json")
    assert ds.class_names == ["object"] and ds.categories() == [{"id": CATEGORY, "name": "object"}]
    assert ds.report.counts["unused_category"] == 1 and ds.report.examples["unused_category"] == ["id 0: objects"]
    assert ds.image_ids[:3] == [501, 504, 507]
    saved = load_checkpoint(trained / "run" / "model.pt")  # the model carries them
    assert saved["class_names"] == ["object"] and saved["category_ids"] == [CATEGORY]


def test_cocoeval_on_predict_output_equals_the_projects_evaluation(trained, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "det.json"
    assert predict.main(["--checkpoint", str(trained / "run" / "model.pt"), "--images", str(trained),
                         "--data", str(trained / "val.json"), "--out", str(out), "--batch-size", "3",
                         "--device", "cpu", "--score-thresh", "0"]) == 0
    err = capsys.readouterr().err
    assert "24 image(s) in" in err and "operating threshold" not in err  # val.json does not list the training images
    detections = json.loads(out.read_text())
    val_ids = {im["id"] for im in json.loads((trained / "val.json").read_text())["images"]}
    assert detections and {d["category_id"] for d in detections} == {CATEGORY}
    assert {d["image_id"] for d in detections} <= val_ids

    gt = COCO(str(trained / "val.json"))
    coco_eval = COCOeval(gt, gt.loadRes(str(out)), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    reference_map50 = coco_eval.stats[1]

    model, cfg, class_names = model_from_checkpoint(trained / "run" / "model.pt")[:3]
    val = load_any(trained / "val.json", class_names=class_names)
    loader = torch.utils.data.DataLoader(DetectionDataset(val, cfg.in_channels), batch_size=3, collate_fn=collate)
    ours = evaluate(model, loader, Setup.create(cfg, val, "cpu"), model.roi_heads.detections_per_img)
    assert reference_map50 > 0.05  # a model that finds objects: the comparison means something
    # predict rounds scores to 1e-5 and boxes to 1e-2 px; nothing else differs.
    assert ours["map50"] == pytest.approx(reference_map50, abs=1e-3)


def test_the_operating_threshold_validation_chose_is_what_predict_and_evaluate_apply(trained, tmp_path, capsys):
    """model.pt carries the score that maximised F1 on validation at its epoch; evaluating that
    model on the same images at that threshold gives the epoch's F1 again, and predict keeps exactly
    the detections at or above it unless told another threshold."""
    saved = load_checkpoint(trained / "run" / "model.pt")
    history = [json.loads(x) for x in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(h for h in history if h["epoch"] == saved["epoch"])
    thr = saved["score_threshold"]
    assert thr == epoch["score_threshold"] and 0.05 <= thr < 1 and epoch["f1"] > 0.3
    loaded = model_from_checkpoint(trained / "run" / "model.pt")
    assert loaded.score_threshold == thr
    val = load_any(trained / "val.json", class_names=loaded.class_names)
    loader = torch.utils.data.DataLoader(DetectionDataset(val, loaded.cfg.in_channels), batch_size=3, collate_fn=collate)
    setup = Setup.create(loaded.cfg, val, "cpu")
    again = evaluate(loaded.model, loader, setup, loaded.model.roi_heads.detections_per_img, thr)
    chosen_here = evaluate(loaded.model, loader, setup, loaded.model.roi_heads.detections_per_img)
    assert again["f1"] == pytest.approx(epoch["f1"], abs=1e-9) and chosen_here["score_threshold"] == thr
    common = ["--checkpoint", str(trained / "run" / "model.pt"), "--images", str(trained), "--data",
              str(trained / "val.json"), "--device", "cpu"]
    assert predict.main([*common, "--out", str(tmp_path / "all.json"), "--score-thresh", "0"]) == 0
    assert predict.main([*common, "--out", str(tmp_path / "default.json")]) == 0
    assert f"score >= {thr:.4f}, the model's operating threshold" in capsys.readouterr().err
    every = json.loads((tmp_path / "all.json").read_text())
    kept = json.loads((tmp_path / "default.json").read_text())
    assert 0 < len(kept) < len(every)
    assert len(kept) == sum(d["score"] >= round(thr, 5) for d in every)


def test_unusable_inputs_are_refused_naming_the_file(trained, tmp_path, capsys):
    args = ["--checkpoint", str(trained / "run" / "model.pt"), "--out", str(tmp_path / "d.json")]
    (tmp_path / "empty").mkdir()
    assert predict.main([*args, "--images", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: no image files" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{\"images\": 3}")
    assert predict.main([*args, "--images", str(trained), "--data", str(tmp_path / "bad.json")]) == 2
    assert f"{tmp_path / 'bad.json'}: key 'images' must be a list" in capsys.readouterr().err
    assert predict.main([*args, "--images", str(trained), "--batch-size", "0"]) == 2
    assert "--batch-size 0: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_exported_model_detects_what_pytorch_detects_on_an_image_of_another_size(trained, tmp_path, fmt, capsys):
    image = sorted((trained / "images").glob("*.png"))[-1]
    out = tmp_path / f"model.{fmt}"
    assert export.main(["--checkpoint", str(trained / "run" / "model.pt"), "--format", fmt, "--out", str(out),
                        "--image", str(image)]) == 0
    assert "largest box difference" in capsys.readouterr().out and out.stat().st_size > 10_000_000
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file this process writes, not private
    loaded = model_from_checkpoint(trained / "run" / "model.pt")
    net = export.SingleImageDetector(loaded.model, loaded.cfg.in_channels)
    # Not the check image's size: two images side by side, 64 x 128 px.
    a, b = (to_tensor(*decode_image(p, Report())) for p in sorted((trained / "images").glob("*.png"))[:2])
    wide = torch.cat([a, b], dim=2)
    with torch.no_grad():
        reference = [t.numpy() for t in net(wide)]
    got = export.run_onnx(out, wide) if fmt == "onnx" else export.run_torchscript(out, wide)
    ok, diff = export.differences(reference, got)
    assert len(reference[0]) > 0 and ok, diff
    if fmt == "onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    else:
        files = {"class_names.json": "", "category_ids.json": "", "score_threshold.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        meta = {k.removesuffix(".json"): v for k, v in files.items()}
    assert json.loads(meta["class_names"]) == ["object"] and json.loads(meta["category_ids"]) == [CATEGORY]
    assert json.loads(meta["score_threshold"]) == loaded.score_threshold is not None


def test_an_export_that_disagrees_writes_nothing_and_bad_arguments_are_refused(trained, tmp_path, capsys, monkeypatch):
    args = ["--checkpoint", str(trained / "run" / "model.pt"), "--out", str(tmp_path / "m.onnx"),
            "--image", str(sorted((trained / "images").glob("*.png"))[0])]
    assert export.main([*args, "--format", "tflite"]) == 2
    assert "--format tflite: must be one of onnx, torchscript" in capsys.readouterr().err
    real = export.run_onnx
    monkeypatch.setattr(export, "run_onnx", lambda path, image: [real(path, image)[0] + 0.01, *real(path, image)[1:]])
    assert export.main([*args, "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and "largest box difference 1.00e-02 px" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_model_file_of_another_configuration_schema_is_refused_with_the_fields(trained, tmp_path, capsys):
    ck = load_checkpoint(trained / "run" / "model.pt")
    del ck["config"]["nonfinite_patience"]
    ck["config"]["retired_field"] = 1
    torch.save(ck, tmp_path / "old.pt")
    for command in (predict, export):
        extra = ["--format", "onnx"] if command is export else ["--images", str(trained)]
        assert command.main(["--checkpoint", str(tmp_path / "old.pt"), "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert "written with another version of the configuration (fields missing: ['" in err
        assert "fields unknown to this version: ['retired_field']" in err
    assert not (tmp_path / "x").exists()
