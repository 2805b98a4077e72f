"""The private internals of Ray and Optuna the search relies on: present in the installed versions,
and a clear error naming the package and version when one moves."""
from __future__ import annotations

import re
import shutil
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


# Private attributes of other libraries that detector/ may use (it cannot import search.compat, which
# is about Ray and Optuna): torch has no public way to list a module's forward hooks.
ALLOWED_PRIVATE = {"_forward_hooks"}


def _audit(files: list[Path], root: Path = ROOT) -> list[str]:
    """What only search/compat.py may do, found in `files`: a private attribute of an object that is
    not the project's own (`x._name` where no class or module of this project defines `_name`), an
    import from a private module of Ray or Optuna (or of a private name), Ray's experiment state file
    names, and setting one of Ray's environment switches (TUNE_* / RAY_*)."""
    import ast

    trees = {p: ast.parse(p.read_text()) for p in files}
    own = {n.name for t in trees.values() for n in ast.walk(t) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own |= {n.attr for t in trees.values() for n in ast.walk(t)
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    own |= {t.id for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}
    out = []
    for p, tree in trees.items():
        where = f"{p.relative_to(root)}"
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
                    and n.attr not in own | ALLOWED_PRIVATE):
                out.append(f"{where}:{n.lineno}: attribute {ast.unparse(n)}")
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                names = [a.name for a in n.names] if isinstance(n, ast.ImportFrom) else []
                for m in mods:
                    parts = m.split(".")
                    if parts[0] in ("ray", "optuna") and (any(x.startswith("_") for x in parts)
                                                          or any(x.startswith("_") for x in names)):
                        out.append(f"{where}:{n.lineno}: import from {m}")
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and "experiment_state" in n.value:
                out.append(f"{where}:{n.lineno}: Ray's file name {n.value!r}")
            elif isinstance(n, ast.Call) and ast.unparse(n.func) in ("os.environ.setdefault", "os.environ.update",
                                                                     "os.environ.__setitem__"):
                if any(isinstance(a, ast.Constant) and str(a.value).startswith(("TUNE_", "RAY_")) for a in n.args):
                    out.append(f"{where}:{n.lineno}: Ray's switch {ast.unparse(n)}")
            elif isinstance(n, ast.Assign) and any(isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ"
                                                   and str(getattr(t.slice, "value", "")).startswith(("TUNE_", "RAY_"))
                                                   for t in n.targets):
                out.append(f"{where}:{n.lineno}: Ray's switch {ast.unparse(n)}")
    return out


def test_no_private_internal_is_touched_outside_compat(tmp_path):
    files = [p for p in (ROOT / "search").rglob("*.py") if p.name != "compat.py"] + list((ROOT / "detector").rglob("*.py"))
    assert _audit(files) == []
    # The audit finds each kind of access (written as a module of this project would).
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom ray.train._internal import storage\nfrom optuna import _imports\n"
                   "x = scheduler._brackets\nos.environ['TUNE_X'] = '1'\nos.environ.setdefault('RAY_Y', '0')\n"
                   "f = 'experiment_state-*.json'\n")
    found = sorted(_audit([bad], tmp_path), key=lambda line: int(line.split(":")[1]))
    assert [line.split(": ", 1)[1].split(" ")[0] for line in found] == ["import", "import", "attribute", "Ray's",
                                                                        "Ray's", "Ray's"], found


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


def test_rays_upload_into_a_local_run_folder_replaces_each_file_whole(tmp_path, monkeypatch):
    """compat.atomic_local_uploads: Ray's syncer calls its module function for every upload; into a
    local folder each file is copied beside its destination and renamed over it. A copy cut short
    (the driver killed) leaves the destination as it was, whole; Ray's exclude patterns hold; a file
    unchanged since this process copied it is not copied again."""
    import pyarrow.fs
    from ray.train._internal import storage as ray_storage

    src, dst = tmp_path / "staging", tmp_path / "run"
    (src / "t_1" / "checkpoint_000000").mkdir(parents=True)
    (src / "t_1" / "result.json").write_text('{"epoch": 1}\n')
    (src / "t_1" / "checkpoint_000000" / "checkpoint.pt").write_text("w")
    (src / "experiment_state-x.json").write_text('{"trial_data": [1]}')
    monkeypatch.setattr(ray_storage, "_upload_to_fs_path", ray_storage._upload_to_fs_path)  # Ray's, back after the test
    compat.atomic_local_uploads()
    ray_storage._upload_to_fs_path(str(src), pyarrow.fs.LocalFileSystem(), str(dst), exclude=["*/checkpoint_*"])
    assert (dst / "t_1" / "result.json").read_text() == '{"epoch": 1}\n'
    assert not (dst / "t_1" / "checkpoint_000000").exists()  # excluded, as Ray excludes it
    assert compat.upload_replacing(src, dst, ["*/checkpoint_*"]) == 0  # nothing changed since

    (src / "experiment_state-x.json").write_text('{"trial_data": [1, 2]}')
    real_copy = shutil.copyfile

    def cut_halfway(a, b):  # the copy stops half way: the file beside the destination holds half
        Path(b).write_text(Path(a).read_text()[:5])
        raise OSError("no space left on device")

    monkeypatch.setattr(shutil, "copyfile", cut_halfway)
    with pytest.raises(OSError):
        compat.upload_replacing(src, dst, [])
    assert (dst / "experiment_state-x.json").read_text() == '{"trial_data": [1]}'  # the previous state, whole
    assert not list(dst.glob(".partial-*"))  # a copy that failed is removed; a killed one is swept:
    (dst / ".partial-abc-experiment_state-x.json").write_text('{"tri')
    assert compat.remove_partial_uploads(dst) == 1 and not list(dst.glob(".partial-*"))
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert compat.upload_replacing(src, dst, []) == 2  # the state and the (not excluded) checkpoint file
    assert (dst / "experiment_state-x.json").read_text() == '{"trial_data": [1, 2]}'
    assert sorted(p.name for p in dst.iterdir()) == ["experiment_state-x.json", "t_1"]
