"""`runner show JOB`: a job's steps from its events, as a table or one JSON document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..job_state import JobState, fold_log
from . import cli
from ._common import events_path, job_id_of, runs_dir_option, runs_dir_or_default


@cli.command()
@click.argument("job_id", metavar="JOB")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def show(job_id: str, runs_dir: Path | None, as_json: bool) -> None:
    """Show JOB's steps: status, attempts, duration, tokens (from its events).

    JOB is a job id, `latest`, or a unique prefix of a job id.
    """
    runs = runs_dir_or_default(runs_dir)
    state = fold_log(events_path(runs, job_id_of(runs, job_id)))
    if as_json:
        click.echo(json.dumps(_show_document(state), indent=2, sort_keys=True))
        return
    job_status = state.display_status()
    click.echo(f"job {state.job_id}  pipeline {state.pipeline}  status {job_status}")
    rows = [("STEP", "STATUS", "ATTEMPTS", "DURATION", "TOKENS IN/OUT", "NOTE")]
    for name, step in state.steps.items():
        status = (
            state.display_step_status(step, job_status)
            + (" (resumed)" if step.resumed else "")
            + (" (cached)" if step.cached else "")
        )
        rows.append(
            (
                name,
                status,
                str(step.attempts),
                "-" if step.duration_s is None else f"{step.duration_s:.2f}s",
                f"{_num(step.input_tokens)}/{_num(step.output_tokens)}",
                (step.reason or "")[:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _show_document(state: JobState) -> dict[str, Any]:
    job_status = state.display_status()
    return {
        "job_id": state.job_id,
        "pipeline": state.pipeline,
        "status": job_status,
        "started": state.started,
        "finished": state.finished,
        "duration_s": state.duration_s,
        "runs": state.runs,
        "steps": {
            name: {
                "status": state.display_step_status(step, job_status),
                "attempts": step.attempts,
                "duration_s": step.duration_s,
                "input_tokens": step.input_tokens,
                "output_tokens": step.output_tokens,
                "cached": step.cached,
                "resumed": step.resumed,
                "reason": step.reason,
                "output_sha256": step.output_sha256,
            }
            for name, step in state.steps.items()
        },
        "files": state.files,
    }
