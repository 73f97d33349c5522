"""One step's life, top to bottom.

    receive a handoff from each upstream
    -> skip (an upstream failed, or the step completed in an earlier run)
    -> render the prompt -> look in the cache -> call the provider lane
    -> write the files of its answer -> write its output
    -> step.succeeded -> hand on to each dependent

A step never raises for its own failure (a provider error, a refused path, an
output that cannot be written, a Python step's exception): it emits
`step.failed` and hands on a failure, so independent branches keep running.
Everything a step may use comes in one `StepServices`.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import trio

from ._version import __version__
from .cache import Cache, CorruptCacheEntry, compute_cache_key
from .config import Settings
from .errors import PathEscapeError, ProviderError, RunnerError
from .event_writer import EventEmitter
from .fences import parse_file_blocks
from .filestore import DirtyDirs, WriteResult, sha256_bytes
from .pipeline import Step
from .provider_lane import ProviderLane
from .providers.base import LLMRequest, LLMResponse
from .run_dir import RunDir
from .templates import render_prompts

__all__ = ["Handoff", "StepContext", "StepServices", "run_step"]

#: How much of a Python step's traceback `step.failed` keeps.
_TRACEBACK_LINES = 10
_TRACEBACK_LINE_CHARS = 300


@attrs.frozen
class StepServices:
    """Everything a step task may use, built once per job by the supervisor."""

    job_id: str
    inputs: Mapping[str, str]
    run_dir: RunDir
    emitter: EventEmitter
    lanes: Mapping[str, ProviderLane]
    cache: Cache | None
    settings: Settings
    pipeline_version: str
    #: Steps that completed in an earlier run of this job (resume): skipped if intact.
    resumed: frozenset[str] = frozenset()
    #: `--concurrency`: steps in flight at once.
    step_limiter: trio.CapacityLimiter | None = None
    #: Directories written since the last fsync batch (`RUNNER_FSYNC=batch`).
    dirty: DirtyDirs | None = None

    async def write_file(self, step: str, relpath: str, data: bytes | str) -> WriteResult:
        """Write under the job's `files/` and emit `file.written`."""
        result = await self.run_dir.write_file(
            relpath, data, fsync=self.settings.fsync, dirty=self.dirty
        )
        await self.emitter.file_written(step, **result)
        return result


@attrs.frozen
class Handoff:
    """What a step tells each dependent when it ends.

    `upstream` holds the handoffs it received, so a step reaches the output of any
    step above it through its own inbox, never through a job-wide table.
    """

    step: str
    ok: bool
    output: str = ""
    upstream: tuple[Handoff, ...] = ()


class UpstreamOutputs(Mapping[str, str]):
    """The outputs of every step upstream of one step, read through the handoffs it received.

    Nearest first: a direct upstream is found at once; one further up is found by
    walking up the handoffs, visiting each step once.
    """

    def __init__(self, handoffs: tuple[Handoff, ...]) -> None:
        self._handoffs = handoffs

    def _walk(self) -> Iterator[Handoff]:
        seen: set[str] = set()
        queue = collections.deque(self._handoffs)
        while queue:
            handoff = queue.popleft()
            if handoff.step not in seen:
                seen.add(handoff.step)
                yield handoff
                queue.extend(handoff.upstream)

    def __getitem__(self, name: str) -> str:
        for handoff in self._walk():
            if handoff.step == name:
                return handoff.output
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (handoff.step for handoff in self._walk())

    def __len__(self) -> int:
        return sum(1 for _ in self._walk())


@attrs.frozen
class StepContext:
    """What a Python step (`Step(fn=...)`) receives.

    `outputs` holds the output of every step upstream of this one.
    `write_file()` writes under the job's `files/` like an LLM step's fenced blocks.
    """

    name: str
    job_id: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    run_dir: Path
    _services: StepServices = attrs.field(alias="services", repr=False)

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "files"

    async def write_file(self, relpath: str, data: bytes | str) -> WriteResult:
        return await self._services.write_file(self.name, relpath, data)


class _StepFailed(Exception):
    """A step's own failure, on its way to `step.failed`.

    `traceback` is the tail of a Python step's traceback (`_traceback_tail`), else None.
    """

    def __init__(
        self, error: str, message: str, attempts: int, traceback: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.error, self.message, self.attempts = error, message, attempts
        self.traceback = traceback


async def run_step(
    services: StepServices,
    step: Step,
    inbox: trio.MemoryReceiveChannel[Handoff],
    dependents: list[trio.MemorySendChannel[Handoff]],
) -> Handoff:
    """The task body of one step (`step` resolved against the pipeline's defaults).

    Returns the handoff it sent to each dependent.
    """
    try:
        handoff = await _live(services, step, inbox)
        for send_channel in dependents:
            # Never blocks: an inbox has room for one handoff from each of its upstreams.
            send_channel.send_nowait(handoff)
        return handoff
    finally:
        # However this step ends, its dependents must not wait on it forever.
        for send_channel in dependents:
            send_channel.close()


async def _live(
    services: StepServices, step: Step, inbox: trio.MemoryReceiveChannel[Handoff]
) -> Handoff:
    name, emitter = step.name, services.emitter
    received = await _receive(step, inbox)
    failed_upstream = sorted(handoff.step for handoff in received if not handoff.ok)
    if failed_upstream:
        await emitter.step_skipped(name, "upstream_failed", upstream=failed_upstream)
        return Handoff(name, ok=False)
    if name in services.resumed:
        # None: the output vanished since resume checked it, so the step runs again.
        stored = services.run_dir.read_output(name)
        if stored is not None:
            await emitter.step_skipped(name, "resumed", output_sha256=sha256_bytes(stored.encode()))
            return Handoff(name, ok=True, output=stored, upstream=received)
    limiter = services.step_limiter or contextlib.nullcontext()
    async with limiter:
        await emitter.step_started(name)
        started = trio.current_time()
        try:
            output, attempts, cached = await _work(services, step, UpstreamOutputs(received))
            written = await _write_output(services, name, output, attempts)
        except _StepFailed as failure:
            extra = {} if failure.traceback is None else {"traceback": failure.traceback}
            await emitter.step_failed(
                name,
                error=failure.error,
                message=failure.message,
                attempts=failure.attempts,
                duration_s=round(trio.current_time() - started, 6),
                **extra,
            )
            return Handoff(name, ok=False)
        await emitter.step_succeeded(
            name,
            duration_s=round(trio.current_time() - started, 6),
            output_sha256=written["sha256"],
            cached=cached,
            attempts=attempts,
        )
    return Handoff(name, ok=True, output=output, upstream=received)


async def _receive(step: Step, inbox: trio.MemoryReceiveChannel[Handoff]) -> tuple[Handoff, ...]:
    received: dict[str, Handoff] = {}
    with inbox:
        for _ in step.needs:
            try:
                handoff = await inbox.receive()
            except trio.EndOfChannel:
                # An upstream ended without a word: it raised, so the job is being torn
                # down and its cancellation is on its way here. Add no error of our own.
                await trio.sleep_forever()
            received[handoff.step] = handoff
    # In the order of `needs`, whatever order they finished in.
    return tuple(received[name] for name in step.needs)


async def _work(
    services: StepServices, step: Step, outputs: Mapping[str, str]
) -> tuple[str, int, bool]:
    """Run the step's work: (output, attempts, cached). Failures become `_StepFailed`."""
    if step.fn is not None:
        return await _run_function(services, step, outputs), 0, False
    attempts = 0
    try:
        answer = await _call_llm(services, step, outputs)
        attempts = answer.attempts
        if step.files:
            await _write_file_blocks(services, step, answer.response.text)
        if answer.key is not None and not answer.cached:
            # Kept once the answer has proved usable: an answer whose files were refused
            # is asked for again on the next run, not replayed from the cache.
            await _keep(services, step.name, answer.key, answer.response)
        return answer.response.text, attempts, answer.cached
    except ProviderError as exc:
        raise _StepFailed(type(exc).__name__, str(exc), exc.attempts or attempts) from None
    except RunnerError as exc:
        raise _StepFailed(type(exc).__name__, str(exc), attempts) from None
    except Exception as exc:
        # A bug below the lane (not a ProviderError): a step failure, not a crash of the job.
        raise _StepFailed(type(exc).__name__, str(exc) or type(exc).__name__, attempts) from None


async def _run_function(services: StepServices, step: Step, outputs: Mapping[str, str]) -> str:
    """Await a Python step's function. Whatever it raises fails the step, not the job,
    and `step.failed` keeps the tail of its traceback: the user's line that raised."""
    assert step.fn is not None
    context = StepContext(
        name=step.name,
        job_id=services.job_id,
        inputs=services.inputs,
        outputs=outputs,
        run_dir=services.run_dir.path,
        services=services,
    )
    try:
        output = await step.fn(context)
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        raise _StepFailed(type(exc).__name__, message, 0, _traceback_tail(exc)) from None
    if not isinstance(output, str):
        message = f"step function returned {type(output).__name__}, expected str"
        raise _StepFailed("TypeError", message, 0)
    return output


def _traceback_tail(exc: BaseException) -> list[str]:
    """The last `_TRACEBACK_LINES` lines of `exc`'s traceback, each cut to
    `_TRACEBACK_LINE_CHARS`: enough to find the line that raised, small enough for a log."""
    lines = "".join(traceback.format_exception(exc)).splitlines()
    return [
        line if len(line) <= _TRACEBACK_LINE_CHARS else line[: _TRACEBACK_LINE_CHARS - 1] + "…"
        for line in lines[-_TRACEBACK_LINES:]
    ]


@attrs.frozen
class _Answer:
    response: LLMResponse
    attempts: int
    cached: bool
    key: str | None  # the cache key, when the cache is on


async def _call_llm(services: StepServices, step: Step, outputs: Mapping[str, str]) -> _Answer:
    """Render the request, then answer it from the cache or the provider lane."""
    assert step.prompt is not None
    assert step.provider is not None
    assert step.model is not None
    lane = services.lanes[step.provider]
    prompt, system = render_prompts(step, services.inputs, outputs)
    request = LLMRequest(
        model=step.model,
        prompt=prompt,
        system=system,
        temperature=None if step.temperature is None else float(step.temperature),
        top_p=None if step.top_p is None else float(step.top_p),
        max_tokens=step.max_tokens,
        stop=step.stop or (),
        seed=step.seed,
        options=dict(step.options or {}),
        omit=step.omit or (),
        stream=lane.wants_stream(step.max_tokens),
        step=step.name,
        timeout_s=step.timeout_s or services.settings.provider_timeout_s,
    )
    cache, emitter = services.cache, services.emitter
    key = None
    if cache is not None:
        key = compute_cache_key(
            provider=lane.name,
            base_url=await lane.cache_identity(request.model),
            step=step.name,
            request=request,
            pipeline_version=services.pipeline_version,
            runner_version=__version__,
        )
        try:
            hit = await cache.get(key)
        except CorruptCacheEntry as exc:
            await emitter.cache_miss(step.name, key, reason=str(exc))
        else:
            if hit is not None:
                await emitter.cache_hit(step.name, key, from_job=hit.from_job)
                return _Answer(hit.response, attempts=0, cached=True, key=key)
            await emitter.cache_miss(step.name, key)
    response, attempts = await lane.call(
        request, step=step.name, retries=step.retries, attempt_cap_s=step.attempt_cap_s
    )
    return _Answer(response, attempts=attempts, cached=False, key=key)


async def _keep(services: StepServices, step: str, key: str, response: LLMResponse) -> None:
    assert services.cache is not None
    try:
        await services.cache.put(key, response)
    except PathEscapeError:
        raise  # a symlink in the job's `.cache/`: refused like any write that would escape
    except RunnerError as exc:
        # The answer is good; only keeping a copy failed.
        await services.emitter.cache_error(step, key, reason=str(exc))


async def _write_file_blocks(services: StepServices, step: Step, output: str) -> None:
    blocks = parse_file_blocks(output)
    if not blocks:
        # The job goes on (the answer is the step's output), but say why no file came.
        await services.emitter.llm_warning(
            step.name,
            provider=step.provider or "",
            model=step.model or "",
            message="files = true, but the answer holds no file block"
            " (a fence whose info string has path=...): no file written",
        )
    # Check every path before writing any: a refused path must not leave half the files.
    for block in blocks:
        services.run_dir.check_file_path(block.path)
    for block in blocks:
        await services.write_file(step.name, block.path, block.content)


async def _write_output(
    services: StepServices, step: str, output: str, attempts: int
) -> WriteResult:
    try:
        return await services.run_dir.write_output(
            step, output, fsync=services.settings.fsync, dirty=services.dirty
        )
    except (RunnerError, UnicodeError) as exc:
        raise _StepFailed(type(exc).__name__, str(exc), attempts) from None
