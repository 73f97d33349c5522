"""What `runner run`'s displays know about the job: the `Tally`, the summary, the next command.

The `Tally` folds the job's events with the `JobState` that `runner show` uses, so
both tell the same statuses, and adds what only a display needs: when each step
started, retry and breaker waits, counts per event type. `progress.py` draws it.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from .events import Event, make_event
from .job_state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    JobState,
    StepState,
)

__all__ = ["NextCommands", "Tally", "duration_text", "summary_lines"]

_STEP_ENDS = frozenset({"step.succeeded", "step.failed", "step.skipped"})
_ORDER = (SUCCEEDED, RUNNING, FAILED, SKIPPED, CANCELLED, PENDING)


@attrs.frozen
class NextCommands:
    """The commands the summary suggests, built from the CLI arguments as the user gave them.

    `options` (e.g. `--runs-dir out`) go into both commands; `run_options` (`--provider`,
    `--model`) only into the resume command, so that it runs the same pipeline again.
    """

    pipeline_file: str
    options: tuple[str, ...] = ()
    run_options: tuple[str, ...] = ()

    def show(self, job_id: str) -> str:
        return shlex.join(["runner", "show", job_id, *self.options])

    def resume(self, job_id: str) -> str:
        again = ["runner", "run", self.pipeline_file, "--resume", "--job-id", job_id]
        return shlex.join([*again, *self.options, *self.run_options])


@attrs.define
class _Wait:
    """A running step waiting before its next attempt (from `llm.retry`)."""

    until: float  # the clock's time of the next attempt
    source: str  # `delay_from`: server, backoff or breaker
    reason: str


class Tally:
    """What the displays know about the job, folded from its events as they arrive.

    `state` is the `JobState` fold that `runner show` uses, so both tell the same
    statuses; the rest is what only a display needs (when each step started on
    `clock`, retry waits, open breakers, counters). `clock` is injectable for tests.
    """

    def __init__(self, steps: Sequence[str], clock: Callable[[], float]) -> None:
        self.state = JobState(steps={name: StepState() for name in steps})
        self.clock = clock
        self.job_id = ""
        self.begun = clock()
        self.ended_at: float | None = None
        self.started_at: dict[str, float] = {}
        self.waits: dict[str, _Wait] = {}
        self.upstream: dict[str, list[str]] = {}
        self.open_breakers: dict[str, int] = {}
        self.ended: list[str] = []  # steps, in the order they ended
        self.counts: Counter[str] = Counter()
        self.files: set[str] = set()

    def apply(self, event: Event) -> None:
        self.state.apply(event)
        kind, step, data = event["type"], event.get("step") or "", event.get("data") or {}
        self.counts[kind] += 1
        now = self.clock()
        if kind == "step.started":
            self.started_at[step] = now
        elif kind == "llm.retry":
            self.waits[step] = _Wait(
                until=now + float(data.get("delay_s") or 0.0),
                source=str(data.get("delay_from") or "backoff"),
                reason=str(data.get("reason") or ""),
            )
        elif kind == "llm.request":
            self.waits.pop(step, None)
        elif kind in _STEP_ENDS:
            self.waits.pop(step, None)
            self.ended.append(step)
            if data.get("upstream"):
                self.upstream[step] = [str(name) for name in data["upstream"]]
        elif kind == "breaker.opened":
            self.open_breakers[str(data.get("provider"))] = int(data.get("failures") or 0)
        elif kind in ("breaker.half_open", "breaker.closed"):
            self.open_breakers.pop(str(data.get("provider")), None)
        elif kind == "file.written":
            self.files.add(str(data.get("path")))
        elif kind == "job.finished":
            self.ended_at = now
            self.waits.clear()

    def finish(self, status: str) -> None:
        """Fold the job's end if its `job.finished` never arrived (the cleanup ran out of time)."""
        if self.ended_at is None:
            data = {"status": status, "duration_s": round(self.clock() - self.begun, 6)}
            self.apply(make_event(self.job_id or "-", "job.finished", data=data))

    # -- what the views read ---------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.state.steps)

    def status_of(self, name: str) -> str:
        """A step's status; once the job has ended, a step that never started was cancelled."""
        status = self.state.steps[name].status
        return CANCELLED if status == PENDING and self.ended_at is not None else status

    def by_status(self) -> dict[str, int]:
        counts = Counter(self.status_of(name) for name in self.state.steps)
        return {status: counts[status] for status in _ORDER if counts[status]}

    def seconds(self, name: str) -> float | None:
        """A finished step's duration, or how long it has been running (ticking)."""
        step = self.state.steps[name]
        if step.status in (SUCCEEDED, FAILED) and step.duration_s is not None:
            return float(step.duration_s)
        start = self.started_at.get(name)
        if start is None or step.status not in (RUNNING, CANCELLED):
            return None
        return (self.ended_at if self.ended_at is not None else self.clock()) - start

    def job_seconds(self) -> float:
        if self.ended_at is not None and self.state.duration_s is not None:
            return float(self.state.duration_s)
        return (self.ended_at if self.ended_at is not None else self.clock()) - self.begun

    def note(self, name: str) -> str:
        """The short text after a step's status: attempt and wait, or how it ended."""
        step, status = self.state.steps[name], self.status_of(name)
        if status == RUNNING:
            parts = [f"attempt {step.attempts}"] if step.attempts else []
            wait = self.waits.get(name)
            if wait is not None:
                parts.append(self._wait_text(wait))
            if step.cached:
                parts.append("cache hit")
            return ", ".join(parts)
        if status == SUCCEEDED:
            if step.resumed:
                return "resumed"
            if step.cached:
                return "cached"
            return f"{step.attempts} attempts" if step.attempts > 1 else ""
        if status == FAILED:
            return (step.reason or "").strip().split("\n", 1)[0]
        if status == SKIPPED and name in self.upstream:
            return "upstream failed: " + ", ".join(self.upstream[name])
        if status == SKIPPED:
            return step.reason or ""
        if status == CANCELLED:
            return "cut short" if name in self.started_at else "not started"
        return ""

    def _wait_text(self, wait: _Wait) -> str:
        left = wait.until - self.clock()
        if left <= 0:
            return "retrying"
        if wait.source == "breaker":
            return f"breaker open, next attempt in {duration_text(left)}"
        why = f"{wait.reason}, " if wait.reason else ""
        return f"retry in {duration_text(left)} ({why}{wait.source})"

    def header(self) -> str:
        statuses = [self.status_of(name) for name in self.state.steps]
        done = sum(1 for status in statuses if status not in (RUNNING, PENDING))
        status = self.state.status if self.state.status != PENDING else "starting"
        line = (
            f"job {self.job_id} · {status} · {duration_text(self.job_seconds())}"
            f" · {done}/{len(self.state.steps)} steps done"
        )
        for provider, failures in self.open_breakers.items():
            line += f" · breaker open: {provider} ({failures} failures)"
        return line

    def counts_line(self) -> str:
        return " · ".join(f"{count} {status}" for status, count in self.by_status().items())


def summary_lines(tally: Tally, run_dir: Path, commands: NextCommands) -> list[str]:
    """What the job did and what to run next; `job <status>` is printed after these."""
    state, counts = tally.state, tally.counts
    tokens_in = sum(step.input_tokens or 0 for step in state.steps.values())
    tokens_out = sum(step.output_tokens or 0 for step in state.steps.values())
    steps = ", ".join(f"{count} {status}" for status, count in tally.by_status().items())
    next_command = (
        commands.show(tally.job_id) if state.status == SUCCEEDED else commands.resume(tally.job_id)
    )
    return [
        f"job {tally.job_id} {state.status} in {duration_text(tally.job_seconds())}: {steps}",
        f"  LLM calls {counts['llm.request']} · retries {counts['llm.retry']}"
        f" · tokens {tokens_in} in / {tokens_out} out · cache hits {counts['cache.hit']}"
        f" · files written {len(tally.files)}",
        f"  outputs: {run_dir}/outputs/   files: {run_dir}/files/",
        f"  next: {next_command}",
    ]


def duration_text(seconds: float) -> str:
    """`0.42s`, `3.1s`, `2m05s`, `1h02m`: short, and ticking visibly while a step runs."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
