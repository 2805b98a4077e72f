"""Shared fixtures: tiny real datasets and a torch hub cache holding generated weight files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep the embedded dataset's cache and any torch hub lookups inside the test session.
os.environ.setdefault("SMALLOBJ_CACHE", str(Path(os.environ.get("PYTEST_TMP", "/tmp")) / "smallobj-test-cache"))
# Two threads on this 2-core machine; one per worker when xdist runs two (`make test`): two
# workers of two threads each made the CPU-bound tests 3-5x slower, not 2x.
torch.set_num_threads(2 if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") == "1" else 1)

# Small sizes that keep a CPU training step well under a second.
TINY = dict(min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], box_batch_size_per_image=16,
            rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, num_workers=0, batch_size=2)


# The files that read the shared real search (tests/search/conftest.py `study_run`, session-scoped:
# made once per worker that needs it): one xdist worker runs them all, so the search runs once.
SHARED_STUDY_RUN = ("tests/search/test_run.py", "tests/search/test_study.py", "tests/search/test_trackers.py")


# The files that take longest (the suite's `--durations` in bench/RESULTS.md), longest first: the
# two workers take them first, so that neither ends alone with a long file while the other idles.
# A file not named here runs after these, in collection order.
LONGEST_FIRST = (*SHARED_STUDY_RUN, "tests/search/test_replayed_kills.py", "tests/search/test_faults.py",
                 "tests/search/test_multinode.py", "tests/detector/test_engine.py", "tests/search/test_scale.py",
                 "tests/detector/test_precision.py", "tests/search/test_storage.py", "tests/detector/test_model.py",
                 "tests/search/test_replay.py", "tests/detector/test_deploy.py")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where CUDA is absent (`pytest -m gpu` on the GPU machine runs
    them). A test that reads `study_run` from a file not in SHARED_STUDY_RUN is refused (it would
    make a second copy of that search on another worker). The files of LONGEST_FIRST come first
    (each worker collects the same order; the scheduler below keeps it)."""
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    root = Path(__file__).resolve().parents[1]
    file_of = {id(item): Path(item.path).resolve().relative_to(root).as_posix() for item in items}
    rank = {f: i for i, f in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(file_of[id(item)], len(rank)))
    for item in items:
        if skip is not None and "gpu" in item.keywords:
            item.add_marker(skip)
        if "study_run" in getattr(item, "fixturenames", ()):
            rel = file_of[id(item)]
            assert rel in SHARED_STUDY_RUN, f"{rel} reads study_run: add it to tests/conftest.py SHARED_STUDY_RUN"


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs the suite on two xdist workers: each file is handed to one worker whole (its
    module-scoped fixtures, a search or an S3 server, are made once), and the SHARED_STUDY_RUN files
    to one worker together, in the order of pytest_collection_modifyitems (LONGEST_FIRST). (xdist's
    own `--dist loadgroup` ignores its marks under pytest 9, which stores node ids differently;
    this is xdist's scheduler hook with file scopes of our own.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would order the files by their number of tests

    class FileScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "study_run" if path in SHARED_STUDY_RUN else path

    return FileScopes(config, log)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A real COCO dataset written by the synthetic generator: 10 images of 64 px."""
    from detector import synth

    out = tmp_path_factory.mktemp("tiny")
    return synth.write_dataset(out, n_images=10, size=64, seed=3)


def wandb_records(path) -> list:
    """The records of a W&B run file (`run-*.wandb`, what offline mode writes and `wandb sync` uploads),
    as wandb's own protobuf `Record`s. The file is LevelDB's log format (32 KiB blocks of records with
    a 7-byte header: checksum, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte W&B header; wandb
    no longer ships a Python reader for it (its Go core reads it)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B run file"
    out, pos, block, parts = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            out.append(rec)
            parts = b""
    return out


def write_fake_hub_file(hub_checkpoints: Path, wf, state: dict) -> Path:
    """Save `state` under the exact file name torch hub uses for `wf` (a detector.weights.WeightFile)."""
    hub_checkpoints.mkdir(parents=True, exist_ok=True)
    path = hub_checkpoints / wf.path.name
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a generated file for every pretrained weight this tool uses:
    the real cache file names, the real state-dict keys and shapes, and conv1 kernels whose RGB
    channels hold 1, 2 and 3 (so the adapted greyscale kernel must be exactly 2)."""
    import torchvision
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

    from detector import weights as W

    home = tmp_path_factory.mktemp("torch_home")
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    ckpt_dir = home / "hub" / "checkpoints"
    try:
        for name, wenum in W.IMAGENET_WEIGHTS.items():
            state = getattr(torchvision.models, name)(weights=None).state_dict()
            state["conv1.weight"] = torch.cat([torch.full((64, 1, 7, 7), float(c)) for c in (1, 2, 3)], dim=1)
            write_fake_hub_file(ckpt_dir, W.WeightFile(wenum), state)
        for (backbone, version), wenum in W.COCO_WEIGHTS.items():
            builder = fasterrcnn_resnet50_fpn if version == "v1" else fasterrcnn_resnet50_fpn_v2
            state = builder(weights=None, weights_backbone=None).state_dict()
            if version == "v1":  # the real v1 file has FrozenBatchNorm2d in the body: no num_batches_tracked
                state = {k: v for k, v in state.items() if not (k.startswith("backbone.body") and
                                                                k.endswith("num_batches_tracked"))}
            state["backbone.body.conv1.weight"] = torch.cat(
                [torch.full((64, 1, 7, 7), float(c)) for c in (1, 2, 3)], dim=1)
            write_fake_hub_file(ckpt_dir, W.WeightFile(wenum), state)
        yield home
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old
