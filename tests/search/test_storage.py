"""Runs on object storage: a real S3 protocol (moto's S3 server on localhost, reached by pyarrow and
Ray exactly as AWS would be, through AWS_ENDPOINT_URL), real Ray, real Optuna. The searches' trials
replay synthetic curves (search.curve_trainable: a checkpoint every epoch, through the same
`tune.report` a training trial uses): what goes where is the search's business, not the model's."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pyarrow.fs
import pytest

from search import export, run, storage
from search.curve_trainable import CKPT_NAME
from search.results import collect
from searchutil import (SearchProcess, assert_every_trial_once, assert_only_each_arms_best_keeps_checkpoints,
                        replay_flags, wait_until, write_space)

SPACE = """
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.002, high: 0.03, log: true}
budget: {max_epochs: 3, grace_period: 1, reduction_factor: 2, trials_per_arm: 3, max_concurrent: 2}
"""


pytestmark = pytest.mark.slow  # every test here runs whole searches

@pytest.fixture(scope="module")
def bucket():
    """An S3 endpoint on localhost with one empty bucket; the AWS variables point every process
    started from here (the search, its Ray workers) at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="smallobj")
    try:
        yield "s3://smallobj/runs"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _keys(uri: str) -> list[str]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    return sorted(str(Path(i.path).relative_to(root)) for i in
                  fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)) if i.type == pyarrow.fs.FileType.File)


def _search(tmp_path: Path, *args: str, time_scale: float = 0.01) -> SearchProcess:
    """search.run on the space file in tmp_path, its trials replaying curves recorded for it (a
    resumed run replays the same ones: its run.json names them)."""
    return SearchProcess("--num-cpus", "2", *args, *replay_flags(tmp_path / "s.yaml", args, time_scale),
                         log_dir=tmp_path)


def test_a_run_on_s3_keeps_everything_in_the_bucket(bucket, tiny_data, tmp_path, capsys):
    space = write_space(tmp_path, tiny_data, SPACE)
    with _search(tmp_path, "--space", str(space), "--storage", bucket, "--name", "s3run",
                 "--local-dir", str(tmp_path / "work")) as search:
        assert search.wait(600) == 0, search.output

    keys = _keys(f"{bucket}/s3run")
    for name in ("space.yaml", "run.json", "run.log", "optuna.journal", "results.csv", "trials.json",
                 "trials/optuna.journal", "trials/tuner.pkl"):
        assert name in keys, (name, keys)
    trial_dirs = {k.split("/")[1] for k in keys if k.startswith("trials/resnet18")}
    assert len(trial_dirs) == 6
    work = tmp_path / "work" / "s3run"  # the working copy holds the small files only...
    assert not [p for p in work.rglob("checkpoint_*")]
    assert_every_trial_once(work, n_trials=6, max_epochs=3)

    def in_bucket(record) -> list[str]:  # ...the checkpoints went to the bucket, where the pruner kept the best's
        d = Path(record.path).name
        return sorted({k.split("/")[2] for k in keys if k.startswith(f"trials/{d}/checkpoint_")
                       and k.endswith(CKPT_NAME)})
    records = collect(work, "map50", 3)
    assert {Path(r.path).name for r in records} == trial_dirs
    assert_only_each_arms_best_keeps_checkpoints(records, in_bucket)

    # Anyone with access fetches the run and reports on it or exports from it.
    assert storage.main(["fetch", f"{bucket}/s3run", str(tmp_path / "fetched")]) == 0
    assert_every_trial_once(tmp_path / "fetched", n_trials=6, max_epochs=3)
    # (replayed trials train no model: configurations only)
    assert export.main([str(tmp_path / "fetched"), "--out", str(tmp_path / "exp"), "--no-weights"]) == 0
    assert (tmp_path / "exp" / "best.yaml").exists()
    # The weights of a run on S3 stay in the bucket (fetch leaves checkpoints there); export takes the
    # chosen trial's from its newest kept checkpoint there.
    best = records[0]
    rel = Path(best.path).relative_to(work).as_posix()
    fs, root = pyarrow.fs.FileSystem.from_uri(f"{bucket}/s3run/{rel}")
    for n, content in ((0, b"older"), (2, b"newest")):
        with fs.open_output_stream(f"{root}/checkpoint_{n:06d}/model.pt") as f:
            f.write(content)
    info = json.loads((tmp_path / "fetched" / "run.json").read_text())
    assert info["storage"] == f"{bucket}/s3run"
    got = storage.kept_file(tmp_path / "fetched", tmp_path / "fetched" / rel, "model.pt", info["storage"], tmp_path / "dl")
    assert got is not None and got.read_bytes() == b"newest"
    assert storage.kept_file(tmp_path / "fetched", tmp_path / "fetched" / rel, "absent.pt", info["storage"], tmp_path / "dl") is None

    # The name is taken in the bucket even where no working copy exists.
    assert run.main(["--space", str(space), "--storage", bucket, "--name", "s3run", "--local-dir",
                     str(tmp_path / "elsewhere")]) == 2
    assert "s3://smallobj/runs/s3run already exists" in capsys.readouterr().err


def test_resume_from_s3_on_a_machine_without_the_working_copy(bucket, tiny_data, tmp_path):
    """The head node is lost mid-search (driver SIGKILLed, its disk gone): `--resume` on another
    machine pulls the run from the bucket, the journal included, and finishes it with nothing lost."""
    import shutil

    space = write_space(tmp_path, tiny_data, SPACE)
    first = tmp_path / "head1"
    with _search(tmp_path, "--space", str(space), "--storage", bucket, "--name", "lost",
                 "--local-dir", str(first), time_scale=0.05) as search:  # epochs of 1-2 s: killed mid-search
        # Trials' result.json files and the journal reach the bucket with Ray's experiment checkpoints.
        wait_until(lambda: sum(k.endswith("result.json") for k in _keys(f"{bucket}/lost")) >= 2
                   and "trials/optuna.journal" in _keys(f"{bucket}/lost"), 300, "two trials were uploaded",
                   search.proc)
        search.kill()  # SIGKILL to the driver and its Ray
    time.sleep(1)
    shutil.rmtree(first)  # the head's disk is gone with it

    second = tmp_path / "head2"
    with _search(tmp_path, "--space", str(space), "--storage", bucket, "--name", "lost", "--local-dir", str(second),
                 "--resume") as resumed:
        assert resumed.wait(600) == 0, resumed.output
    rows = assert_every_trial_once(second / "lost", n_trials=6, max_epochs=3, repeats=True)
    assert {r["arm"] for r in rows} == {"resnet18-v1-none-t5", "resnet18-v2-none-t5"}


def test_resume_of_a_run_the_bucket_does_not_hold_is_refused(bucket, tiny_data, tmp_path, capsys):
    space = write_space(tmp_path, tiny_data, SPACE)
    assert run.main(["--space", str(space), "--storage", bucket, "--name", "never", "--local-dir", str(tmp_path),
                     "--resume"]) == 2
    assert "s3://smallobj/runs/never does not exist: nothing to resume" in capsys.readouterr().err
    assert not any(k.startswith("never/") for k in _keys(bucket))


def test_fetch_leaves_checkpoints_and_keeps_newer_run_files(tmp_path):
    src = tmp_path / "bucket" / "run"
    for rel, text in {"optuna.journal": "old", "run.json": "{}", "trials/t_1/result.json": "{}",
                      "trials/t_1/checkpoint_000002/checkpoint.pt": "x", "trials/t_1/events.out.tfevents.1": "x",
                      "trials/experiment_state-1.json": "{}"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    dest = tmp_path / "copy"
    dest.mkdir()
    (dest / "optuna.journal").write_text("newer, longer")
    n = storage.fetch(f"file://{src}", dest, keep=["optuna.journal"])
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert n == 3 and got == ["optuna.journal", "run.json", "trials/experiment_state-1.json", "trials/t_1/result.json"]
    assert (dest / "optuna.journal").read_text() == "newer, longer"
    assert not storage.is_remote(str(src)) and not storage.is_remote(f"file://{src}")
    assert storage.is_remote("s3://b/p") and storage.RunLocation("s3://b/p/", "n", tmp_path).uri == "s3://b/p/n"
