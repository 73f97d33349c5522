"""`runner run PIPELINE`: run or resume a job, with live progress; Ctrl-C cancels it."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import click
import trio

from ..errors import ConfigError, JobError, PipelineError, RunnerError
from ..events import Event
from ..job_index import newest_unfinished
from ..job_options import JobOptions
from ..jobs import open_job
from ..pipeline import Pipeline
from ..pipeline_files import load_pipeline
from ..progress import TICK_S, Progress, open_progress
from ..progress_tally import NextCommands
from . import cli
from ._common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    fail,
    runs_dir_option,
    settings_from_env,
)


@cli.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, metavar="K=V", help="Set an input.")
@click.option("--job-id", default=None, help="Job id (default: <name>-<UTC time>-<hex>).")
@click.option("--resume", is_flag=True, help="Continue a job: completed steps are not run again.")
@runs_dir_option
@click.option("--provider", default=None, help="Use this provider for every LLM step.")
@click.option("--model", default=None, help="Use this model for every LLM step.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Max steps in flight."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Use this shared response cache instead of the job's own.",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the response cache.")
@click.option("--fail-fast", is_flag=True, help="Cancel the other steps at the first failure.")
@click.option("--quiet", "-q", is_flag=True, help="No progress: only the first and the last line.")
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
    quiet: bool,
) -> None:
    """Run PIPELINE (a TOML file)."""
    settings = settings_from_env()
    runs = runs_dir if runs_dir is not None else settings.runs_dir
    try:
        pipeline = load_pipeline(pipeline_file).with_overrides(provider=provider, model=model)
        given = _parse_inputs(inputs)
        if resume and job_id is None:
            job_id = newest_unfinished(runs, pipeline.name)
        given_runs = ("--runs-dir", str(runs_dir)) if runs_dir is not None else ()
        overrides = (*_option("--provider", provider), *_option("--model", model))
        commands = NextCommands(str(pipeline_file), given_runs, overrides)
        status = trio.run(
            functools.partial(_run_job, quiet=quiet, commands=commands),
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
        fail(str(exc))
    except RunnerError as exc:
        fail(str(exc), EXIT_FAILED)
    sys.exit({"succeeded": EXIT_OK, "failed": EXIT_FAILED}.get(status, EXIT_CANCELLED))


async def _run_job(
    pipeline: Pipeline, options: JobOptions, *, quiet: bool, commands: NextCommands
) -> str:
    """Run the job with its progress display; the job's status.

    On a terminal the display goes to stderr, else to stdout. Ctrl-C (SIGINT) or SIGTERM
    cancels the job: it records `job.finished status=cancelled`, then we exit 130. The
    events written after the cancel (that `job.finished`) are still shown: the display's
    last frame is the job's end, not the moment of the signal.
    """
    stream = sys.stderr if sys.stderr.isatty() else sys.stdout
    progress = open_progress(stream, pipeline.step_names, commands, quiet=quiet)
    events: trio.MemoryReceiveChannel[Event] | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with trio.CancelScope() as scope:
                async with open_job(pipeline, options) as job:
                    events = job.events()
                    progress.begin(
                        job.job_id,
                        job.run_dir,
                        resumed=job.resumed_steps,
                        changed=job.changed_steps,
                    )
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_cancel_on_signal, signals, scope)
                        if progress.ticks:
                            nursery.start_soon(_redraw, progress)
                        await _show_events(events, progress)
                        nursery.cancel_scope.cancel()
    finally:
        progress.close()  # the terminal is given back however the job ended
    if events is not None:
        _show_queued(events, progress)  # after a cancel: the job's last events
    status = job.result.status if job.result is not None else "cancelled"
    progress.end(status)
    return status


async def _show_events(events: trio.MemoryReceiveChannel[Event], progress: Progress) -> None:
    """Fold each batch of events, then redraw once: the display never falls behind."""
    async for event in events:
        progress.show(event)
        _show_queued(events, progress)
        progress.refresh()


def _show_queued(events: trio.MemoryReceiveChannel[Event], progress: Progress) -> None:
    """Fold the events already in the channel, without waiting for more."""
    while True:
        try:
            progress.show(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


async def _redraw(progress: Progress) -> None:
    """Redraw on a steady tick, so elapsed times and countdowns move between events."""
    while True:
        progress.refresh()
        await trio.sleep(TICK_S)


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


def _option(name: str, value: str | None) -> tuple[str, ...]:
    return (name, value) if value is not None else ()


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--input {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out
