"""`python tests/search/kill_in_copy.py SYNC FRACTION SEARCH_RUN_ARGS...`: search.run whose driver
kills itself, with the local Ray it started (its process group, SIGKILL), inside one of Ray's
uploads of its staging folder into the run folder: in the SYNC-th upload of a folder this process
makes (or the first later one of at least two files), once FRACTION (0 <= FRACTION < 1) of its files
were copied, with the next one half copied beside its destination (as compat.replace_file writes
it). Before
the kill it writes `killed-in-copy.json` beside the run folder's parent (what was copied, of how
many), so a test knows the kill came inside a copy. Used from the tests only.

The hook wraps search.compat's per-file copy (`replace_file`), which Ray's upload goes through once
search.driver has installed compat.atomic_local_uploads."""
from __future__ import annotations

import json
import os
import runpy
import signal
import sys
from pathlib import Path

from search import compat


def main() -> None:
    sync_at, fraction, args = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    state = {"syncs": 0, "copied": 0, "of": 0}
    upload, replace = compat.upload_replacing, compat.replace_file
    report = Path(args[args.index("--storage") + 1]) / "killed-in-copy.json"

    def counting_upload(src: Path, dst: Path, exclude):
        if src.is_dir():
            state["syncs"] += 1
            state["copied"] = 0
            state["of"] = sum(1 for f in src.rglob("*") if f.is_file())
            if state["syncs"] >= sync_at:
                compat._uploaded.clear()  # this upload copies every file (none skipped as unchanged)
        return upload(src, dst, exclude)

    def killing_replace(src: Path, dst: Path) -> None:
        if state["syncs"] >= sync_at and state["of"] >= 2:
            if state["copied"] == int(fraction * state["of"]):
                # Killed while the next file is half copied, as replace_file writes it: beside its file.
                data = src.read_bytes()
                dst.with_name(f"{compat.PARTIAL_PREFIX}{os.getpid()}-{dst.name}").write_bytes(data[:len(data) // 2])
                report.write_text(json.dumps({**state, "next": str(dst)}))
                os.killpg(0, signal.SIGKILL)
            state["copied"] += 1
        replace(src, dst)

    compat.upload_replacing, compat.replace_file = counting_upload, killing_replace
    sys.argv = ["search.run", *args]
    runpy.run_module("search.run", run_name="__main__")


if __name__ == "__main__":
    main()
