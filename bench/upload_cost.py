"""What whole-file uploads cost (issue 26, item 5): seconds for one experiment snapshot's copy of
Ray's staging folder into a local run folder, by Ray's own upload (pyarrow's copy_files, rewriting
each file in place) and by search.compat's (each file copied beside its destination and renamed
over it), on a staging folder shaped like a search's: N trial folders of a params.json (2 kB) and a
result.json (60 epochs, 36 kB), an experiment state of 26 kB per trial and a searcher state.
Between two snapshots, --running trials report an epoch (their result.json grows) and the two states
are rewritten; search.compat copies only what changed since its last copy, Ray copies everything.

    python bench/upload_cost.py [--trials 100 1000] [--running 16] [--repeats 3]

The copy runs in Ray's background syncer thread, not in the driver's loop; the figure to compare is
the snapshot period Ray keeps (at least 10 s, and 19x the time a snapshot takes). One JSON object on
stdout: per N, the median seconds of each over the repeats (the destination already holds the
previous snapshot, as it does during a search).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from search import compat  # noqa: E402


def staging(folder: Path, trials: int) -> None:
    report = json.dumps({"epoch": 1.0, "map50": 0.5, "loss": 1.2, "epoch_time_s": 30.0, "trial_id": "abcde_00001",
                         "reported_at": 1.0e9}) + "\n"
    for i in range(trials):
        d = folder / f"resnet18-v1-none-t5_{i:05d}"
        d.mkdir(parents=True)
        (d / "params.json").write_text("x" * 2000)
        (d / "result.json").write_text(report * (36_000 // len(report)))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("s" * (26_000 * trials))
    (folder / "searcher-state-2026-01-01_00-00-00.pkl").write_text("{}" * 1000)
    (folder / "tuner.pkl").write_bytes(b"t" * 20_000)


def snapshot(folder: Path, running: int, r: int) -> None:
    """What changes between two snapshots: `running` trials report an epoch, the states are rewritten."""
    for d in sorted(folder.glob("resnet18-*"))[:running]:
        with open(d / "result.json", "a") as f:
            f.write(json.dumps({"epoch": 61.0 + r, "map50": 0.5}) + "\n")
    for name in ("experiment_state-2026-01-01_00-00-00.json", "searcher-state-2026-01-01_00-00-00.pkl"):
        text = (folder / name).read_text()
        (folder / name).write_text(text[:-1] + str(r % 10))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--running", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from ray.train._internal import storage as ray_storage

    ray_upload = ray_storage._upload_to_fs_path
    fs = pyarrow.fs.LocalFileSystem()
    out = {}
    for n in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "staging", Path(tmp) / "run"
            staging(src, n)
            compat.upload_replacing(src, dst, [])  # the snapshots before
            times = {"ray_in_place_s": [], "whole_files_s": []}
            copied = []
            for r in range(args.repeats):
                snapshot(src, args.running, r)
                t0 = time.perf_counter()
                ray_upload(str(src), fs, str(dst))
                times["ray_in_place_s"].append(time.perf_counter() - t0)
                snapshot(src, args.running, r)
                t0 = time.perf_counter()
                copied.append(compat.upload_replacing(src, dst, []))
                times["whole_files_s"].append(time.perf_counter() - t0)
            out[n] = {k: round(statistics.median(v), 3) for k, v in times.items()}
            out[n].update(files=sum(1 for f in src.rglob("*") if f.is_file()), whole_files_copied=max(copied))
    print(json.dumps({"bench": "upload_cost", "by_trials": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
