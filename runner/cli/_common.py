"""What every `runner` command shares: exit codes, failing with one line, settings,
the runs directory, and turning a job reference into a job."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..config import Settings
from ..errors import ConfigError, JobError
from ..event_format import STATUS_COLORS
from ..job_index import resolve_job
from ..run_dir import RunDir

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
_F = TypeVar("_F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(code)


def settings_from_env() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        fail(str(exc))


def runs_dir_option(fn: _F) -> _F:
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where jobs live (default: $RUNNER_RUNS_DIR, else ./runs).",
    )(fn)


def runs_dir_or_default(value: Path | None) -> Path:
    return value if value is not None else settings_from_env().runs_dir


def run_dir_of(runs_dir: Path, job_id: str) -> RunDir:
    try:
        return RunDir.of(runs_dir, job_id)
    except JobError as exc:
        fail(str(exc))


def events_path(runs_dir: Path, job_id: str) -> Path:
    path = run_dir_of(runs_dir, job_id).events_path
    if not path.is_file():
        fail(f"job {job_id!r} not found in {runs_dir}")
    return path


def job_id_of(runs_dir: Path, reference: str, *, pipeline: str | None = None) -> str:
    """The job `reference` names: an id, `latest`, or a unique prefix of an id."""
    try:
        return resolve_job(runs_dir, reference, pipeline=pipeline)
    except JobError as exc:
        fail(str(exc))


def styled_status(status: str, width: int = 0) -> str:
    """`status` padded to `width`, in its colour (click drops it when not on a terminal)."""
    return click.style(status.ljust(width), fg=STATUS_COLORS.get(status))
