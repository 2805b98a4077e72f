"""Every private internal of Ray Tune and Optuna this project touches, in one place.

Neither library offers what the per-arm search needs through public API: Ray's
`AsyncHyperBandScheduler` cannot be given results it did not see itself (the rung rebuild after a
resume), nor asked for its rungs; an `optuna.Trial` can only be re-attached to a study through its
storage id. Those accesses live here and nowhere else. `check()` runs before a search starts (and in
the test suite): when an upgrade moves one of them, it fails at once with a message naming the
package, its version, the attribute and the versions this project was tested with, instead of
deep inside a search. pyproject.toml bounds both packages to the versions the suite has passed.
"""
from __future__ import annotations

import inspect
import json
import re

import optuna
import ray
from ray.tune.schedulers import AsyncHyperBandScheduler

# The versions the test suite passed with (pyproject.toml's bounds).
TESTED = {"ray": ">=2.60,<2.61", "optuna": ">=5.0,<5.1"}


class IncompatibleVersion(RuntimeError):
    """A private internal this project relies on is missing or changed in the installed package."""


def _require(obj, attr: str, package: str, version: str, what: str):
    if not hasattr(obj, attr):
        raise IncompatibleVersion(
            f"{package} {version}: {what} has no `{attr}`, which search/compat.py relies on; this project "
            f"was tested with {package}{TESTED[package]} (pip install '{package}{TESTED[package]}')")
    return getattr(obj, attr)


# ----------------------------------------------------------------------------------------------
# Ray Tune: AsyncHyperBandScheduler (one bracket: `brackets=1`)


class _TrialStub:
    """What an ASHA bracket reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _bracket(asha: AsyncHyperBandScheduler):
    return _require(asha, "_brackets", "ray", ray.__version__, "AsyncHyperBandScheduler")[0]


def asha_record(asha: AsyncHyperBandScheduler, trial_id: str, epoch: int, value: float) -> str:
    """Give ASHA's bracket one result it did not see itself, as it records a live one (the trial enters
    each rung the first time it reports that rung's epoch). Returns ASHA's decision (CONTINUE / STOP)."""
    op = _require(asha, "_metric_op", "ray", ray.__version__, "AsyncHyperBandScheduler")
    return _bracket(asha).on_result(_TrialStub(trial_id), epoch, op * value)


def asha_knows(asha: AsyncHyperBandScheduler, trial_id: str) -> bool:
    """Whether ASHA has the trial (added and not yet completed or removed)."""
    return trial_id in _require(asha, "_trial_info", "ray", ray.__version__, "AsyncHyperBandScheduler")


def asha_forget(asha: AsyncHyperBandScheduler, trial_id: str) -> None:
    """Drop a trial that was removed or errored (ASHA has no public call for either)."""
    _require(asha, "_trial_info", "ray", ray.__version__, "AsyncHyperBandScheduler").pop(trial_id, None)


def asha_rungs(asha: AsyncHyperBandScheduler) -> dict[int, dict[str, float]]:
    """{rung epoch: {trial id: metric as ASHA recorded it}} (ASHA stores the metric times its sign)."""
    op = _require(asha, "_metric_op", "ray", ray.__version__, "AsyncHyperBandScheduler")
    rungs = _require(_bracket(asha), "_rungs", "ray", ray.__version__, "ASHA's bracket")
    return {int(milestone): {tid: float(v) * op for tid, v in recorded.items()} for milestone, recorded in rungs}


def asha_num_stopped(asha: AsyncHyperBandScheduler) -> int:
    return int(_require(asha, "_num_stopped", "ray", ray.__version__, "AsyncHyperBandScheduler"))


# ----------------------------------------------------------------------------------------------
# Optuna: a trial's storage id, and the trial behind it


def optuna_trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage id of a trial (not its `number`): what re-attaches an `optuna.Trial` to its study."""
    return _require(trial, "_trial_id", "optuna", optuna.__version__, type(trial).__name__)


def attach_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live handle on the study's trial with this storage id (ask/tell's Trial, re-created)."""
    return optuna.Trial(study, trial_id)


def frozen_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """The stored state of one trial, read without copying the whole study."""
    return _require(study, "_storage", "optuna", optuna.__version__, "Study").get_trial(trial_id)


# ----------------------------------------------------------------------------------------------
# Ray Tune: where a trial's folder is stored


def trial_storage(trial) -> tuple:
    """(pyarrow filesystem, path inside it) of a Ray trial's folder in the run's storage (a local
    folder or object storage); `trial.local_path` is the driver's staging copy Ray uploads from."""
    storage = _require(trial, "storage", "ray", ray.__version__, "Trial")
    return _require(storage, "storage_filesystem", "ray", ray.__version__, "StorageContext"), trial.path


def upload_trial_file(trial, name: str) -> bool:
    """Copy the driver's own copy of a trial's file (`trial.local_path`, Ray's staging folder) to the
    trial's folder in the run's storage, where Ray's experiment snapshots otherwise copy it. Returns
    whether a copy was made (not when the file is missing, or both are the same file)."""
    import posixpath
    from pathlib import Path

    import pyarrow.fs

    fs, path = trial_storage(trial)
    local = Path(_require(trial, "local_path", "ray", ray.__version__, "Trial")) / name
    remote = posixpath.join(path, name)
    if not local.is_file():
        return False
    if isinstance(fs, pyarrow.fs.LocalFileSystem) and Path(remote).resolve() == local.resolve():
        return False
    pyarrow.fs.copy_files(str(local), remote, destination_filesystem=fs)
    return True


def metric_max(trial, metric: str) -> float | None:
    """The largest value of `metric` Ray has seen a trial report, across a resume too (Ray keeps a
    running max per metric in the trial's run metadata, which its experiment state saves); None
    when it has none."""
    analysis = _require(trial, "metric_analysis", "ray", ray.__version__, "Trial")
    value = (analysis or {}).get(metric, {}).get("max")
    return None if value is None else float(value)


def saved_checkpoints(run_metadata: str) -> list[int] | None:
    """The numbers (`checkpoint_NNNNNN`) of the checkpoints that Ray's saved state of one trial lists
    (the second string of its `trial_data` entry in experiment_state-*.json); the largest is the one
    a resumed trial restarts from. None when the state does not hold them where Ray 2.60 puts them
    (the trial checkpoint manager, cloudpickled as hex, whose folder paths are plain bytes in it).
    A `None` makes search.checkpoints keep every checkpoint of the trial."""
    try:
        manager = json.loads(run_metadata)["checkpoint_manager"]
        blob = bytes.fromhex(manager["value"])
    except (ValueError, KeyError, TypeError):
        return None
    return [int(n) for n in re.findall(rb"checkpoint_(\d{6})", blob)]


# ----------------------------------------------------------------------------------------------


def check() -> None:
    """Fail now, naming the package and version, if an internal used above has moved."""
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1,
                                   reduction_factor=2, brackets=1)
    asha_knows(asha, "x")
    asha_num_stopped(asha)
    asha_rungs(asha)
    params = list(inspect.signature(_bracket(asha).on_result).parameters)
    if params[:3] != ["trial", "cur_iter", "cur_rew"]:
        raise IncompatibleVersion(f"ray {ray.__version__}: ASHA's bracket.on_result takes {params}, not "
                                  f"(trial, cur_iter, cur_rew); this project was tested with ray{TESTED['ray']}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    trial = study.ask()
    frozen_trial(study, optuna_trial_id(trial))
    attach_trial(study, optuna_trial_id(trial))
