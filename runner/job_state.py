"""`JobState`: one fold over the events, and the views built on it.

The log is the source of truth. `JobState.apply(event)` folds one event; the
manifest (`manifest.json`), `runner show`, `runner list` and resume all read
the same fold, so they can never disagree. Memory grows with the number of
steps and files, never with the length of the log.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from ._json import loads, sorted_json
from .events import Event, complete_lines, parse_line

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "JobState",
    "JobStatus",
    "StepState",
    "StepStatus",
    "fold_events",
]

MANIFEST_FORMAT_VERSION = 1


#: A step's status as the log and the views tell it.
StepStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]
#: How a job ended (`job.finished`'s `status`, `JobResult.status`).
JobStatus = Literal["succeeded", "failed", "cancelled"]

PENDING: Final = "pending"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
SKIPPED: Final = "skipped"
CANCELLED: Final = "cancelled"


@attrs.define
class StepState:
    status: StepStatus = PENDING
    attempts: int = 0
    output_sha256: str | None = None
    started: str | None = None
    duration_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached: bool = False
    resumed: bool = False
    reason: str | None = None  # why it failed or was skipped

    def _add_tokens(self, data: dict[str, Any]) -> None:
        for field in ("input_tokens", "output_tokens"):
            value = data.get(field)
            if isinstance(value, int):
                setattr(self, field, (getattr(self, field) or 0) + value)


@attrs.define
class JobState:
    """Everything the views need, derived from a job's events in order."""

    job_id: str = ""
    pipeline: str = ""
    pipeline_sha256: str = ""
    inputs: dict[str, str] = attrs.Factory(dict)
    runner_version: str = ""
    status: str = PENDING
    steps: dict[str, StepState] = attrs.Factory(dict)
    files: dict[str, str] = attrs.Factory(dict)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    #: The process and host of the last run, as its `job.started` logged them.
    pid: int | None = None
    host: str | None = None
    runs: int = 0
    events: int = 0

    def apply(self, event: Event) -> None:
        self._apply(
            event["type"], event.get("step"), event.get("data"), event["ts"], event["job_id"]
        )

    def _apply(self, kind: str, name: str | None, data: Any, ts: str, job_id: str) -> None:
        # The fold's hot path: `fold_log` calls it once per line with the decoded fields,
        # so no `Event` is built and `data` is read, never copied.
        self.events += 1
        if not isinstance(data, dict):
            data = dict(data) if isinstance(data, Mapping) else {}
        if kind == "file.written":
            self.files[data["path"]] = data["sha256"]
            return
        if kind == "job.started":
            self._job_started(job_id, ts, data)
            return
        if kind == "job.finished":
            self.status = data.get("status", FAILED)
            self.finished = ts
            self.duration_s = data.get("duration_s")
            for each in self.steps.values():
                each.status = _ended(each.status)
            return
        if name is None:
            return
        if kind == "step.started":
            self.steps[name] = StepState(status=RUNNING, started=ts)
            return
        step = self.steps.get(name)
        if step is None:
            step = self.steps[name] = StepState()
        if kind == "step.succeeded":
            step.status = SUCCEEDED
            step.output_sha256 = data.get("output_sha256")
            step.duration_s = data.get("duration_s")
            step.cached = bool(data.get("cached"))
            step.attempts = data.get("attempts", step.attempts)
        elif kind == "step.failed":
            step.status = FAILED
            step.reason = data.get("message")
            step.attempts = data.get("attempts", step.attempts)
            step.duration_s = data.get("duration_s")
        elif kind == "step.skipped":
            if data.get("reason") == "resumed":
                # Still completed: the output recorded earlier is what dependents get.
                step.status, step.resumed = SUCCEEDED, True
            else:
                step.status, step.reason = SKIPPED, data.get("reason")
        elif kind == "llm.request":
            step.attempts = max(step.attempts, int(data.get("attempt", 0)))
        elif kind == "llm.response":
            step._add_tokens(data)
        elif kind == "cache.hit":
            step.cached = True

    def _job_started(self, job_id: str, ts: str, data: dict[str, Any]) -> None:
        self.runs += 1
        self.job_id = job_id
        self.pipeline = data.get("pipeline", self.pipeline)
        self.pipeline_sha256 = data.get("pipeline_sha256", self.pipeline_sha256)
        self.inputs = dict(data.get("inputs", self.inputs))
        self.runner_version = data.get("runner_version", self.runner_version)
        self.status = RUNNING
        self.started = self.started or ts
        self.finished = None
        pid, host = data.get("pid"), data.get("host")
        self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        self.host = host if isinstance(host, str) else None
        for name in data.get("steps", ()):
            self.steps.setdefault(name, StepState())
        for step in self.steps.values():
            step.resumed = False
            if step.status == RUNNING:  # interrupted by a crash: it will run again
                step.status = CANCELLED

    # -- views ----------------------------------------------------------------

    @property
    def completed_steps(self) -> list[str]:
        return sorted(name for name, step in self.steps.items() if step.status == SUCCEEDED)

    def manifest(self) -> dict[str, Any]:
        """The `manifest.json` document: no wall-clock fields, so reruns are byte-identical."""
        completed = self.completed_steps
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "job_id": self.job_id,
            "pipeline": self.pipeline,
            "pipeline_sha256": self.pipeline_sha256,
            "inputs": self.inputs,
            "status": self.status,
            "steps": {
                name: {
                    "status": step.status,
                    "attempts": step.attempts,
                    "output_sha256": step.output_sha256,
                }
                for name, step in self.steps.items()
            },
            "completed_steps": completed,
            "pending_steps": sorted(set(self.steps) - set(completed)),
            "files": self.files,
            "runner_version": self.runner_version,
        }

    def manifest_bytes(self) -> bytes:
        return sorted_json(self.manifest(), indent=True) + b"\n"

    @property
    def runs_here(self) -> bool:
        """Whether the last run's process was started on this host (so its pid means
        something here)."""
        return self.pid is not None and self.host == socket.gethostname()

    def display_status(self) -> str:
        """The job's status word; an unfinished job whose process is gone reads `interrupted`."""
        if self.status == RUNNING and self.runs_here and not _pid_alive(self.pid or 0):
            return "interrupted"
        return self.status

    def display_step_status(self, step: StepState, job_status: str) -> str:
        """A step's status word; one `running` in an interrupted job reads `interrupted`."""
        if step.status == RUNNING and job_status == "interrupted":
            return "interrupted"
        return step.status

    def step_counts(self, *, at_end: bool = False) -> dict[str, int]:
        """Steps by status; `at_end` counts them as `job.finished` will leave them."""
        counts: dict[str, int] = {}
        for step in self.steps.values():
            status = _ended(step.status) if at_end else step.status
            counts[status] = counts.get(status, 0) + 1
        return counts


def _ended(status: StepStatus) -> StepStatus:
    # A step still running when its job ends was cut short.
    return CANCELLED if status == RUNNING else status


def fold_events(events: Iterable[Event]) -> JobState:
    state = JobState()
    for event in events:
        state.apply(event)
    return state


def fold_log(
    events_path: str | os.PathLike[str], *, families: Collection[str] | None = None
) -> JobState:
    """Stream a log into a `JobState`, in constant memory (torn lines skipped, as `read_events`).

    `families` (e.g. `("step", "job")`, what resume needs) folds only the events of
    those type families: the other lines are passed over without being decoded.
    """
    state = JobState()
    apply = state._apply
    wanted = None if families is None else {family.encode() for family in families}
    with open(events_path, "rb") as file:
        for line in complete_lines(file):
            if wanted is not None:
                # The writer's compact form shows the type as is; a JSON string escapes its
                # quotes, so no value can pass for it. The first `"type":"` is the event's
                # own (it comes before `data`).
                at = line.find(b'"type":"')
                if at >= 0 and line[at + 8 : line.find(b".", at + 8)] not in wanted:
                    continue
            # The fast path decodes the writer's own lines; anything else (blank, padded,
            # unreadable) goes through `parse_line`, which also warns about a bad line.
            try:
                record = loads(line)
                # The writer's lines have these four keys. One without them (a pre-2.0 line
                # has no ts or level) goes through `parse_line`, which fills them in.
                kind, ts, job_id, _ = (
                    record["type"],
                    record["ts"],
                    record["job_id"],
                    record["level"],
                )
            except (ValueError, KeyError, TypeError):
                if not line.strip():
                    continue
                event = parse_line(line)
                if event is not None:
                    state.apply(event)
                continue
            apply(kind, record.get("step"), record.get("data"), ts, job_id)
    return state


def age(ts: str | None, now: _dt.datetime | None = None) -> str:
    """`3m`, `2h`, `5d`: how long ago `ts` was, for `runner list`."""
    if not ts:
        return "-"
    now = now or _dt.datetime.now(_dt.UTC)
    seconds = max(0.0, (now - _dt.datetime.fromisoformat(ts)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
