"""`runner run PIPELINE`: run or resume a job, with live progress; Ctrl-C cancels it."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import click
import trio

from ..errors import ConfigError, JobError, PipelineError, RunnerError
from ..job_index import newest_unfinished
from ..job_options import JobOptions
from ..jobs import open_job
from ..pipeline import Pipeline
from ..pipeline_files import load_pipeline
from ..progress import Progress
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
    settings = settings_from_env()
    runs = runs_dir if runs_dir is not None else settings.runs_dir
    try:
        pipeline = load_pipeline(pipeline_file).with_overrides(provider=provider, model=model)
        given = _parse_inputs(inputs)
        if resume and job_id is None:
            job_id = newest_unfinished(runs, pipeline.name)
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
        fail(str(exc))
    except RunnerError as exc:
        fail(str(exc), EXIT_FAILED)
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
