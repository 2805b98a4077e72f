"""How to watch a run in the tools people already use: the exact commands, and the port of each.

    python -m search.watch RUN_DIR [--cluster cluster.yaml]

Prints, for the run folder: TensorBoard (every trial's event files, written by Ray Tune when the run
was started with `--log tensorboard`, or by a run older than that option's default), optuna-
dashboard (the run's Optuna journal: one study per arm), MLflow and W&B when the run was started
with `--log mlflow` / `--log wandb`, and Ray's dashboard on a cluster. Every server listens on
localhost; on a cluster the ports go through SSH (`ray dashboard`, `ray attach --port-forward`),
never an open port. Reads run.json only; starts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.results import read_run_info

PORTS = {"tensorboard": 6006, "optuna-dashboard": 8080, "mlflow": 5000, "ray": 8265}


def watch_text(run_dir: Path, cluster: str | None = None) -> str:
    info = read_run_info(run_dir)
    arms = info.get("arms", [])
    used = info.get("trackers", [])
    lines = [f"Watching run {info.get('name', run_dir.name)} ({run_dir}); every server below listens on localhost.", ""]
    if "tensorboard" in used:
        lines += ["TensorBoard: every trial's per-epoch metrics (Ray Tune writes the event files into each trial folder)",
                  f"  tensorboard --logdir {run_dir} --port {PORTS['tensorboard']}     # http://localhost:{PORTS['tensorboard']}",
                  "  (pip install '.[tensorboard]' if the command is missing)", ""]
    else:
        lines += ["TensorBoard: this run wrote no event files (start a search with --log tensorboard).", ""]
    lines += [f"optuna-dashboard: the run's Optuna studies, one per arm ({len(arms)}: {', '.join(arms)})",
              f"  optuna-dashboard {run_dir / 'optuna.journal'} --port {PORTS['optuna-dashboard']}"
              f"     # http://localhost:{PORTS['optuna-dashboard']}",
              "  (pip install '.[dashboard]' if the command is missing)", ""]
    if "mlflow" in used:
        lines += [f"MLflow: one run per trial in the experiment {info.get('name')!r}, tags arm / stage / search",
                  f"  mlflow ui --backend-store-uri <the URI given to --log mlflow=...> --port {PORTS['mlflow']}"
                  f"     # http://localhost:{PORTS['mlflow']}",
                  "  (a remote tracking server: open its own address instead)", ""]
    else:
        lines += ["MLflow: this run was not sent to MLflow (start a search with --log mlflow[=TRACKING_URI]).", ""]
    if "wandb" in used:
        lines += [f"W&B: one run per trial, grouped as {info.get('name')!r} in the project given to --log wandb",
                  "  online: https://wandb.ai/<entity>/<project>/groups/" + str(info.get("name")),
                  f"  offline (WANDB_MODE=offline): wandb sync {run_dir}/*/*/wandb/offline-run-*", ""]
    else:
        lines += ["W&B: this run was not sent to W&B (start a search with --log wandb[=PROJECT]).", ""]
    if cluster:
        lines += [f"On the cluster ({cluster}): nothing is opened to the network; ports go through SSH.",
                  f"  ray dashboard {cluster}     # Ray's dashboard at http://localhost:{PORTS['ray']} (trials, nodes, logs)",
                  f"  ray attach {cluster} --port-forward {PORTS['tensorboard']}   # then on the head node: "
                  f"tensorboard --logdir <the run folder> --port {PORTS['tensorboard']}",
                  f"  ray attach {cluster} --port-forward {PORTS['optuna-dashboard']}   # then on the head node: "
                  f"optuna-dashboard <the run folder>/optuna.journal --port {PORTS['optuna-dashboard']}",
                  "  With object storage (--storage s3://...) the commands above also work on this machine's copy "
                  "of the run's small files (runs/<name>): the journal and the trials' event files are among them."]
    else:
        lines += [f"Ray's dashboard (port {PORTS['ray']}): off for a local search; on a cluster, pass --cluster "
                  "cluster.yaml to see how to reach it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.watch", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--cluster", help="the cluster file the run's cluster was started with (ray up FILE)")
    a = p.parse_args(argv)
    try:
        print(watch_text(Path(a.run_dir), a.cluster))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
