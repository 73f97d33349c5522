"""Running a pipeline: `run_dag()`, `open_job()`, and `read_completed_steps()` for resume."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .config import Settings
from .errors import JobError, PipelineError
from .events import Event
from .filestore import leftover_temp_files
from .graph import descendants, topological_order
from .manifest import SUCCEEDED, JobState, fold_log
from .pipeline import Pipeline, pipeline_from_dict
from .supervisor import (
    JobResult,
    Supervisor,
    output_intact,
    prepare_run_dir,
    write_pipeline_json,
)

__all__ = [
    "Job",
    "changed_steps",
    "new_job_id",
    "open_job",
    "read_completed_steps",
    "run_dag",
    "topological_order",
]


# The name `safe_write` gives its temp file: `.tmp-<name>.<8 hex>`.
_TEMP_NAME = re.compile(r"\.tmp-.+\.[0-9a-f]{8}\Z")


def new_job_id(pipeline_name: str) -> str:
    """`<pipeline-name>-<UTC yyyymmddThhmmss>-<4 hex>`."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{pipeline_name}-{stamp}-{secrets.token_hex(2)}"


def read_completed_steps(events_path: str | os.PathLike[str]) -> set[str]:
    """Steps whose last terminal event is `step.succeeded` and whose output still has that hash.

    A step started but never finished (a crash) is not completed, nor is one
    whose `outputs/<step>.txt` is missing or was edited. The log is streamed:
    memory does not grow with its length.
    """
    path = Path(events_path)
    # Only step and job events decide what is completed: the rest is skipped undecoded.
    return _completed(fold_log(path, families=("step", "job")), path.parent)


def _completed(state: JobState, run_dir: Path) -> set[str]:
    return {
        name
        for name, step in state.steps.items()
        if step.status == SUCCEEDED and output_intact(run_dir, name, step.output_sha256)
    }


def changed_steps(old: Pipeline, new: Pipeline) -> set[str]:
    """Steps of `new` whose definition differs from `old` (or that `old` lacks)."""
    old_names = set(old.step_names)
    return {
        name
        for name in new.step_names
        if name not in old_names or old.step_sha256(name) != new.step_sha256(name)
    }


class Job:
    """A running job, handed out by `open_job()`.

    `events()` is a live stream of the job's events as they are written;
    `result` is set once the job has ended.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self.job_id = supervisor.job_id
        self.run_dir = supervisor.run_dir
        self.changed_steps: set[str] = set()

    @property
    def result(self) -> JobResult | None:
        return self._supervisor.result

    @property
    def resumed_steps(self) -> set[str]:
        return set(self._supervisor.completed)

    def events(self, buffer: int | float = math.inf) -> trio.MemoryReceiveChannel[Event]:
        """Subscribe to the events written from now on.

        Call it before your first checkpoint inside `open_job` to see every event.

        Returns a receive channel; iterate it with `async for`. It ends when the job ends.
        """
        send_channel, receive_channel = trio.open_memory_channel[Event](buffer)
        self._supervisor.writer.subscribe(send_channel)
        return receive_channel


@asynccontextmanager
async def open_job(
    pipeline: Pipeline,
    *,
    inputs: Mapping[str, str] | None = None,
    job_id: str | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    settings: Settings | None = None,
    concurrency: int | None = None,
    fail_fast: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> AsyncIterator[Job]:
    """Start a job in the background of the `async with` block; leaving the block waits for it.

    Everything is checked before anything runs (inputs, job id, the run
    directory), so a mistake raises here with nothing written. Example::

        async with runner.open_job(pipeline, inputs={"idea": "a chess clock"}) as job:
            async for event in job.events():
                print(event.type, event.step or "")
        print(job.result.status)
    """
    settings = settings or Settings.from_env()
    runs_path = Path(runs_dir) if runs_dir is not None else settings.runs_dir
    if job_id is None:
        if resume:
            raise JobError("resume needs a job id")
        job_id = new_job_id(pipeline.name)
    _check_job_id(job_id)
    completed: set[str] = set()
    changed: set[str] = set()
    if not resume:
        resolved_inputs = pipeline.resolve_inputs(inputs)
    run_dir, log_fd, prior = prepare_run_dir(
        pipeline, runs_dir=runs_path, job_id=job_id, resume=resume
    )
    try:
        if resume:
            assert prior is not None
            stored = _stored_pipeline(run_dir)
            if stored.name != pipeline.name:
                raise JobError(
                    f"job {job_id!r} ran pipeline {stored.name!r}, not {pipeline.name!r}"
                )
            # Inputs the pipeline no longer declares are dropped, not an "unknown input".
            kept = {k: v for k, v in prior.inputs.items() if k in pipeline.inputs}
            resolved_inputs = {**kept, **(inputs or {})}
            resolved_inputs = pipeline.resolve_inputs(resolved_inputs)
            changed = changed_steps(stored, pipeline) | _steps_using_changed_inputs(
                pipeline, prior.inputs, resolved_inputs
            )
            stale = changed | descendants(pipeline.needs, changed)
            completed = (_completed(prior, run_dir) & set(pipeline.step_names)) - stale
            # A step that runs again may answer differently: whatever was built on it runs too
            # (the cache makes that free when the answer is the same).
            completed -= descendants(pipeline.needs, set(pipeline.step_names) - completed)
            if stored.sha256() != pipeline.sha256():
                write_pipeline_json(run_dir, pipeline)
            _remove_temp_files(run_dir)
        supervisor = Supervisor(
            pipeline,
            run_dir=run_dir,
            job_id=job_id,
            inputs=resolved_inputs,
            settings=settings,
            resume=resume,
            completed=completed,
            concurrency=concurrency,
            fail_fast=fail_fast,
            cache_dir=Path(cache_dir) if cache_dir is not None else settings.cache_dir,
            use_cache=use_cache,
            prior_state=prior,
            log_fd=log_fd,
        )
    except BaseException:
        os.close(log_fd)  # the writer never started: release the job's lock here
        raise
    job = Job(supervisor)
    job.changed_steps = changed
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run)
            yield job
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


async def run_dag(
    pipeline: Pipeline,
    *,
    inputs: Mapping[str, str] | None = None,
    job_id: str | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    settings: Settings | None = None,
    concurrency: int | None = None,
    fail_fast: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> JobResult:
    """Run `pipeline` to its end and return a `JobResult` (status, job_id, outputs, files, run_dir).

    Works inside any trio program. A failed step does not raise: the result's
    status is `failed`. If the caller cancels, the job records
    `job.finished status=cancelled` and `trio.Cancelled` propagates; nothing
    the job started outlives the call. Example::

        result = await runner.run_dag(runner.load_pipeline("app.toml"), inputs={"idea": "a clock"})
    """
    async with open_job(
        pipeline,
        inputs=inputs,
        job_id=job_id,
        runs_dir=runs_dir,
        resume=resume,
        settings=settings,
        concurrency=concurrency,
        fail_fast=fail_fast,
        cache_dir=cache_dir,
        use_cache=use_cache,
    ) as job:
        pass
    assert job.result is not None
    return job.result


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    # A single failure should surface as itself, not wrapped in a group (trio-websocket does this).
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


def _remove_temp_files(run_dir: Path) -> None:
    # A process killed mid-write leaves safe_write's temp file behind. We hold the job's
    # lock, so no other process is writing here: every such file is garbage.
    for path in leftover_temp_files([run_dir]):
        if _TEMP_NAME.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def is_valid_job_id(job_id: str) -> bool:
    """A job id names one directory under the runs dir: no path separators, NUL, `.`, `..`."""
    return bool(job_id) and job_id not in (".", "..") and not any(c in job_id for c in "/\\\0")


def _check_job_id(job_id: str) -> None:
    if not is_valid_job_id(job_id):
        raise JobError(f"invalid job id {job_id!r} (letters, digits, '-', '_', '.')")


def _stored_pipeline(run_dir: Path) -> Pipeline:
    path = run_dir / "pipeline.json"
    try:
        return pipeline_from_dict(json.loads(path.read_bytes()), source=str(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, PipelineError):
            raise
        raise JobError(f"{path}: cannot read the job's pipeline ({exc})") from None


def _steps_using_changed_inputs(
    pipeline: Pipeline, old: Mapping[str, str], new: Mapping[str, str]
) -> set[str]:
    changed_inputs = {name for name in new if old.get(name) != new[name]}
    if not changed_inputs:
        return set()
    return {
        step.name
        for step in pipeline.steps
        if step.fn is not None or pipeline.referenced_inputs(step) & changed_inputs
    }
