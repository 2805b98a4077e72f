"""What the search machinery costs on top of the trials themselves.

    .venv/bin/python bench/search_overhead.py [--space spaces/demo.yaml] [--out bench/out]

Runs the search as a user would and reads Ray's per-trial results afterwards:
- overhead ratio = command wall time / (sum of the trials' busy time / concurrency), where a trial's
  busy time is Ray's `time_total_s` of its last result and concurrency is the space's
  `max_concurrent` (goal: <= 1.15; Ray's own bar for its bookkeeping is about 1.2);
- start-up: command start to the first trial's first step (first result's timestamp minus its
  `time_this_iter_s`);
- shut-down: the last result's timestamp to the command's exit.
Ray's result timestamps are whole seconds, so start-up, shut-down and each slot figure below are
good to about a second.
The time between the first trial's start and the last trial's end is split by what the slots did:
- busy: a trial ran in the slot;
- gap: the slot was free while trials were still to start (the machinery's cost: Ray scheduling,
  the searcher's suggestion, a worker's reset, the experiment checkpoint);
- tail: the slot was free because no trial was left to start (the schedule's cost: ASHA stops
  trials at different epochs, and the last ones finish alone).
`machinery_ratio` leaves the tail out; `overhead_ratio` keeps everything.
The machinery also takes CPU time from the trials while they run (on a node whose CPUs are all
given to trials, every CPU-second of the driver or of Ray's own processes is one a trial waits
for, which makes trials slower without showing in the ratios above). So the CPU time of every
process in the command's tree is sampled about every 0.5 s and summed by role: trial workers
(a Ray worker that ran a trial), idle workers, the driver, and Ray's own processes by name.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import proctree  # noqa: E402
from search.results import read_history  # noqa: E402
from search.space import load_space  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    a = p.parse_args()
    space = load_space(a.space)
    name = f"bench-overhead-{int(time.time())}"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    log = Path(a.out) / f"{name}.log"
    cpu = CpuByProcess()
    t_start = time.time()
    rc, _ = proctree.run_sampled([sys.executable, "-m", "search.run", "--space", a.space, "--storage", a.out,
                                  "--name", name], log, cpu.sample)
    t_end = time.time()
    if rc != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        return 1
    busy, intervals = 0.0, []
    for f in (Path(a.out) / name / "trials").glob("*/result.json"):
        results = read_history(f.parent)
        busy += results[-1]["time_total_s"]
        intervals.append((results[0]["timestamp"] - results[0]["time_this_iter_s"], results[-1]["timestamp"]))
    concurrency = space.max_concurrent or 1
    first_start, last_end = min(s for s, _ in intervals), max(e for _, e in intervals)
    gap, tail = slot_idle(intervals, concurrency)
    ideal = busy / concurrency
    wall = t_end - t_start
    print(json.dumps({"benchmark": "search_overhead", "space": a.space, "wall_s": round(wall, 1),
                      "trials": len(intervals), "trial_busy_s": round(busy, 1), "concurrency": concurrency,
                      "overhead_ratio": round(wall / ideal, 3), "goal_ratio": 1.15,
                      "machinery_ratio": round((wall - tail / concurrency) / ideal, 3),
                      "startup_s": round(first_start - t_start, 1), "shutdown_s": round(t_end - last_end, 1),
                      "gap_slot_s": round(gap, 1), "tail_slot_s": round(tail, 1),
                      "cpu_s_by_role": cpu.by_role(), "cpu_capacity_s": round(wall * (os.cpu_count() or 1), 1),
                      "run": str(Path(a.out) / name)}, indent=1))
    return 0


class CpuByProcess:
    """CPU seconds (user + system) of every process seen in a tree, by role. A process's CPU time
    only grows, so the last reading of each pid is its total up to then (a process that lives less
    than one sampling interval is missed: Ray's short helpers, a few tenths of a second)."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}

    def sample(self, root: psutil.Process) -> None:
        for p in proctree.tree(root):
            try:
                times, name = p.cpu_times(), proctree.label(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.cpu[p.pid] = times.user + times.system
            # A worker that ever ran a trial counts as a trial worker (its title is ray::IDLE
            # before its first trial and between trials when it is not reused).
            if self.role.get(p.pid) != "trial workers":
                self.role[p.pid] = ("trial workers" if name.startswith("ray::ImplicitFunc")
                                    else "idle workers (ray::IDLE)" if name == "ray::IDLE" else name)

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            out[self.role[pid]] = out.get(self.role[pid], 0.0) + seconds
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def slot_idle(intervals: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """Idle slot-seconds between the first start and the last end: (gap, tail). A free slot is a
    gap while some trial has yet to start, and tail once every trial has started."""
    events = sorted({t for iv in intervals for t in iv})
    gap = tail = 0.0
    for t0, t1 in zip(events, events[1:]):
        mid = (t0 + t1) / 2
        running = sum(s <= mid < e for s, e in intervals)
        waiting = sum(s > mid for s, _ in intervals)
        free = max(0, slots - running)  # Ray's timestamps are whole seconds: neighbours can overlap
        usable = min(free, waiting)  # slots a waiting trial could have taken
        gap += usable * (t1 - t0)
        tail += (free - usable) * (t1 - t0)
    return gap, tail


if __name__ == "__main__":
    sys.exit(main())
