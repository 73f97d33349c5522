"""The jobs of a runs directory: each one's state from its log, and job references.

A job reference, wherever a command takes a job id, is one of

- a job id (`app-builder-20261201T101500-3f2a`);
- `latest`: the job that started last (of one pipeline, with `pipeline=`);
- a prefix of exactly one job's id (`app-builder-20261201T10`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from .errors import JobError
from .job_state import JobState, fold_log
from .run_dir import is_valid_job_id

__all__ = [
    "JOB_STATUSES",
    "LATEST",
    "job_states",
    "newest_first",
    "newest_unfinished",
    "resolve_job",
    "select_jobs",
]

LATEST = "latest"
#: What `JobState.display_status()` can say: the words `--status` accepts.
JOB_STATUSES = ("succeeded", "failed", "cancelled", "running", "interrupted", "pending")


def job_states(runs_dir: Path, *, families: Collection[str] = ("job",)) -> Iterator[JobState]:
    """The state of every job in `runs_dir`, from the events of its log (unordered).

    By default only `job.*` events are folded (status, start, pipeline, pid), the rest
    passed over undecoded; `families=("job", "step")` adds each step's status.
    Directories no job can have (`is_valid_job_id`) and dot-files are not jobs.
    """
    if not runs_dir.is_dir():
        return
    for events in runs_dir.glob("*/events.jsonl"):
        if not is_valid_job_id(events.parent.name):
            continue  # not a job's directory: no job can have that name
        state = fold_log(events, families=families)
        # The directory is where the job is found, even if its log names another id.
        state.job_id = events.parent.name
        yield state


def newest_first(states: Iterable[JobState]) -> list[JobState]:
    """`states` by start time, newest first (ties: by id, descending)."""
    return sorted(states, key=lambda s: (s.started or "", s.job_id), reverse=True)


def select_jobs(
    states: Iterable[JobState],
    *,
    statuses: Collection[str] = (),
    pipeline: str | None = None,
) -> list[JobState]:
    """The jobs with one of `statuses` (all when empty) and of `pipeline` (all when None)."""
    return [
        state
        for state in states
        if (not statuses or state.display_status() in statuses)
        and (pipeline is None or state.pipeline == pipeline)
    ]


def newest_unfinished(runs_dir: Path, pipeline: str) -> str:
    """The newest job of `pipeline` that did not succeed (what `run --resume` continues)."""
    for state in newest_first(job_states(runs_dir)):
        if state.pipeline == pipeline and state.status != "succeeded":
            return state.job_id
    raise JobError(f"no unfinished job of pipeline {pipeline!r} in {runs_dir} to resume")


def resolve_job(runs_dir: Path, reference: str, *, pipeline: str | None = None) -> str:
    """The id of the job `reference` names (see the module docstring); `JobError` if none."""
    if reference == LATEST:
        for state in newest_first(job_states(runs_dir)):
            if pipeline is None or state.pipeline == pipeline:
                return state.job_id
        of = f" of pipeline {pipeline!r}" if pipeline else ""
        raise JobError(f"no job{of} in {runs_dir}")
    if (runs_dir / reference / "events.jsonl").is_file() or not is_valid_job_id(reference):
        return reference  # an existing id, or one the caller rejects with its own message
    matches = sorted(
        path.name
        for path in (runs_dir.iterdir() if runs_dir.is_dir() else ())
        if path.name.startswith(reference)
        and is_valid_job_id(path.name)
        and (path / "events.jsonl").is_file()
    )
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise JobError(f"job {reference!r} is ambiguous in {runs_dir}: {shown}")
    return reference  # no such job: the caller says so in its own words
