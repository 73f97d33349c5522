"""Small helpers shared by the tests (imported as `from helpers import ...`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner

from runner import Event, Pipeline, Step, read_events
from runner.cli import cli


def events(run_dir: Path) -> list[Event]:
    return list(read_events(run_dir / "events.jsonl"))


def kinds(run_dir: Path) -> list[tuple[str, str | None]]:
    """The (type, step) sequence of a job's log."""
    return [(e["type"], e.get("step")) for e in events(run_dir)]


def of_type(run_dir: Path, type_: str) -> list[Event]:
    return [e for e in events(run_dir) if e["type"] == type_]


def fake_pipeline(
    steps: list[Step],
    *,
    replies: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    latency_s: float = 0.0,
    name: str = "test",
    **kwargs: Any,
) -> Pipeline:
    fake: dict[str, Any] = {"latency_s": latency_s}
    if replies:
        fake["replies"] = dict(replies)
    if errors:
        fake["errors"] = dict(errors)
    return Pipeline(name=name, steps=steps, providers={"fake": fake}, **kwargs)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the `runner` command in-process: (exit code, stdout, stderr).

    A Python exception that is not the command's own exit is re-raised, so a crash
    fails the test with its traceback instead of looking like an exit code.
    """
    result = CliRunner().invoke(cli, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 60.0) -> None:
    """Poll `predicate` until it holds; `timeout_s` bounds the wait, it measures nothing."""
    with trio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(0.02)
