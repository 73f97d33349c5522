"""The supervisor actor: one per job. It owns everything steps share.

It prepares the run directory, starts the event writer, wires one inbox
channel per step, runs every step as a task in its nursery, and owns the
circuit breakers, the per-provider limiters, the providers' HTTP clients and
the cache. Whatever ends the job (success, failure, `--fail-fast`, the
caller's cancellation) it writes `job.finished` and the manifest under a
shielded scope with its own short deadline, so a cancelled job is recorded
and resumable, and nothing it started outlives it.
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

from ._background import BackgroundWrites
from ._version import __version__
from .cache import Cache
from .calls import call_with_retries
from .circuit_breaker import CircuitBreaker
from .config import Settings
from .errors import JobError
from .events import Deferred, Event, EventEmitter, EventWriter, open_log
from .filestore import DirtyDirs, WriteResult, safe_write, sha256_file, write_atomic
from .graph import ancestors
from .manifest import CANCELLED, FAILED, SUCCEEDED, JobState, fold_log
from .pipeline import Pipeline, Step
from .providers import LLMRequest, LLMResponse, Provider, create_provider
from .retry import RetryPolicy
from .step import Handoff, run_step

__all__ = ["JobResult", "Supervisor"]

_CLEANUP_DEADLINE_S = 5.0
_MANIFEST_INTERVAL_S = 0.1
_MANIFEST_COST_RATIO = 20
_EVENT_BUFFER = 1024


@attrs.frozen
class JobResult:
    """How a job ended: `status` is `succeeded`, `failed` or `cancelled`."""

    job_id: str
    status: str
    outputs: Mapping[str, str]
    files: Mapping[str, str]
    run_dir: Path


class Supervisor:
    """Runs one job. Use `run_dag()` or `open_job()` rather than this class directly."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        run_dir: Path,
        job_id: str,
        inputs: Mapping[str, str],
        settings: Settings,
        resume: bool,
        completed: set[str],
        concurrency: int | None,
        fail_fast: bool,
        cache_dir: Path | None,
        use_cache: bool,
        prior_state: JobState | None,
        log_fd: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir
        self.job_id = job_id
        self.inputs = dict(inputs)
        self.settings = settings
        self.resume = resume
        self.completed = completed
        self.fail_fast = fail_fast
        self.runner_version = __version__
        self.outputs: dict[str, str] = {}
        self.state = prior_state or JobState()
        self.dirty = DirtyDirs()
        self.outputs_dir = os.path.join(run_dir, "outputs")
        #: Step outputs and cache entries; on a thread when each write waits for the disk.
        self.files = BackgroundWrites(
            fsync=settings.fsync, dirty=self.dirty, threaded=settings.fsync == "always"
        )
        self.cache = (
            Cache(cache_dir or run_dir / ".cache", fsync=settings.fsync) if use_cache else None
        )
        self.step_limiter: trio.CapacityLimiter | contextlib.nullcontext[None] = (
            trio.CapacityLimiter(concurrency) if concurrency else contextlib.nullcontext()
        )
        self._needs = pipeline.needs
        self._providers: dict[str, Provider] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._provider_limiters: dict[str, trio.CapacityLimiter] = {}
        self._policies: dict[int | None, RetryPolicy] = {}  # by a step's `retries`
        self._failed = False
        self._steps_scope = trio.CancelScope()
        self._manifest_dirty = trio.Event()
        self._manifest_lock = trio.Lock()
        send_channel, self._event_receive = trio.open_memory_channel[Event | Deferred](
            _EVENT_BUFFER
        )
        self.emitter = EventEmitter(job_id, send_channel)
        self.writer = EventWriter(
            run_dir / "events.jsonl",
            fsync=settings.fsync != "never",
            dirty=self.dirty,
            on_event=self._on_event,
            fd=log_fd,
        )
        self.result: JobResult | None = None

    # -- what steps use -------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            config = self.pipeline.providers.get(name, {})
            self._providers[name] = create_provider(name, self.settings, config)
            self._breakers[name] = CircuitBreaker(
                name,
                threshold=self.settings.cb_threshold,
                cooldown_s=self.settings.cb_cooldown_s,
                on_transition=self._breaker_transition(name),
            )
            limit = config.get("max_concurrency")
            if isinstance(limit, int) and limit > 0:
                self._provider_limiters[name] = trio.CapacityLimiter(limit)
        return self._providers[name]

    def _open_providers(self) -> None:
        # Before any step starts, so the first call does not pay for building a client.
        for step in self.pipeline.steps:
            if step.fn is None and step.name not in self.completed:
                provider = self.pipeline.resolved(step).provider
                assert provider is not None
                self.provider(provider)

    def _breaker_transition(self, provider: str) -> Any:
        async def transition(name: str, failures: int) -> None:
            await self.emitter.breaker(name, provider=provider, failures=failures)

        return transition

    async def call(
        self, provider: Provider, request: LLMRequest, step: Step
    ) -> tuple[LLMResponse, int]:
        policy = self._policies.get(step.retries)
        if policy is None:
            policy = self._policies[step.retries] = RetryPolicy.from_settings(
                self.settings, max_retries=step.retries
            )
        return await call_with_retries(
            provider,
            request,
            step=step.name,
            emitter=self.emitter,
            breaker=self._breakers[provider.name],
            policy=policy,
            timeout_s=request.timeout_s or self.settings.provider_timeout_s,
            limiter=self._provider_limiters.get(provider.name),
        )

    async def write_file(self, step: str, relpath: str, data: bytes | str) -> WriteResult:
        return await safe_write(
            self.run_dir / "files",
            relpath,
            data,
            fsync=self.settings.fsync,
            dirty=self.dirty,
            emitter=self.emitter,
            step=step,
        )

    def stored_output(self, step: str) -> str | None:
        """A completed step's output; None if it vanished since resume checked it (run it again)."""
        try:
            return (self.run_dir / "outputs" / f"{step}.txt").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def upstream_outputs(self, step: str) -> dict[str, str]:
        upstream = ancestors(self._needs, step)
        return {name: text for name, text in self.outputs.items() if name in upstream}

    def step_failed(self, step: str) -> None:
        self._failed = True
        if self.fail_fast:
            self._steps_scope.cancel()

    # -- the actor ------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.state.apply(event)
        if event.type.startswith(("step.", "job.")):
            self._manifest_dirty.set()
            if event.type == "step.failed" and event.step is not None:
                # Also a step whose output could not be written in the background.
                self.outputs.pop(event.step, None)
                self.step_failed(event.step)

    async def run(self) -> JobResult:
        """Run the job to its end. Records cancellation, then lets `trio.Cancelled` propagate."""
        started = time.monotonic()
        self.files.start()
        try:
            return await self._run(started)
        finally:
            # Blocking, but the queue is empty by now: `_finish` drained it.
            self.files.close(_CLEANUP_DEADLINE_S)

    async def _run(self, started: float) -> JobResult:
        status = CANCELLED
        async with trio.open_nursery() as system_nursery:
            await system_nursery.start(self.writer.run, self._event_receive)
            try:
                system_nursery.start_soon(self._manifest_task)
                await self.emitter.job_started(
                    pipeline=self.pipeline.name,
                    pipeline_sha256=self.pipeline.sha256(),
                    inputs=self.inputs,
                    resume=self.resume,
                    runner_version=self.runner_version,
                    steps=self.pipeline.step_names,
                    pid=os.getpid(),
                    host=socket.gethostname(),
                )
                self._open_providers()
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
                    run_dir=self.run_dir,
                )
        return self.result

    async def _run_steps(self) -> None:
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
                        run_step,
                        self,
                        step,
                        inboxes[step.name][1],
                        dependents[step.name],
                        name=step.name,
                    )

    async def _finish(self, status: str, duration_s: float) -> None:
        for provider in self._providers.values():
            # A client that fails to close must not keep the job from recording its end.
            with contextlib.suppress(Exception):
                await provider.aclose()
        # Blocking: waiting in trio would let an autojump clock skip to the deadline.
        self.files.drain(_CLEANUP_DEADLINE_S)
        await self.writer.wait_written(self.emitter.sent)
        counts = self.state.step_counts(at_end=True)
        await self.emitter.job_finished(status, duration_s=round(duration_s, 6), steps=counts)
        await self.emitter.aclose()
        await self.writer.done.wait()
        await self._write_manifest()

    async def _manifest_task(self) -> None:
        # Coalesced: one rewrite for the transitions of an interval, at most every ~100 ms.
        # Rewriting costs time in proportion to the steps, so a big manifest waits longer:
        # it never takes more than about 1/_MANIFEST_COST_RATIO of the job's time.
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
            await safe_write(
                self.run_dir,
                "manifest.json",
                self.state.manifest_bytes(),
                fsync=self.settings.fsync,
                dirty=self.dirty,
            )


def prepare_run_dir(
    pipeline: Pipeline, *, runs_dir: Path, job_id: str, resume: bool
) -> tuple[Path, int, JobState | None]:
    """Create (or, on resume, check) the run directory and lock its log.

    Returns the run directory, the locked log's descriptor (the caller owns it: hand
    it to the `EventWriter` or close it) and, on resume, the state folded from the log.
    """
    run_dir = runs_dir / job_id
    events_path = run_dir / "events.jsonl"
    if resume:
        if not events_path.exists():
            raise JobError(f"job {job_id!r} not found in {runs_dir} (nothing to resume)")
        fd = _lock(events_path, job_id)
        try:
            return run_dir, fd, fold_log(events_path)
        except BaseException:
            os.close(fd)
            raise
    if run_dir.exists():
        raise JobError(f"job {job_id!r} already exists in {runs_dir} (use --resume to continue it)")
    try:
        (run_dir / "outputs").mkdir(parents=True)
        (run_dir / "files").mkdir()
        write_pipeline_json(run_dir, pipeline)
    except OSError as exc:
        raise JobError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir, _lock(events_path, job_id), None


def write_pipeline_json(run_dir: Path, pipeline: Pipeline) -> None:
    """`pipeline.json`: the pipeline as run, so `--resume` needs no original file."""
    write_atomic(run_dir, "pipeline.json", pipeline.to_json_bytes(), fsync="never")


def _lock(events_path: Path, job_id: str) -> int:
    try:
        return open_log(events_path)
    except BlockingIOError:
        raise JobError(f"job {job_id!r} is running in another process") from None


def output_intact(run_dir: Path, step: str, sha256: str | None) -> bool:
    return sha256 is not None and sha256_file(run_dir / "outputs" / f"{step}.txt") == sha256
