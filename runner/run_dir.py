"""A job's directory, `runs/<job_id>/`: its layout, its preparation, its lock, and its outputs.

    runs/<job_id>/
      events.jsonl        the log (locked while the job runs); the source of truth
      manifest.json       a snapshot derived from the log
      pipeline.json       the pipeline as run, so `--resume` needs no original file
      outputs/<step>.txt  each step's output
      files/...           files the steps wrote
      .cache/ab/<key>.json  cached responses (unless `--cache-dir` names another place)

Every write under it goes through `safe_write` with the job directory as the
root, so `files/`, `outputs/` and `.cache/` are confined like any other path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

import attrs

from .config import FsyncPolicy
from .errors import JobError
from .filestore import (
    DirtyDirs,
    WriteResult,
    check_relpath,
    leftover_temp_files,
    safe_write,
    sha256_file,
    write_atomic,
)

__all__ = ["RunDir", "check_job_id", "is_valid_job_id"]

OUTPUTS = "outputs"
FILES = "files"
CACHE = ".cache"
EVENTS = "events.jsonl"

_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def is_valid_job_id(job_id: str) -> bool:
    """The one rule for a job id, for every command and the API: ASCII letters, digits,
    `-`, `_` and `.`, not starting with `.`, at most 128 characters."""
    return _JOB_ID.fullmatch(job_id) is not None


def check_job_id(job_id: str) -> None:
    """Raise `JobError` unless `job_id` can name a job (`is_valid_job_id`)."""
    if not is_valid_job_id(job_id):
        raise JobError(
            f"invalid job id {job_id!r}: use ASCII letters, digits, '-', '_' and '.',"
            " not starting with '.', at most 128 characters"
        )


@attrs.frozen
class RunDir:
    """The directory of one job. `RunDir.of(runs_dir, job_id)` checks the id first."""

    path: Path

    @classmethod
    def of(cls, runs_dir: str | os.PathLike[str], job_id: str) -> RunDir:
        check_job_id(job_id)
        return cls(Path(runs_dir) / job_id)

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def pipeline_path(self) -> Path:
        return self.path / "pipeline.json"

    @property
    def files_dir(self) -> Path:
        return self.path / FILES

    def output_path(self, step: str) -> Path:
        return self.path / OUTPUTS / f"{step}.txt"

    # -- preparing and locking ---------------------------------------------------

    def create(self, pipeline_json: bytes) -> int:
        """Make a new job's directory and lock its log; returns the log's descriptor."""
        if self.path.exists():
            raise JobError(
                f"job {self.job_id!r} already exists in {self.path.parent}"
                " (use --resume to continue it)"
            )
        try:
            (self.path / OUTPUTS).mkdir(parents=True)
            (self.path / FILES).mkdir()
            self.write_pipeline(pipeline_json)
        except OSError as exc:
            raise JobError(
                f"cannot create run directory {self.path}: {exc.strerror or exc}"
            ) from None
        return self.lock()

    def open_existing(self) -> int:
        """Lock an existing job's log for a resume; returns the log's descriptor."""
        if not self.events_path.is_file():
            raise JobError(
                f"job {self.job_id!r} not found in {self.path.parent} (nothing to resume)"
            )
        return self.lock()

    def lock(self) -> int:
        """Open the log for appending and hold an exclusive lock on it until it is closed.

        The lock (`flock`, dropped by the OS even on SIGKILL) keeps two processes
        from running the same job at once. The caller owns the descriptor.
        """
        fd = os.open(self.events_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobError(f"job {self.job_id!r} is running in another process") from None
        return fd

    def is_running(self) -> bool:
        """Whether a process holds the job's lock now (a job `runner` runs somewhere).

        The lock is the truth: a killed process loses it at once, and a reused pid
        does not fool it. A job on another host that shares the runs directory over
        a network filesystem may not show, depending on the filesystem's `flock`.
        """
        try:
            fd = os.open(self.events_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops our shared lock
        return False

    def write_pipeline(self, pipeline_json: bytes) -> None:
        write_atomic(self.path, "pipeline.json", pipeline_json, fsync="never")

    def remove_temp_files(self) -> None:
        """Remove the temp files a killed write left behind (hold the lock: nobody else writes)."""
        for path in leftover_temp_files([self.path]):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- writing and reading -------------------------------------------------------

    async def write_output(
        self, step: str, output: str, *, fsync: FsyncPolicy, dirty: DirtyDirs | None
    ) -> WriteResult:
        """Write a step's output to `outputs/<step>.txt`."""
        return await safe_write(
            self.path, f"{OUTPUTS}/{step}.txt", output, fsync=fsync, dirty=dirty
        )

    def check_file_path(self, relpath: str) -> None:
        """Raise `PathEscapeError` if a step could not write `relpath` under `files/`."""
        check_relpath(self.path, relpath, under=FILES)

    async def write_file(
        self, relpath: str, data: bytes | str, *, fsync: FsyncPolicy, dirty: DirtyDirs | None
    ) -> WriteResult:
        """Write a step's file under `files/`; the result's `path` is relative to `files/`."""
        self.check_file_path(relpath)
        result = await safe_write(self.path, f"{FILES}/{relpath}", data, fsync=fsync, dirty=dirty)
        return WriteResult(
            path=relpath, sha256=result["sha256"], wrote=result["wrote"], reason=result["reason"]
        )

    async def write_manifest(
        self, manifest: bytes, *, fsync: FsyncPolicy, dirty: DirtyDirs | None
    ) -> None:
        await safe_write(self.path, "manifest.json", manifest, fsync=fsync, dirty=dirty)

    def read_output(self, step: str) -> str | None:
        """A step's stored output; None when it is missing or unreadable."""
        try:
            return self.output_path(step).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def output_intact(self, step: str, sha256: str | None) -> bool:
        """True when the step's stored output still has the recorded SHA-256."""
        return sha256 is not None and sha256_file(self.output_path(step)) == sha256
