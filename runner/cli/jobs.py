"""Managing the jobs of a runs directory: `runner list`, `cancel`, `rm` and `prune`.

What they do to jobs (which job is running, cancelling, removing, choosing what to
prune) is in `runner/job_admin.py`; this module parses, prints and picks exit codes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import trio

from ..durations import parse_duration
from ..errors import JobError
from ..job_admin import (
    cancel_job,
    check_removable,
    disk_usage,
    plan_prune,
    remove_job,
    wait_for_end,
)
from ..job_index import JOB_STATUSES, job_states, newest_first, select_jobs
from ..job_state import JobState, age, fold_log
from ..run_dir import RunDir
from . import cli
from ._common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    events_path,
    fail,
    job_id_of,
    run_dir_of,
    runs_dir_option,
    runs_dir_or_default,
    styled_status,
)


def _status_option(fn: Any) -> Any:
    return click.option(
        "--status",
        "statuses",
        multiple=True,
        metavar="STATUS",
        help=f"Only jobs with this status (repeatable): {', '.join(JOB_STATUSES)}.",
    )(fn)


def _pipeline_option(fn: Any) -> Any:
    return click.option(
        "--pipeline", default=None, metavar="NAME", help="Only this pipeline's jobs."
    )(fn)


def _check_statuses(statuses: Sequence[str]) -> None:
    for status in statuses:
        if status not in JOB_STATUSES:
            fail(f"--status {status!r}: expected one of {', '.join(JOB_STATUSES)}")


# -- list ----------------------------------------------------------------------------


@cli.command(name="list")
@runs_dir_option
@_status_option
@_pipeline_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="The newest N only."
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array of the jobs.")
def list_jobs(
    runs_dir: Path | None,
    statuses: tuple[str, ...],
    pipeline: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List jobs, newest first.

    One row per job: its id, status, steps succeeded of all its steps, age (since it
    started) and pipeline. With --json, a JSON array of the jobs instead.
    """
    _check_statuses(statuses)
    runs = runs_dir_or_default(runs_dir)
    # Step events too, for the STEPS column; the other families are passed over undecoded.
    states = job_states(runs, families=("job", "step"))
    jobs = newest_first(select_jobs(states, statuses=statuses, pipeline=pipeline))[:limit]
    if as_json:
        click.echo(json.dumps([_list_document(state) for state in jobs], indent=2))
        return
    if not jobs:
        filtered = statuses or pipeline is not None
        click.echo(f"no jobs{' match' if filtered else ''} in {runs}")
        return
    rows = [("JOB", "STATUS", "STEPS", "AGE", "PIPELINE")]
    rows += [
        (
            state.job_id,
            state.display_status(),
            _steps_done(state),
            age(state.started),
            state.pipeline or "-",
        )
        for state in jobs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if number > 0:
            cells[1] = styled_status(row[1], widths[1])
        click.echo("  ".join(cells).rstrip())


def _steps_done(state: JobState) -> str:
    """`2/3`: the steps that succeeded, of all the job's steps."""
    if not state.steps:
        return "-"
    done = sum(step.status == "succeeded" for step in state.steps.values())
    return f"{done}/{len(state.steps)}"


def _list_document(state: JobState) -> dict[str, Any]:
    status = state.display_status()
    counts: dict[str, int] = {}
    for step in state.steps.values():
        step_status = state.display_step_status(step, status)
        counts[step_status] = counts.get(step_status, 0) + 1
    return {
        "job_id": state.job_id,
        "pipeline": state.pipeline,
        "status": status,
        "started": state.started,
        "finished": state.finished,
        "duration_s": state.duration_s,
        "runs": state.runs,
        "steps": counts,
    }


# -- cancel --------------------------------------------------------------------------


@cli.command()
@click.argument("job_id", metavar="JOB")
@runs_dir_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the job to stop.",
)
def cancel(job_id: str, runs_dir: Path | None, timeout: float) -> None:
    """Cancel a running JOB, as Ctrl-C would.

    Sends SIGINT to the job's process (on this host only), then waits until the job
    has logged `job.finished status=cancelled`; it can be resumed with `runner run
    --resume`. JOB is a job id, `latest`, or a unique prefix of a job id.
    """
    runs = runs_dir_or_default(runs_dir)
    job_id = job_id_of(runs, job_id)
    state = fold_log(events_path(runs, job_id), families=("job",))
    run_dir = run_dir_of(runs, job_id)
    try:
        offset = cancel_job(run_dir, state)
    except JobError as exc:
        fail(str(exc))
    try:
        status = trio.run(_wait_for_end, run_dir, offset, timeout)
    except trio.TooSlowError:
        fail(
            f"job {job_id!r} did not stop within {timeout:g}s of the cancel request (SIGINT)",
            EXIT_FAILED,
        )
    except KeyboardInterrupt:
        sys.exit(EXIT_CANCELLED)
    if status == "interrupted":
        fail(f"job {job_id!r} stopped without logging its end (it reads interrupted)", EXIT_FAILED)
    if status != "cancelled":
        fail(f"job {job_id!r} ended {status} before the cancel request reached it", EXIT_FAILED)
    click.echo(f"job {job_id} cancelled")


async def _wait_for_end(run_dir: RunDir, offset: int, limit_s: float) -> str:
    with trio.fail_after(limit_s):
        return await wait_for_end(run_dir, offset)


# -- rm and prune --------------------------------------------------------------------


@cli.command()
@click.argument("references", metavar="JOB...", nargs=-1, required=True)
@runs_dir_option
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def rm(references: tuple[str, ...], runs_dir: Path | None, dry_run: bool) -> None:
    """Remove jobs and everything they stored.

    Each JOB's directory goes: its log, outputs, files and cache. JOB is a job id,
    `latest`, or a unique prefix of a job id. Nothing is removed if any JOB is
    unknown or running.
    """
    runs = runs_dir_or_default(runs_dir)
    job_ids = dict.fromkeys(job_id_of(runs, reference) for reference in references)
    run_dirs = []
    for job_id in job_ids:
        try:
            run_dirs.append(check_removable(runs, job_id))
        except JobError as exc:
            fail(str(exc))
    _remove(run_dirs, dry_run=dry_run)


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="DURATION",
    help="Jobs that started longer ago than this: 90s, 15m, 12h, 7d, 2w.",
)
@_status_option
@_pipeline_option
@runs_dir_option
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def prune(
    older_than: str,
    statuses: tuple[str, ...],
    pipeline: str | None,
    runs_dir: Path | None,
    dry_run: bool,
) -> None:
    """Remove the jobs older than a duration.

    Every job that started longer ago than --older-than (`0s`: every job), of the
    statuses and pipeline given. A running job is never removed: it is kept, and
    said so.
    """
    try:
        duration = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}")
    _check_statuses(statuses)
    runs = runs_dir_or_default(runs_dir)
    plan = plan_prune(runs, duration, statuses=statuses, pipeline=pipeline)
    for run_dir, running in plan.running:
        click.echo(f"kept {run_dir.job_id}: {running.describe()}")
    _remove(plan.remove, dry_run=dry_run)


def _remove(run_dirs: list[RunDir], *, dry_run: bool) -> None:
    """Remove each job (or say it would), one line each, then the total; exit 1 on a failure."""
    removed, freed, failed = 0, 0, False
    for run_dir in run_dirs:
        try:
            size = disk_usage(run_dir.path) if dry_run else remove_job(run_dir)
        except (JobError, OSError) as exc:
            click.echo(f"runner: cannot remove job {run_dir.job_id!r}: {exc}", err=True)
            failed = True
            continue
        removed, freed = removed + 1, freed + size
        click.echo(f"{'would remove' if dry_run else 'removed'} {run_dir.job_id} ({_size(size)})")
    jobs = f"{removed} job{'' if removed == 1 else 's'}"
    if dry_run:
        click.echo(f"would remove {jobs}, {_size(freed)} would be freed")
    else:
        click.echo(f"removed {jobs}, {_size(freed)} freed")
    if failed:
        sys.exit(EXIT_FAILED)


def _size(size: int) -> str:
    """`512 B`, `1.2 MB`: bytes in decimal units, as `du -h --si` shows them."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 999.95:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"
