"""Run a command and sample its whole process tree while it runs (the driver, Ray's own processes
and the trial workers Ray starts under them). Shared by bench/memory.py and bench/search_overhead.py."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parents[1]


def label(p: psutil.Process) -> str:
    """What a process is: 'driver (search.run)', a Ray process title such as 'ray::ImplicitFunc'
    (a trial's worker) or 'ray::IDLE' (a started worker without a task), or the program's name
    (gcs_server, raylet, python for Ray's helper scripts...)."""
    cmd = p.cmdline()
    if any("search.run" in c for c in cmd):
        return "driver (search.run)"
    name = p.name()
    return name if not name.startswith("ray::") else name.split(" ")[0]


def run_sampled(cmd: list[str], log: Path, sample: Callable[[psutil.Process], None],
                every_s: float = 0.5) -> tuple[int, float]:
    """Run `cmd` from the repository root (output to `log`), calling `sample(root)` about every
    `every_s` seconds until it exits. Returns (exit code, wall seconds)."""
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                sample(root)
            except psutil.NoSuchProcess:
                return
            time.sleep(every_s)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    return rc, time.time() - t0


def tree(root: psutil.Process) -> list[psutil.Process]:
    """The root and every process below it (raises NoSuchProcess once the root is gone)."""
    return [root, *root.children(recursive=True)]
