"""Send one training to a tracker, with the tracker's own client (detector/ never imports Ray).

    python -m detector.train --config best.yaml --log mlflow[=TRACKING_URI] --log wandb[=PROJECT] --log tensorboard

- mlflow: one MLflow run in the experiment `detector.train`, the configuration as parameters, every
  epoch's metrics (step = epoch), tags `arm` and `stage` (`train`).
- wandb: one W&B run in the project given (else `WANDB_PROJECT`, else "smallobj-search"), the
  configuration as its config, every epoch's metrics, tags `arm:...`, `stage:train`; its files in
  OUT/wandb.
- tensorboard: event files in OUT/tensorboard (`tensorboard --logdir OUT`).

The names and the check that a tracker's package is installed are shared with search.run's --log
(search/trackers.py), which uses Ray Tune's callbacks instead of these clients. Credentials come from
the environment or each tool's own login and are never read here.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from detector import config as C

TRACKERS = {  # name: (module it needs, the extra that installs it)
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
}
DEFAULT_WANDB_PROJECT = "smallobj-search"


class TrackerError(ValueError):
    """A --log value names no tracker, or one whose package is not installed."""


@dataclass(frozen=True)
class Tracker:
    name: str           # one of TRACKERS
    target: str | None  # mlflow: tracking URI; wandb: project; tensorboard: none


def parse(values: list[str]) -> list[Tracker]:
    """`--log` values (`mlflow`, `mlflow=URI`, `wandb=PROJECT`, `tensorboard`), checked before anything
    runs: an unknown name, a value for tensorboard, or a package that is not installed is refused,
    naming the extra to install."""
    out = []
    for v in values:
        name, _, target = v.partition("=")
        if name not in TRACKERS:
            raise TrackerError(f"--log {v}: unknown tracker {name!r}; one of {list(TRACKERS)} "
                               f"(mlflow[=TRACKING_URI], wandb[=PROJECT], tensorboard)")
        if name == "tensorboard" and target:
            raise TrackerError(f"--log {v}: tensorboard takes no value")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"--log {name}: the {module} package is not installed: "
                               f"pip install '.[{extra}]' (or pip install {module})")
        out.append(Tracker(name, target or None))
    return out


def wandb_project(target: str | None) -> str:
    return target or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT


def _tags(cfg: C.TrainConfig) -> dict[str, str]:
    return {"arm": C.arm_name(cfg.backbone, cfg.version, cfg.weights, cfg.trainable_layers), "stage": "train"}


class Runs:
    """The tracked runs of one training: `log(metrics, epoch)` after each epoch, `end(ok)` once."""

    def __init__(self, trackers: list[Tracker], cfg: C.TrainConfig, out_dir: Path, name: str):
        self._mlflow = self._wandb = self._tb = None
        params = {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in C.to_dict(cfg).items()}
        for t in trackers:
            if t.name == "mlflow":
                import mlflow

                if t.target:
                    mlflow.set_tracking_uri(t.target)
                mlflow.set_experiment("detector.train")
                self._mlflow = mlflow.start_run(run_name=name, tags=_tags(cfg))
                mlflow.log_params(params)
            elif t.name == "wandb":
                import wandb

                self._wandb = wandb.init(project=wandb_project(t.target), name=name, config=params, dir=str(out_dir),
                                         tags=[f"{k}:{v}" for k, v in _tags(cfg).items()], reinit="create_new")
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, metrics: dict, epoch: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics(numbers, step=epoch, run_id=self._mlflow.info.run_id)
        if self._wandb is not None:
            self._wandb.log(numbers, step=epoch)
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, epoch)
            self._tb.flush()

    def end(self, ok: bool) -> None:
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run(status="FINISHED" if ok else "FAILED")
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if ok else 1)
        if self._tb is not None:
            self._tb.close()
