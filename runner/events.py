"""The typed event log: `Event`, its types and levels, its JSON lines, and the readers.

Every action of a job is one `Event`, one JSON line in `runs/<job_id>/events.jsonl`.
Writing is `event_writer.py`'s job (the emitter and the writer actor); this module
says what an event is and reads logs back: `read_events()` streams a finished log,
`follow_events()` a live one.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, NotRequired, TypedDict, TypeGuard

from ._json import dumps, loads
from .errors import RunnerError

__all__ = [
    "EVENT_TYPES",
    "LEVELS",
    "Event",
    "Level",
    "TornLineWarning",
    "follow_events",
    "read_events",
]

Level = Literal["INFO", "WARN", "ERROR"]
LEVELS: tuple[Level, ...] = ("INFO", "WARN", "ERROR")
_LEVEL_RANK: dict[str, int] = {name: rank for rank, name in enumerate(LEVELS)}

#: Every event type, with its default level.
EVENT_TYPES: Mapping[str, Level] = {
    "job.started": "INFO",
    "job.finished": "INFO",
    "step.started": "INFO",
    "step.succeeded": "INFO",
    "step.failed": "ERROR",
    "step.skipped": "INFO",
    "llm.request": "INFO",
    "llm.response": "INFO",
    "llm.retry": "WARN",
    # Something about a provider's answers the pipeline should change (said once).
    "llm.warning": "WARN",
    # A model server runner started itself (provider `local`), or why it did not start.
    "provider.started": "INFO",
    "provider.failed": "ERROR",
    "breaker.opened": "WARN",
    "breaker.half_open": "INFO",
    "breaker.closed": "INFO",
    "cache.hit": "INFO",
    "cache.miss": "INFO",
    # The response came back but could not be stored; the step still succeeds.
    "cache.error": "WARN",
    "file.written": "INFO",
}


class TornLineWarning(UserWarning):
    """A line of an events log could not be parsed (a write torn by a crash)."""


def utc_now_iso() -> str:
    """The current time as `2026-11-24T05:23:34.123456+00:00`."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def level_at_least(level: str, minimum: str) -> bool:
    """True when `level` is `minimum` or more severe (INFO < WARN < ERROR)."""
    return _LEVEL_RANK[level] >= _LEVEL_RANK[minimum]


class Event(TypedDict):
    """One line of the log, as the plain dict it is on disk: keys in this order.

    `ts` is UTC ISO 8601 with microseconds; `level` is `INFO`, `WARN` or `ERROR`;
    `step` and `data` are absent when the event has none. Example::

        {"ts": "2026-11-24T05:23:34.123456+00:00", "level": "INFO", "job_id": "j-1",
         "type": "step.succeeded", "step": "builder", "data": {"duration_s": 1.2}}
    """

    ts: str
    level: Level
    job_id: str
    type: str
    step: NotRequired[str]
    data: NotRequired[dict[str, Any]]


def build_event(
    ts: str,
    level: Level,
    job_id: str,
    type: str,
    step: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Event:
    """An `Event` with its keys in order, leaving out an absent `step` or `data` (unchecked)."""
    event = Event(ts=ts, level=level, job_id=job_id, type=type)
    if step is not None:
        event["step"] = step
    if data is not None:
        event["data"] = dict(data)
    return event


def make_event(
    job_id: str,
    type: str,
    *,
    step: str | None = None,
    level: str | None = None,
    data: Mapping[str, Any] | None = None,
    ts: str | None = None,
) -> Event:
    """Build a validated `Event`, filling `ts` (now) and the type's usual level."""
    if type not in EVENT_TYPES:
        raise RunnerError(f"unknown event type {type!r}")
    level = level or EVENT_TYPES[type]
    if not _is_level(level):
        raise RunnerError(f"unknown event level {level!r} (expected one of {', '.join(LEVELS)})")
    return build_event(ts or utc_now_iso(), level, job_id, type, step, data)


def as_event(record: Any) -> Event:
    """The event a decoded log line holds; `KeyError`, `TypeError` or `ValueError` if none.

    Logs written before 2.0 have no `ts` and no `level`: `ts` reads as `""` and the
    level as the type's usual one (`INFO` for a type runner does not know), so
    `--level ERROR` still finds an old `step.failed`.
    """
    if not isinstance(record, dict):
        raise TypeError(f"an event is a JSON object, not {record.__class__.__name__}")
    kind, job_id = record["type"], record["job_id"]
    if not isinstance(kind, str) or not isinstance(job_id, str):
        raise TypeError("an event's type and job_id are strings")
    level = record.get("level") or EVENT_TYPES.get(kind, "INFO")
    if not _is_level(level):
        raise ValueError(f"unknown event level {level!r}")
    step, data = record.get("step"), record.get("data")
    if not (step is None or isinstance(step, str)) or not (data is None or isinstance(data, dict)):
        raise TypeError("an event's step is a string and its data an object")
    return build_event(record.get("ts", ""), level, job_id, kind, step, data)


def matches_type(event: Event, pattern: str) -> bool:
    """`llm` matches `llm.*`; `llm.retry` matches only itself."""
    kind = event["type"]
    return kind == pattern or kind.startswith(pattern + ".")


def event_line(event: Event) -> bytes:
    """The event as written to the log: compact JSON and a newline."""
    return dumps(event) + b"\n"


def _is_level(level: str) -> TypeGuard[Level]:
    return level in _LEVEL_RANK


def parse_line(line: bytes) -> Event | None:
    """Parse one complete log line; None (with a warning) when it is not a valid event."""
    try:
        return as_event(loads(line))
    except (ValueError, KeyError, TypeError):
        warnings.warn(
            f"skipped an unreadable events line: {line[:80]!r}", TornLineWarning, stacklevel=3
        )
        return None


def read_events(events_path: str | os.PathLike[str]) -> Iterator[Event]:
    """Stream the events of a log, in order, in constant memory.

    A torn last line (a crash mid-write) or any unreadable line is skipped with
    a `TornLineWarning`, never an exception. Example::

        for event in runner.read_events("runs/job-1/events.jsonl"):
            if event["type"] == "step.failed":
                print(event["step"], event["data"]["message"])
    """
    with open(events_path, "rb") as file:
        for line in complete_lines(file):
            if not line.strip():
                continue
            event = parse_line(line)
            if event is not None:
                yield event


def complete_lines(file: BinaryIO) -> Iterator[bytes]:
    """The complete lines of a log file; a torn last line is skipped with a warning."""
    for line in file:
        if not line.endswith(b"\n"):
            # Each event is written with its newline in one write(): no newline, torn line.
            warnings.warn(f"skipped a torn last line: {line[:80]!r}", TornLineWarning, stacklevel=3)
            return
        yield line


_CHUNK = 1 << 16


class LogReader:
    """Reads a growing log's new complete lines, from where it stopped last time.

    The one reader behind `follow_events()` and `runner.follow.follow_job()`. A torn
    line is never parsed: it is held back until its newline arrives, and the reader
    never moves past it.

    A partial line is never held in memory: `offset` is where the first unconsumed byte
    is, and each read starts again from there. So when a resumed job cuts off a line its
    crash tore and appends over it, we read the new bytes, never the torn ones glued to
    them.
    """

    def __init__(self, file: BinaryIO) -> None:
        # `file` must be unbuffered: a buffered reader's seek() back into its buffer
        # would serve stale bytes.
        self._file = file
        self.offset = 0
        self.last_type: str | None = None
        self.partial = False

    @property
    def finished(self) -> bool:
        """Whether the last complete line is job.finished, with nothing after it.

        A resumed job appends a new run after job.finished: a job.finished followed
        by anything, even a partial line, is not the end.
        """
        return self.last_type == "job.finished" and not self.partial

    def read_new(self) -> Iterator[Event]:
        """The events of the complete lines written since the last read, in order."""
        self._file.seek(self.offset)
        buffer = b""
        while True:
            chunk = self._file.read(_CHUNK)
            buffer += chunk
            cut = buffer.rfind(b"\n")
            if cut >= 0:
                lines, buffer = buffer[:cut].split(b"\n"), buffer[cut + 1 :]
                self.offset += cut + 1
                for line in lines:
                    event = parse_line(line) if line.strip() else None
                    if event is not None:
                        self.last_type = event["type"]
                        yield event
            if len(chunk) < _CHUNK:
                # The end of the file for now. A partial line left in `buffer` is read
                # again next time, from its start, never glued to bytes that may
                # replace it meanwhile (a resume cuts a torn line off).
                self.partial = bool(buffer)
                return


def follow_events(path: str | os.PathLike[str], poll_s: float = 0.02) -> Iterator[Event]:
    """Yield a live log's events as complete lines arrive; end after job.finished at its end.

    Waits for the log to appear, and follows it for as long as it takes: to also end
    when the job's process is gone, or to give up waiting, use
    `runner.follow.follow_job()`. A torn line is never yielded (see `LogReader`).
    """
    path = Path(path)
    while not path.exists():
        time.sleep(poll_s)
    with open(path, "rb", buffering=0) as file:
        reader = LogReader(file)
        while True:
            yield from reader.read_new()
            if reader.finished:
                return
            time.sleep(poll_s)
