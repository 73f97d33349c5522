"""Small helpers shared by the tests (imported as `from helpers import ...`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner import Event, Pipeline, Step, read_events


def events(run_dir: Path) -> list[Event]:
    return list(read_events(run_dir / "events.jsonl"))


def kinds(run_dir: Path) -> list[tuple[str, str | None]]:
    """The (type, step) sequence of a job's log."""
    return [(e.type, e.step) for e in events(run_dir)]


def of_type(run_dir: Path, type_: str) -> list[Event]:
    return [e for e in events(run_dir) if e.type == type_]


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
