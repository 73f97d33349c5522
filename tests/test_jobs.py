"""Jobs: `run_dag`, `open_job`, resume bookkeeping, cancellation, and what a job leaves behind."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest
import trio
from helpers import events, fake_pipeline, kinds, of_type

import runner
import runner.jobs
from runner import JobError, Pipeline, Settings, Step, StepContext, open_job, run_dag

FAST = Settings(fsync="never")  # no worker threads: autojump_clock stays exact


async def test_chain_runs_in_order_and_hands_outputs_downstream(runs_dir: Path) -> None:
    pipeline = fake_pipeline(
        [
            Step("a", prompt="alpha"),
            Step("b", prompt="got {{ steps.a.output }}", needs=["a"]),
            Step("c", prompt="{{ steps.a.output }}+{{ steps.b.output }}", needs=["b"]),
        ]
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    assert "succeeded" == result.status
    assert {"a": "alpha", "b": "got alpha", "c": "alpha+got alpha"} == dict(result.outputs)
    assert "alpha+got alpha" == (result.run_dir / "outputs" / "c.txt").read_text()
    started = [step for kind, step in kinds(result.run_dir) if kind == "step.started"]
    assert ["a", "b", "c"] == started


async def test_a_wide_layer_runs_concurrently(
    runs_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    steps = [Step(f"w{i}", prompt=str(i)) for i in range(20)]
    steps.append(Step("join", prompt="done", needs=[s.name for s in steps]))
    pipeline = fake_pipeline(steps, latency_s=10.0)
    start = trio.current_time()
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    elapsed = trio.current_time() - start
    assert "succeeded" == result.status
    # Twenty 10 s calls side by side, then the join: two latencies, not twenty-one.
    assert 20.0 <= elapsed < 21.0


async def test_concurrency_caps_steps_in_flight(
    runs_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = fake_pipeline([Step(f"w{i}", prompt=str(i)) for i in range(6)], latency_s=10.0)
    start = trio.current_time()
    await run_dag(pipeline, runs_dir=runs_dir, settings=FAST, concurrency=2)
    assert 30.0 <= trio.current_time() - start < 31.0


async def test_failure_skips_dependents_and_independent_branches_finish(runs_dir: Path) -> None:
    pipeline = fake_pipeline(
        [
            Step("a", prompt="a"),
            Step("bad", prompt="b", needs=["a"]),
            Step("after_bad", prompt="c", needs=["bad"]),
            Step("last", prompt="d", needs=["after_bad"]),
            Step("other", prompt="e", needs=["a"]),
        ],
        errors={"bad": "model refused"},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    assert "failed" == result.status
    assert {"a", "other"} == set(result.outputs)
    failed = of_type(result.run_dir, "step.failed")
    assert [("bad", "ERROR")] == [(e.get("step"), e["level"]) for e in failed]
    assert "model refused" in failed[0]["data"]["message"]
    skipped = {e.get("step"): e["data"]["reason"] for e in of_type(result.run_dir, "step.skipped")}
    assert {"after_bad": "upstream_failed", "last": "upstream_failed"} == skipped
    # A skipped step never started.
    started = {e.get("step") for e in of_type(result.run_dir, "step.started")}
    assert {"a", "bad", "other"} == started
    finished = of_type(result.run_dir, "job.finished")[-1]
    assert ("ERROR", "failed") == (finished["level"], finished["data"]["status"])


async def test_python_step_gets_inputs_and_upstream_outputs_and_writes_files(
    runs_dir: Path,
) -> None:
    seen: dict[str, object] = {}

    async def summarise(ctx: StepContext) -> str:
        seen.update(inputs=dict(ctx.inputs), outputs=dict(ctx.outputs))
        await ctx.write_file("notes/summary.md", "# " + ctx.outputs["a"])
        return "summary of " + ctx.outputs["b"]

    pipeline = fake_pipeline(
        [
            Step("a", prompt="{{ inputs.topic }}"),
            Step("b", prompt="b", needs=["a"]),
            Step("sum", fn=summarise, needs=["b"]),
        ],
        inputs={"topic": runner.InputSpec(default="trio")},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    assert "summary of b" == result.outputs["sum"]
    assert {"inputs": {"topic": "trio"}, "outputs": {"a": "trio", "b": "b"}} == seen
    assert "# trio" == (result.run_dir / "files" / "notes" / "summary.md").read_text()
    written = of_type(result.run_dir, "file.written")
    assert [("sum", "notes/summary.md")] == [(e.get("step"), e["data"]["path"]) for e in written]


async def test_python_step_that_raises_fails_the_step_not_the_job(runs_dir: Path) -> None:
    async def broken(ctx: StepContext) -> str:
        raise ValueError("bad data in row 3")

    pipeline = fake_pipeline([Step("x", fn=broken), Step("y", prompt="y")])
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    failed = of_type(result.run_dir, "step.failed")[0]
    assert ("x", "ValueError", "bad data in row 3") == (
        failed.get("step"),
        failed["data"]["error"],
        failed["data"]["message"],
    )
    assert {"y": "y"} == dict(result.outputs)


async def test_a_file_path_that_escapes_fails_the_step_and_writes_nothing(
    runs_dir: Path, tmp_path: Path
) -> None:
    reply = "```python path=ok.py\nok\n```\n```python path=../../evil.py\nevil\n```\n"
    pipeline = fake_pipeline([Step("builder", prompt="p", files=True)], replies={"builder": reply})
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    assert "failed" == result.status
    failed = of_type(result.run_dir, "step.failed")[0]
    assert ("ERROR", "PathEscapeError") == (failed["level"], failed["data"]["error"])
    assert "../../evil.py" in failed["data"]["message"]
    # Checked before writing: not even the good file was written, and nothing outside.
    assert [] == list((result.run_dir / "files").rglob("*"))
    assert not (runs_dir / "evil.py").exists()
    assert not (tmp_path / "evil.py").exists()


async def test_llm_events_pair_up_and_carry_the_step(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="hello", system="be brief")])
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    all_events = events(result.run_dir)
    request, response = (
        of_type(result.run_dir, "llm.request")[0],
        of_type(result.run_dir, "llm.response")[0],
    )
    assert (1, 1) == (request["data"]["attempt"], response["data"]["attempt"])
    assert {"provider": "fake", "model": "echo"} == {
        k: request["data"][k] for k in ("provider", "model")
    }
    assert len("hello") + len("be brief") == request["data"]["prompt_chars"]
    assert isinstance(response["data"]["output_tokens"], int)
    assert all(
        e.get("step") == "a"
        for e in all_events
        if e["type"].split(".")[0] in ("step", "llm", "cache", "file")
    )


async def test_job_started_and_finished_frame_the_log(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x")])
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST, inputs={})
    log = events(result.run_dir)
    assert ("job.started", "job.finished") == (log[0]["type"], log[-1]["type"])
    assert {"pipeline", "pipeline_sha256", "inputs", "resume", "runner_version"} <= set(
        log[0].get("data")
    )
    assert {"status", "duration_s", "steps"} <= set(log[-1].get("data"))
    assert runner.__version__ == log[0]["data"]["runner_version"]


async def test_existing_job_id_is_refused_without_resume(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x")])
    await run_dag(pipeline, runs_dir=runs_dir, job_id="same", settings=FAST)
    with pytest.raises(
        JobError, match=r"^job 'same' already exists in .* \(use --resume to continue it\)$"
    ):
        await run_dag(pipeline, runs_dir=runs_dir, job_id="same", settings=FAST)


async def test_resume_of_an_unknown_job_is_refused(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x")])
    with pytest.raises(JobError, match=r"^job 'nope' not found in "):
        await run_dag(pipeline, runs_dir=runs_dir, job_id="nope", resume=True, settings=FAST)


async def test_open_job_streams_live_events(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x"), Step("b", prompt="y", needs=["a"])])
    async with open_job(pipeline, runs_dir=runs_dir, settings=FAST) as job:
        seen = [(e["type"], e.get("step")) async for e in job.events()]
    assert kinds(job.run_dir) == seen
    assert job.result is not None
    assert "succeeded" == job.result.status


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_cancellation_from_the_caller_is_recorded_and_leaves_nothing_behind(
    runs_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = fake_pipeline(
        [Step("a", prompt="a"), Step("b", prompt="b", needs=["a"]), Step("c", prompt="c")],
        latency_s=40.0,
    )
    fds_before, threads_before = _open_fds(), threading.active_count()
    with trio.move_on_after(60) as scope:  # a and c done at 40 s, b mid-call
        await run_dag(pipeline, runs_dir=runs_dir, job_id="cancelled", settings=FAST)
    assert scope.cancelled_caught
    run_dir = runs_dir / "cancelled"
    log = events(run_dir)
    assert ("job.finished", "cancelled") == (log[-1]["type"], log[-1]["data"]["status"])
    assert "WARN" == log[-1]["level"]
    succeeded = {e.get("step") for e in log if e["type"] == "step.succeeded"}
    assert {"a", "c"} == succeeded
    assert b"\n" == (run_dir / "events.jsonl").read_bytes()[-1:]
    manifest = (run_dir / "manifest.json").read_text()
    assert '"status": "cancelled"' in manifest
    assert fds_before == _open_fds()
    assert threads_before >= threading.active_count() - 1  # an idle trio worker may linger


async def test_cancellation_with_the_real_clock_and_fsync(runs_dir: Path) -> None:
    # The default fsync policy uses worker threads; cancel while a step is mid-call.
    pipeline = fake_pipeline([Step("a", prompt="a")], latency_s=30.0)
    with trio.CancelScope() as scope:
        async with open_job(pipeline, runs_dir=runs_dir, job_id="c2") as job:
            async for event in job.events():
                if event["type"] == "llm.request":
                    scope.cancel()
    log = events(runs_dir / "c2")
    assert ("job.finished", "cancelled") == (log[-1]["type"], log[-1]["data"]["status"])
    assert job.result is not None
    assert "cancelled" == job.result.status


async def test_cancellation_with_writes_on_the_thread_records_every_finished_step(
    runs_dir: Path,
) -> None:
    # RUNNER_FSYNC=always: outputs go to the job's writer thread; cancel once the quick
    # steps ended, while the slow one is mid-call.
    steps = [Step(f"q{i}", prompt=f"q{i}") for i in range(5)] + [Step("slow", fn=_forever)]
    pipeline = fake_pipeline(steps)
    with trio.CancelScope() as scope:
        async with open_job(
            pipeline, runs_dir=runs_dir, job_id="c3", settings=Settings(fsync="always")
        ) as job:
            ended = 0
            async for event in job.events():
                ended += event["type"] == "step.succeeded"
                if ended == 5:
                    scope.cancel()
    run_dir = runs_dir / "c3"
    log = events(run_dir)
    assert ("job.finished", "cancelled") == (log[-1]["type"], log[-1]["data"]["status"])
    assert {f"q{i}" for i in range(5)} == {
        e.get("step") for e in log if e["type"] == "step.succeeded"
    }
    assert [f"q{i}" for i in range(5)] == sorted(p.stem for p in (run_dir / "outputs").iterdir())
    assert [] == [t for t in threading.enumerate() if t.name == "runner-writes"]


async def _forever(ctx: StepContext) -> str:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def test_run_dag_inside_a_callers_nursery(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x")])
    results = []

    async def one(job_id: str) -> None:
        results.append(await run_dag(pipeline, runs_dir=runs_dir, job_id=job_id, settings=FAST))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, f"j{i}")
    assert ["succeeded"] * 3 == [r.status for r in results]


async def test_a_job_cannot_run_in_two_places_at_once(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="x")], latency_s=5.0)
    with trio.CancelScope() as scope:
        async with open_job(pipeline, runs_dir=runs_dir, job_id="busy", settings=FAST) as job:
            async for event in job.events():
                if event["type"] == "step.started":
                    with pytest.raises(
                        JobError, match=r"^job 'busy' is running in another process$"
                    ):
                        await run_dag(
                            pipeline, runs_dir=runs_dir, job_id="busy", resume=True, settings=FAST
                        )
                    scope.cancel()
    # The lock goes with the job: now it resumes.
    result = await run_dag(
        fake_pipeline([Step("a", prompt="x")]), runs_dir=runs_dir, job_id="busy", resume=True
    )
    assert "succeeded" == result.status


async def test_a_resume_whose_output_vanished_runs_the_step_again(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = fake_pipeline(
        [Step("a", prompt="x"), Step("b", prompt="{{ steps.a.output }}!", needs=["a"])]
    )
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    # Deleted after resume checked it, before the step read it.
    from runner.run_dir import RunDir

    original = RunDir.read_output

    def vanish(self: RunDir, step: str) -> str | None:
        (first.run_dir / "outputs" / f"{step}.txt").unlink(missing_ok=True)
        return original(self, step)

    monkeypatch.setattr(RunDir, "read_output", vanish)
    again = await run_dag(
        pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST, use_cache=False
    )
    assert ("succeeded", "x!") == (again.status, again.outputs["b"])
    assert "x" == (first.run_dir / "outputs" / "a.txt").read_text()


@pytest.mark.parametrize("fsync", ["never", "always"])  # written at once / on the thread
async def test_an_output_that_cannot_be_written_fails_the_step_not_the_job(
    runs_dir: Path, fsync: str
) -> None:
    async def half_emoji(ctx: StepContext) -> str:
        return "cut \ud83d"

    pipeline = fake_pipeline(
        [Step("a", prompt="x"), Step("b", prompt="y"), Step("c", fn=half_emoji)]
    )
    settings = Settings(fsync=fsync)
    async with open_job(pipeline, runs_dir=runs_dir, job_id="j", settings=settings) as job:
        (job.run_dir / "outputs" / "a.txt").mkdir()  # a directory where a's output goes
    assert job.result is not None
    assert ("failed", {"b": "y"}) == (job.result.status, dict(job.result.outputs))
    failed = {e.get("step"): e.get("data") for e in of_type(job.run_dir, "step.failed")}
    assert ("StorageError", "UnicodeEncodeError") == (failed["a"]["error"], failed["c"]["error"])
    assert all(isinstance(data["duration_s"], float) for data in failed.values())


async def test_a_generated_job_id_that_exists_is_drawn_again(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs started in the same second can draw the same 4 hex digits. Make the first
    # draw always taken (for the next minute's stamps), the second free.
    now = datetime.datetime.now(datetime.UTC)
    for second in range(60):
        stamp = (now + datetime.timedelta(seconds=second)).strftime("%Y%m%dT%H%M%S")
        (runs_dir / f"many-{stamp}-abcd").mkdir(parents=True)
    draws = iter(["abcd", "ef01"])
    monkeypatch.setattr(runner.jobs.secrets, "token_hex", lambda n: next(draws))

    result = await run_dag(
        Pipeline(name="many", steps=[Step("a", prompt="x")]), runs_dir=runs_dir, settings=Settings()
    )

    assert "succeeded" == result.status
    assert result.job_id.endswith("-ef01")
