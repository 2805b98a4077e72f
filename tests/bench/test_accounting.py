"""The arithmetic behind bench/search_overhead.py's figures (the benchmarks themselves are run by
hand and recorded in bench/RESULTS.md, never timed in tests)."""
import sys

import psutil
import pytest

from bench import proctree
from bench.search_overhead import CpuByProcess, slot_idle


def test_slot_idle_splits_free_slots_into_gap_and_tail():
    # 2 slots. Trial A 0-10, B 0-4, C starts at 5 (slot free 4-5 while C waited: gap 1),
    # C ends at 7; from 7 to 10 one slot is free with nothing left to start: tail 3.
    gap, tail = slot_idle([(0, 10), (0, 4), (5, 7)], slots=2)
    assert gap == pytest.approx(1.0)
    assert tail == pytest.approx(3.0)


def test_slot_idle_counts_no_idle_time_when_slots_are_always_full():
    gap, tail = slot_idle([(0, 5), (0, 5), (5, 10), (5, 10)], slots=2)
    assert (gap, tail) == (0.0, 0.0)


def test_cpu_by_process_sums_a_tree_by_role(tmp_path):
    # A parent that spins for 0.6 s of CPU and a child that spins for 1.2 s; the tree's CPU time
    # is sampled while they run and each process is counted once, with its last reading.
    spin = "import time\nt=time.process_time()\nwhile time.process_time()-t<{s}: pass\ntime.sleep(0.6)\n"
    child = f"import subprocess,sys; p=subprocess.Popen([sys.executable,'-c',{spin.format(s=1.2)!r}])\n" \
            + spin.format(s=0.6) + "p.wait()\n"
    cpu = CpuByProcess()
    rc, wall = proctree.run_sampled([sys.executable, "-c", child], tmp_path / "log", cpu.sample, every_s=0.1)
    assert rc == 0
    roles = cpu.by_role()
    assert list(roles) == [psutil.Process().name()]  # both are python processes
    assert 1.7 <= roles[psutil.Process().name()] <= 2.6
    assert len(cpu.cpu) == 2


def test_slot_idle_never_counts_overlap_as_negative_idle_time():
    # Ray's result timestamps are whole seconds, so a trial can appear to start a moment before
    # the one it replaced ended: three trials "running" on two slots is no idle time, not less.
    gap, tail = slot_idle([(0, 10), (0, 5), (4.5, 10)], slots=2)
    assert (gap, tail) == (0.0, 0.0)


def test_a_runs_wall_time_is_its_start_up_slots_and_shutdown():
    """bench/scale.py's Schedule: wall = startup + (slept + held + gap + tail) / slots + shutdown.
    2 slots, the command starts at 0 and ends at 8. A sleeps 1-3 and 4-6 (held 3-4 between its
    reports), B sleeps 1-4; C waits from 4 to 5 while a slot is free (gap 1), sleeps 5-7; from 6 to 7
    one slot is free with nothing left to start (tail 1); the driver ends 1 s after C. A's first
    report took 0.5 s of its held second (its second result says so: `report_s`)."""
    from types import SimpleNamespace

    from bench.scale import schedule

    def trial(*epochs):  # (sleep s, reported at[, the previous report's s])
        return SimpleNamespace(history=[{"epoch_time_s": s, "reported_at": t, "report_s": r}
                                        for s, t, r in (e + (0.0,) * (3 - len(e)) for e in epochs)])

    account = schedule([trial((2, 3), (2, 6, 0.5)), trial((3, 4)), trial((2, 7)), trial()], t_start=0.0,
                       concurrency=2)
    assert (account.slept, account.startup, account.held, account.gap, account.tail) == (9, 1, 1, 1, 1)
    assert account.in_report == 0.5
    assert account.ideal == 9 / 2 + 1
    row = account.as_row(wall=8.0, t_start=0.0)
    assert row["shutdown_s"] == 1.0 and row["wall_over_ideal"] == round(8 / 5.5, 3)
    assert account.startup + (account.slept + account.held + account.gap + account.tail) / 2 + row["shutdown_s"] == 8
