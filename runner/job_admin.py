"""Cancelling and removing jobs: what `runner cancel`, `rm` and `prune` do (no printing).

- **Running** means a process holds the job's lock (`RunDir.is_running()`). A job whose
  last run has no end and was started on another host counts as running too: its lock
  may not be visible from here, so it is never removed from here.
- **Cancel** sends SIGINT to the job's process, which `runner run` turns into a clean
  cancellation (`job.finished status=cancelled`, exit 130); only on the job's own host.
- **Remove** deletes a job's directory while holding the job's lock, so no run can
  start in it meanwhile; a symlinked job directory is refused, never followed.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import signal
import socket
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import attrs
import trio

from .errors import JobError
from .events import LogReader
from .job_index import job_states, newest_first, select_jobs
from .job_state import RUNNING, JobState, fold_log
from .run_dir import RunDir

__all__ = [
    "Prune",
    "RunningJob",
    "cancel_job",
    "check_removable",
    "disk_usage",
    "plan_prune",
    "remove_job",
    "running_job",
    "wait_for_end",
]


@attrs.frozen
class RunningJob:
    """A job that is running: where, and which process, as far as its log says.

    `locked`: a process holds the job's lock, seen from here. `host` and `pid` are
    None while a run has taken the lock but not logged its start.
    """

    host: str | None
    pid: int | None
    locked: bool

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def describe(self) -> str:
        """`running (pid 4242 on this host)`, `maybe running on host 'h2' (...)`, ..."""
        if self.host is None:
            return "starting"
        if self.here:
            return f"running (pid {self.pid} on this host)"
        if self.locked:
            return f"running on host {self.host!r} (pid {self.pid})"
        return f"maybe running on host {self.host!r} (its last run has no end)"


def running_job(run_dir: RunDir) -> RunningJob | None:
    """The job's process if it is running (see the module docstring), else None."""
    locked = run_dir.is_running()
    try:
        state = fold_log(run_dir.events_path, families=("job",))
    except FileNotFoundError:
        state = JobState()
    if state.status != RUNNING:
        # Locked with no open run in the log: a run is starting (or just ending).
        return RunningJob(None, None, locked=True) if locked else None
    if locked or (state.host is not None and state.host != socket.gethostname()):
        return RunningJob(state.host, state.pid, locked=locked)
    return None


# -- cancel --------------------------------------------------------------------------


def cancel_job(run_dir: RunDir, state: JobState) -> int:
    """Send SIGINT to the process running the job on this host.

    Returns the log's size before the signal: the job's end is logged after it (see
    `wait_for_end`). `JobError` when the job is not running, runs on another host, or
    has not logged its process yet.
    """
    offset = run_dir.events_path.stat().st_size
    running = running_job(run_dir)
    if running is None:
        raise JobError(f"job {run_dir.job_id!r} is not running (status: {state.display_status()})")
    if running.host is None or running.pid is None:
        raise JobError(f"job {run_dir.job_id!r} is starting; try again in a moment")
    if not running.here:
        raise JobError(
            f"job {run_dir.job_id!r} runs on host {running.host!r}, not on this one"
            f" ({socket.gethostname()}): cancel it there"
        )
    try:
        os.kill(running.pid, signal.SIGINT)
    except ProcessLookupError:
        pass  # it ended just now: `wait_for_end` reads how
    return offset


async def wait_for_end(run_dir: RunDir, offset: int, *, poll_s: float = 0.05) -> str:
    """Wait until the job's run ends after byte `offset` of its log; its status.

    The status of the `job.finished` logged after `offset`, or `interrupted` when the
    process let go of the lock without logging an end (it was killed). Polls the log's
    new bytes only; the caller bounds the wait (`trio.fail_after`).
    """
    with _open_log(run_dir) as file:
        reader = LogReader(file)
        reader.offset = offset
        while True:
            locked = run_dir.is_running()  # before reading: an end is logged before the lock goes
            for event in reader.read_new():
                if event["type"] == "job.finished":
                    status = (event.get("data") or {}).get("status")
                    return status if isinstance(status, str) else "failed"
            if not locked:
                return "interrupted"
            await trio.sleep(poll_s)


def _open_log(run_dir: RunDir) -> BinaryIO:
    # Unbuffered, as `LogReader` needs; opening a local file does not block to speak of.
    return open(run_dir.events_path, "rb", buffering=0)


# -- remove --------------------------------------------------------------------------


def check_removable(runs_dir: Path, job_id: str) -> RunDir:
    """The job's directory, once it is known to be removable; `JobError` says why not.

    Refused: an id that cannot name a job, a directory with no log (no such job), a
    symlinked job directory, and a running job (`running_job`).
    """
    run_dir = RunDir.of(runs_dir, job_id)
    if run_dir.path.is_symlink():
        raise JobError(f"job {job_id!r} is a symlink in {runs_dir}; not removing it")
    if not run_dir.events_path.is_file():
        raise JobError(f"job {job_id!r} not found in {runs_dir}")
    running = running_job(run_dir)
    if running is not None:
        raise JobError(f"job {job_id!r} is {running.describe()}; not removing it")
    return run_dir


def remove_job(run_dir: RunDir) -> int:
    """Delete the job's directory, holding its lock meanwhile; the bytes freed on disk.

    `JobError` if a process runs the job now (a run started since `check_removable`).
    """
    if run_dir.path.is_symlink():
        raise JobError(f"job {run_dir.job_id!r} is a symlink; not removing it")
    size = disk_usage(run_dir.path)
    fd = run_dir.lock()  # raises JobError when a run holds it
    try:
        shutil.rmtree(run_dir.path)
    finally:
        os.close(fd)
    return size


def disk_usage(path: Path) -> int:
    """Bytes `path` takes on disk, as `du` counts them (blocks; symlinks not followed)."""
    total = 0
    for entry in _walk(path):
        try:
            total += entry.lstat().st_blocks * 512
        except OSError:
            continue  # vanished meanwhile
    return total


def _walk(path: Path) -> Iterator[Path]:
    yield path
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                yield Path(root, name)


# -- prune ---------------------------------------------------------------------------


@attrs.frozen
class Prune:
    """What `prune` does: the jobs to remove, and those it keeps because they run (newest first)."""

    remove: list[RunDir]
    running: list[tuple[RunDir, RunningJob]]


def plan_prune(
    runs_dir: Path,
    older_than: _dt.timedelta,
    *,
    statuses: Collection[str] = (),
    pipeline: str | None = None,
    now: _dt.datetime | None = None,
) -> Prune:
    """The jobs that started more than `older_than` ago, with those statuses and pipeline.

    A log with no start time (one from before 2.0) counts from when it was last
    written. Running jobs are never in `remove`: they are listed in `running`.
    """
    cutoff = (now or _dt.datetime.now(_dt.UTC)) - older_than
    remove: list[RunDir] = []
    running: list[tuple[RunDir, RunningJob]] = []
    jobs = select_jobs(job_states(runs_dir), statuses=statuses, pipeline=pipeline)
    for state in newest_first(jobs):
        run_dir = RunDir.of(runs_dir, state.job_id)
        if _started(run_dir, state) >= cutoff or run_dir.path.is_symlink():
            continue
        process = running_job(run_dir)
        if process is None:
            remove.append(run_dir)
        else:
            running.append((run_dir, process))
    return Prune(remove, running)


def _started(run_dir: RunDir, state: JobState) -> _dt.datetime:
    try:
        return _dt.datetime.fromisoformat(state.started or "")
    except ValueError:
        mtime = run_dir.events_path.stat().st_mtime
        return _dt.datetime.fromtimestamp(mtime, _dt.UTC)
