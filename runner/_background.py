"""Atomic writes done by one thread, so a step never waits for the disk.

A job's step outputs and cache entries go through `BackgroundWrites`: the
step hands over the bytes and goes on, and one thread writes them in order
with `write_atomic` (same confinement, idempotency and fsync policy as
`safe_write`). A step's end waits in the event writer instead: its
`step.succeeded` is held back until the step's writes have landed, so the
log never claims an output that is not on disk, while the step's dependents
already run. The supervisor starts the thread with the job and joins it
before the job returns.
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

_Item = tuple[int, str, str, bytes, str | None]


class BackgroundWrites:
    """A queue of atomic writes and the one thread that performs them, in order.

    `submit()` returns a ticket; `done(ticket)` / `await wait_for(ticket)` say when
    that write and every one before it have landed, and `failure(ticket)` whether
    it failed. Use `start()` and `close()` around the work, like a nursery.
    """

    def __init__(self, *, fsync: str, dirty: DirtyDirs | None) -> None:
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
        self._thread = threading.Thread(target=self._run, name="runner-writes", daemon=True)
        self._thread.start()

    def submit(
        self, root: str | os.PathLike[str], relpath: str, data: bytes, *, sha256: str | None = None
    ) -> int:
        """Queue `write_atomic(root, relpath, data)`; returns its ticket."""
        assert self._thread is not None, "start() first"
        self._submitted += 1
        self._queue.put((self._submitted, os.fspath(root), relpath, data, sha256))
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
            ticket, root, relpath, data, sha256 = item
            failure: RunnerError | None = None
            try:
                write_atomic(
                    root, relpath, data, fsync=self._fsync, dirty=self._dirty, sha256=sha256
                )
            except RunnerError as exc:
                failure = exc
            except Exception as exc:  # a bug must not kill the thread and hang the job
                failure = StorageError(f"cannot write {relpath!r} under {root}: {exc}")
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
