"""The `runner` command: parse, call the library inside `trio.run`, print, choose the exit code.

Exit codes: 0 succeeded, 1 job failed, 2 usage / pipeline / settings error, 130 cancelled.
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import trio

from ._version import __version__
from .config import Settings
from .errors import ConfigError, JobError, PipelineError, RunnerError
from .events import Event, event_line, follow_events, level_at_least, matches_type, read_events
from .job_options import JobOptions
from .job_state import JobState, age, fold_log
from .jobs import open_job
from .pipeline import Pipeline
from .pipeline_files import load_pipeline
from .progress import Progress, format_event
from .run_dir import RunDir, is_valid_job_id

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
_F = TypeVar("_F", bound=Callable[..., Any])


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        _fail(str(exc))


def _runs_dir_option(fn: _F) -> _F:
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where jobs live (default: $RUNNER_RUNS_DIR, else ./runs).",
    )(fn)


def _runs_dir(value: Path | None) -> Path:
    return value if value is not None else _settings().runs_dir


def _run_dir(runs_dir: Path, job_id: str) -> RunDir:
    try:
        return RunDir.of(runs_dir, job_id)
    except JobError as exc:
        _fail(str(exc))


def _events_path(runs_dir: Path, job_id: str) -> Path:
    path = _run_dir(runs_dir, job_id).events_path
    if not path.is_file():
        _fail(f"job {job_id!r} not found in {runs_dir}")
    return path


@click.group()
@click.version_option(__version__, prog_name="runner")
def cli() -> None:
    """Run LLM pipelines as DAGs, with a typed event log, resume and a cache."""


@cli.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, metavar="K=V", help="Set an input.")
@click.option("--job-id", default=None, help="Job id (default: <name>-<UTC time>-<hex>).")
@click.option("--resume", is_flag=True, help="Continue a job: completed steps are not run again.")
@_runs_dir_option
@click.option("--provider", default=None, help="Use this provider for every LLM step.")
@click.option("--model", default=None, help="Use this model for every LLM step.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Max steps in flight."
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the response cache.")
@click.option("--fail-fast", is_flag=True, help="Cancel the other steps at the first failure.")
def run(
    pipeline_file: Path,
    inputs: tuple[str, ...],
    job_id: str | None,
    resume: bool,
    runs_dir: Path | None,
    provider: str | None,
    model: str | None,
    concurrency: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    fail_fast: bool,
) -> None:
    """Run PIPELINE (a TOML file)."""
    settings = _settings()
    runs = runs_dir if runs_dir is not None else settings.runs_dir
    try:
        pipeline = load_pipeline(pipeline_file).with_overrides(provider=provider, model=model)
        given = _parse_inputs(inputs)
        if resume and job_id is None:
            job_id = _newest_unfinished(runs, pipeline.name)
        status = trio.run(
            _run_job,
            pipeline,
            JobOptions(
                inputs=given,
                job_id=job_id,
                runs_dir=runs,
                resume=resume,
                settings=settings,
                concurrency=concurrency,
                fail_fast=fail_fast,
                cache_dir=cache_dir,
                use_cache=not no_cache,
            ),
        )
    except (PipelineError, ConfigError, JobError) as exc:
        _fail(str(exc))
    except RunnerError as exc:
        _fail(str(exc), EXIT_FAILED)
    sys.exit({"succeeded": EXIT_OK, "failed": EXIT_FAILED}.get(status, EXIT_CANCELLED))


async def _run_job(pipeline: Pipeline, options: JobOptions) -> str:
    progress = Progress(sys.stderr if sys.stderr.isatty() else sys.stdout, pipeline.step_names)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Ctrl-C cancels the job: it records `job.finished status=cancelled`, then we exit 130.
        with trio.CancelScope() as scope:
            async with open_job(pipeline, options) as job:
                progress.begin(
                    job.job_id, job.run_dir, resumed=job.resumed_steps, changed=job.changed_steps
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_signal, signals, scope)
                    async for event in job.events():
                        progress.show(event)
                    nursery.cancel_scope.cancel()
    status = job.result.status if job.result is not None else "cancelled"
    progress.end(status)
    return status


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--input {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out


def _newest_unfinished(runs_dir: Path, pipeline_name: str) -> str:
    candidates = [
        (state.started or "", state.job_id)
        for state in _job_states(runs_dir)
        if state.pipeline == pipeline_name and state.status != "succeeded"
    ]
    if not candidates:
        raise JobError(f"no unfinished job of pipeline {pipeline_name!r} in {runs_dir} to resume")
    return max(candidates)[1]


def _job_states(runs_dir: Path) -> Iterator[JobState]:
    if not runs_dir.is_dir():
        return
    for events in runs_dir.glob("*/events.jsonl"):
        if not is_valid_job_id(events.parent.name):
            continue  # not a job's directory: no job can have that name
        # Status, start, pipeline and pid all come from job.* events: skip the rest undecoded.
        state = fold_log(events, families=("job",))
        state.job_id = state.job_id or events.parent.name
        yield state


@cli.command()
@click.argument("job_id")
@_runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def show(job_id: str, runs_dir: Path | None, as_json: bool) -> None:
    """Show JOB_ID's steps: status, attempts, duration, tokens (from its events)."""
    state = fold_log(_events_path(_runs_dir(runs_dir), job_id))
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


@cli.command(name="list")
@_runs_dir_option
def list_jobs(runs_dir: Path | None) -> None:
    """List the jobs in the runs dir with their status and age."""
    states = sorted(_job_states(_runs_dir(runs_dir)), key=lambda s: s.started or "")
    for state in states:
        click.echo(
            f"{state.job_id}  {state.display_status()}  {age(state.started)}  {state.pipeline}"
        )


@cli.command()
@click.argument("job_id")
@_runs_dir_option
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
    """Print JOB_ID's events from the start; with -f, follow the log live."""
    runs = _runs_dir(runs_dir)
    path = _run_dir(runs, job_id).events_path if follow else _events_path(runs, job_id)
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


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    # A torn log line is worth one line on stderr, not a Python warning with a source path.
    click.echo(f"runner: warning: {message}", err=True)


def main() -> None:
    warnings.showwarning = _warning_line
    cli(prog_name="runner")
