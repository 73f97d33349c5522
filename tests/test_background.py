"""`BackgroundWrites`: a job's outputs and cache entries, written by one thread in order."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
from helpers import events, fake_pipeline

from runner import Event, PathEscapeError, Settings, Step, StorageError, filestore, run_dag
from runner._background import BackgroundWrites
from runner.filestore import DirtyDirs, sha256_bytes


def test_writes_land_in_order_and_drain_waits_for_all(tmp_path: Path) -> None:
    writes = BackgroundWrites(fsync="always", dirty=None, threaded=True)
    writes.start()
    try:
        tickets = [writes.submit(tmp_path, f"d/{i}.txt", str(i).encode()) for i in range(50)]
        assert writes.drain(timeout=10)
    finally:
        writes.close(timeout=10)
    assert list(range(1, 51)) == tickets
    assert all(writes.done(ticket) for ticket in tickets)
    assert [str(i) for i in range(50)] == [
        (tmp_path / "d" / f"{i}.txt").read_text() for i in range(50)
    ]
    assert [None] * 50 == [writes.failure(ticket) for ticket in tickets]


@pytest.mark.parametrize("threaded", [True, False])
def test_a_failed_write_is_reported_for_its_ticket_only(tmp_path: Path, threaded: bool) -> None:
    (tmp_path / "taken").mkdir()  # os.replace cannot put a file where a directory is
    (tmp_path / "out").symlink_to(tmp_path.parent)
    writes = BackgroundWrites(fsync="never", dirty=None, threaded=threaded)
    writes.start()
    try:
        ok = writes.submit(tmp_path, "ok.txt", b"x")
        taken = writes.submit(tmp_path, "taken", b"x")
        escape = writes.submit(tmp_path, "out/evil.txt", b"x")
        writes.drain(timeout=10)
    finally:
        writes.close(timeout=10)
    assert writes.failure(ok) is None
    failure = writes.failure(taken)
    assert isinstance(failure, StorageError)
    assert str(failure).startswith("cannot write 'taken' under ")
    assert isinstance(writes.failure(escape), PathEscapeError)
    assert not (tmp_path.parent / "evil.txt").exists()


async def test_wait_for_wakes_the_trio_task_when_the_write_landed(tmp_path: Path) -> None:
    gate = threading.Event()
    writes = BackgroundWrites(fsync="never", dirty=None, threaded=True)
    original = os.replace

    def held_replace(src: str, dst: str) -> None:
        gate.wait(10)
        original(src, dst)

    writes.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "replace", held_replace)
            ticket = writes.submit(tmp_path, "a.txt", b"a")
            assert not writes.done(ticket)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writes.wait_for, ticket)
                await trio.testing.wait_all_tasks_blocked()
                assert not (tmp_path / "a.txt").exists()
                gate.set()
    finally:
        writes.close(timeout=10)
    assert writes.done(ticket)
    assert "a" == (tmp_path / "a.txt").read_text()


@pytest.mark.parametrize("fsync", ["always", "batch"])  # on the thread, and at once
async def test_step_succeeded_is_logged_only_once_the_output_is_on_disk(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    seen: list[tuple[str, bool]] = []
    from runner.supervisor import Supervisor

    original = Supervisor._on_event

    def check(self: Supervisor, event: Event) -> None:
        if event.type == "step.succeeded":
            output = self.run_dir / "outputs" / f"{event.step}.txt"
            intact = (
                output.exists()
                and sha256_bytes(output.read_bytes()) == (event.data["output_sha256"])
            )
            seen.append((event.step, intact))
        original(self, event)

    monkeypatch.setattr(Supervisor, "_on_event", check)
    steps = [Step(f"s{i}", prompt=f"p{i}", needs=[f"s{i - 1}"] if i else []) for i in range(30)]
    result = await run_dag(
        fake_pipeline(steps), runs_dir=runs_dir, settings=Settings(fsync="never")
    )
    assert "succeeded" == result.status
    assert [(f"s{i}", True) for i in range(30)] == seen
    # And the log still reads in dependency order: each step ends before the next starts.
    order = [(e.type, e.step) for e in events(result.run_dir) if e.type.startswith("step.")]
    assert [(t, f"s{i}") for i in range(30) for t in ("step.started", "step.succeeded")] == order


def test_without_a_thread_a_write_has_landed_when_submit_returns(tmp_path: Path) -> None:
    writes = BackgroundWrites(fsync="never", dirty=None, threaded=False)
    writes.start()
    ticket = writes.submit(tmp_path, "a.txt", b"a")
    assert (True, "a", []) == (
        writes.done(ticket),
        (tmp_path / "a.txt").read_text(),
        [t for t in threading.enumerate() if t.name == "runner-writes"],
    )
    writes.close()


@pytest.mark.parametrize("sync_dir", [True, False])
def test_only_writes_that_ask_for_it_leave_their_directory_to_the_batch_fsync(
    tmp_path: Path, sync_dir: bool
) -> None:
    # Cache entries pass sync_dir=False: their directories are not fsynced in batches.
    dirty = DirtyDirs()
    writes = BackgroundWrites(fsync="batch", dirty=dirty, threaded=False)
    writes.submit(tmp_path, "ab/entry.json", b"{}", sync_dir=sync_dir)
    assert b"{}" == (tmp_path / "ab" / "entry.json").read_bytes()
    assert ({str(tmp_path / "ab")} if sync_dir else set()) == dirty._dirs


async def test_a_job_leaves_cache_directories_out_of_the_batch_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    monkeypatch.setattr(filestore, "_fsync_dir", lambda directory: synced.append(str(directory)))
    pipeline = fake_pipeline([Step("a", prompt="x"), Step("b", prompt="y", needs=["a"])])
    result = await run_dag(pipeline, runs_dir=tmp_path, settings=Settings(fsync="batch"))
    assert "succeeded" == result.status
    assert any(path.endswith("outputs") for path in synced)
    assert not [path for path in synced if ".cache" in path]
