"""Selecting and following a job's events: the logic behind `runner tail`.

- `EventFilter` says which events to show (`--type`, `--step`, `--level`, `--since`);
  `parse_level()` and `parse_since()` read the user's words for them, and
  `unknown_type()` and `job_steps()` check them against what exists.
- `last_events()` keeps the last N of them (`-n`).
- `follow_job()` follows a live log and always ends, saying why in a `FollowEnd`: the
  job finished, its process is gone without finishing, or it never appeared.

Library code: nothing here prints. The CLI turns a `FollowEnd` into words and an exit code.
"""

from __future__ import annotations

import collections
import datetime as _dt
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from typing import Literal

import attrs

from ._json import loads
from .durations import parse_duration
from .events import EVENT_TYPES, Event, Level, LogReader, level_at_least, matches_type
from .run_dir import RunDir

__all__ = [
    "EventFilter",
    "FollowEnd",
    "event_families",
    "follow_job",
    "job_steps",
    "last_events",
    "parse_level",
    "parse_since",
    "unknown_type",
    "wait_for_log",
]

_LEVEL_WORDS: dict[str, Level] = {
    "info": "INFO",
    "warn": "WARN",
    "warning": "WARN",
    "error": "ERROR",
}


def parse_level(text: str) -> Level:
    """`info`, `warn`, `warning` or `error`, in any case -> a `Level`; `ValueError` otherwise."""
    try:
        return _LEVEL_WORDS[text.lower()]
    except KeyError:
        raise ValueError(
            f"--level {text!r}: expected one of info, warn (or warning), error"
        ) from None


def parse_since(text: str, now: _dt.datetime | None = None) -> _dt.datetime:
    """The moment `--since` names, in UTC; `ValueError` when it names none.

    A duration (`90s`, `10m`, `2h`, `1d`, `2w`) is that long before `now`; otherwise an ISO 8601
    time (`2026-11-24T05:23:34`, `2026-11-24T06:23:34+01:00`), read as UTC without a zone.
    """
    try:
        return (now or _dt.datetime.now(_dt.UTC)) - parse_duration(text)
    except ValueError:
        pass  # not a duration: a time, then
    try:
        moment = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (90s, 10m, 2h, 1d)"
            " or an ISO 8601 time (2026-11-24T05:23:34, UTC unless it says otherwise)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment


def event_families() -> list[str]:
    """The type families (`job`, `llm`, ...): what comes before the dot in `EVENT_TYPES`."""
    return sorted({kind.split(".", 1)[0] for kind in EVENT_TYPES})


def unknown_type(types: Iterable[str]) -> str | None:
    """The first of `types` that is neither an event type nor a family; None if all are known."""
    known = set(EVENT_TYPES) | set(event_families())
    return next((kind for kind in types if kind not in known), None)


def job_steps(run_dir: RunDir) -> list[str] | None:
    """The names of the steps of the job's pipeline (`pipeline.json`), sorted.

    None when `pipeline.json` cannot be read: then nobody can say which steps exist.
    """
    try:
        steps = loads(run_dir.pipeline_path.read_bytes())["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(steps, dict):  # how runner writes it: {name: step}
        return sorted(steps)
    if isinstance(steps, list):
        return sorted(s["name"] for s in steps if isinstance(s, dict) and "name" in s)
    return None


@attrs.frozen
class EventFilter:
    """Which events to show; an event passes when it matches every given condition.

    `types`: any of them (a family such as `llm` matches `llm.*`); `level`: that level
    or more severe; `since`: events at or after that moment (an event without a
    readable time, from a log older than 2.0, never passes).
    """

    types: Collection[str] = ()
    step: str | None = None
    level: Level | None = None
    since: _dt.datetime | None = None

    def __call__(self, event: Event) -> bool:
        return (
            (not self.types or any(matches_type(event, kind) for kind in self.types))
            and (self.step is None or event.get("step") == self.step)
            and (self.level is None or level_at_least(event["level"], self.level))
            and (self.since is None or _at_or_after(event["ts"], self.since))
        )


def _at_or_after(ts: str, since: _dt.datetime) -> bool:
    try:
        moment = _dt.datetime.fromisoformat(ts)
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment >= since


def last_events(
    events: Iterable[Event], wanted: Callable[[Event], bool], last: int | None
) -> Iterator[Event]:
    """The events `wanted` lets through; only the last `last` of them unless it is None.

    Constant memory: at most `last` events are held.
    """
    selected = (event for event in events if wanted(event))
    if last is None:
        return selected
    return iter(collections.deque(selected, maxlen=last))


@attrs.frozen
class FollowEnd:
    """Why `follow_job()` stopped.

    - `finished`: the job's last run wrote `job.finished`; `status` is its status
      (`succeeded`, `failed`, `cancelled`).
    - `process_gone`: the last run never finished and no process holds the job's lock:
      it was killed (or crashed) and can be resumed.
    - `not_found`: the job's log did not appear in time.

    `pipeline` is the pipeline's name, from the last `job.started` (or `pipeline.json`);
    "" when neither says.
    """

    reason: Literal["finished", "process_gone", "not_found"]
    status: str | None = None
    pipeline: str = ""


def wait_for_log(run_dir: RunDir, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait up to `timeout_s` for the job's log to appear; whether it did."""
    deadline = time.monotonic() + timeout_s
    while not run_dir.events_path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def follow_job(
    run_dir: RunDir,
    *,
    wanted: Callable[[Event], bool] | None = None,
    last: int | None = None,
    wait_s: float = 0.0,
    poll_s: float = 0.02,
    check_s: float = 0.5,
) -> Generator[Event, None, FollowEnd]:
    """Yield a job's events as they are written; return why it stopped (`FollowEnd`).

    Waits up to `wait_s` for the log to appear. The events already written come first
    (only the last `last` that `wanted` lets through, when `last` is given), then each new
    one as its line is complete. It ends after `job.finished` at the end of the log (a
    resumed job appends a new run after an earlier `job.finished`: that is not the end),
    or when the job's last run has no `job.finished` and, after `check_s` without a new
    line, no process holds the job's lock (`RunDir.is_running()`). The lock is taken
    before the first line is written, so a job that is starting is running.

    A generator's return value: drive it with `end = yield from follow_job(...)`, or
    catch `StopIteration.value`.
    """
    if not wait_for_log(run_dir, wait_s):
        return FollowEnd("not_found")
    wanted = EventFilter() if wanted is None else wanted
    run = _LastRun()
    # Unbuffered: `LogReader` seeks back to a partial line's start.
    with open(run_dir.events_path, "rb", buffering=0) as file:
        reader = LogReader(file)
        backlog = last_events(run.seen(reader.read_new()), wanted, last)
        yield from backlog
        quiet_since = time.monotonic()
        while not reader.finished:
            time.sleep(poll_s)
            new = False
            for event in run.seen(reader.read_new()):
                new = True
                if wanted(event):
                    yield event
            now = time.monotonic()
            if new or reader.finished:
                quiet_since = now
            elif now - quiet_since >= check_s:
                quiet_since = now
                if not run_dir.is_running():
                    # The process is gone: the lines it wrote before it went, then the end.
                    yield from filter(wanted, run.seen(reader.read_new()))
                    if not reader.finished:
                        return FollowEnd("process_gone", pipeline=run.pipeline or _name(run_dir))
    return FollowEnd("finished", status=run.status, pipeline=run.pipeline)


@attrs.define
class _LastRun:
    """What the `job.*` events said of the job's last run: its pipeline, how it ended."""

    pipeline: str = ""
    status: str | None = None

    def seen(self, events: Iterable[Event]) -> Iterator[Event]:
        for event in events:
            data = event.get("data") or {}
            if event["type"] == "job.started":
                self.pipeline = str(data.get("pipeline") or self.pipeline)
                self.status = None
            elif event["type"] == "job.finished":
                self.status = str(data.get("status", "failed"))
            yield event


def _name(run_dir: RunDir) -> str:
    try:
        return str(loads(run_dir.pipeline_path.read_bytes())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
