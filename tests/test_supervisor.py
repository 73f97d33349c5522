"""The supervisor: the job's end, fail-fast, the manifest's rewrites and the writer's batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers import events, fake_pipeline, of_type

import runner
import runner.event_writer
import runner.supervisor
from runner import JobOptions, Settings, Step, StepContext, run_dag
from runner.run_dir import RunDir
from runner.supervisor import Supervisor

FAST = Settings(fsync="never")  # no worker threads: autojump_clock stays exact


async def test_started_comes_before_any_event_so_a_subscriber_sees_them_all(
    tmp_path: Path,
) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x"), Step("b", prompt="y", needs=["a"])])
    run_dir = RunDir.of(tmp_path, "j")
    supervisor = Supervisor(
        pipeline,
        run_dir=run_dir,
        inputs={},
        settings=FAST,
        options=JobOptions(),
        log_fd=run_dir.create(pipeline.to_json_bytes()),
    )
    send_channel, receive_channel = trio.open_memory_channel[runner.Event](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.writer.subscribe(send_channel)
        seen = [event["type"] async for event in receive_channel]
    assert supervisor.result is not None
    assert ("succeeded", "y") == (supervisor.result.status, supervisor.result.outputs["b"])
    assert [e["type"] for e in events(run_dir.path)] == seen
    assert ("job.started", "job.finished") == (seen[0], seen[-1])


async def test_fail_fast_cancels_the_rest(
    runs_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(ctx: StepContext) -> str:
        await trio.sleep(100)
        return "too late"

    pipeline = fake_pipeline([Step("bad", prompt="b"), Step("slow", fn=slow)], errors={"bad": "no"})
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST, fail_fast=True)
    assert "failed" == result.status
    assert [] == of_type(result.run_dir, "step.succeeded")
    finished = of_type(result.run_dir, "job.finished")[-1]
    assert {"failed": 1, "cancelled": 1} == finished["data"]["steps"]


async def _manifest_rewrite_times(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Run a 3-step chain of 1 s steps; when each manifest rewrite began, from the start."""
    times: list[float] = []
    original = runner.supervisor.Supervisor._write_manifest

    async def recorded(self: runner.supervisor.Supervisor) -> None:
        times.append(trio.current_time())
        await original(self)

    monkeypatch.setattr(runner.supervisor.Supervisor, "_write_manifest", recorded)
    steps = [Step("a", prompt="x"), Step("b", prompt="y", needs=["a"])]
    steps.append(Step("c", prompt="z", needs=["b"]))
    start = trio.current_time()
    result = await run_dag(fake_pipeline(steps, latency_s=1.0), runs_dir=runs_dir, settings=FAST)
    assert "succeeded" == result.status
    return [round(t - start, 3) for t in times]


async def test_the_manifest_is_rewritten_once_per_interval_after_a_transition(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    times = await _manifest_rewrite_times(runs_dir, monkeypatch)
    # Steps change state at 0, 1, 2 and 3 s: each interval's changes make one rewrite,
    # 100 ms after the first of them; the job's end writes the last one (once the
    # writer, which gathers events for a millisecond at a time, has written the rest).
    assert [0.1, 1.1, 2.1] == times[:-1]
    assert 3.0 == pytest.approx(times[-1], abs=0.01)


async def test_a_costly_manifest_waits_longer_between_rewrites(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # Any rewrite takes some real time; at this ratio, the next waits for over an hour.
    monkeypatch.setattr(runner.supervisor, "_MANIFEST_COST_RATIO", 1e12)
    times = await _manifest_rewrite_times(runs_dir, monkeypatch)
    assert [0.1] == times[:-1]
    assert 3.0 == pytest.approx(times[-1], abs=0.01)


async def test_the_writer_gathers_the_events_of_many_steps_into_one_write(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    batches: list[int] = []
    original = runner.event_writer.EventWriter._write

    def counted(self: runner.event_writer.EventWriter, fd: int, batch: list[runner.Event]) -> None:
        if batch:
            batches.append(len(batch))
        original(self, fd, batch)

    monkeypatch.setattr(runner.event_writer.EventWriter, "_write", counted)
    steps = [Step(f"s{i}", prompt=str(i), needs=[f"s{i - 1}"] if i else []) for i in range(50)]
    result = await run_dag(fake_pipeline(steps), runs_dir=runs_dir, settings=FAST)
    assert "succeeded" == result.status
    # Instant steps all end within the writer's first millisecond of gathering (the mock
    # clock stands still while tasks run): a handful of writes, not two or three a step.
    assert len(batches) <= 4
    assert len(events(result.run_dir)) == sum(batches)
