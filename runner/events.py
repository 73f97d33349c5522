"""The typed event log: `Event`, the `EventEmitter`, the writer actor, and readers.

Every action of a job is one `Event`, one JSON line in `runs/<job_id>/events.jsonl`.
Steps never touch the file: they `await emitter.emit(...)`, which sends into a
bounded memory channel; one writer task owns the file, writes each event as
one complete line, and fans events out to live subscribers.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import attrs
import orjson
import trio

from .errors import RunnerError

if TYPE_CHECKING:
    from .filestore import DirtyDirs

__all__ = [
    "EVENT_TYPES",
    "LEVELS",
    "Event",
    "EventEmitter",
    "TornLineWarning",
    "read_events",
]

LEVELS = ("INFO", "WARN", "ERROR")
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}

#: Every event type, with its default level.
EVENT_TYPES: Mapping[str, str] = {
    "job.started": "INFO",
    "job.finished": "INFO",
    "step.started": "INFO",
    "step.succeeded": "INFO",
    "step.failed": "ERROR",
    "step.skipped": "INFO",
    "llm.request": "INFO",
    "llm.response": "INFO",
    "llm.retry": "WARN",
    "breaker.opened": "WARN",
    "breaker.half_open": "INFO",
    "breaker.closed": "INFO",
    "cache.hit": "INFO",
    "cache.miss": "INFO",
    # Not in DESIGN.md's table: the response came back but could not be stored.
    "cache.error": "WARN",
    "file.written": "INFO",
}

# How often, at most, the writer fsyncs (RUNNER_FSYNC=batch); the job's end always is.
_FSYNC_INTERVAL_S = 0.05
# After each batch the writer lets events gather this long: one wake-up and one write()
# for the events of many steps rather than for each. A follower sees them that much later.
_GATHER_S = 0.001
# Events after which the writer makes the log durable (fsync).
_DURABLE_POINTS = frozenset({"step.succeeded", "step.failed", "step.skipped", "job.finished"})


# orjson writes the same compact UTF-8 JSON as json's encoder, ~5x faster. It refuses
# a str holding a lone surrogate; the stdlib then escapes it (ASCII, still valid JSON).
_FALLBACK = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def encode_record(record: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:
        return _FALLBACK.encode(record).encode()


def decode_record(line: bytes) -> Any:
    """One JSON document (a log line); raises `ValueError` when it is not one."""
    try:
        return orjson.loads(line)
    except ValueError:
        # orjson also refuses an escaped lone surrogate, which json reads (and we write).
        return json.loads(line)


class TornLineWarning(UserWarning):
    """A line of an events log could not be parsed (a write torn by a crash)."""


def utc_now_iso() -> str:
    """The current time as `2026-11-24T05:23:34.123456+00:00`."""
    global _last_second
    microseconds = time.time_ns() // 1000
    seconds = microseconds // 1_000_000
    second = _last_second  # one read: another thread may replace it meanwhile
    if second[0] != seconds:
        # Formatted once a second: a busy job stamps thousands of events in one.
        second = _last_second = (
            seconds,
            time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds)),
        )
    # str() of 1,000,000 + the microseconds, less its leading 1: six digits, zero-padded.
    return second[1] + str(microseconds - seconds * 1_000_000 + 1_000_000)[1:] + "+00:00"


_last_second: tuple[int, str] = (-1, "")


def level_at_least(level: str, minimum: str) -> bool:
    """True when `level` is `minimum` or more severe (INFO < WARN < ERROR)."""
    return _LEVEL_RANK[level] >= _LEVEL_RANK[minimum]


@attrs.frozen
class Event:
    """One line of the log: keys in field order; an absent `step` or `data` is omitted."""

    ts: str
    level: str
    job_id: str
    type: str
    step: str | None = None
    data: Mapping[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "ts": self.ts,
            "level": self.level,
            "job_id": self.job_id,
            "type": self.type,
        }
        if self.step is not None:
            record["step"] = self.step
        if self.data is not None:
            record["data"] = self.data
        return record

    def to_json(self) -> str:
        return encode_record(self.to_record()).decode()

    def to_line(self) -> bytes:
        """The event as written to the log: compact JSON and a newline."""
        return encode_record(self.to_record()) + b"\n"

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Event:
        return cls(
            ts=record["ts"],
            level=record["level"],
            job_id=record["job_id"],
            type=record["type"],
            step=record.get("step"),
            data=record.get("data"),
        )

    def matches_type(self, pattern: str) -> bool:
        """`llm` matches `llm.*`; `llm.retry` matches only itself."""
        return self.type == pattern or self.type.startswith(pattern + ".")


def make_event(
    job_id: str,
    type: str,
    *,
    step: str | None = None,
    level: str | None = None,
    data: Mapping[str, Any] | None = None,
    ts: str | None = None,
) -> Event:
    """Build a validated `Event`, filling `ts` and the type's default level."""
    if type not in EVENT_TYPES:
        raise RunnerError(f"unknown event type {type!r}")
    level = level or EVENT_TYPES[type]
    if level not in _LEVEL_RANK:
        raise RunnerError(f"unknown event level {level!r} (expected one of {', '.join(LEVELS)})")
    return Event(ts or utc_now_iso(), level, job_id, type, step, data)


class Deferred(Protocol):
    """Events decided later, written in their place in the log once `ready()`.

    The writer writes nothing past a deferred item until it is ready (it awaits
    `wait()`), then writes `events()`. A step's end is one: its `step.succeeded`
    waits for the step's background writes, and becomes `step.failed` if they fail.
    """

    def ready(self) -> bool: ...

    async def wait(self) -> None: ...

    def events(self) -> list[Event]: ...


class EventEmitter:
    """The only way to write an event. Cheap to share between tasks.

    Each method builds an `Event` and sends it to the writer over a bounded
    channel, so a slow disk applies back-pressure instead of growing memory.
    """

    def __init__(self, job_id: str, send_channel: trio.MemorySendChannel[Event | Deferred]) -> None:
        self.job_id = job_id
        self._send_channel = send_channel
        #: Items sent so far; `EventWriter.wait_written(emitter.sent)` waits for all of them.
        self.sent = 0

    def event(
        self, type: str, *, step: str | None = None, level: str | None = None, **data: Any
    ) -> Event:
        """Build (not send) an event of this job, e.g. for a `Deferred` to write later."""
        return make_event(self.job_id, type, step=step, level=level, data=data)

    async def emit(
        self,
        type: str,
        *,
        step: str | None = None,
        level: str | None = None,
        data: Mapping[str, Any] | None = None,
        ts: str | None = None,
    ) -> Event:
        event = make_event(self.job_id, type, step=step, level=level, data=data, ts=ts)
        await self.send(event)
        return event

    async def _emit(
        self, type: str, step: str | None, level: str, data: Mapping[str, Any] | None
    ) -> Event:
        # The helpers' path: their types and levels are valid by construction.
        event = Event(utc_now_iso(), level, self.job_id, type, step, data)
        await self.send(event)
        return event

    async def send(self, item: Event | Deferred) -> None:
        """Send a built event, or a `Deferred`, to the writer."""
        try:
            # The common case: room in the buffer, no need to yield to the scheduler.
            self._send_channel.send_nowait(item)
        except trio.WouldBlock:
            await self._send_channel.send(item)  # back-pressure: the writer is behind
        self.sent += 1

    async def aclose(self) -> None:
        await self._send_channel.aclose()

    # -- job and step helpers -------------------------------------------------

    async def job_started(self, **data: Any) -> Event:
        return await self._emit("job.started", None, "INFO", data)

    async def job_finished(self, status: str, **data: Any) -> Event:
        level = {"succeeded": "INFO", "failed": "ERROR"}.get(status, "WARN")
        return await self._emit("job.finished", None, level, {"status": status, **data})

    async def step_started(self, step: str) -> Event:
        return await self._emit("step.started", step, "INFO", None)

    async def step_succeeded(self, step: str, **data: Any) -> Event:
        return await self._emit("step.succeeded", step, "INFO", data)

    async def step_failed(
        self, step: str, *, error: str, message: str, attempts: int, **data: Any
    ) -> Event:
        data = {"error": error, "message": message, "attempts": attempts, **data}
        return await self._emit("step.failed", step, "ERROR", data)

    async def step_skipped(self, step: str, reason: str, **data: Any) -> Event:
        level = "WARN" if reason == "upstream_failed" else "INFO"
        return await self._emit("step.skipped", step, level, {"reason": reason, **data})

    # -- llm, cache, files ----------------------------------------------------

    async def llm_request(self, step: str, **data: Any) -> Event:
        return await self._emit("llm.request", step, "INFO", data)

    async def llm_response(self, step: str, *, status: int | str | None, **data: Any) -> Event:
        ok = status is None or status == "ok" or (isinstance(status, int) and status < 400)
        level = "INFO" if ok else "WARN"
        return await self._emit("llm.response", step, level, {"status": status, **data})

    async def llm_retry(self, step: str, *, attempt: int, delay_s: float, reason: str) -> Event:
        data = {"attempt": attempt, "delay_s": round(delay_s, 6), "reason": reason}
        return await self._emit("llm.retry", step, "WARN", data)

    async def breaker(self, transition: str, *, provider: str, failures: int) -> Event:
        # `transition` comes from the breaker: opened, half_open or closed.
        type = f"breaker.{transition}"
        data = {"provider": provider, "failures": failures}
        return await self._emit(type, None, EVENT_TYPES[type], data)

    async def cache_hit(self, step: str, key: str) -> Event:
        return await self._emit("cache.hit", step, "INFO", {"key": key})

    async def cache_miss(self, step: str, key: str, *, reason: str | None = None) -> Event:
        if reason is None:
            return await self._emit("cache.miss", step, "INFO", {"key": key})
        return await self._emit("cache.miss", step, "WARN", {"key": key, "reason": reason})

    async def cache_error(self, step: str, key: str, *, reason: str) -> Event:
        return await self._emit("cache.error", step, "WARN", {"key": key, "reason": reason})

    async def file_written(
        self, step: str | None, *, path: str, sha256: str, wrote: bool, reason: str
    ) -> Event:
        data = {"path": path, "sha256": sha256, "wrote": wrote, "reason": reason}
        return await self._emit("file.written", step, "INFO", data)


class EventWriter:
    """The writer actor: owns `events.jsonl`, writes in order, fsyncs in batches.

    Start it with `await nursery.start(writer.run, receive_channel)`. It stops
    when every send channel is closed, after writing everything it received,
    and then sets `done`. Its loop is shielded so that the last events of a
    cancelled job (`job.finished status=cancelled`) still reach the disk;
    whoever starts it must close the send side (and may `cancel()` it after a
    deadline). `on_event` sees each event once it is written, in order.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        dirty: DirtyDirs | None = None,
        on_event: Callable[[Event], None] | None = None,
        fd: int | None = None,
    ) -> None:
        self.path = path
        self._fd = fd
        self._fsync = fsync
        self._dirty = dirty
        self._on_event = on_event
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self._scope = trio.CancelScope(shield=True)
        self.done = trio.Event()
        self.events_written = 0
        #: Items (events and `Deferred`s) taken from the channel and written.
        self.items_written = 0
        self._durable = 0  # events written up to the last durable point
        self._synced = 0  # events written when the last fsync began
        self._sync_wanted = trio.Event()
        self._last_sync = -math.inf
        self._waiters: list[tuple[int, trio.Event]] = []

    def subscribe(self, send_channel: trio.MemorySendChannel[Event]) -> None:
        """Receive every event written from now on; the channel is closed when the writer ends."""
        self._subscribers.append(send_channel)

    def cancel(self) -> None:
        self._scope.cancel()

    async def wait_written(self, count: int) -> None:
        """Wait until `count` items sent have been written (and seen by `on_event`)."""
        if self.items_written >= count or self.done.is_set():
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def run(
        self,
        receive_channel: trio.MemoryReceiveChannel[Event | Deferred],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        fd = self._fd if self._fd is not None else open_log(self.path)
        try:
            _cut_torn_tail(fd)
            with self._scope:
                task_status.started()
                async with receive_channel, trio.open_nursery() as nursery:
                    if self._fsync:
                        nursery.start_soon(self._sync_timer, fd)
                    await self._loop(fd, receive_channel)
                    nursery.cancel_scope.cancel()  # waits for an fsync under way
                if self._fsync and self._synced < self._durable:
                    await trio.to_thread.run_sync(self._sync, fd)  # the end is always durable
        finally:
            os.close(fd)
            for subscriber in self._subscribers:
                subscriber.close()
            for _, waiter in self._waiters:
                waiter.set()
            self.done.set()

    async def _loop(
        self, fd: int, receive_channel: trio.MemoryReceiveChannel[Event | Deferred]
    ) -> None:
        while True:
            try:
                try:
                    batch = [receive_channel.receive_nowait()]
                except trio.WouldBlock:
                    batch = [await receive_channel.receive()]
            except trio.EndOfChannel:
                return
            # Drain what is already queued: one batch.
            while True:
                try:
                    batch.append(receive_channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            events: list[Event] = []
            for item in batch:
                if isinstance(item, Event):
                    events.append(item)
                    continue
                if not item.ready():
                    # Write what comes before it now, then wait for it in its place.
                    self._write(fd, events)
                    await self._fan_out(events)
                    events = []
                    await item.wait()
                events.extend(item.events())
            self._write(fd, events)
            self.items_written += len(batch)
            if self._waiters:
                for waiter in [w for w in self._waiters if w[0] <= self.items_written]:
                    self._waiters.remove(waiter)
                    waiter[1].set()
            await self._fan_out(events)
            await trio.sleep(_GATHER_S)

    async def _sync_timer(self, fd: int) -> None:
        # Durable within _FSYNC_INTERVAL_S of a step end: one thread hop per interval,
        # however many steps end in it (a hop costs more than the fsync), and never on
        # the writer's path: it keeps writing while the fsync runs.
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            await trio.sleep_until(self._last_sync + _FSYNC_INTERVAL_S)
            await trio.to_thread.run_sync(self._sync, fd)
            self._last_sync = trio.current_time()

    def _write(self, fd: int, events: list[Event]) -> None:
        """Append `events` as complete lines in one write(), then fold them (`on_event`)."""
        if not events:
            return
        # Complete lines only: a crash tears at most the last one, which readers skip.
        data = memoryview(b"".join([event.to_line() for event in events]))
        while data:
            data = data[os.write(fd, data) :]
        self.events_written += len(events)
        for event in events:
            if event.type in _DURABLE_POINTS:
                self._durable = self.events_written
                if self._fsync and not self._sync_wanted.is_set():
                    self._sync_wanted.set()
            if self._on_event is not None:
                self._on_event(event)

    async def _fan_out(self, batch: list[Event]) -> None:
        for subscriber in list(self._subscribers):
            for event in batch:
                try:
                    await subscriber.send(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(subscriber)
                    break

    def _sync(self, fd: int) -> None:
        self._synced = self.events_written  # read before the fsync: it covers at least these
        os.fsync(fd)
        if self._dirty is not None:
            self._dirty.sync()


def open_log(path: Path) -> int:
    """Open a job's log for appending, holding an exclusive lock until it is closed.

    The lock (`flock`, released by the OS even on SIGKILL) keeps two processes from
    running the same job at once. Raises `BlockingIOError` when another one holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _cut_torn_tail(fd: int) -> None:
    # A crash mid-write leaves a last line without its newline: cut it off before appending.
    size = os.fstat(fd).st_size
    if not size:
        return
    tail_start = max(0, size - 65536)
    while True:
        tail = os.pread(fd, size - tail_start, tail_start)
        cut = tail.rfind(b"\n")
        if cut >= 0 or tail_start == 0:
            break
        tail_start = max(0, tail_start - 65536)
    keep = tail_start + cut + 1 if cut >= 0 else 0
    if keep != size:
        os.ftruncate(fd, keep)


def parse_line(line: bytes) -> Event | None:
    """Parse one complete log line; None (with a warning) when it is not a valid event."""
    try:
        record = decode_record(line)
        return Event.from_dict(record)
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
            if event.type == "step.failed":
                print(event.step, event.data["message"])
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
