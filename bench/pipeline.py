"""Stages without a barrier (issue 17, part 4): the overall ratio of a demo-sized search with a
confirmation stage, wall time over the ideal, in this tree and in another (the code before).

    .venv/bin/python bench/pipeline.py [--tree DIR ...] [--repeats 3] [--time-scale 0.25]
                                       [--out bench/out/pipeline]

The space is spaces/demo.yaml with its budget as it was when this was first measured (2 arms, 4
trials each of at most 4 epochs, ASHA, 2 at a time on this 2-core CPU) and
`confirm: {top_k: 1, seeds: 2}`. Its trials replay bench/curves' recorded demo-like curves
(`--replay-curves`, search/curve_trainable.py), each epoch sleeping its recorded time (about 20 s
per epoch on this CPU) times --time-scale, so the figure is the schedule's and the machinery's,
not the CPU's. For each tree (a checkout of this repository; default: this one), each repeat is one
`python -m search.run` there, and its records are read with this tree's search.results (which reads
both run layouts). Recorded per run (one JSON line each, and a summary per tree):
- wall / ideal: wall time over (slept time / 2 + start-up): bench/scale.py's definition;
- the slot-seconds left free while trials were still to start (gap) and after the last one had
  started (tail);
- the first confirmation run's start minus the last search trial's end (negative: the
  confirmation began while a search still ran).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale import schedule  # noqa: E402
from search.results import collect  # noqa: E402

CURVES = ROOT / "bench" / "curves"
SLOTS = 2


def demo_with_confirmation(out: Path) -> Path:
    doc = yaml.safe_load((ROOT / "spaces" / "demo.yaml").read_text())
    doc["confirm"] = {"top_k": 1, "seeds": 2}
    doc["budget"].update(trials_per_arm=4, max_epochs=4)  # the demo's budget when RESULTS.md first measured this
    path = out / "demo-confirm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def one_run(tree: Path, space_file: Path, out: Path, name: str, time_scale: float) -> dict:
    t_start = time.time()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "search.run", "--space", str(space_file), "--storage", str(out),
                             "--name", name, "--num-cpus", str(SLOTS), "--replay-curves", str(CURVES),
                             "--time-scale", str(time_scale)], cwd=tree, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t_start
    if rc != 0:
        raise SystemExit(f"search.run in {tree} failed (rc {rc}); see {out / f'{name}.log'}")
    records = collect(out / name, "map50", 4)
    account = schedule(records, t_start, SLOTS)
    ends = [r.history[-1]["reported_at"] for r in records if r.stage == "search" and r.history]
    starts = [r.history[0]["reported_at"] - r.history[0]["epoch_time_s"] for r in records
              if r.stage == "confirm" and r.history]
    return {"tree": str(tree), "run": name, "trials": {s: sum(r.stage == s for r in records) for s in ("search", "confirm")},
            "wall_s": round(wall, 1), **account.as_row(wall, t_start),
            "confirm_start_minus_search_end_s": round(min(starts) - max(ends), 1) if starts and ends else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", help="a checkout to run search.run in (repeatable; default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=0.25)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "pipeline"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space_file = demo_with_confirmation(out)
    for t, tree in enumerate(Path(p).resolve() for p in (args.tree or [ROOT])):
        rows = []
        for i in range(args.repeats):
            rows.append(one_run(tree, space_file, out, f"t{t}-{i}-{int(time.time())}", args.time_scale))
            print(json.dumps(rows[-1]), flush=True)
        ratios = [r["wall_over_ideal"] for r in rows]
        print(json.dumps({"tree": str(tree), "time_scale": args.time_scale, "repeats": len(rows),
                          "wall_over_ideal_mean": round(statistics.mean(ratios), 3),
                          "wall_over_ideal_min_max": [min(ratios), max(ratios)], "goal": 1.15}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
