"""The private internals of Ray and Optuna the search relies on: present in the installed versions,
and a clear error naming the package and version when one moves."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import ray
from ray.tune.schedulers import AsyncHyperBandScheduler

from search import compat

ROOT = Path(__file__).resolve().parents[2]


def test_every_internal_used_is_present_in_the_installed_versions():
    compat.check()


def test_a_moved_internal_fails_naming_the_package_version_and_the_tested_range(monkeypatch):
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1,
                                   reduction_factor=2, brackets=1)
    del asha._trial_info  # as if a release renamed it
    with pytest.raises(compat.IncompatibleVersion) as e:
        compat.asha_knows(asha, "x")
    assert f"ray {ray.__version__}: AsyncHyperBandScheduler has no `_trial_info`" in str(e.value)
    assert f"ray{compat.TESTED['ray']}" in str(e.value)
    study = optuna.create_study()
    monkeypatch.delattr(optuna.Study, "_storage", raising=False)
    study.__dict__.pop("_storage", None)
    with pytest.raises(compat.IncompatibleVersion, match=f"optuna {re.escape(optuna.__version__)}: Study has no `_storage`"):
        compat.frozen_trial(study, 0)


def test_installed_versions_are_inside_the_tested_bounds_which_pyproject_declares():
    from packaging.specifiers import SpecifierSet

    text = (ROOT / "pyproject.toml").read_text()
    for package, module in (("ray", ray), ("optuna", optuna)):
        assert module.__version__ in SpecifierSet(compat.TESTED[package]), (package, module.__version__)
        assert re.search(rf'"{package}(\[tune\])?{re.escape(compat.TESTED[package])}"', text), package


def test_no_private_internal_is_touched_outside_compat():
    pattern = re.compile(r"\._(brackets|trial_info|metric_op|rungs|num_stopped|storage|trial_id)\b")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "search").glob("*.py") if p.name != "compat.py"
                 for i, line in enumerate(p.read_text().splitlines(), start=1) if pattern.search(line)]
    assert offenders == []


def test_a_retried_trial_keeps_the_epochs_reported_since_the_last_snapshot(tmp_path):
    """Ray's JSON logger, before a retried trial restarts, copies result.json from the run's storage
    over the driver's copy; search.trackers.ResultLogger uploads the driver's copy first, so epochs
    reported after Ray's last experiment snapshot survive. A fake trial with Ray's attributes and
    Ray's own restore step."""
    import pyarrow.fs
    from ray.tune.logger import JsonLoggerCallback

    from search.trackers import ResultLogger

    class _Storage:
        storage_filesystem = pyarrow.fs.LocalFileSystem()

    class _Trial:
        checkpoint = "checkpoint_000000"  # the retry restarts from a checkpoint

        def __init__(self, name):
            self.local_path, self.path = str(tmp_path / "staging" / name), str(tmp_path / "storage" / name)
            self.storage = _Storage()
            self.storage.trial_fs_path = self.path
            for d in (self.local_path, self.path):
                Path(d).mkdir(parents=True)
            Path(self.path, "result.json").write_text("")  # the last snapshot: before epoch 1
            Path(self.local_path, "result.json").write_text('{"epoch": 1}\n')

    ours, rays = _Trial("ours"), _Trial("rays")
    ResultLogger().on_trial_recover(0, [], ours)
    JsonLoggerCallback().on_trial_recover(0, [], rays)
    for trial in (ours, rays):
        JsonLoggerCallback()._restore_from_remote("result.json", trial)
    assert Path(ours.local_path, "result.json").read_text() == '{"epoch": 1}\n'
    assert Path(rays.local_path, "result.json").read_text() == ""  # what Ray's logger alone leaves
