"""Writing a job's events: the `EventEmitter` steps use, and the writer actor that owns the file.

Steps never touch `events.jsonl`: they `await emitter.step_started(...)` (or another
helper, or `emit()`), which sends the event into a bounded memory channel. One
`EventWriter` task receives them, writes each as one complete line in order,
folds it into the job's state (`on_event`), makes the log durable in batches, and
fans events out to live subscribers (`job.events()`, the progress display).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .events import EVENT_TYPES, Event, Level, build_event, event_line, make_event, utc_now_iso

if TYPE_CHECKING:
    from .filestore import DirtyDirs

__all__ = ["EventEmitter", "EventWriter"]

# How often, at most, the writer fsyncs (RUNNER_FSYNC=batch); the job's end always is.
_FSYNC_INTERVAL_S = 0.05
# After each batch the writer lets events gather this long: one wake-up and one write()
# for the events of many steps rather than for each (bench/overhead.py: -10% per step on
# a busy job). A follower sees them that much later.
_GATHER_S = 0.001
# Events after which the writer makes the log durable (fsync).
_FINISHED_LEVEL: Mapping[str, Level] = {"succeeded": "INFO", "failed": "ERROR"}
_DURABLE_POINTS = frozenset({"step.succeeded", "step.failed", "step.skipped", "job.finished"})


class EventEmitter:
    """The only way to write an event. Cheap to share between tasks.

    Each method builds an `Event` and sends it to the writer over a bounded
    channel, so a slow disk applies back-pressure instead of growing memory.
    """

    def __init__(self, job_id: str, send_channel: trio.MemorySendChannel[Event]) -> None:
        self.job_id = job_id
        self._send_channel = send_channel
        #: Events sent so far; `EventWriter.wait_written(emitter.sent)` waits for all of them.
        self.sent = 0

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
        self, type: str, step: str | None, level: Level, data: Mapping[str, Any] | None
    ) -> Event:
        # The helpers' path: their types and levels are valid by construction.
        event = build_event(utc_now_iso(), level, self.job_id, type, step, data)
        await self.send(event)
        return event

    async def send(self, item: Event) -> None:
        """Send a built event to the writer."""
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
        level = _FINISHED_LEVEL.get(status, "WARN")  # cancelled
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
        level: Level = "WARN" if reason == "upstream_failed" else "INFO"
        return await self._emit("step.skipped", step, level, {"reason": reason, **data})

    # -- llm, cache, files ----------------------------------------------------

    async def llm_request(self, step: str, **data: Any) -> Event:
        return await self._emit("llm.request", step, "INFO", data)

    async def llm_response(self, step: str, *, status: int | str | None, **data: Any) -> Event:
        ok = status is None or status == "ok" or (isinstance(status, int) and status < 400)
        level: Level = "INFO" if ok else "WARN"
        return await self._emit("llm.response", step, level, {"status": status, **data})

    async def llm_retry(
        self, step: str, *, attempt: int, delay_s: float, reason: str, delay_from: str
    ) -> Event:
        # delay_from: "server" (Retry-After), "backoff" or "breaker" (its cooldown).
        data = {
            "attempt": attempt,
            "delay_s": round(delay_s, 6),
            "reason": reason,
            "delay_from": delay_from,
        }
        return await self._emit("llm.retry", step, "WARN", data)

    async def llm_warning(self, step: str, *, provider: str, model: str, message: str) -> Event:
        data = {"provider": provider, "model": model, "message": message}
        return await self._emit("llm.warning", step, "WARN", data)

    async def provider_started(self, *, provider: str, model: str, **data: Any) -> Event:
        data = {"provider": provider, "model": model, **data}
        return await self._emit("provider.started", None, "INFO", data)

    async def provider_failed(
        self, *, provider: str, model: str, message: str, log_tail: list[str]
    ) -> Event:
        data = {"provider": provider, "model": model, "message": message, "log_tail": log_tail}
        return await self._emit("provider.failed", None, "ERROR", data)

    async def breaker(self, transition: str, *, provider: str, failures: int) -> Event:
        # `transition` comes from the breaker: opened, half_open or closed.
        type = f"breaker.{transition}"
        data = {"provider": provider, "failures": failures}
        return await self._emit(type, None, EVENT_TYPES[type], data)

    async def cache_hit(self, step: str, key: str, *, from_job: str | None = None) -> Event:
        # `from_job`: the earlier job whose cache held the entry (it is copied into ours).
        data = {"key": key} if from_job is None else {"key": key, "from_job": from_job}
        return await self._emit("cache.hit", step, "INFO", data)

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
        """Wait until `count` events sent have been written (and seen by `on_event`)."""
        if self.events_written >= count or self.done.is_set():
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def run(
        self,
        receive_channel: trio.MemoryReceiveChannel[Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        fd = self._fd if self._fd is not None else _open_for_append(self.path)
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

    async def _loop(self, fd: int, receive_channel: trio.MemoryReceiveChannel[Event]) -> None:
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
            self._write(fd, batch)
            if self._waiters:
                for waiter in [w for w in self._waiters if w[0] <= self.events_written]:
                    self._waiters.remove(waiter)
                    waiter[1].set()
            await self._fan_out(batch)
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
        data = memoryview(b"".join([event_line(event) for event in events]))
        while data:
            data = data[os.write(fd, data) :]
        self.events_written += len(events)
        for event in events:
            if event["type"] in _DURABLE_POINTS:
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


def _open_for_append(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)


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
