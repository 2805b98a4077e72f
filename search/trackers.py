"""Send a search to the trackers users already watch, through Ray Tune's own callbacks.

    python -m search.run --space S --log mlflow[=TRACKING_URI] --log wandb[=PROJECT] --log tensorboard

- mlflow: Ray's `MLflowLoggerCallback`. One MLflow run per trial (every stage), in an experiment
  named after the search; its whole configuration as parameters, every epoch's metrics (step =
  epoch), tags `arm`, `stage`, `search`. The tracking URI is the one given, else MLflow's own
  (`MLFLOW_TRACKING_URI`, ...).
- wandb: Ray's `WandbLoggerCallback`. One W&B run per trial, grouped by the search's name, in the
  project given (else `WANDB_PROJECT`, else "smallobj-search"); tags `arm:...`, `stage:...`,
  `search:...`. `WANDB_MODE=offline` keeps the runs in each trial's folder for `wandb sync`.
- tensorboard: Ray's `TBXLoggerCallback`: event files in every trial's folder (`tensorboard --logdir
  RUN_DIR`). search.run turns Ray's default loggers off (they cost the driver a write per result),
  so TensorBoard files are written only when asked for.

Credentials come from the environment or each tool's own login (`wandb login`, MLflow's
`MLFLOW_TRACKING_TOKEN` / `MLFLOW_TRACKING_USERNAME`...): nothing here reads, passes or writes them.
"""
from __future__ import annotations


# Ray's integrations import mlflow and wandb only when a callback is set up.
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import JsonLoggerCallback, TBXLoggerCallback
from ray.tune.result import EXPR_RESULT_FILE

from detector import tracking as T
from search import compat

# The tracker names, their packages and extras, and the --log check are detector.tracking's (one
# definition for search.run and detector.train).
TRACKERS, Tracker, TrackerError, parse = T.TRACKERS, T.Tracker, T.TrackerError, T.parse


class ResultLogger(JsonLoggerCallback):
    """Ray's JSON result logger (every trial's result.json, which search.results reads), safe for a
    trial Ray retries after an error.

    Before a retried trial starts again from its checkpoint, Ray's logger copies the trial's
    result.json from the run's storage over the driver's own copy (`_restore_from_remote`). The
    storage's copy is only as fresh as Ray's last experiment snapshot, every 10 s or more since
    search/checkpoints.py stopped forcing one per checkpoint, so the epochs reported since were lost
    (seen in CI: a trial retried after epoch 1 kept epochs 2 and 3 only). When Ray requeues the trial
    (`on_trial_recover`, before it restarts) the driver's copy is uploaded first."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        compat.upload_trial_file(trial, EXPR_RESULT_FILE)


def trial_tags(config: dict, search: str) -> dict[str, str]:
    """The tags of a trial's tracked run: its arm, its stage and the search's name."""
    return {"arm": str(config.get("arm")), "stage": str(config.get("stage", "search")), "search": search}


class MLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, with each trial's own tags (Ray gives every run the same ones)."""

    def __init__(self, search: str, tracking_uri: str | None = None):
        super().__init__(tracking_uri=tracking_uri, experiment_name=search, tags={"search": search})
        self.search = search

    def log_trial_start(self, trial):
        with compat.swapped(self, "tags", {**self.tags, **trial_tags(trial.config, self.search)}):
            super().log_trial_start(trial)


class WandbCallback(WandbLoggerCallback):
    """Ray's W&B callback, with each trial's own tags (Ray gives every run the same ones), and each
    trial's W&B files in the run folder once its run is finished (`on_experiment_end`)."""

    def __init__(self, search: str, project: str):
        super().__init__(project=project, group=search)
        self.search = search

    def log_trial_start(self, trial):
        tags = [f"{k}:{v}" for k, v in trial_tags(trial.config, self.search).items()]
        with compat.swapped(self, "kwargs", {**self.kwargs, "tags": tags}):
            super().log_trial_start(trial)

    def on_experiment_end(self, trials, **info):
        """Wait for every logging actor's `wandb.finish()` (Ray's), then copy each trial's `wandb/`
        folder to the run's storage again. The logging actors write into Ray's staging copy of the
        trial folder, and Ray uploads that copy for the last time *before* this call: the runs of the
        trials that ended last in a stage were kept unfinished, without their last epochs (seen here
        in three offline runs out of three before this copy)."""
        super().on_experiment_end(trials, **info)
        import pyarrow.fs

        for trial in trials:
            src = compat.trial_local_path(trial) / "wandb"
            if src.is_dir():
                fs, path = compat.trial_storage(trial)
                pyarrow.fs.copy_files(str(src), f"{path}/wandb", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=fs)


def callbacks(trackers: list[Tracker], search: str) -> list:
    """Ray Tune callbacks for `trackers`, for a search named `search`."""
    out = []
    for t in trackers:
        if t.name == "mlflow":
            out.append(MLflowCallback(search, t.target))
        elif t.name == "wandb":
            out.append(WandbCallback(search, T.wandb_project(t.target)))
        else:
            out.append(TBXLoggerCallback())
    return out
