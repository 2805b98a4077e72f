"""The full space at full scale: what the search machinery costs at 100, 300 and 1,000 trials over
spaces/full.yaml's 38 arms (issue 17).

    .venv/bin/python bench/scale.py [--sizes 100 300 1000] [--concurrency 16] [--time-scale 0.02]
                                    [--confirm TOP_K SEEDS] [--out bench/out/scale]

Each size is one real `python -m search.run` of spaces/full.yaml's arms, parameters, ASHA settings
and confirmation stage, with `trials_per_arm` = ceil(size / 38), `max_concurrent` = --concurrency
(on a local Ray given that many CPUs, one per trial) and trials that replay curves instead of
training (`--replay-curves`, search/curve_trainable.py): a synthetic recording of the space
(`bench/synthetic.py`, 27 configurations per arm), each epoch sleeping its recorded
20-40 s times --time-scale. Everything else is the search a user runs: the per-arm searcher and
ASHA, Optuna journal, progress table, experiment checkpoints, results.

Recorded per size (one JSON object per size, on stdout and in OUT/scale-SIZE.json):
- wall / ideal: the command's wall time over (the trials' slept time / concurrency + start-up), the
  start-up being the command's start to the first trial's first epoch (Ray's own bar for its
  bookkeeping is 1.28; issue 17's goal is 1.10), and where the rest went (`Schedule`: slot-seconds
  held by trials between their sleeps, free while trials waited, free in the tail; the shutdown);
- the driver's (search.run's process) CPU seconds and peak resident memory, in all, per trial and
  per epoch reported;
- how many checkpoints the search stage still holds at the end (search.checkpoints keeps each
  arm's best trial's);
- the searcher's `suggest` time (Optuna user attribute `suggest_s`) against how many trials its
  study already held: median over the first and the last fifth of each study's trials;
- the Optuna journal's size; the time of results.csv (collect + write), `search.report` and
  `search.export` on the finished run.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import proctree  # noqa: E402
from bench.search_overhead import slot_idle  # noqa: E402
from bench.synthetic import synthetic_recording  # noqa: E402
from search.results import collect, write_results  # noqa: E402
from search.space import load_space  # noqa: E402

FULL = ROOT / "spaces" / "full.yaml"


def scaled_space(out: Path, size: int, concurrency: int, confirm: tuple[int, int] | None) -> Path:
    """spaces/full.yaml with trials_per_arm for `size` trials, the given concurrency, one CPU (no
    GPU) per trial and, when given, confirm = (top_k, seeds); everything else as the file says."""
    doc = yaml.safe_load(FULL.read_text())
    arms = len(load_space(FULL).arms)
    doc["name"] = f"scale{size}"
    doc["budget"].update(trials_per_arm=math.ceil(size / arms), max_concurrent=concurrency)
    doc["resources"] = {"cpu": 1, "gpu": 0}
    if confirm:
        doc["confirm"] = {"top_k": confirm[0], "seeds": confirm[1]}
    path = out / f"scale{size}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class DriverUsage:
    """The driver process's CPU seconds and peak resident memory, sampled while it runs."""

    def __init__(self) -> None:
        self.cpu_s, self.peak_rss_mb = 0.0, 0.0

    def sample(self, root: psutil.Process) -> None:
        t, rss = root.cpu_times(), root.memory_info().rss
        self.cpu_s = t.user + t.system
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)


def suggest_times(journal: Path, space_file: Path) -> dict:
    """Median `suggest` seconds over the first and the last fifth of each study's trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search.searcher import study_names

    storage = JournalStorage(JournalFileBackend(str(journal)))
    first, last, n = [], [], 0
    for name in study_names(load_space(space_file)):
        trials = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
                  if "suggest_s" in t.user_attrs]
        trials.sort(key=lambda t: t.number)
        k = max(1, len(trials) // 5)
        first += [t.user_attrs["suggest_s"] for t in trials[:k]]
        last += [t.user_attrs["suggest_s"] for t in trials[-k:]]
        n = max(n, len(trials))
    return {"trials_per_study": n, "suggest_ms_first_fifth": round(1000 * statistics.median(first), 2),
            "suggest_ms_last_fifth": round(1000 * statistics.median(last), 2)}


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


@dataclass
class Schedule:
    """Where a finished replayed run's wall time went (every stage's trials), in seconds.

    Between the first epoch's start and the last trial's end, `concurrency` slots were either
    sleeping (`slept`, the work), held by a trial between two of its sleeps (`held`: each epoch's
    report, checkpoint and the wait for the driver to take the result: Ray's function trainables
    block in `report` until the driver asks for the next result), or free (`gap` while trials were
    still to start, `tail` after the last one had started: bench/search_overhead.slot_idle). So
    wall = startup + (slept + held + gap + tail) / concurrency + shutdown, to Ray's whole-second
    timestamps. ideal = slept / concurrency + startup. `in_report`: the part of `held` spent inside
    `tune.report` (the trainable's `report_s`: Ray persisting the checkpoint, and the wait for the
    driver); the rest of `held` is the trainable's own (writing its checkpoint, computing a result)."""
    slept: float
    startup: float
    concurrency: int
    held: float
    gap: float
    tail: float
    last_end: float
    in_report: float = 0.0

    @property
    def ideal(self) -> float:
        return self.slept / self.concurrency + self.startup

    def as_row(self, wall: float, t_start: float) -> dict:
        return {"slept_s": round(self.slept, 1), "startup_s": round(self.startup, 1), "ideal_s": round(self.ideal, 1),
                "wall_over_ideal": round(wall / self.ideal, 3), "held_slot_s": round(self.held, 1),
                "held_in_report_slot_s": round(self.in_report, 1),
                "gap_slot_s": round(self.gap, 1), "tail_slot_s": round(self.tail, 1),
                "shutdown_s": round(t_start + wall - self.last_end, 1)}


def schedule(records, t_start: float, concurrency: int) -> Schedule:
    """The `Schedule` of a finished replayed run's records; `t_start` is the command's start. A trial
    runs from its first epoch's start (first report time - that epoch's sleep) to its last report."""
    slept, in_report, intervals, first_epoch = 0.0, 0.0, [], math.inf
    for r in records:
        times = [h["epoch_time_s"] for h in r.history]
        if not times:
            continue
        slept += sum(times)
        in_report += sum(h.get("report_s", 0.0) for h in r.history)
        start = r.history[0]["reported_at"] - times[0]
        intervals.append((start, r.history[-1]["reported_at"]))
        first_epoch = min(first_epoch, start)
    startup = first_epoch - t_start
    gap, tail = slot_idle(intervals, concurrency)
    held = sum(e - s for s, e in intervals) - slept
    return Schedule(slept, startup, concurrency, held, gap, tail, max(e for _, e in intervals), in_report)


def one_size(size: int, args, curves: Path) -> dict:
    out = Path(args.out)
    space_file = scaled_space(out, size, args.concurrency, args.confirm)
    space = load_space(space_file)
    name = f"scale{size}-{int(time.time())}"
    usage = DriverUsage()
    t_start = time.time()
    rc, wall = proctree.run_sampled([sys.executable, "-m", "search.run", "--space", str(space_file),
                                     "--storage", str(out), "--name", name, "--num-cpus", str(args.concurrency),
                                     "--replay-curves", str(curves), "--time-scale", str(args.time_scale)],
                                    out / f"{name}.log", usage.sample)
    if rc != 0:
        raise SystemExit(f"search.run failed (rc {rc}); see {out / f'{name}.log'}")
    run_dir = out / name
    t0 = time.perf_counter()
    records = collect(run_dir, space.metric, space.max_epochs)
    write_results(run_dir, records, space.metric)
    results_s = time.perf_counter() - t0
    report_s = timed([sys.executable, "-m", "search.report", str(run_dir)], out / f"{name}.report.log")
    export_s = timed([sys.executable, "-m", "search.export", str(run_dir), "--out", str(run_dir / "export"),
                      "--no-weights"],  # replayed trials train no model
                     out / f"{name}.export.log")
    account = schedule(records, t_start, args.concurrency)
    by_stage = {s: sum(r.stage == s for r in records) for s in sorted({r.stage for r in records})}
    epochs = sum(len(r.history) for r in records)
    # search.checkpoints: what the search stage still holds at the end (each arm's best trial's).
    # Every stage's trials share one folder (search.stages): count the search trials' by their records.
    kept = [d for r in records if r.stage == "search" for d in Path(r.path).glob("checkpoint_*") if d.is_dir()]
    kept_trials = len({d.parent for d in kept})
    return {"size": size, "confirm": [space.confirm_top_k, space.confirm_seeds], "trials": len(records),
            "by_stage": by_stage, "arms": len(space.arms),
            "concurrency": args.concurrency, "time_scale": args.time_scale, "wall_s": round(wall, 1),
            **account.as_row(wall, t_start), "goal": 1.10,
            "epochs": epochs, "search_trials_with_checkpoints": kept_trials, "search_checkpoints": len(kept),
            "driver_cpu_s": round(usage.cpu_s, 1), "driver_cpu_ms_per_trial": round(1000 * usage.cpu_s / len(records), 1),
            "driver_cpu_ms_per_epoch": round(1000 * usage.cpu_s / epochs, 1),
            "driver_peak_rss_mb": round(usage.peak_rss_mb), **suggest_times(run_dir / "optuna.journal", space_file),
            "journal_kb": round((run_dir / "optuna.journal").stat().st_size / 1024),
            "results_csv_s": round(results_s, 2), "report_s": round(report_s, 1), "export_s": round(export_s, 1),
            "run": str(run_dir)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-scale", type=float, default=0.02)
    ap.add_argument("--confirm", type=int, nargs=2, metavar=("TOP_K", "SEEDS"),
                    help="confirmation stage (default: spaces/full.yaml's, 2 x 3 per arm)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = synthetic_recording(FULL, out / "curves", per_arm=27, command="bench/scale.py (synthetic)")
    for size in args.sizes:
        row = one_size(size, args, curves)
        (out / f"scale-{size}.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
