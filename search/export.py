"""Export the best configurations of a run, ready to retrain unchanged, and their trained models.

    python -m search.export RUN_DIR [--out DIR] [--top K] [--from confirm|search] [--no-weights]

Writes DIR/best.yaml (the best configuration overall) and DIR/<arm>.yaml for every arm (with
--top K > 1 also <arm>-2.yaml ...), and beside each its model, DIR/best.pt, DIR/<arm>.pt: the
weights of the epoch validation chose, of the best confirmation run of that configuration
(`results.Confirmed.best_run`) when it was confirmed, else of its search trial. A model file holds
its configuration, class names, the training file's category ids and where it came from
(`export`: run, trial, stage, seed, epoch, validation value); `detector.evaluate`,
`detector.predict` and `detector.export` load it alone. --no-weights writes the configurations only. Each file holds every resolved training field with the full
epoch budget (the split fields too: the same split_seed gives the same train, validation and test
images), and a header (comments plus a `search:` block that `detector.config.load` skips) with the
metric reached, the trial id, the epochs it ran, the dataset's fingerprint, the confirmation mean ±
sd and the test metrics (when the run has them), the exported model's operating point (`operating_point`:
the score threshold that maximised F1 on validation, its F1, precision and recall there and on the test
images at that threshold; detector.predict applies it) and the package versions.

--from picks whose ranking is exported: `confirm` (default when the run has a confirmation stage:
configurations ordered by their mean validation metric over the confirmation seeds,
`results.confirmed`) or `search` (the search's own ranking, `results.ranked`). The configuration
written is the search trial's own, seed included, so it retrains as that trial trained.
Retrain with: python -m detector.train --config DIR/best.yaml
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from detector import config as C
from search.results import (STATUS_FINISHED, TEST_KEYS, Confirmed, TrialRecord, collect, confirmed, ranked,
                            read_run_info)
from search.storage import kept_file

MODEL_FILE = "model.pt"  # detector.engine.MODEL_FILE (not imported: it would import torch for --no-weights)


def _load_run(run_dir: Path) -> tuple[dict, list[TrialRecord]]:
    info = read_run_info(run_dir)
    return info, collect(run_dir, info["metric"], info["max_epochs"])


def _mean_sd(vals: list[float]) -> dict:
    return {"mean": round(statistics.mean(vals), 6), "sd": round(statistics.stdev(vals), 6) if len(vals) > 1 else None,
            "n": len(vals)}


def export_text(rec: TrialRecord, info: dict, rank: int, conf: Confirmed | None = None) -> str:
    cfg = C.from_dict(rec.config, source=f"trial {rec.trial_id}")
    meta = {"metric": info["metric"], "value": round(rec.best, 6), "best_epoch": rec.best_epoch,
            "trial_id": rec.trial_id, "arm": rec.arm, "rank_in_arm": rank, "epochs_run": rec.epochs,
            "status": rec.status, "selected_by": "confirm" if conf else "search", "data": info["data"],
            "val_data": info.get("val_data"), "test_data": info.get("test_data"), "split_seed": cfg.split_seed,
            "data_fingerprint": info["data_fingerprint"]}
    if conf is not None:
        runs = [r for r in conf.runs if r.status == STATUS_FINISHED]
        meta["confirmation"] = {"seeds": sorted(int(r.config["seed"]) for r in runs), **_mean_sd(conf.values())}
        tested = [r for r in runs if r.test]
        if tested:
            meta["test"] = {k: _mean_sd([r.test[k] for r in tested if k in r.test]) for k in TEST_KEYS
                            if any(k in r.test for r in tested)}
    op = weights_run(rec, conf).at_best()  # the operating point of the model exported beside this file
    if math.isfinite(op.get("score_threshold", math.nan)):
        meta["operating_point"] = {"score_threshold": round(op["score_threshold"], 4), "chosen_on": "validation",
                                   **{k: round(op[k], 4) for k in ("f1", "precision", "recall")},
                                   **{f"test_{k}": round(op[f"test_{k}"], 4) for k in ("f1", "precision", "recall")
                                      if f"test_{k}" in op}}
    meta.update(run=info["name"], versions=info["versions"])
    chosen = (f"confirmed over {len(conf.values())} seeds: {info['metric']} {statistics.mean(conf.values()):.4f} on "
              f"validation" if conf else f"{info['metric']} {rec.best:.4f} at epoch {rec.best_epoch}")
    header = (f"Exported by search.export from run {info['name']}: trial {rec.trial_id} ({rec.arm}, {rec.status} "
              f"after {rec.epochs} epochs), {chosen}.\n"
              f"Retrain unchanged: python -m detector.train --config THIS_FILE")
    return C.dump(cfg, header=header) + yaml.safe_dump({"search": meta}, sort_keys=False)


def choices(records: list[TrialRecord], source: str) -> list[tuple[TrialRecord, Confirmed | None]]:
    """Every exportable configuration, best first, by the `source` stage's ranking (see --from)."""
    if source == "search":
        return [(r, None) for r in ranked(records)]
    conf = [c for arm in dict.fromkeys(r.arm for r in records) for c in confirmed(records, arm)]
    conf.sort(key=lambda c: -statistics.mean(c.values()))
    return [(c.source, c) for c in conf]


def weights_run(rec: TrialRecord, conf: Confirmed | None) -> TrialRecord:
    """The run whose weights are exported with a configuration (see the module docstring)."""
    return conf.best_run() if conf is not None else rec


def write_model(src: Path, dest: Path, run: TrialRecord, info: dict) -> None:
    """`src` (a trial's model.pt) as an exported model file: the same, plus where it came from."""
    import torch

    from detector.engine import atomic_save, load_checkpoint

    ck = load_checkpoint(src)
    ck["export"] = {"run": info["name"], "trial_id": run.trial_id, "stage": run.stage, "arm": run.arm,
                    "seed": int(run.config["seed"]), "source_trial": run.source_trial or None,
                    "epoch": ck.get("epoch"), "metric": ck.get("metric"), "value": ck.get("value"),
                    "data_fingerprint": info["data_fingerprint"], "versions": info["versions"],
                    "torch": str(torch.__version__)}
    atomic_save(ck, dest)


def export(run_dir: Path, out: Path, top: int = 1, source: str | None = None, weights: bool = True) -> list[Path]:
    """Write the files of the module docstring into `out`; returns their paths. Raises ValueError
    (nothing written) when the run has nothing to export, or a chosen run has no kept weights."""
    info, records = _load_run(run_dir)
    has_confirm = any(r.stage == "confirm" for r in records)
    source = source or ("confirm" if has_confirm else "search")
    if source == "confirm" and not has_confirm:
        raise ValueError(f"{run_dir}: --from confirm: the run has no confirmation stage (its space has no `confirm:`)")
    order = choices(records, source)
    if not order:
        raise ValueError(f"{run_dir}: no {'confirmed configuration' if source == 'confirm' else 'trial'} "
                         f"produced a finite {info['metric']}; nothing to export")
    files = [("best", order[0][0], order[0][1], 1)]
    for arm in dict.fromkeys(r.arm for r, _ in order):
        for k, (rec, conf) in enumerate([x for x in order if x[0].arm == arm][:top], start=1):
            files.append((arm if k == 1 else f"{arm}-{k}", rec, conf, k))
    with tempfile.TemporaryDirectory(prefix="smallobj-export-") as tmp:
        models = {}
        if weights:  # every model found before anything is written
            missing = []
            for stem, rec, conf, _ in files:
                run = weights_run(rec, conf)
                models[stem] = (run, kept_file(run_dir, Path(run.path), MODEL_FILE, info.get("storage"), Path(tmp)))
                if models[stem][1] is None:
                    missing.append(f"{stem}: {run.stage} run {run.trial_id}")
            if missing:
                raise ValueError(f"{run_dir}: no kept weights ({MODEL_FILE} in a checkpoint) for "
                                 f"{'; '.join(missing)}; --no-weights exports the configurations only")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, rec, conf, k in files:
            path = out / f"{stem}.yaml"
            path.write_text(export_text(rec, info, k, conf))
            written.append(path)
            if stem in models:
                run, src = models[stem]
                write_model(src, out / f"{stem}.pt", run, info)
                written.append(out / f"{stem}.pt")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.add_argument("--top", type=int, default=1, help="configurations per arm (default 1)")
    p.add_argument("--from", dest="source", choices=("confirm", "search"),
                   help="whose ranking to export (default: confirm when the run has a confirmation stage)")
    p.add_argument("--no-weights", action="store_true", help="write the configurations only, no model files")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    try:
        paths = export(run_dir, Path(a.out) if a.out else run_dir / "export", a.top, a.source, not a.no_weights)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
