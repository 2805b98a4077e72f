"""Every private internal of Ray Tune and Optuna this project touches, in one place: attributes,
Ray's files on disk (the experiment state), its environment switches and the attributes of its
callbacks that the trackers change. tests/search/test_compat.py audits every other module of
search/ and detector/ for a private attribute, a private module of Ray or Optuna, Ray's file
names and its switches.

Neither library offers what the per-arm search needs through public API: Ray's
`AsyncHyperBandScheduler` cannot be given results it did not see itself (the rung rebuild after a
resume), nor asked for its rungs; an `optuna.Trial` can only be re-attached to a study through its
storage id. Those accesses live here and nowhere else. `check()` runs before a search starts (and in
the test suite): when an upgrade moves one of them, it fails at once with a message naming the
package, its version, the attribute and the versions this project was tested with, instead of
deep inside a search. pyproject.toml bounds both packages to the versions the suite has passed.
"""
from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names for the annotations only: Ray and Optuna are imported where they are used
    import optuna
    from ray.tune.schedulers import AsyncHyperBandScheduler

# The versions the test suite passed with (pyproject.toml's bounds).
TESTED = {"ray": ">=2.60,<2.61", "optuna": ">=5.0,<5.1"}


class IncompatibleVersion(RuntimeError):
    """A private internal this project relies on is missing or changed in the installed package."""


def _version(package: str) -> str:
    """The installed version of ray or optuna (imported here, not at import time: search.results and
    search.report read runs without starting either)."""
    import importlib

    return importlib.import_module(package).__version__


def _require(obj, attr: str, package: str, version: str | None, what: str):
    version = version or _version(package)
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
    return _require(asha, "_brackets", "ray", None, "AsyncHyperBandScheduler")[0]


def asha_record(asha: AsyncHyperBandScheduler, trial_id: str, epoch: int, value: float) -> str:
    """Give ASHA's bracket one result it did not see itself, as it records a live one (the trial enters
    each rung the first time it reports that rung's epoch). Returns ASHA's decision (CONTINUE / STOP)."""
    op = _require(asha, "_metric_op", "ray", None, "AsyncHyperBandScheduler")
    return _bracket(asha).on_result(_TrialStub(trial_id), epoch, op * value)


def asha_knows(asha: AsyncHyperBandScheduler, trial_id: str) -> bool:
    """Whether ASHA has the trial (added and not yet completed or removed)."""
    return trial_id in _require(asha, "_trial_info", "ray", None, "AsyncHyperBandScheduler")


def asha_forget(asha: AsyncHyperBandScheduler, trial_id: str) -> None:
    """Drop a trial that was removed or errored (ASHA has no public call for either)."""
    _require(asha, "_trial_info", "ray", None, "AsyncHyperBandScheduler").pop(trial_id, None)


def asha_rungs(asha: AsyncHyperBandScheduler) -> dict[int, dict[str, float]]:
    """{rung epoch: {trial id: metric as ASHA recorded it}} (ASHA stores the metric times its sign)."""
    op = _require(asha, "_metric_op", "ray", None, "AsyncHyperBandScheduler")
    rungs = _require(_bracket(asha), "_rungs", "ray", None, "ASHA's bracket")
    return {int(milestone): {tid: float(v) * op for tid, v in recorded.items()} for milestone, recorded in rungs}


def asha_num_stopped(asha: AsyncHyperBandScheduler) -> int:
    return int(_require(asha, "_num_stopped", "ray", None, "AsyncHyperBandScheduler"))


# ----------------------------------------------------------------------------------------------
# Optuna: a trial's storage id, and the trial behind it


def optuna_trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage id of a trial (not its `number`): what re-attaches an `optuna.Trial` to its study."""
    return _require(trial, "_trial_id", "optuna", None, type(trial).__name__)


def attach_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live handle on the study's trial with this storage id (ask/tell's Trial, re-created)."""
    import optuna

    return optuna.Trial(study, trial_id)


def frozen_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """The stored state of one trial, read without copying the whole study."""
    return _require(study, "_storage", "optuna", None, "Study").get_trial(trial_id)


# ----------------------------------------------------------------------------------------------
# Ray Tune: where a trial's folder is stored


def trial_storage(trial) -> tuple:
    """(pyarrow filesystem, path inside it) of a Ray trial's folder in the run's storage (a local
    folder or object storage); `trial.local_path` is the driver's staging copy Ray uploads from."""
    storage = _require(trial, "storage", "ray", None, "Trial")
    return _require(storage, "storage_filesystem", "ray", None, "StorageContext"), trial.path


def upload_trial_file(trial, name: str) -> bool:
    """Copy the driver's own copy of a trial's file (`trial.local_path`, Ray's staging folder) to the
    trial's folder in the run's storage, where Ray's experiment snapshots otherwise copy it. Returns
    whether a copy was made (not when the file is missing, or both are the same file)."""
    import posixpath

    import pyarrow.fs

    fs, path = trial_storage(trial)
    local = trial_local_path(trial) / name
    remote = posixpath.join(path, name)
    if not local.is_file():
        return False
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        if Path(remote).resolve() == local.resolve():
            return False
        replace_file(local, Path(remote))  # whole or not at all (see `atomic_local_uploads`)
    else:
        pyarrow.fs.copy_files(str(local), remote, destination_filesystem=fs)
    return True


def stored_reports(trial, first_seen: dict) -> list[dict]:
    """The reports a trial made before `first_seen`, the first of its results this driver gets: none
    when that is its first epoch; else (a trial resumed from a checkpoint reports only the epochs
    after it) those in its result.json in the run's storage (a local folder or object storage), in
    order, one read; none when it cannot be read now."""
    import posixpath

    from ray.tune.result import EXPR_RESULT_FILE

    from search.results import parse_results

    if int(first_seen.get("epoch", 1)) <= 1:
        return []
    fs, path = trial_storage(trial)
    try:
        with fs.open_input_stream(posixpath.join(path, EXPR_RESULT_FILE)) as f:
            return parse_results(f.read().decode("utf-8", errors="replace"))[0]
    except OSError:  # (FileNotFoundError is one)
        return []


def metric_max(trial, metric: str) -> float | None:
    """The largest value of `metric` Ray has seen a trial report, across a resume too (Ray keeps a
    running max per metric in the trial's run metadata, which its experiment state saves); None
    when it has none."""
    analysis = _require(trial, "metric_analysis", "ray", None, "Trial")
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
# Ray Tune's files on disk: the experiment state of a Tuner folder

EXPERIMENT_STATE = "experiment_state-*.json"  # Ray writes a new one per session; the newest is current


def is_experiment_state(name: str) -> bool:
    return fnmatch.fnmatch(name, EXPERIMENT_STATE)


def _trial_data(text: str) -> list[tuple[dict, str]]:
    """(Ray's saved state of the trial, its run metadata as Ray's JSON string) for every trial of the
    text of one experiment state file; ValueError when it is not a readable one (cut by a crash or
    caught mid-copy)."""
    try:
        return [(json.loads(meta), run_metadata) for meta, run_metadata in json.loads(text)["trial_data"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a readable Ray experiment state ({type(e).__name__}: {e})") from None


def parse_experiment_state(text: str) -> dict[str, dict]:
    """{trial id: Ray's saved state of the trial (its `status`: PENDING, RUNNING, PAUSED, TERMINATED,
    ERROR; its `config`...)} from the text of one experiment state file; ValueError when it is not a
    readable one."""
    try:
        return {t["trial_id"]: t for t, _ in _trial_data(text)}
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a readable Ray experiment state ({type(e).__name__}: {e})") from None


def last_results(stage_dir: Path) -> dict[str, tuple[str, str, dict]]:
    """{trial id: (Ray's status, its folder's name, the last result Ray's state recorded of it)} from
    the newest readable experiment state of a Tuner folder (`last_result` of each trial's run
    metadata); trials without one are left out."""
    for f in sorted(Path(stage_dir).glob(EXPERIMENT_STATE), reverse=True):
        try:
            data = _trial_data(f.read_text())
        except ValueError:
            continue
        out = {}
        for t, run_metadata in data:
            try:
                last = json.loads(run_metadata).get("last_result")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(last, dict) and last and t.get("relative_logdir"):
                out[t["trial_id"]] = (t.get("status"), t["relative_logdir"], last)
        return out
    return {}


def ray_trials(stage_dir: Path) -> dict[str, dict]:
    """`parse_experiment_state` of the newest readable experiment state of a Tuner folder; empty when
    there is none."""
    for f in sorted(Path(stage_dir).glob(EXPERIMENT_STATE), reverse=True):
        try:
            return parse_experiment_state(f.read_text())
        except ValueError:
            continue
    return {}


def trials_and_checkpoints(text: str) -> dict[str, tuple[str, list[int] | None]]:
    """{trial id: (Ray's status, `saved_checkpoints`)} from the text of one experiment state file;
    ValueError when it is not a readable one."""
    try:
        return {t["trial_id"]: (t["status"], saved_checkpoints(run_metadata)) for t, run_metadata in _trial_data(text)}
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a readable Ray experiment state ({type(e).__name__}: {e})") from None


def experiment_state_problem(run_dir: Path) -> str | None:
    """Why Ray could not resume the run in `run_dir` (its Tuner folder `trials`), or None. Checked
    before anything is touched."""
    stage_dir = Path(run_dir) / "trials"
    states = sorted(stage_dir.glob(EXPERIMENT_STATE)) if stage_dir.is_dir() else []
    if not states:
        return f"{run_dir} holds no experiment state (trials/{EXPERIMENT_STATE}): nothing to resume"
    for f in states:
        try:
            state = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{f} is truncated or corrupt ({e})"
        if not isinstance(state, dict) or "trial_data" not in state:
            return f"{f} is not a Ray Tune experiment state (no trial_data)"
    if not (stage_dir / "tuner.pkl").exists():
        return f"{stage_dir / 'tuner.pkl'} is missing"
    return None


# ----------------------------------------------------------------------------------------------
# Ray's uploads of its staging folder into a run folder on a local (or network) filesystem

PARTIAL_PREFIX = ".partial-"  # a copy not yet renamed over its file (`replace_file`)


def replace_file(src: Path, dst: Path) -> None:
    """Copy `src` over `dst` so that `dst` holds, at every moment, either its old content or the new
    one, whole: the copy is written beside it, under a name of its own (two writers of one file,
    Ray's syncer thread and a trial's recovery upload, never share one), and renamed over it
    (atomic within a filesystem). A copy that fails is removed; a killed one stays until the
    resume sweeps it (`remove_partial_uploads`)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=PARTIAL_PREFIX, suffix=f"-{dst.name}")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)  # (mkstemp's file is private to its owner; the copy is not)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_uploaded: dict[tuple[str, str], tuple[int, int]] = {}  # (source, destination) -> the source's (size, mtime) when copied


def upload_replacing(src: Path, dst: Path, exclude: list[str]) -> int:
    """`src` (a file or a folder) copied to `dst` file by file with `replace_file`, leaving out the
    files whose path relative to `src` matches a pattern of `exclude` (Ray's rule for its uploads).
    A file this process already copied there and that has not changed since (same size and
    modification time) is not copied again: most of a snapshot's files (every params.json, the
    result.json of every ended trial) are the previous snapshot's (bench/upload_cost.py). A file
    that goes before it is copied (a temporary one replaced meanwhile) is skipped. Returns how many
    files were copied."""
    if src.is_file():
        pairs = [(src, dst)]
    else:
        pairs = [(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*"))
                 if not any(fnmatch.fnmatch(f.relative_to(src).as_posix(), e) for e in exclude)]
    n = 0
    for f, target in pairs:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            target.mkdir(parents=True, exist_ok=True)  # (as Ray's copy: a trial folder may be empty yet)
            continue
        key, seen = (str(f), str(target)), (st.st_size, st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode) or f.name.startswith(PARTIAL_PREFIX) or _uploaded.get(key) == seen:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            replace_file(f, target)
        except FileNotFoundError:
            continue
        _uploaded[key] = seen
        n += 1
    return n


def remove_partial_uploads(folder: Path) -> int:
    """Delete the copies a killed driver's upload left unrenamed under `folder` (`replace_file`);
    returns how many. search.driver sweeps a run folder before resuming it."""
    n = 0
    for f in Path(folder).rglob(f"{PARTIAL_PREFIX}*"):
        f.unlink(missing_ok=True)
        n += 1
    return n


def atomic_local_uploads() -> None:
    """At every experiment snapshot Ray's driver copies its staging folder (the experiment state,
    the searcher's state, each trial's params.json and result.json) over the run's storage with
    pyarrow's `copy_files`, which rewrites each file in place: on a local or network filesystem a
    driver killed inside that copy left empty or cut files (an experiment state no resume could
    read; a result.json without its epochs). From here on, when the storage is such a filesystem,
    each file is copied beside its destination and renamed over it (`upload_replacing`): a kill at
    any moment leaves every file whole, of this snapshot or of the one before, the mixture a run in
    object storage (where every object is written whole) already meets and search.searcher's
    restore reconciles. Object storage keeps Ray's own upload. Patches Ray's module function
    `ray.train._internal.storage._upload_to_fs_path`, which its syncer calls for every upload."""
    import pyarrow.fs
    from ray.train._internal import storage as ray_storage

    ray_upload = _require(ray_storage, "_upload_to_fs_path", "ray", None, "ray.train._internal.storage")
    if getattr(ray_upload, "replaces_files", False):
        return

    def upload(local_path, fs, fs_path, exclude=None):
        if not isinstance(fs, pyarrow.fs.LocalFileSystem):
            return ray_upload(local_path, fs, fs_path, exclude=exclude)
        upload_replacing(Path(local_path), Path(fs_path), list(exclude or []))

    upload.replaces_files = True
    ray_storage._upload_to_fs_path = upload


# ----------------------------------------------------------------------------------------------
# Ray Tune's environment switches (read by Ray when the Tuner starts: set them before, in the driver)


def lean_checkpoint_records() -> None:
    """Ray's checkpoint manager keeps no metrics with each checkpoint (Ray's own switch,
    `TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE`, added against its memory growth: ray-project/ray#54642).

    Ray keeps a record of every checkpoint a trial reported, deleted ones included, with that
    result's whole metrics dict, and writes all of them, cloudpickled, into every experiment
    snapshot: 213 kB of the 226 kB saved per 60-epoch trial, and a 32 MB snapshot at 152 trials
    (bench/scale.py), so each snapshot cost grew with every epoch reported. Nothing here reads those
    metrics (results come from each trial's result.json; search.checkpoints reads only the
    checkpoint numbers)."""
    os.environ["TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE"] = "1"


def quiet_ray_loggers() -> None:
    """Ray adds no logger of its own to the Tuners of this process (`TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`;
    search.driver adds the JSON one itself: see its `_tracker_callbacks`)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def classic_progress_output() -> None:
    """Ray Tune's older console output (`RAY_AIR_NEW_OUTPUT=0`), beside which search.progress prints
    its table; unless the user chose otherwise."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


# ----------------------------------------------------------------------------------------------
# Ray Tune's callbacks and trials: attributes the trackers read or change


@contextmanager
def swapped(callback, attr: str, value):
    """`callback.attr` is `value` inside the block and its old value after: Ray's MLflow and W&B
    callbacks read their tags (`tags`, `kwargs`) from there when a trial starts, and give every
    trial the same ones."""
    old = _require(callback, attr, "ray", None, type(callback).__name__)
    setattr(callback, attr, value)
    try:
        yield
    finally:
        setattr(callback, attr, old)


def trial_local_path(trial) -> Path:
    """The driver's staging copy of a trial's folder (what Ray uploads to the run's storage)."""
    return Path(_require(trial, "local_path", "ray", None, "Trial"))


# ----------------------------------------------------------------------------------------------


def check() -> None:
    """Fail now, naming the package and version, if an internal used above has moved."""
    import optuna
    from ray.tune.schedulers import AsyncHyperBandScheduler

    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1,
                                   reduction_factor=2, brackets=1)
    asha_knows(asha, "x")
    from ray.train._internal import storage as ray_storage

    params = list(inspect.signature(_require(ray_storage, "_upload_to_fs_path", "ray", None,
                                             "ray.train._internal.storage")).parameters)
    if params[:4] != ["local_path", "fs", "fs_path", "exclude"]:
        raise IncompatibleVersion(f"ray {_version('ray')}: _upload_to_fs_path takes {params}, not (local_path, fs, "
                                  f"fs_path, exclude); this project was tested with ray{TESTED['ray']}")
    asha_num_stopped(asha)
    asha_rungs(asha)
    params = list(inspect.signature(_bracket(asha).on_result).parameters)
    if params[:3] != ["trial", "cur_iter", "cur_rew"]:
        raise IncompatibleVersion(f"ray {_version('ray')}: ASHA's bracket.on_result takes {params}, not "
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
