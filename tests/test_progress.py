"""The displays of `runner run`, fed events in-process: what each one says, on a fake clock.

The real terminal (a pseudo-terminal read by pyte) is tests/test_live_view.py.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from runner.events import make_event
from runner.progress import LiveView, Progress
from runner.progress_tally import NextCommands, Tally, summary_lines

COMMANDS = NextCommands("p.toml", ("--runs-dir", "out"))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _event(type_: str, step: str | None = None, **data: Any) -> Any:
    return make_event("j", type_, step=step, data=data or None)


def test_a_running_step_ticks_and_counts_down_its_retry() -> None:
    clock = _Clock()
    tally = Tally(["a"], clock)
    tally.apply(_event("job.started", steps=["a"]))
    tally.apply(_event("step.started", "a"))
    tally.apply(_event("llm.request", "a", attempt=1))
    clock.now += 2.5
    assert (2.5, "attempt 1") == (tally.seconds("a"), tally.note("a"))
    tally.apply(_event("llm.retry", "a", attempt=1, delay_s=3.0, reason="http_503",
                       delay_from="server"))  # fmt: skip
    clock.now += 1.0
    assert "attempt 1, retry in 2.0s (http_503, server)" == tally.note("a")
    clock.now += 2.5
    assert "attempt 1, retrying" == tally.note("a")
    tally.apply(_event("llm.request", "a", attempt=2))
    assert ("running", "attempt 2") == (tally.status_of("a"), tally.note("a"))


def test_a_breaker_wait_and_an_open_breaker_are_shown() -> None:
    clock = _Clock()
    tally = Tally(["a"], clock)
    tally.job_id = "j"
    tally.apply(_event("job.started", steps=["a"]))
    tally.apply(_event("step.started", "a"))
    tally.apply(_event("breaker.opened", provider="openai", failures=5))
    tally.apply(_event("llm.retry", "a", attempt=3, delay_s=12.0, reason="circuit_open",
                       delay_from="breaker"))  # fmt: skip
    assert "breaker open, next attempt in 12.0s" == tally.note("a")
    assert tally.header().endswith("· breaker open: openai (5 failures)")
    tally.apply(_event("breaker.closed", provider="openai", failures=0))
    assert "breaker" not in tally.header()


def test_the_job_end_turns_running_and_pending_steps_into_cancelled() -> None:
    tally = Tally(["a", "b", "c"], _Clock())
    tally.apply(_event("job.started", steps=["a", "b", "c"]))
    tally.apply(_event("step.skipped", "a", reason="resumed", output_sha256="0" * 64))
    tally.apply(_event("step.started", "b"))
    tally.apply(_event("job.finished", status="cancelled", duration_s=1.5))
    assert ["succeeded", "cancelled", "cancelled"] == [tally.status_of(s) for s in "abc"]
    assert ["resumed", "cut short", "not started"] == [tally.note(s) for s in "abc"]


def test_the_summary_counts_the_run_and_says_what_to_run_next() -> None:
    tally = Tally(["a", "b"], _Clock())
    tally.job_id = "j"
    for event in [
        _event("job.started", steps=["a", "b"]),
        _event("step.started", "a"),
        _event("llm.request", "a", attempt=1),
        _event("llm.response", "a", status="ok", attempt=1, input_tokens=7, output_tokens=9),
        _event("file.written", "a", path="app.py", sha256="1" * 64, wrote=True, reason=None),
        _event("step.succeeded", "a", duration_s=0.5, cached=False, attempts=1),
        _event("step.started", "b"),
        _event("cache.hit", "b", key="2" * 64),
        _event("step.failed", "b", error="X", message="boom", attempts=0, duration_s=0.1),
        _event("job.finished", status="failed", duration_s=2.0),
    ]:
        tally.apply(event)
    assert [
        "job j failed in 2.0s: 1 succeeded, 1 failed",
        "  LLM calls 1 · retries 0 · tokens 7 in / 9 out · cache hits 1 · files written 1",
        "  outputs: runs/j/outputs/   files: runs/j/files/",
        "  next: runner run p.toml --resume --job-id j --runs-dir out",
    ] == _summary(tally)
    tally.apply(_event("job.finished", status="succeeded", duration_s=2.0))
    assert "  next: runner show j --runs-dir out" == _summary(tally)[-1]


def _summary(tally: Tally) -> list[str]:
    return summary_lines(tally, Path("runs/j"), COMMANDS)


def _feed(progress: Progress) -> None:
    progress.begin("j", Path("runs/j"), resumed={"a"}, changed=set())
    for event in [
        _event("job.started", steps=["a", "b", "c"]),
        _event("step.skipped", "a", reason="resumed", output_sha256="0" * 64),
        _event("step.started", "b"),
        _event("llm.request", "b", attempt=1),
        _event("llm.retry", "b", attempt=1, delay_s=0.5, reason="http_503", delay_from="backoff"),
        _event("step.failed", "b", error="X", message="boom " * 40, attempts=2, duration_s=1.0),
        _event("step.skipped", "c", reason="upstream_failed", upstream=["b"]),
        _event("job.finished", status="failed", duration_s=1.0),
    ]:
        progress.show(event)
        progress.refresh()
    progress.end("failed")


def test_a_pipe_gets_plain_lines_per_transition_then_the_summary() -> None:
    out = io.StringIO()
    _feed(Progress(out, ["a", "b", "c"], COMMANDS))
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert ["job j -> runs/j", "resuming: 1 completed step(s) will not run again"] == lines[:2]
    assert [
        "job.started",
        "step.skipped",
        "step.started",
        "llm.retry",
        "step.failed",
        "step.skipped",
        "job.finished",
    ] == [line.split()[2] for line in lines[2:9]]
    assert lines[9].startswith("job j failed in 1.0s: 1 succeeded, 1 failed, 1 skipped")
    assert "  next: runner run p.toml --resume --job-id j --runs-dir out" == lines[-2]
    assert "job failed" == lines[-1]


def test_a_terminal_ends_with_the_final_table_cut_to_its_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("LINES", "30")
    out = _Terminal()
    _feed(LiveView(out, ["a", "b", "c"], COMMANDS, clock=_Clock()))
    # The live region is erased at the end (and the cursor shown); then the end is printed.
    end = out.getvalue().rsplit("\x1b[?25h", 1)[-1].lstrip("\r")
    final = re.sub(r"\x1b\[[0-9;]*m", "", end)
    rows = [line.split()[:3] for line in final.splitlines()[:3]]
    assert [["✓", "a", "succeeded"], ["✗", "b", "failed"], ["-", "c", "skipped"]] == rows
    failed = final.splitlines()[1]
    assert (60, "boom boom") == (len(failed), failed.split("  ")[-1][:9])
    assert failed.endswith("…")
    assert "upstream failed: b" in final.splitlines()[2]
    assert "job failed" == final.splitlines()[-1]
