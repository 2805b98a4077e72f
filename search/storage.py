"""Where a run lives: a folder, or object storage (s3://, gs://) through pyarrow, as Ray Tune does.

A folder (`--storage runs`) is the run folder itself: on one machine, or on a cluster when every
node mounts it at the same path (NFS, EFS; `--shared-storage`).

With object storage (`--storage s3://bucket/runs`) the run folder is `s3://bucket/runs/NAME`:
Ray's workers upload the trials' checkpoints there, Ray's driver uploads the experiment state there,
and the machine that runs `search.run` keeps a working copy of the run's small files in
`--local-dir/NAME` (default `runs/NAME`): the Optuna journal, run.json, run.log, results.csv,
trials.json, and every trial's params/result/error files; checkpoints stay in the bucket. The
working copy is pushed when the run starts and ends; the journal also travels with every experiment
checkpoint Ray uploads (`trials/optuna.journal`, written by the searcher), so a lost head node loses
no study. `--resume` and `python -m search.storage fetch URI DIR` pull the small files back down.

Credentials and endpoints come from the usual AWS/GCP environment (AWS_PROFILE, instance profile,
AWS_ENDPOINT_URL for S3-compatible stores): nothing is stored in this project.

This module imports neither Ray nor Optuna.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

# The run folder of a run being resumed, while Ray unpickles its Tuner: the searcher and scheduler
# pickled with the run hold the folder of the machine that started it (see `resuming_in`).
_RESUMING_IN: Path | None = None

# The run folder's own files (beside Ray's `trials/` folder).
RUN_FILES = ("space.yaml", "run.json", "run.log", "optuna.journal", "results.csv", "trials.json", "latency.json")
JOURNAL = "optuna.journal"


def is_remote(storage: str) -> bool:
    """True for a URI with a scheme other than file:// (s3://, gs://, ...)."""
    return "://" in str(storage) and not str(storage).startswith("file://")


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # -> (filesystem, path inside it)


def _skipped(rel: PurePosixPath) -> bool:
    """Files `pull` leaves in storage: checkpoints (large) and TensorBoard event files."""
    return any(part.startswith("checkpoint_") for part in rel.parts) or rel.name.startswith("events.out.")


class RunLocation:
    """A run's folder: `local` is where this machine reads and writes its files; `uri` is the run's
    object-storage folder, or None when `local` is the run folder itself."""

    def __init__(self, storage: str, name: str, local_dir: str | Path = "runs"):
        self.name = name
        if is_remote(storage):
            self.uri: str | None = str(storage).rstrip("/") + "/" + name
            self.local = Path(local_dir).resolve() / name
        else:
            self.uri = None
            self.local = Path(str(storage).removeprefix("file://")).resolve() / name

    @property
    def ray_storage(self) -> str:
        """What Ray Tune's `storage_path` gets: the run folder (trials go to ray_storage/trials)."""
        return self.uri or str(self.local)

    __str__ = ray_storage.fget  # the run folder, as messages name it

    def exists(self) -> bool:
        """Whether the run folder exists where it is kept (in the bucket, for object storage)."""
        if self.uri is None:
            return self.local.exists()
        import pyarrow.fs

        fs, path = _fs(self.uri)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def push(self, files=RUN_FILES) -> None:
        """Upload the run folder's own files from the working copy (no-op for a folder)."""
        if self.uri is None:
            return
        fs, path = _fs(self.uri)
        for name in files:
            src = self.local / name
            if src.is_file():
                with open(src, "rb") as f, fs.open_output_stream(f"{path}/{name}") as out:
                    shutil.copyfileobj(f, out)

    def pull(self) -> int:
        """Download every small file of the run into the working copy; returns how many. The working
        copy's own run files, where present, are newer than the bucket's and are kept."""
        if self.uri is None:
            return 0
        return fetch(self.uri, self.local, keep=[n for n in RUN_FILES if (self.local / n).exists()])

    def checkpoints(self, trial_dir: Path) -> list[str]:
        """The checkpoint folders Ray kept for a trial (given by its folder in the working copy), as
        paths or URIs that `ray.tune.Checkpoint` opens, oldest first."""
        rel = Path(trial_dir).relative_to(self.local).as_posix()
        if self.uri is None:
            return [str(p) for p in sorted(Path(trial_dir).glob("checkpoint_*")) if p.is_dir()]
        import pyarrow.fs

        fs, root = _fs(f"{self.uri}/{rel}")
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
        names = sorted(PurePosixPath(i.path).name for i in infos if i.type == pyarrow.fs.FileType.Directory)
        return [f"{self.uri}/{rel}/{n}" for n in names if n.startswith("checkpoint_")]

    def best_journal(self) -> None:
        """After a pull: the Optuna journal is append-only, so of the copies at hand (the working
        copy's and the one Ray uploaded with its last experiment checkpoint) the longest is the newest."""
        copies = [p for p in (self.local / JOURNAL, self.local / "trials" / JOURNAL) if p.is_file()]
        if copies:
            newest = max(copies, key=lambda p: p.stat().st_size)
            if newest != self.local / JOURNAL:
                shutil.copy(newest, self.local / JOURNAL)


def append_missing_result(run_uri_or_dir: str, rel: str, result: dict, only_after_results: bool = False) -> bool:
    """Append `result` (one of a trial's reports, as a result.json line) to the trial's result.json
    in the run's storage (a folder or a bucket) unless a line of its epoch is there (or, with
    `only_after_results`, unless the file holds no epoch at all); returns whether it was appended."""
    import json

    import pyarrow.fs

    fs, root = _fs(run_uri_or_dir) if is_remote(run_uri_or_dir) else (pyarrow.fs.LocalFileSystem(), run_uri_or_dir)
    path = f"{root}/{rel}/result.json"
    text = ""
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8", errors="replace")
    epochs = set()
    for line in text.splitlines():
        try:
            epochs.add(json.loads(line).get("epoch"))
        except (json.JSONDecodeError, AttributeError):
            continue
    if result.get("epoch") in epochs or (only_after_results and not epochs - {None}):
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    fs.create_dir(f"{root}/{rel}", recursive=True)
    with fs.open_output_stream(path) as f:
        f.write((text + json.dumps(result) + "\n").encode())
    return True


def kept_file(run_dir: Path, trial_dir: Path, name: str, uri: str | None, into: Path) -> Path | None:
    """`name` in the newest checkpoint folder Ray kept of a trial (given by its folder in the run
    folder `run_dir`), or None when no kept checkpoint holds it. For a run on object storage (`uri`:
    run.json's `storage`) the checkpoints are in the bucket: the file is downloaded into `into`."""
    if uri is None:
        found = sorted(p for p in Path(trial_dir).glob(f"checkpoint_*/{name}") if p.is_file())
        return found[-1] if found else None
    import pyarrow.fs

    fs, root = _fs(f"{uri}/{Path(trial_dir).relative_to(run_dir).as_posix()}")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    found = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.File and PurePosixPath(i.path).name == name
                   and PurePosixPath(i.path).parent.name.startswith("checkpoint_"))
    if not found:
        return None
    into.mkdir(parents=True, exist_ok=True)
    target = into / f"{Path(trial_dir).name}-{name}"
    with fs.open_input_stream(found[-1]) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out)
    return target


@contextmanager
def resuming_in(run_dir: Path):
    """Around `Tuner.restore`: objects unpickled inside it that keep a run folder (the searcher's
    journal, the scheduler's stored results) take `run_dir` instead of the one they were saved with,
    which is another machine's after a head node was replaced, or an old path after a move."""
    global _RESUMING_IN
    _RESUMING_IN = Path(run_dir)
    try:
        yield
    finally:
        _RESUMING_IN = None


def relocated(run_dir: str | Path) -> Path:
    """The run folder an unpickled object should use (see `resuming_in`)."""
    return _RESUMING_IN or Path(run_dir)


def fetch(uri: str, dest: Path, keep=()) -> int:
    """Copy the files under `uri` into `dest`, checkpoints, event files and the top-level files named
    in `keep` excepted; returns how many."""
    import pyarrow.fs

    fs, root = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    n = 0
    for info in infos:
        if info.type != pyarrow.fs.FileType.File:
            continue
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(root))
        if _skipped(rel) or str(rel) in keep:
            continue
        target = Path(dest, *rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with fs.open_input_stream(info.path) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.replace(target)
        n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.storage",
                                description="Copy a run's small files (everything but checkpoints) from object "
                                            "storage into a folder that search.report and search.export read.")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch URI DIR: e.g. fetch s3://bucket/runs/NAME runs/NAME")
    f.add_argument("uri")
    f.add_argument("dest")
    args = p.parse_args(argv)
    if not is_remote(args.uri):
        print(f"error: {args.uri}: not an object-storage URI (s3://..., gs://...)", file=sys.stderr)
        return 2
    n = fetch(args.uri, Path(args.dest))
    if n == 0:
        print(f"error: {args.uri}: no files found", file=sys.stderr)
        return 1
    print(f"fetched {n} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
