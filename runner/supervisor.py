"""The supervisor actor: one per job. It owns what the steps share, and the job's end.

It starts the event writer and the manifest task, opens one provider lane per
provider, wires one inbox channel per step, and runs every step as a task in
its nursery, each with the same `StepServices`. Whatever ends the job
(success, failure, `--fail-fast`, the caller's cancellation) it writes
`job.finished` and the manifest under a shielded scope with its own short
deadline, so a cancelled job is recorded and resumable, and nothing it
started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from ._version import __version__
from .cache import Cache, EarlierJobs
from .config import Settings
from .event_writer import EventEmitter, EventWriter
from .events import Event
from .filestore import DirtyDirs
from .job_options import JobOptions
from .job_state import CANCELLED, FAILED, SUCCEEDED, JobState, JobStatus
from .pipeline import Pipeline, Step
from .provider_lane import ProviderLane
from .run_dir import CACHE, RunDir
from .step import Handoff, StepServices, run_step

__all__ = ["JobResult", "Supervisor"]

_CLEANUP_DEADLINE_S = 5.0
# The manifest is rewritten at the end of each interval in which a step changed. A
# rewrite costs time in proportion to the steps, so a big manifest waits longer: it
# never takes more than about 1/_MANIFEST_COST_RATIO of the job's time (bench/overhead.py).
_MANIFEST_INTERVAL_S = 0.1
_MANIFEST_COST_RATIO = 20
_EVENT_BUFFER = 1024


@attrs.frozen
class JobResult:
    """How a job ended: `status` is `succeeded`, `failed` or `cancelled`."""

    job_id: str
    status: JobStatus
    outputs: Mapping[str, str]
    files: Mapping[str, str]
    run_dir: Path


class Supervisor:
    """Runs one job. Use `run_dag()` or `open_job()` rather than this class directly."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        run_dir: RunDir,
        inputs: Mapping[str, str],
        settings: Settings,
        options: JobOptions,
        resumed: frozenset[str] = frozenset(),
        prior_state: JobState | None = None,
        log_fd: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir
        self.job_id = run_dir.job_id
        self.inputs = dict(inputs)
        self.settings = settings
        self.options = options
        self.resumed = resumed
        self.state = prior_state or JobState()
        self.dirty = DirtyDirs()
        self.outputs: dict[str, str] = {}
        self.result: JobResult | None = None
        self._lanes: dict[str, ProviderLane] = {}
        self._failed = False
        self._steps_scope = trio.CancelScope()
        self._manifest_dirty = trio.Event()
        self._manifest_lock = trio.Lock()
        send_channel, self._event_receive = trio.open_memory_channel[Event](_EVENT_BUFFER)
        self.emitter = EventEmitter(self.job_id, send_channel)
        self.writer = EventWriter(
            run_dir.events_path,
            fsync=settings.fsync != "never",
            dirty=self.dirty,
            on_event=self._on_event,
            fd=log_fd,
        )

    def _on_event(self, event: Event) -> None:
        # Called by the writer for each event written: the manifest never runs ahead of the log.
        self.state.apply(event)
        if event["type"].startswith(("step.", "job.")):
            self._manifest_dirty.set()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> JobResult:
        """Run the job to its end. Records cancellation, then lets `trio.Cancelled` propagate.

        `task_status.started()` comes before the first event is written, so a caller
        that subscribes to the writer right after `nursery.start()` sees every event.
        """
        task_status.started()
        started = time.monotonic()
        status: JobStatus = CANCELLED
        async with trio.open_nursery() as system_nursery:
            await system_nursery.start(self.writer.run, self._event_receive)
            try:
                system_nursery.start_soon(self._manifest_task)
                await self.emitter.job_started(
                    pipeline=self.pipeline.name,
                    pipeline_sha256=self.pipeline.sha256(),
                    inputs=self.inputs,
                    resume=self.options.resume,
                    runner_version=__version__,
                    steps=self.pipeline.step_names,
                    pid=os.getpid(),
                    host=socket.gethostname(),
                )
                await self._run_steps()
                status = FAILED if self._failed else SUCCEEDED
            finally:
                with trio.move_on_after(_CLEANUP_DEADLINE_S) as cleanup:
                    cleanup.shield = True
                    await self._finish(status, time.monotonic() - started)
                    system_nursery.cancel_scope.cancel()
                if cleanup.cancelled_caught:
                    self.writer.cancel()
                self.result = JobResult(
                    job_id=self.job_id,
                    status=status,
                    outputs=dict(self.outputs),
                    files=dict(self.state.files),
                    run_dir=self.run_dir.path,
                )
        return self.result

    def _services(self) -> StepServices:
        cache = None
        if self.options.use_cache:
            fsync = self.settings.fsync
            cache_dir = self.options.cache_dir or self.settings.cache_dir
            if cache_dir is not None:
                cache = Cache(cache_dir, fsync=fsync)
            else:
                # A miss in the job's own cache looks in its pipeline's earlier jobs.
                earlier = EarlierJobs(
                    self.run_dir.path.parent, pipeline=self.pipeline.name, job_id=self.job_id
                )
                cache = Cache(self.run_dir.path, CACHE, fsync=fsync, earlier=earlier)
        concurrency = self.options.concurrency
        return StepServices(
            job_id=self.job_id,
            inputs=self.inputs,
            run_dir=self.run_dir,
            emitter=self.emitter,
            lanes=self._open_lanes(),
            cache=cache,
            settings=self.settings,
            pipeline_version=self.pipeline.version,
            resumed=self.resumed,
            step_limiter=trio.CapacityLimiter(concurrency) if concurrency else None,
            dirty=self.dirty,
        )

    def _open_lanes(self) -> dict[str, ProviderLane]:
        # Every provider an LLM step names (a resumed step runs again if its output has
        # vanished), before any step starts, so that the first call does not pay for
        # building a client.
        for step in self.pipeline.steps:
            provider = self.pipeline.resolved(step).provider
            if step.fn is None and provider is not None and provider not in self._lanes:
                self._lanes[provider] = ProviderLane.open(
                    provider,
                    settings=self.settings,
                    config=self.pipeline.providers.get(provider, {}),
                    emitter=self.emitter,
                    job_dir=self.run_dir.path,
                )
        return self._lanes

    async def _run_steps(self) -> None:
        services = self._services()
        inboxes: dict[str, tuple[Any, Any]] = {
            step.name: trio.open_memory_channel[Handoff](max(1, len(step.needs)))
            for step in self.pipeline.steps
        }
        dependents: dict[str, list[trio.MemorySendChannel[Handoff]]] = {
            name: [] for name in inboxes
        }
        for step in self.pipeline.steps:
            send_channel = inboxes[step.name][0]
            if not step.needs:
                send_channel.close()
                continue
            # One send side per upstream: the first gets the original, the rest clones.
            first, *others = step.needs
            for upstream in others:
                dependents[upstream].append(send_channel.clone())
            dependents[first].append(send_channel)
        with self._steps_scope:
            async with trio.open_nursery() as nursery:
                for step in self.pipeline.steps:
                    nursery.start_soon(
                        self._step_task,
                        services,
                        self.pipeline.resolved(step),
                        inboxes[step.name][1],
                        dependents[step.name],
                        name=step.name,
                    )

    async def _step_task(
        self,
        services: StepServices,
        step: Step,
        inbox: trio.MemoryReceiveChannel[Handoff],
        dependents: list[trio.MemorySendChannel[Handoff]],
    ) -> None:
        handoff = await run_step(services, step, inbox, dependents)
        if handoff.ok:
            self.outputs[step.name] = handoff.output
            return
        self._failed = True
        if self.options.fail_fast:
            self._steps_scope.cancel()

    async def _finish(self, status: JobStatus, duration_s: float) -> None:
        for lane in self._lanes.values():
            # A client that fails to close must not keep the job from recording its end.
            with contextlib.suppress(Exception):
                await lane.aclose()
        await self.writer.wait_written(self.emitter.sent)
        counts = self.state.step_counts(at_end=True)
        await self.emitter.job_finished(status, duration_s=round(duration_s, 6), steps=counts)
        await self.emitter.aclose()
        await self.writer.done.wait()
        await self._write_manifest()

    async def _manifest_task(self) -> None:
        interval = _MANIFEST_INTERVAL_S
        while True:
            await self._manifest_dirty.wait()
            await trio.sleep(interval)
            self._manifest_dirty = trio.Event()
            started = time.perf_counter()
            await self._write_manifest()
            cost = time.perf_counter() - started
            interval = max(_MANIFEST_INTERVAL_S, cost * _MANIFEST_COST_RATIO)

    async def _write_manifest(self) -> None:
        # The lock keeps an older snapshot from landing after a newer one when the
        # write goes to a worker thread (RUNNER_FSYNC=always).
        async with self._manifest_lock:
            await self.run_dir.write_manifest(
                self.state.manifest_bytes(), fsync=self.settings.fsync, dirty=self.dirty
            )
