"""`runner tail JOB`: a job's events as lines; `-f` follows the log live, and always ends.

The choosing and following are `runner.follow`'s; this module parses the options,
checks them against the job, prints, and picks the exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ..event_format import format_event
from ..events import EVENT_TYPES, Event, event_line, read_events
from ..follow import (
    EventFilter,
    FollowEnd,
    event_families,
    follow_job,
    job_steps,
    last_events,
    parse_level,
    parse_since,
    unknown_type,
    wait_for_log,
)
from ..run_dir import RunDir
from . import cli
from ._common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    events_path,
    fail,
    job_id_of,
    run_dir_of,
    runs_dir_option,
    runs_dir_or_default,
)

#: `--exit-status`: the exit code for a finished job's status.
_STATUS_EXIT = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
_LEVEL_COLOUR = {"WARN": "yellow", "ERROR": "red"}


@cli.command()
@click.argument("job_id", metavar="JOB")
@runs_dir_option
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing until the job ends (or its process does)."
)
@click.option("-n", "--lines", "lines", default=None, metavar="N", help="Only the last N events.")
@click.option(
    "--since", default=None, metavar="D", help="Events from D on: 90s, 10m, 2h, 1d, or ISO 8601."
)
@click.option(
    "--type", "types", multiple=True, help="Only this type or family (llm = llm.*); repeatable."
)
@click.option("--step", default=None, help="Only this step's events.")
@click.option("--level", default=None, help="This level and above: info, warn, error.")
@click.option("--json", "as_json", is_flag=True, help="Print events as stored.")
@click.option(
    "--exit-status",
    is_flag=True,
    help="With -f: exit with the job's status (0 succeeded, 1 failed, 130 cancelled).",
)
@click.option(
    "--wait",
    "wait_s",
    default="30",
    metavar="SECONDS",
    help="With -f: how long to wait for a job that does not exist yet (default 30).",
)
def tail(
    job_id: str,
    runs_dir: Path | None,
    follow: bool,
    lines: str | None,
    since: str | None,
    types: tuple[str, ...],
    step: str | None,
    level: str | None,
    as_json: bool,
    exit_status: bool,
    wait_s: str,
) -> None:
    """Print JOB's events; with -f, follow the log live until the job ends.

    JOB is a job id, `latest`, or a unique prefix of a job id.
    """
    if exit_status and not follow:
        fail("--exit-status needs -f (--follow)")
    last = int(_number("-n", lines, int)) if lines is not None else None
    wait = _number("--wait", wait_s, float)
    wanted = _event_filter(types, step, level, since)
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")  # https://no-color.org

    def show(event: Event) -> None:
        _print(event, as_json=as_json, colour=colour)

    runs = runs_dir_or_default(runs_dir)
    job_id = job_id_of(runs, job_id)
    try:
        if follow:
            sys.exit(_follow(run_dir_of(runs, job_id), wanted, last, wait, exit_status, show))
        path = events_path(runs, job_id)
        _check_step(RunDir(path.parent), step)
        for event in last_events(read_events(path), wanted, last):
            show(event)
    except KeyboardInterrupt:
        sys.exit(EXIT_CANCELLED)


def _follow(
    run_dir: RunDir,
    wanted: EventFilter,
    last: int | None,
    wait_s: float,
    exit_status: bool,
    show: Callable[[Event], None],
) -> int:
    """Follow the job until it ends, printing its events; the exit code."""
    runs, job_id = run_dir.path.parent, run_dir.job_id
    if not run_dir.events_path.exists():
        click.echo(f"runner: waiting for job {job_id!r} to start in {runs}...", err=True)
        if not wait_for_log(run_dir, wait_s):
            fail(f"job {job_id!r} not found in {runs}")
    _check_step(run_dir, wanted.step)
    events = follow_job(run_dir, wanted=wanted, last=last)
    while True:
        try:
            show(next(events))
        except StopIteration as stop:
            end: FollowEnd = stop.value
            break
    if end.reason == "not_found":
        fail(f"job {job_id!r} not found in {runs}")
    if end.reason == "process_gone":
        pipeline = f" (pipeline {end.pipeline!r})" if end.pipeline else ""
        fail(
            f"job {job_id!r}{pipeline} stopped without finishing (its process is gone);"
            f" resume it with: runner run PIPELINE --resume --job-id {job_id}",
            EXIT_FAILED,
        )
    if exit_status:
        return _STATUS_EXIT.get(end.status or "", EXIT_FAILED)
    return EXIT_OK


def _number(option: str, text: str, kind: type[int] | type[float]) -> float:
    """A whole number (`int`) or a number of seconds (`float`), >= 0; else exit 2, one line."""
    try:
        value: float = kind(text)
    except ValueError:
        value = -1
    if not value >= 0:  # also refuses nan
        what = "a whole number" if kind is int else "a number of seconds"
        fail(f"{option} {text!r}: expected {what} >= 0")
    return value


def _event_filter(
    types: tuple[str, ...], step: str | None, level: str | None, since: str | None
) -> EventFilter:
    """The filter the options ask for; exit 2 on a type, level or time that names nothing."""
    bad = unknown_type(types)
    if bad is not None:
        fail(
            f"--type {bad!r} is not an event type or family"
            f" (families: {', '.join(event_families())}; types: {', '.join(EVENT_TYPES)})"
        )
    try:
        return EventFilter(
            types=types,
            step=step,
            level=parse_level(level) if level is not None else None,
            since=parse_since(since) if since is not None else None,
        )
    except ValueError as exc:
        fail(str(exc))


def _check_step(run_dir: RunDir, step: str | None) -> None:
    """Exit 2 when `--step` names no step of the job's pipeline (when that is known)."""
    steps = job_steps(run_dir) if step is not None else None
    if steps is not None and step not in steps:
        fail(
            f"--step {step!r} is not a step of job {run_dir.job_id!r}"
            f" (steps: {', '.join(steps) or 'none'})"
        )


def _print(event: Event, *, as_json: bool, colour: bool) -> None:
    if as_json:
        click.echo(event_line(event).decode().rstrip("\n"), color=False)
        return
    line = format_event(event)
    if colour and event["level"] in _LEVEL_COLOUR:
        line = click.style(line, fg=_LEVEL_COLOUR[event["level"]])
    click.echo(line, color=colour)
