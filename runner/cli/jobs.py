"""Managing the jobs of a runs directory: `runner list` (and `cancel`, `rm`, `prune`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..job_index import job_states
from ..job_state import age
from . import cli
from ._common import runs_dir_option, runs_dir_or_default


@cli.command(name="list")
@runs_dir_option
def list_jobs(runs_dir: Path | None) -> None:
    """List the jobs in the runs dir with their status and age."""
    states = sorted(job_states(runs_dir_or_default(runs_dir)), key=lambda s: s.started or "")
    for state in states:
        click.echo(
            f"{state.job_id}  {state.display_status()}  {age(state.started)}  {state.pipeline}"
        )
