"""What the barrier between the search and the confirmation stage costs in a finished run (issue 17,
part 4): the slot time left idle from the last search trial's start (from then on no search trial
is left to start) to the first confirmation trial's start, measured from the trials' report times.

    .venv/bin/python bench/stage_barrier.py RUN_DIR SLOTS

Prints one JSON line: the search's tail (last start to last end), the time between the last search
trial's end and the first confirmation trial's start, the idle slot-seconds over that window and
what they come to in wall seconds at full use of the slots. On a run whose stages share one queue
(search.stages) the confirmation starts while the search still runs: `between_stages_s` is then
negative and the idle time 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.results import collect, read_run_info  # noqa: E402


def intervals(records, stage: str) -> list[tuple[float, float]]:
    """(start, end) of each trial of `stage`: its first report minus that epoch's time, its last report."""
    out = []
    for r in records:
        if r.stage == stage and r.history:
            out.append((r.history[0]["reported_at"] - r.history[0]["epoch_time_s"], r.history[-1]["reported_at"]))
    return out


def main(argv=None) -> int:
    run_dir, slots = Path(sys.argv[1] if argv is None else argv[0]), int(sys.argv[2] if argv is None else argv[1])
    info = read_run_info(run_dir)
    records = collect(run_dir, info["metric"], info["max_epochs"])
    search, confirm = intervals(records, "search"), intervals(records, "confirm")
    last_start, search_end = max(a for a, _ in search), max(b for _, b in search)
    confirm_start = min(a for a, _ in confirm) if confirm else search_end
    busy = sum(max(0.0, min(b, confirm_start) - max(a, last_start)) for a, b in search)
    # With the stages in one queue (search.stages) confirmation starts before the last search trial
    # does: no window, no barrier.
    idle = max(0.0, slots * (confirm_start - last_start) - busy)
    print(json.dumps({"search_tail_s": round(search_end - last_start, 1),
                      "between_stages_s": round(confirm_start - search_end, 1),
                      "idle_slot_s": round(idle, 1), "as_wall_s_at_full_use": round(idle / slots, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
