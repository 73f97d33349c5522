"""Running a pipeline: `run_dag()`, `open_job()`, and `read_completed_steps()` for resume."""

from __future__ import annotations

import datetime as _dt
import math
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from ._json import loads
from .config import Settings
from .errors import JobError, PipelineError
from .events import Event
from .graph import descendants, topological_order
from .job_options import JobOptions
from .job_state import SUCCEEDED, JobState, fold_log
from .pipeline import Pipeline
from .pipeline_files import pipeline_from_dict
from .providers import check_providers
from .run_dir import RunDir
from .supervisor import JobResult, Supervisor

__all__ = [
    "Job",
    "changed_steps",
    "new_job_id",
    "open_job",
    "read_completed_steps",
    "run_dag",
    "topological_order",
]


def new_job_id(pipeline_name: str) -> str:
    """`<pipeline-name>-<UTC yyyymmddThhmmss>-<4 hex>`."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{pipeline_name}-{stamp}-{secrets.token_hex(2)}"


def _unused_job_id(pipeline_name: str, runs_dir: str | os.PathLike[str]) -> str:
    # Four hex digits: jobs started in the same second (a loop in a program) can draw
    # the same id; draw again rather than fail with "already exists".
    for _ in range(100):
        job_id = new_job_id(pipeline_name)
        if not os.path.lexists(os.path.join(runs_dir, job_id)):
            break
    return job_id


def read_completed_steps(events_path: str | os.PathLike[str]) -> set[str]:
    """Steps whose last terminal event is `step.succeeded` and whose output still has that hash.

    A step started but never finished (a crash) is not completed, nor is one
    whose `outputs/<step>.txt` is missing or was edited. The log is streamed:
    memory does not grow with its length.
    """
    path = Path(events_path)
    # Only step and job events decide what is completed: the rest is skipped undecoded.
    return _completed(fold_log(path, families=("step", "job")), RunDir(path.parent))


def _completed(state: JobState, run_dir: RunDir) -> set[str]:
    return {
        name
        for name, step in state.steps.items()
        if step.status == SUCCEEDED and run_dir.output_intact(name, step.output_sha256)
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

    def __init__(self, supervisor: Supervisor, changed_steps: set[str]) -> None:
        self._supervisor = supervisor
        self.job_id = supervisor.job_id
        self.run_dir = supervisor.run_dir.path
        self.changed_steps = changed_steps

    @property
    def result(self) -> JobResult | None:
        return self._supervisor.result

    @property
    def resumed_steps(self) -> set[str]:
        return set(self._supervisor.resumed)

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
    pipeline: Pipeline, options: JobOptions | None = None, **keywords: Any
) -> AsyncIterator[Job]:
    """Start a job in the background of the `async with` block; leaving the block waits for it.

    Takes a `JobOptions`, or its fields as keywords (`inputs=`, `job_id=`, `resume=`, ...).
    Everything is checked before anything runs (inputs, job id, the run
    directory), so a mistake raises here with nothing written. Example::

        async with runner.open_job(pipeline, inputs={"idea": "a chess clock"}) as job:
            async for event in job.events():
                print(event["type"], event.get("step", ""))
        print(job.result.status)
    """
    options = attrs.evolve(options or JobOptions(), **keywords)
    settings = options.settings or Settings.from_env()
    check_providers(_llm_calls(pipeline), settings)
    job_id = options.job_id
    if job_id is None:
        if options.resume:
            raise JobError("resume needs a job id")
        job_id = _unused_job_id(pipeline.name, options.runs_dir or settings.runs_dir)
    run_dir = RunDir.of(options.runs_dir or settings.runs_dir, job_id)
    if options.resume:
        log_fd = run_dir.open_existing()
    else:
        inputs = pipeline.resolve_inputs(options.inputs)
        log_fd = run_dir.create(pipeline.to_json_bytes())
    try:
        prior, resumed, changed = None, frozenset[str](), set[str]()
        if options.resume:
            prior = fold_log(run_dir.events_path)
            inputs, resumed, changed = _plan_resume(pipeline, run_dir, prior, options.inputs)
        supervisor = Supervisor(
            pipeline,
            run_dir=run_dir,
            inputs=inputs,
            settings=settings,
            options=options,
            resumed=resumed,
            prior_state=prior,
            log_fd=log_fd,
        )
    except BaseException:
        os.close(log_fd)  # the writer never started: release the job's lock here
        raise
    job = Job(supervisor, changed)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            yield job
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


def _plan_resume(
    pipeline: Pipeline, run_dir: RunDir, prior: JobState, given: Mapping[str, str] | None
) -> tuple[dict[str, str], frozenset[str], set[str]]:
    """What a resume runs with: (inputs, steps to skip as resumed, steps changed)."""
    stored = _stored_pipeline(run_dir.pipeline_path)
    if stored.name != pipeline.name:
        raise JobError(
            f"job {run_dir.job_id!r} ran pipeline {stored.name!r}, not {pipeline.name!r}"
        )
    # Inputs the pipeline no longer declares are dropped, not an "unknown input".
    kept = {k: v for k, v in prior.inputs.items() if k in pipeline.inputs}
    inputs = pipeline.resolve_inputs({**kept, **(given or {})})
    changed = changed_steps(stored, pipeline) | _steps_using_changed_inputs(
        pipeline, prior.inputs, inputs
    )
    stale = changed | descendants(pipeline.needs, changed)
    completed = (_completed(prior, run_dir) & set(pipeline.step_names)) - stale
    # A step that runs again may answer differently: whatever was built on it runs too
    # (the cache makes that free when the answer is the same).
    completed -= descendants(pipeline.needs, set(pipeline.step_names) - completed)
    if stored.sha256() != pipeline.sha256():
        run_dir.write_pipeline(pipeline.to_json_bytes())
    run_dir.remove_temp_files()
    return inputs, frozenset(completed), changed


async def run_dag(
    pipeline: Pipeline, options: JobOptions | None = None, **keywords: Any
) -> JobResult:
    """Run `pipeline` to its end and return a `JobResult` (status, job_id, outputs, files, run_dir).

    Takes a `JobOptions`, or its fields as keywords (`inputs=`, `job_id=`, `runs_dir=`,
    `resume=`, `settings=`, `concurrency=`, `fail_fast=`, `cache_dir=`, `use_cache=`).
    Works inside any trio program. A failed step does not raise: the result's
    status is `failed`. If the caller cancels, the job records
    `job.finished status=cancelled` and `trio.Cancelled` propagates; nothing
    the job started outlives the call. Example::

        result = await runner.run_dag(runner.load_pipeline("app.toml"), inputs={"idea": "a clock"})
    """
    async with open_job(pipeline, options, **keywords) as job:
        pass
    assert job.result is not None
    return job.result


def _llm_calls(pipeline: Pipeline) -> dict[tuple[str, str], list[str]]:
    """(provider, model) -> the LLM steps that call it."""
    calls: dict[tuple[str, str], list[str]] = {}
    for step in pipeline.steps:
        resolved = pipeline.resolved(step)
        if step.fn is None and resolved.provider is not None and resolved.model is not None:
            calls.setdefault((resolved.provider, resolved.model), []).append(step.name)
    return calls


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    # A single failure should surface as itself, not wrapped in a group (trio-websocket does this).
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


def _stored_pipeline(path: Path) -> Pipeline:
    try:
        return pipeline_from_dict(loads(path.read_bytes()), source=str(path))
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
