"""`runner tail JOB`: a job's events as lines; `-f` follows the log live."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..event_format import format_event
from ..events import Event, event_line, follow_events, level_at_least, matches_type, read_events
from . import cli
from ._common import (
    EXIT_CANCELLED,
    events_path,
    job_id_of,
    run_dir_of,
    runs_dir_option,
    runs_dir_or_default,
)


@cli.command()
@click.argument("job_id", metavar="JOB")
@runs_dir_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job finishes.")
@click.option("--type", "type_", default=None, help="Only this type or family (llm = llm.*).")
@click.option("--step", default=None, help="Only this step's events.")
@click.option(
    "--level",
    type=click.Choice(["INFO", "WARN", "ERROR"], case_sensitive=False),
    default=None,
    help="This level and above.",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as stored.")
def tail(
    job_id: str,
    runs_dir: Path | None,
    follow: bool,
    type_: str | None,
    step: str | None,
    level: str | None,
    as_json: bool,
) -> None:
    """Print JOB's events from the start; with -f, follow the log live.

    JOB is a job id, `latest`, or a unique prefix of a job id.
    """
    runs = runs_dir_or_default(runs_dir)
    job_id = job_id_of(runs, job_id)
    path = run_dir_of(runs, job_id).events_path if follow else events_path(runs, job_id)
    minimum = level.upper() if level else None

    def wanted(event: Event) -> bool:
        return (
            (type_ is None or matches_type(event, type_))
            and (step is None or event.get("step") == step)
            and (minimum is None or level_at_least(event["level"], minimum))
        )

    try:
        for event in follow_events(path) if follow else read_events(path):
            if wanted(event):
                click.echo(event_line(event).decode().rstrip() if as_json else format_event(event))
                sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(EXIT_CANCELLED)
