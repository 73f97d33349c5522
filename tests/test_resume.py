"""Resume: completed steps are skipped and hand their stored output on; the rest runs again.

The failures are real: a permanent 400 from the loopback LLM server, a
`runner run` process killed with SIGKILL or interrupted with SIGINT while a
slow call is in flight. Requests are counted per step by their prompt (each
prompt starts with its step's name), so "not requested again" is measured on
the server, not inferred from our own events.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import events, fake_pipeline, invoke, wait_until

from runner import (
    InputSpec,
    Pipeline,
    Settings,
    Step,
    read_completed_steps,
    read_events,
    run_dag,
)
from runner.events import Event, TornLineWarning, event_line, make_event
from runner.filestore import leftover_temp_files, sha256_bytes
from runner.job_state import fold_events, fold_log
from runner.testing import Fail, FakeLLMServer, Reply, open_fake_llm_server

FAST = Settings(fsync="never")
WAIT_S = 20.0  # a bound for polling, never a measured duration


# -- helpers --------------------------------------------------------------------------


def _requests_by_step(server: FakeLLMServer) -> Counter[str]:
    # Every prompt here starts with "<step>:", so the server's own record names the step.
    return Counter(request.prompt.split(":")[0] for request in server.requests)


def _loopback_settings(server: FakeLLMServer) -> Settings:
    return Settings(
        openai_base_url=server.openai_base_url,
        anthropic_base_url=server.anthropic_base_url,
        max_retries=0,
    )


def _loopback_pipeline(steps: Sequence[Step], name: str = "loop") -> Pipeline:
    return Pipeline(name=name, steps=steps, defaults={"provider": "openai", "model": "m"})


def _runs(run_dir: Path) -> list[list[Event]]:
    """The log cut into runs, one per `job.started`."""
    runs: list[list[Event]] = []
    for event in events(run_dir):
        if event["type"] == "job.started":
            runs.append([])
        runs[-1].append(event)
    return runs


def _steps_with(run: list[Event], type_: str, **data: Any) -> set[str]:
    return {
        e.get("step")
        for e in run
        if e["type"] == type_
        and e.get("step")
        and all((e.get("data") or {}).get(k) == v for k, v in data.items())
    }


def _complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    # A live log may end in a half-written line: read only what is complete.
    if not path.exists():
        return
    *lines, _ = path.read_bytes().split(b"\n")
    for line in lines:
        yield json.loads(line)


def _logged(path: Path, type_: str, step: str) -> bool:
    return any(r["type"] == type_ and r.get("step") == step for r in _complete_lines(path))


# -- resume after a failed step -------------------------------------------------------


async def test_resume_skips_completed_steps(runs_dir: Path, settings: Settings) -> None:
    steps = [
        Step("architect", prompt="design {{ inputs.idea }}"),
        Step("builder", prompt="build from: {{ steps.architect.output }}", needs=["architect"]),
    ]
    options: dict[str, Any] = {
        "replies": {"architect": "DESIGN-7"},
        "inputs": {"idea": InputSpec(default="a clock")},
    }
    broken = fake_pipeline(steps, errors={"builder": "model is on strike"}, **options)
    first = await run_dag(broken, runs_dir=runs_dir, job_id="j", settings=settings)
    assert "failed" == first.status
    log = first.run_dir / "events.jsonl"
    before = log.read_bytes()
    assert {"architect"} == read_completed_steps(log)

    fixed = fake_pipeline(steps, **options)
    second = await run_dag(fixed, runs_dir=runs_dir, job_id="j", resume=True, settings=settings)

    assert "succeeded" == second.status
    assert log.read_bytes().startswith(before)  # appended to the same log
    first_run, resumed = _runs(second.run_dir)
    assert (False, True) == (first_run[0]["data"]["resume"], resumed[0]["data"]["resume"])
    assert [("step.skipped", "architect")] == [
        (e["type"], e.get("step")) for e in resumed if e.get("step") == "architect"
    ]
    assert {"architect"} == _steps_with(resumed, "step.skipped", reason="resumed")
    assert (
        {"builder"} == _steps_with(resumed, "step.started") == _steps_with(resumed, "llm.request")
    )
    # architect's stored output went downstream: the fake model echoes builder's prompt.
    assert {"architect": "DESIGN-7", "builder": "build from: DESIGN-7"} == dict(second.outputs)
    assert ("job.finished", "succeeded") == (resumed[-1]["type"], resumed[-1]["data"]["status"])


async def test_resume_after_failure(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        # a gets the first chat completion, b the second: a permanent 400.
        server.script(Reply(), Fail(400, "bad request: b"), path="/v1/chat/completions")
        pipeline = _loopback_pipeline(
            [
                Step("a", prompt="a: start"),
                Step("b", prompt="b: {{ steps.a.output }}", needs=["a"]),
                Step("c", prompt="c: {{ steps.b.output }}", needs=["b"]),
                # Another branch, on its own endpoint so the script above cannot reach it.
                Step(
                    "side", prompt="side: {{ steps.a.output }}", needs=["a"], provider="anthropic"
                ),
            ]
        )
        settings = _loopback_settings(server)
        first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=settings)
        assert "failed" == first.status
        failed = [e for e in events(first.run_dir) if e["type"] == "step.failed"]
        assert [("b", 1)] == [(e.get("step"), e["data"]["attempts"]) for e in failed]
        assert "bad request: b" in failed[0]["data"]["message"]
        assert Counter({"a": 1, "b": 1, "side": 1}) == _requests_by_step(server)

        second = await run_dag(
            pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=settings
        )

        assert "succeeded" == second.status
        # Only the failed step and its dependent were asked again.
        assert Counter({"a": 1, "b": 2, "c": 1, "side": 1}) == _requests_by_step(server)
        resumed = _runs(second.run_dir)[-1]
        assert {"a", "side"} == _steps_with(resumed, "step.skipped", reason="resumed")
        assert "echo: c: echo: b: echo: a: start" == second.outputs["c"]


async def test_resume_of_a_finished_job_changes_nothing_and_requests_nothing(
    runs_dir: Path,
) -> None:
    async with open_fake_llm_server() as server:
        pipeline = _loopback_pipeline(
            [Step("a", prompt="a: x"), Step("b", prompt="b: {{ steps.a.output }}", needs=["a"])]
        )
        settings = _loopback_settings(server)
        first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=settings)
        manifest = (first.run_dir / "manifest.json").read_bytes()
        asked = len(server.requests)

        again = await run_dag(
            pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=settings
        )

        assert ("succeeded", asked) == (again.status, len(server.requests))
        assert manifest == (first.run_dir / "manifest.json").read_bytes()
        resumed = _runs(first.run_dir)[-1]
        assert ["job.started", "step.skipped", "step.skipped", "job.finished"] == [
            e["type"] for e in resumed
        ]
        assert dict(first.outputs) == dict(again.outputs)


# -- what resume re-runs --------------------------------------------------------------

CHAIN = """
name = "chain"
[steps.a]
prompt = "alpha"
[steps.b]
prompt = "B_PROMPT {{ steps.a.output }}"
needs = ["a"]
[steps.c]
prompt = "gamma {{ steps.b.output }}"
needs = ["b"]
"""


def test_changed_pipeline_reruns_the_changed_step_and_its_dependents(
    runs_dir: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "chain.toml"
    toml.write_text(CHAIN.replace("B_PROMPT", "beta"))
    assert 0 == invoke("run", str(toml), "--runs-dir", str(runs_dir), "--job-id", "j")[0]
    toml.write_text(CHAIN.replace("B_PROMPT", "beta, edited"))

    code, out, err = invoke(
        "run", str(toml), "--runs-dir", str(runs_dir), "--job-id", "j", "--resume"
    )

    assert (0, "") == (code, err)
    assert "pipeline changed since the job started: b; running again: b, c" in out.splitlines()
    resumed = _runs(runs_dir / "j")[-1]
    assert {"a"} == _steps_with(resumed, "step.skipped", reason="resumed")
    assert {"b", "c"} == _steps_with(resumed, "step.started")
    output = (runs_dir / "j" / "outputs" / "c.txt").read_text()
    assert "gamma beta, edited alpha" == output
    # The job now records the edited pipeline: resuming again changes nothing.
    code, out, _ = invoke(
        "run", str(toml), "--runs-dir", str(runs_dir), "--job-id", "j", "--resume"
    )
    assert 0 == code
    assert "pipeline changed" not in out
    assert {"a", "b", "c"} == _steps_with(
        _runs(runs_dir / "j")[-1], "step.skipped", reason="resumed"
    )


@pytest.mark.parametrize(
    ("damaged", "damage", "rerun"),
    [
        ("b", lambda output: output.write_text("edited by hand"), {"b", "c"}),
        ("a", lambda output: output.unlink(), {"a", "b", "c"}),
    ],
    ids=["edited", "deleted"],
)
async def test_damaged_output_reruns_the_step_and_its_dependents(
    runs_dir: Path, damaged: str, damage: Callable[[Path], object], rerun: set[str]
) -> None:
    pipeline = fake_pipeline(
        [
            Step("a", prompt="alpha"),
            Step("b", prompt="beta {{ steps.a.output }}", needs=["a"]),
            Step("c", prompt="gamma {{ steps.b.output }}", needs=["b"]),
        ]
    )
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    outputs = first.run_dir / "outputs"
    originals = {p.name: p.read_bytes() for p in outputs.iterdir()}
    damage(outputs / f"{damaged}.txt")
    # Step by step, only the damaged one is not completed; resume also re-runs its dependents.
    assert {"a", "b", "c"} - {damaged} == read_completed_steps(first.run_dir / "events.jsonl")

    again = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    assert "succeeded" == again.status
    resumed = _runs(first.run_dir)[-1]
    assert {"a", "b", "c"} - rerun == _steps_with(resumed, "step.skipped", reason="resumed")
    assert rerun == _steps_with(resumed, "step.started")
    # They ran again for free: the job's cache answered with what they said before.
    assert rerun == _steps_with(resumed, "cache.hit")
    assert set() == _steps_with(resumed, "llm.request")
    assert originals == {p.name: p.read_bytes() for p in outputs.iterdir()}


async def test_a_changed_input_reruns_the_steps_that_use_it(runs_dir: Path) -> None:
    steps = [
        Step("plain", prompt="no inputs here"),
        Step("uses", prompt="about {{ inputs.topic }}"),
        Step("after", prompt="then {{ steps.uses.output }}", needs=["uses"]),
    ]
    pipeline = fake_pipeline(steps, inputs={"topic": InputSpec(default="trio")})
    await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)

    again = await run_dag(
        pipeline, runs_dir=runs_dir, job_id="j", resume=True, inputs={"topic": "h11"}, settings=FAST
    )

    resumed = _runs(runs_dir / "j")[-1]
    assert {"plain"} == _steps_with(resumed, "step.skipped", reason="resumed")
    assert {"uses", "after"} == _steps_with(resumed, "step.started")
    assert ({"topic": "h11"}, "then about h11") == (
        resumed[0]["data"]["inputs"],
        again.outputs["after"],
    )


async def test_resume_with_a_pipeline_that_dropped_an_input(runs_dir: Path) -> None:
    with_input = fake_pipeline(
        [Step("a", prompt="a {{ inputs.topic }}"), Step("b", prompt="b")],
        inputs={"topic": InputSpec(default="trio")},
    )
    await run_dag(with_input, runs_dir=runs_dir, job_id="j", settings=FAST)
    without = fake_pipeline([Step("a", prompt="a, no topic"), Step("b", prompt="b")])

    again = await run_dag(without, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    resumed = _runs(runs_dir / "j")[-1]
    assert ("succeeded", {}) == (again.status, resumed[0]["data"]["inputs"])
    assert ({"b"}, {"a"}) == (
        _steps_with(resumed, "step.skipped", reason="resumed"),
        _steps_with(resumed, "step.started"),
    )


# -- torn logs and temp files ---------------------------------------------------------


async def test_a_torn_last_line_is_cut_and_the_job_resumes(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="a"), Step("b", prompt="b", needs=["a"])])
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    log = first.run_dir / "events.jsonl"
    whole = log.read_bytes()
    with open(log, "ab") as file:
        file.write(b'{"ts":"2026-11-24T05:23:34.1234')  # a write cut short by a crash
    with pytest.warns(TornLineWarning, match=r"^skipped a torn last line"):
        assert {"a", "b"} == read_completed_steps(log)

    with pytest.warns(TornLineWarning, match=r"^skipped a torn last line"):
        again = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    assert "succeeded" == again.status
    after = log.read_bytes()
    assert after.startswith(whole)  # the torn bytes are gone, the new run follows
    assert b"2026-11-24T05:23:34.1234" not in after
    parsed = events(first.run_dir)  # no warning now: warnings are errors in this suite
    assert ("job.finished", "succeeded") == (parsed[-1]["type"], parsed[-1]["data"]["status"])
    assert len(after.splitlines()) == len(parsed)


async def test_resume_removes_temp_files_a_killed_write_left(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="a")])
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    # What safe_write leaves when the process dies between creating and renaming its temp file.
    planted = [
        first.run_dir / "outputs" / ".tmp-a.txt.0123abcd",
        first.run_dir / "files" / "src" / ".tmp-app.py.89abcdef",
        first.run_dir / ".tmp-manifest.json.deadbeef",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    kept = first.run_dir / "files" / ".tmp-notes.md"  # a step's own file, not a temp file
    kept.write_text("mine")

    await run_dag(pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    assert [kept] == list(first.run_dir.rglob(".tmp-*"))


# -- killed and interrupted processes -------------------------------------------------

KILLABLE = """
name = "killable"
[defaults]
provider = "openai"
model = "m"
[steps.fast]
prompt = "fast: go"
[steps.side]
prompt = "side: go"
[steps.slow]
provider = "anthropic"
prompt = "slow: {{ steps.fast.output }}"
needs = ["fast"]
[steps.last]
prompt = "last: {{ steps.slow.output }} {{ steps.side.output }}"
needs = ["slow", "side"]
"""


@asynccontextmanager
async def _slow_step_in_flight(tmp_path: Path) -> Any:
    """A `runner run` process with fast and side done and slow's call hanging on the server."""
    async with open_fake_llm_server() as server:
        # Only slow talks to the Anthropic endpoint: the 30 s answer is surely its own.
        server.script(Reply(delay_s=30), path="/v1/messages")
        pipeline = tmp_path / "killable.toml"
        pipeline.write_text(KILLABLE)
        env = {
            **os.environ,
            "OPENAI_BASE_URL": server.openai_base_url,
            "ANTHROPIC_BASE_URL": server.anthropic_base_url,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "runner", "run", str(pipeline), "--job-id", "k"]
        log = tmp_path / "runs" / "k" / "events.jsonl"
        with open(tmp_path / "first.out", "wb") as out, open(tmp_path / "first.err", "wb") as err:
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    partial(
                        trio.run_process,
                        command,
                        cwd=tmp_path,
                        env=env,
                        check=False,
                        stdout=out,
                        stderr=err,
                    )
                )
                try:
                    await wait_until(
                        lambda: (
                            _logged(log, "step.succeeded", "fast")
                            and _logged(log, "step.succeeded", "side")
                            and _logged(log, "llm.request", "slow")
                            # The request is logged just before it is sent: wait for it.
                            and 1 == _requests_by_step(server)["slow"]
                        ),
                        timeout_s=WAIT_S,
                    )
                    yield server, process, pipeline, env
                finally:
                    if process.returncode is None:
                        process.kill()


async def _resume(tmp_path: Path, pipeline: Path, env: dict[str, str]) -> Any:
    return await trio.run_process(
        [sys.executable, "-m", "runner", "run", str(pipeline), "--resume", "--job-id", "k"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )


async def test_sigkill_mid_call_then_resume(tmp_path: Path) -> None:
    async with _slow_step_in_flight(tmp_path) as (server, process, pipeline, env):
        process.kill()  # SIGKILL: no cleanup, no job.finished
        assert -signal.SIGKILL == await process.wait()
        run_dir = tmp_path / "runs" / "k"
        killed = list(_complete_lines(run_dir / "events.jsonl"))
        assert "job.finished" not in {r["type"] for r in killed}
        assert {"fast", "side"} == read_completed_steps(run_dir / "events.jsonl")
        assert Counter({"fast": 1, "side": 1, "slow": 1}) == _requests_by_step(server)

        done = await _resume(tmp_path, pipeline, env)

        assert 0 == done.returncode, done.stderr.decode()
        # No step that had succeeded was asked again; the interrupted one was.
        assert Counter({"fast": 1, "side": 1, "slow": 2, "last": 1}) == _requests_by_step(server)
        runs = _runs(run_dir)  # the whole log parses: warnings are errors in this suite
        assert 2 == len(runs)
        interrupted, resumed = runs
        assert {"slow"} == _steps_with(interrupted, "step.started") - _steps_with(
            interrupted, "step.succeeded"
        )
        assert {"fast", "side"} == _steps_with(resumed, "step.skipped", reason="resumed")
        assert ("job.finished", "succeeded") == (resumed[-1]["type"], resumed[-1]["data"]["status"])
        assert [] == leftover_temp_files([run_dir / "files", run_dir / "outputs"])
        assert (
            "echo: last: echo: slow: echo: fast: go echo: side: go"
            == (run_dir / "outputs" / "last.txt").read_text()
        )


async def test_sigint_mid_call_exits_130_then_resume_finishes(tmp_path: Path) -> None:
    async with _slow_step_in_flight(tmp_path) as (server, process, pipeline, env):
        process.send_signal(signal.SIGINT)
        with trio.fail_after(WAIT_S):
            assert 130 == await process.wait()
        run_dir = tmp_path / "runs" / "k"
        last = events(run_dir)[-1]
        assert ("job.finished", "cancelled") == (last["type"], last["data"]["status"])
        assert "Traceback" not in (tmp_path / "first.err").read_text()

        done = await _resume(tmp_path, pipeline, env)

        assert 0 == done.returncode, done.stderr.decode()
        assert Counter({"fast": 1, "side": 1, "slow": 2, "last": 1}) == _requests_by_step(server)
        last = events(run_dir)[-1]
        assert ("job.finished", "succeeded") == (last["type"], last["data"]["status"])


# -- read_completed_steps -------------------------------------------------------------


def _write_log(run_dir: Path, specs: list[tuple[str, str | None, dict[str, Any] | None]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "events.jsonl"
    log.write_text(
        "".join(event_line(make_event("j", t, step=s, data=d)).decode() for t, s, d in specs)
    )
    return log


def _output(run_dir: Path, step: str, text: str) -> str:
    (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    (run_dir / "outputs" / f"{step}.txt").write_text(text)
    return sha256_bytes(text.encode())


STARTED = ("job.started", None, {"steps": ["a"]})
RESUMED = ("job.started", None, {"steps": ["a"], "resume": True})


def _succeeded(sha: str) -> tuple[str, str, dict[str, Any]]:
    return ("step.succeeded", "a", {"output_sha256": sha, "cached": False, "attempts": 1})


@pytest.mark.parametrize(
    ("story", "completed"),
    [
        (lambda sha: [STARTED, ("step.started", "a", None)], False),
        (
            lambda sha: [
                STARTED,
                ("step.started", "a", None),
                ("step.failed", "a", {"error": "E", "message": "m", "attempts": 1}),
            ],
            False,
        ),
        (lambda sha: [STARTED, ("step.started", "a", None), _succeeded(sha)], True),
        (
            lambda sha: [
                STARTED,
                ("step.started", "a", None),
                _succeeded(sha),
                RESUMED,
                ("step.skipped", "a", {"reason": "resumed", "output_sha256": sha}),
                RESUMED,
                ("step.skipped", "a", {"reason": "resumed", "output_sha256": sha}),
            ],
            True,
        ),
        # Succeeded once, then started again and the process died: it runs again.
        (
            lambda sha: [
                STARTED,
                ("step.started", "a", None),
                _succeeded(sha),
                RESUMED,
                ("step.started", "a", None),
            ],
            False,
        ),
        (
            lambda sha: [
                STARTED,
                ("step.started", "a", None),
                _succeeded(sha),
                RESUMED,
                ("step.started", "a", None),
                ("step.failed", "a", {"error": "E", "message": "m", "attempts": 1}),
            ],
            False,
        ),
        (lambda sha: [STARTED, ("step.started", "a", None), _succeeded("0" * 64)], False),
    ],
    ids=[
        "started-only",
        "failed",
        "succeeded",
        "succeeded-then-resumed-twice",
        "succeeded-then-interrupted",
        "succeeded-then-failed",
        "hash-mismatch",
    ],
)
def test_read_completed_steps(
    tmp_path: Path, story: Callable[[str], list[Any]], completed: bool
) -> None:
    sha = _output(tmp_path, "a", "the output")
    log = _write_log(tmp_path, story(sha))
    assert ({"a"} if completed else set()) == read_completed_steps(log)


def test_read_completed_steps_needs_the_output_file(tmp_path: Path) -> None:
    sha = _output(tmp_path, "a", "the output")
    log = _write_log(tmp_path, [STARTED, ("step.started", "a", None), _succeeded(sha)])
    assert {"a"} == read_completed_steps(log)
    (tmp_path / "outputs" / "a.txt").unlink()
    assert set() == read_completed_steps(log)


def test_read_completed_steps_reads_a_log_not_in_the_writers_compact_form(tmp_path: Path) -> None:
    # Spaces after the separators, as json.dumps writes by default: still understood.
    sha = _output(tmp_path, "a", "x")
    specs = [STARTED, ("step.started", "a", None), _succeeded(sha)]
    lines = [
        json.dumps(json.loads(event_line(make_event("j", t, step=s, data=d)))) for t, s, d in specs
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert {"a"} == read_completed_steps(tmp_path / "events.jsonl")


def test_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    steps = [f"s{i}" for i in range(50)]
    hashes = {step: _output(tmp_path, step, f"output of {step}") for step in steps}
    # One resume's worth of events for every step, repeated: 200,000 events over 50 steps.
    one_run = "".join(
        event_line(make_event("j", type_, step=step, data=data)).decode()
        for step in steps
        for type_, data in (
            ("step.started", None),
            ("llm.request", {"provider": "fake", "model": "echo", "attempt": 1}),
            ("llm.response", {"status": "ok", "input_tokens": 5, "output_tokens": 7}),
            ("file.written", {"path": f"{step}.py", "sha256": "0" * 64, "wrote": True}),
            ("step.succeeded", {"output_sha256": hashes[step], "attempts": 1}),
        )
    )
    started = event_line(make_event("j", "job.started", data={"steps": steps})).decode()
    log = tmp_path / "events.jsonl"
    log.write_text((started + one_run) * 800)
    assert 800 * (1 + 5 * 50) == len(log.read_bytes().splitlines())

    def peak_of(read: Callable[[], object]) -> tuple[object, int]:
        tracemalloc.start()
        try:
            return read(), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    completed, peak = peak_of(lambda: read_completed_steps(log))
    assert set(steps) == completed
    assert peak < 5_000_000, f"read_completed_steps: peak {peak / 1e6:.1f} MB"
    # The whole fold, as `runner show` and resume read the log.
    state, peak = peak_of(lambda: fold_log(log))
    assert (800, 200_800) == (state.runs, state.events)  # type: ignore[attr-defined]
    assert peak < 5_000_000, f"fold_log: peak {peak / 1e6:.1f} MB"


def test_fold_log_agrees_with_folding_read_events(runs_dir: Path) -> None:
    # fold_log decodes lines itself (no Event objects): it must read logs exactly as
    # read_events does, odd lines included.
    steps = [
        Step("a", prompt="a"),
        Step("b", prompt="b {{ steps.a.output }}", needs=["a"], files=True),
        Step("c", prompt="c", needs=["b"]),
    ]
    reply = "```python path=pkg/ü.py\nprint('ü \\u00e9 \"q\"')\n```\n"
    broken = fake_pipeline(steps, replies={"b": reply}, errors={"c": "nope \u00e9"})
    trio.run(partial(run_dag, broken, runs_dir=runs_dir, job_id="j", settings=FAST))
    fixed = fake_pipeline(steps, replies={"b": reply})
    trio.run(partial(run_dag, fixed, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST))
    log = runs_dir / "j" / "events.jsonl"
    last = json.loads(log.read_bytes().splitlines()[-1])
    with open(log, "a") as file:
        file.write("\n")  # a blank line
        file.write(json.dumps(last) + "\n")  # not the writer's compact form
        file.write("  " + json.dumps(last, separators=(",", ":")) + "  \n")  # padded
        file.write('{"ts": "x", "type": "step.started"}\n')  # no level or job_id
        file.write("[1, 2]\n")
        file.write('{"ts":"2026-11-24T05:23:34.1234')  # torn

    with pytest.warns(TornLineWarning) as fast_warnings:
        fast = fold_log(log)
    with pytest.warns(TornLineWarning) as slow_warnings:
        slow = fold_events(read_events(log))

    assert attrs.asdict(slow) == attrs.asdict(fast)
    assert [str(w.message) for w in slow_warnings] == [str(w.message) for w in fast_warnings]
    assert 3 == len(fast_warnings)
    assert ("succeeded", 2, {"pkg/ü.py"}) == (fast.status, fast.runs, set(fast.files))


# -- the CLI: choosing the job to resume, and show ------------------------------------

FAILING = 'name = "NAME"\n[providers.fake.errors]\na = "ERRORS"\n[steps.a]\nprompt = "a"\n'
HEALTHY = 'name = "NAME"\n[steps.a]\nprompt = "a"\n'


def test_bare_resume_picks_the_newest_unfinished_job_of_the_pipeline(
    runs_dir: Path, tmp_path: Path
) -> None:
    p, q = tmp_path / "p.toml", tmp_path / "q.toml"
    p.write_text(FAILING.replace("NAME", "p"))
    q.write_text(FAILING.replace("NAME", "q"))
    runs = ["--runs-dir", str(runs_dir)]
    for pipeline, job in ((p, "p-old"), (p, "p-new"), (q, "q-newest")):
        assert 1 == invoke("run", str(pipeline), *runs, "--job-id", job)[0]
    p.write_text(HEALTHY.replace("NAME", "p"))
    assert 0 == invoke("run", str(p), *runs, "--job-id", "p-done")[0]  # newest, but succeeded

    def runs_of(job: str) -> int:
        return len(_runs(runs_dir / job))

    code, out, _ = invoke("run", str(p), *runs, "--resume")
    assert (0, 2, 1) == (code, runs_of("p-new"), runs_of("p-old"))
    assert out.startswith("job p-new ")
    code, out, _ = invoke("run", str(p), *runs, "--resume")
    assert (0, 2, 2) == (code, runs_of("p-new"), runs_of("p-old"))
    assert (1, 1) == (runs_of("q-newest"), runs_of("p-done"))

    code, out, err = invoke("run", str(p), *runs, "--resume")

    assert (2, "") == (code, out)
    assert [f"runner: no unfinished job of pipeline 'p' in {runs_dir} to resume"] == (
        err.splitlines()
    )


def test_bare_resume_with_no_runs_dir_is_a_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text(HEALTHY.replace("NAME", "p"))
    code, _, err = invoke("run", str(p), "--runs-dir", str(tmp_path / "nowhere"), "--resume")
    assert (2, 1) == (code, len(err.splitlines()))
    assert err.startswith("runner: no unfinished job of pipeline 'p'")
    assert not (tmp_path / "nowhere").exists()


def test_show_json_marks_resumed_and_cached_steps(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="a"), Step("b", prompt="b", needs=["a"])])
    run = partial(run_dag, pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    first = trio.run(run)
    (first.run_dir / "outputs" / "b.txt").unlink()
    trio.run(partial(run, resume=True))

    code, out, _ = invoke("show", "j", "--runs-dir", str(runs_dir), "--json")

    document = json.loads(out)
    steps = document["steps"]
    assert (0, 2) == (code, document["runs"])
    assert ("succeeded", True, False) == tuple(
        steps["a"][k] for k in ("status", "resumed", "cached")
    )
    assert ("succeeded", False, True) == tuple(
        steps["b"][k] for k in ("status", "resumed", "cached")
    )
