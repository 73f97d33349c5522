from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from helpers import fake_pipeline

from runner import Settings, Step, open_job, run_dag
from runner.events import make_event
from runner.job_state import JobState, age, fold_events
from runner.supervisor import Supervisor


def _state(*specs: tuple[str, str | None, dict[str, object] | None]) -> JobState:
    return fold_events(make_event("j", t, step=s, data=d) for t, s, d in specs)


async def test_manifest_has_the_contract_fields_and_no_clock(runs_dir: Path) -> None:
    pipeline = fake_pipeline(
        [Step("a", prompt="x"), Step("b", prompt="y", needs=["a"])], errors={"b": "no"}
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, inputs={})
    raw = (result.run_dir / "manifest.json").read_text()
    manifest = json.loads(raw)
    assert {
        "format_version", "job_id", "pipeline", "pipeline_sha256", "inputs", "status", "steps",
        "completed_steps", "pending_steps", "files", "runner_version",
    } == set(manifest)  # fmt: skip
    assert list(manifest) == sorted(manifest)
    assert ("failed", ["a"], ["b"]) == (
        manifest["status"],
        manifest["completed_steps"],
        manifest["pending_steps"],
    )
    assert {"status": "failed", "attempts": 1, "output_sha256": None} == manifest["steps"]["b"]
    # Timing lives in the events only.
    assert "2026-" not in raw
    assert '"ts"' not in raw


async def test_manifest_is_rewritten_coalesced_not_per_event(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = 0
    original = Supervisor._write_manifest

    async def counting(self: Supervisor) -> None:
        nonlocal writes
        writes += 1
        await original(self)

    monkeypatch.setattr(Supervisor, "_write_manifest", counting)
    pipeline = fake_pipeline([Step(f"s{i}", prompt=str(i)) for i in range(300)])
    start = trio.current_time()
    async with open_job(pipeline, runs_dir=runs_dir, settings=Settings(fsync="never")) as job:
        transitions = sum([1 async for e in job.events() if e["type"].startswith("step.")])
    elapsed = trio.current_time() - start
    assert 600 == transitions
    # One rewrite per ~100 ms at most while running, plus the final one: not one per transition.
    assert writes <= 2 + elapsed / 0.1


def test_fold_marks_an_interrupted_step_cancelled_when_the_job_restarts() -> None:
    state = _state(
        ("job.started", None, {"steps": ["a", "b"]}),
        ("step.started", "a", None),
        ("job.started", None, {"steps": ["a", "b"], "resume": True}),
    )
    assert {"a": "cancelled", "b": "pending"} == {n: s.status for n, s in state.steps.items()}


def test_fold_keeps_a_resumed_step_completed_with_its_hash() -> None:
    state = _state(
        ("job.started", None, {"steps": ["a"]}),
        ("step.started", "a", None),
        ("llm.request", "a", {"attempt": 1}),
        ("llm.response", "a", {"attempt": 1, "input_tokens": 3, "output_tokens": None}),
        ("step.succeeded", "a", {"output_sha256": "abc", "attempts": 1}),
        ("job.finished", None, {"status": "succeeded"}),
        ("job.started", None, {"steps": ["a"], "resume": True}),
        ("step.skipped", "a", {"reason": "resumed"}),
    )
    step = state.steps["a"]
    assert ("succeeded", "abc", True, 1) == (
        step.status,
        step.output_sha256,
        step.resumed,
        step.attempts,
    )
    assert (3, None) == (step.input_tokens, step.output_tokens)  # unknown stays unknown
    assert ["a"] == state.completed_steps
    assert "running" == state.status


def test_fold_counts_files_by_path_with_the_last_hash() -> None:
    state = _state(
        ("file.written", "b", {"path": "x.py", "sha256": "1"}),
        ("file.written", "b", {"path": "x.py", "sha256": "2"}),
    )
    assert {"x.py": "2"} == state.files


def test_age_is_short_and_human() -> None:
    import datetime as dt

    now = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
    assert ["5s", "3m", "2h", "4d", "-"] == [
        age("2026-11-24T11:59:55+00:00", now),
        age("2026-11-24T11:57:00+00:00", now),
        age("2026-11-24T10:00:00+00:00", now),
        age("2026-11-20T12:00:00+00:00", now),
        age(None, now),
    ]
