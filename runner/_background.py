"""A job's step outputs and cache entries, written off the steps' path when that pays.

Every output and cache entry goes through `BackgroundWrites.submit()`, which
returns a ticket, and a step's `step.succeeded` is held back by the event
writer until the step's tickets have landed: the log never claims an output
that is not on disk, while the step's dependents already run.

With `RUNNER_FSYNC=always` each write waits for the disk (milliseconds), so one
thread does them, in order, and steps go on meanwhile. Otherwise a write is
tens of microseconds and is done at once, in the caller: handing it to a
thread would cost more, because the thread and the event loop then contend
for the GIL at every system call (measured: a 1,000-step chain took 1.5-2x as
long). The supervisor starts the thread with the job and joins it before the
job returns.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import trio

from .errors import RunnerError, StorageError
from .filestore import DirtyDirs, write_atomic

__all__ = ["BackgroundWrites"]

_Item = tuple[int, str, str, bytes, str | None, bool]


class BackgroundWrites:
    """Atomic writes in order, on one thread when `threaded`, else at once.

    `submit()` returns a ticket; `done(ticket)` / `await wait_for(ticket)` say when
    that write and every one before it have landed, and `failure(ticket)` whether
    it failed. Use `start()` and `close()` around the work, like a nursery.
    """

    def __init__(self, *, fsync: str, dirty: DirtyDirs | None, threaded: bool) -> None:
        self.threaded = threaded
        self._fsync = fsync
        self._dirty = dirty
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)
        self._submitted = 0
        self._completed = 0
        self._failures: dict[int, RunnerError] = {}
        self._waiters: list[tuple[int, Callable[[], object]]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="runner-writes", daemon=True)
            self._thread.start()

    def submit(
        self,
        root: str | os.PathLike[str],
        relpath: str,
        data: bytes,
        *,
        sha256: str | None = None,
        sync_dir: bool = True,
    ) -> int:
        """`write_atomic(root, relpath, data)`, now or queued; returns its ticket.

        `sync_dir=False` leaves the directory out of `RUNNER_FSYNC=batch`'s next fsync.
        """
        self._submitted += 1
        item = (self._submitted, os.fspath(root), relpath, data, sha256, sync_dir)
        if self.threaded:
            assert self._thread is not None, "start() first"
            self._queue.put(item)
        else:
            self._write(item)
        return self._submitted

    def done(self, ticket: int) -> bool:
        return self._completed >= ticket

    def failure(self, ticket: int) -> RunnerError | None:
        """Why that write failed (`StorageError`, `PathEscapeError`), or None."""
        with self._lock:
            return self._failures.pop(ticket, None)

    async def wait_for(self, ticket: int) -> None:
        """Wait until the write with this ticket, and all before it, have landed."""
        with self._lock:
            if self._completed >= ticket:
                return
            landed = trio.Event()
            token = trio.lowlevel.current_trio_token()
            self._waiters.append((ticket, lambda: token.run_sync_soon(landed.set)))
        await landed.wait()

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every submitted write has landed; False if `timeout` ran out first."""
        with self._landed:
            return self._landed.wait_for(lambda: self._completed >= self._submitted, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued writes and stop the thread (blocking, at most about `timeout`)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._write(item)

    def _write(self, item: _Item) -> None:
        ticket, root, relpath, data, sha256, sync_dir = item
        dirty = self._dirty if sync_dir else None
        failure: RunnerError | None = None
        try:
            write_atomic(root, relpath, data, fsync=self._fsync, dirty=dirty, sha256=sha256)
        except RunnerError as exc:
            failure = exc
        except Exception as exc:  # a bug must not kill the thread and hang the job
            failure = StorageError(f"cannot write {relpath!r} under {root}: {exc}")
        if not self.threaded:
            if failure is not None:
                self._failures[ticket] = failure
            self._completed = ticket
            return
        with self._lock:
            if failure is not None:
                self._failures[ticket] = failure
            self._completed = ticket
            ready = [w for w in self._waiters if w[0] <= ticket]
            if ready:
                self._waiters = [w for w in self._waiters if w[0] > ticket]
            self._landed.notify_all()
        for _, wake in ready:
            try:
                wake()
            except trio.RunFinishedError:
                pass  # the job's trio run ended without waiting (cancelled writer)
