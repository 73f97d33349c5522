from __future__ import annotations

import io
from pathlib import Path

from runner.events import make_event
from runner.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(progress: Progress) -> None:
    progress.begin("j", Path("runs/j"), resumed={"a"}, changed=set())
    for type_, step, data in [
        ("job.started", None, {}),
        ("step.skipped", "a", {"reason": "resumed"}),
        ("step.started", "b", None),
        ("llm.retry", "b", {"attempt": 1, "delay_s": 0.5, "reason": "http_503"}),
        ("step.failed", "b", {"error": "X", "message": "boom", "attempts": 2}),
        ("step.skipped", "c", {"reason": "upstream_failed"}),
        ("job.finished", None, {"status": "failed"}),
    ]:
        progress.show(make_event("j", type_, step=step, data=data))
    progress.end("failed")


def test_terminal_gets_a_redrawn_table_with_final_states() -> None:
    out = _Terminal()
    progress = Progress(out, ["a", "b", "c"])
    _feed(progress)
    text = out.getvalue()
    assert "\x1b[2K" in text  # lines are cleared and redrawn in place
    last_table = text.rsplit("\x1b[3F", 1)[-1]
    rows = [line.replace("\x1b[2K", "").split() for line in last_table.splitlines()[:3]]
    assert [
        ["✓", "a", "succeeded", "resumed"],
        ["✗", "b", "failed", "boom"],
        ["-", "c", "skipped", "upstream_failed"],
    ] == rows
    assert text.endswith("job failed\n")


def test_a_pipe_gets_plain_lines_one_per_event() -> None:
    out = io.StringIO()
    _feed(Progress(out, ["a", "b", "c"]))
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert ["job j -> runs/j", "resuming: 1 completed step(s) will not run again"] == lines[:2]
    kinds = [line.split()[2] for line in lines[2:-1]]
    assert [
        "step.skipped",
        "step.started",
        "llm.retry",
        "step.failed",
        "step.skipped",
        "job.finished",
    ] == kinds
    assert "job failed" == lines[-1]
