"""Export the best configurations of a run, ready to retrain unchanged.

    python -m search.export RUN_DIR [--out DIR] [--top K]

Writes DIR/best.yaml (the best configuration overall) and DIR/<arm>.yaml for every arm (with
--top K > 1 also <arm>-2.yaml ...). Each file holds every resolved training field with the full
epoch budget, and a header (comments plus a `search:` block that `detector.config.load` skips)
with the metric reached, the trial id, the epochs it ran, the dataset's fingerprint and the
package versions. Retrain with: python -m detector.train --config DIR/best.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from detector import config as C
from search.results import TrialRecord, collect, ranked


def _load_run(run_dir: Path) -> tuple[dict, list[TrialRecord]]:
    info_file = run_dir / "run.json"
    if not info_file.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no run.json)")
    info = json.loads(info_file.read_text())
    return info, collect(run_dir, info["metric"], info["max_epochs"])


def export_text(rec: TrialRecord, info: dict, rank: int) -> str:
    cfg = C.from_dict(rec.config, source=f"trial {rec.trial_id}")
    meta = {"metric": info["metric"], "value": round(rec.best, 6), "best_epoch": rec.best_epoch,
            "trial_id": rec.trial_id, "arm": rec.arm, "rank_in_arm": rank, "epochs_run": rec.epochs,
            "status": rec.status, "data": info["data"], "data_fingerprint": info["data_fingerprint"],
            "run": info["name"], "versions": info["versions"]}
    header = (f"Exported by search.export from run {info['name']}: {info['metric']} {rec.best:.4f} at epoch "
              f"{rec.best_epoch} of trial {rec.trial_id} ({rec.arm}, {rec.status} after {rec.epochs} epochs).\n"
              f"Retrain unchanged: python -m detector.train --config THIS_FILE")
    return C.dump(cfg, header=header) + yaml.safe_dump({"search": meta}, sort_keys=False)


def export(run_dir: Path, out: Path, top: int = 1) -> list[Path]:
    info, records = _load_run(run_dir)
    order = ranked(records)
    if not order:
        raise ValueError(f"{run_dir}: no trial produced a finite {info['metric']}; nothing to export")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    best = out / "best.yaml"
    best.write_text(export_text(order[0], info, 1))
    written.append(best)
    for arm in dict.fromkeys(r.arm for r in order):
        for k, rec in enumerate([r for r in order if r.arm == arm][:top], start=1):
            path = out / (f"{arm}.yaml" if k == 1 else f"{arm}-{k}.yaml")
            path.write_text(export_text(rec, info, k))
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.add_argument("--top", type=int, default=1, help="configurations per arm (default 1)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    try:
        paths = export(run_dir, Path(a.out) if a.out else run_dir / "export", a.top)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
