"""One step task: wait for inputs -> render -> cache -> provider -> files -> hand output on.

A step receives one `Handoff` from each upstream over its inbox channel and
sends one to each dependent. It never raises for a step failure: the
failure becomes a `step.failed` event and a failed handoff, so independent
branches keep running.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from .cache import CorruptCacheEntry, compute_cache_key
from .errors import ProviderError, RunnerError
from .events import Event
from .fences import parse_file_blocks
from .filestore import WriteResult, check_relpath
from .pipeline import STREAM_ABOVE_MAX_TOKENS, Step, render
from .providers.base import LLMRequest

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["Handoff", "StepContext", "run_step"]


@attrs.frozen
class Handoff:
    """What a step tells each dependent when it ends: its name and whether it succeeded."""

    step: str
    ok: bool
    output: str = ""


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
    _supervisor: Supervisor = attrs.field(alias="supervisor", repr=False)

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "files"

    async def write_file(self, relpath: str, data: bytes | str) -> WriteResult:
        return await self._supervisor.write_file(self.name, relpath, data)


class _StepFailed(Exception):
    def __init__(self, error: str, message: str, attempts: int) -> None:
        super().__init__(message)
        self.error, self.message, self.attempts = error, message, attempts


async def run_step(
    sup: Supervisor,
    step: Step,
    inbox: trio.MemoryReceiveChannel[Handoff],
    dependents: list[trio.MemorySendChannel[Handoff]],
) -> None:
    """The task body of one step (the supervisor starts one per step)."""
    try:
        handoff = await _run(sup, step, inbox)
        for send_channel in dependents:
            # Never blocks: an inbox has room for one handoff from each of its upstreams.
            send_channel.send_nowait(handoff)
    finally:
        # However this step ends, its dependents must not wait on it forever.
        for send_channel in dependents:
            send_channel.close()


async def _run(sup: Supervisor, step: Step, inbox: trio.MemoryReceiveChannel[Handoff]) -> Handoff:
    name = step.name
    failed_upstream = []
    with inbox:
        for _ in step.needs:
            try:
                handoff = await inbox.receive()
            except trio.EndOfChannel:
                # An upstream ended without a word: it raised, so the job is being torn
                # down and its cancellation is on its way here. Add no error of our own.
                await trio.sleep_forever()
            if handoff.ok:
                sup.outputs[handoff.step] = handoff.output
            else:
                failed_upstream.append(handoff.step)
    if failed_upstream:
        await sup.emitter.step_skipped(name, "upstream_failed", upstream=sorted(failed_upstream))
        return Handoff(name, ok=False)
    stored = sup.stored_output(name) if name in sup.completed else None
    if stored is not None:
        await sup.emitter.step_skipped(name, "resumed", output_sha256=_sha256(stored))
        sup.outputs[name] = stored
        return Handoff(name, ok=True, output=stored)
    async with sup.step_limiter:
        await sup.emitter.step_started(name)
        started = trio.current_time()
        try:
            output, attempts, cached, cache_write = await _execute(sup, sup.pipeline.resolved(step))
            try:
                payload = output.encode()
            except UnicodeError as exc:
                raise _StepFailed(type(exc).__name__, str(exc), attempts) from None
        except _StepFailed as failure:
            await sup.emitter.step_failed(
                name,
                error=failure.error,
                message=failure.message,
                attempts=failure.attempts,
                duration_s=round(trio.current_time() - started, 6),
            )
            sup.step_failed(name)
            return Handoff(name, ok=False)
        output_sha256 = hashlib.sha256(payload).hexdigest()
        # Written now, or on the job's thread under RUNNER_FSYNC=always; either way the
        # log holds `step.succeeded` back until it has landed, and dependents start now.
        output_write = sup.files.submit(
            sup.outputs_dir, f"{name}.txt", payload, sha256=output_sha256
        )
        sup.outputs[name] = output
        succeeded = sup.emitter.event(
            "step.succeeded",
            step=name,
            duration_s=round(trio.current_time() - started, 6),
            output_sha256=output_sha256,
            cached=cached,
            attempts=attempts,
        )
        await sup.emitter.send(_StepEnd(sup, succeeded, output_write, cache_write))
    return Handoff(name, ok=True, output=output)


class _StepEnd:
    """A step's `step.succeeded`, written once its background writes have landed.

    A cache entry that could not be stored adds a `cache.error` (the step still
    succeeds); an output that could not be written turns the step's end into
    `step.failed`, as if the write had failed in the step.
    """

    def __init__(
        self,
        sup: Supervisor,
        succeeded: Event,
        output_write: int,
        cache_write: tuple[str, int] | None,
    ) -> None:
        self._sup = sup
        self._succeeded = succeeded
        self._output_write = output_write
        self._cache_write = cache_write

    def ready(self) -> bool:
        # Writes land in order, and the cache entry was submitted before the output.
        return self._sup.files.done(self._output_write)

    async def wait(self) -> None:
        await self._sup.files.wait_for(self._output_write)

    def events(self) -> list[Event]:
        files, emitter, step = self._sup.files, self._sup.emitter, self._succeeded.step
        events = []
        if self._cache_write is not None:
            key, ticket = self._cache_write
            if (error := files.failure(ticket)) is not None:
                events.append(emitter.event("cache.error", step=step, key=key, reason=str(error)))
        error = files.failure(self._output_write)
        if error is None:
            events.append(self._succeeded)
            return events
        data = self._succeeded.data or {}
        failed = emitter.event(
            "step.failed",
            step=step,
            error=type(error).__name__,
            message=str(error),
            attempts=data["attempts"],
            duration_s=data["duration_s"],
        )
        events.append(failed)
        return events


async def _execute(sup: Supervisor, step: Step) -> tuple[str, int, bool, tuple[str, int] | None]:
    """Run the step's work; returns (output, attempts, cached, cache write).

    The cache write is the cache key and the ticket of the entry's background
    write, when the response was stored. Failures become `_StepFailed`.
    """
    attempts = 0
    try:
        if step.fn is not None:
            context = StepContext(
                name=step.name,
                job_id=sup.job_id,
                inputs=sup.inputs,
                outputs=sup.upstream_outputs(step.name),
                run_dir=sup.run_dir,
                supervisor=sup,
            )
            output = await step.fn(context)
            if not isinstance(output, str):
                raise TypeError(f"step function returned {type(output).__name__}, expected str")
            return output, 0, False, None
        output, attempts, cached, cache_write = await _call_llm(sup, step)
        if step.files:
            await _write_file_blocks(sup, step.name, output)
        return output, attempts, cached, cache_write
    except ProviderError as exc:
        raise _StepFailed(type(exc).__name__, str(exc), exc.attempts or attempts) from None
    except RunnerError as exc:
        raise _StepFailed(type(exc).__name__, str(exc), attempts) from None
    except Exception as exc:
        # A user's step function raised: a step failure, not a crash of the job.
        raise _StepFailed(type(exc).__name__, str(exc) or type(exc).__name__, attempts) from None


async def _call_llm(sup: Supervisor, step: Step) -> tuple[str, int, bool, tuple[str, int] | None]:
    assert step.prompt is not None
    assert step.provider is not None
    assert step.model is not None
    outputs = sup.outputs
    provider_name = step.provider
    request = LLMRequest(
        model=step.model,
        prompt=render(step.prompt, sup.inputs, outputs),
        system=render(step.system, sup.inputs, outputs) if step.system else None,
        temperature=float(step.temperature if step.temperature is not None else 0.0),
        max_tokens=step.max_tokens or 2048,
        stop=step.stop or (),
        seed=step.seed,
        options=dict(step.options or {}),
        stream=_wants_stream(
            sup.pipeline.providers.get(provider_name, {}), step.max_tokens or 2048
        ),
        step=step.name,
        timeout_s=step.timeout_s or sup.settings.provider_timeout_s,
    )
    provider = sup.provider(provider_name)
    cache = sup.cache
    key = None
    if cache is not None:
        key = compute_cache_key(
            provider=provider_name,
            base_url=provider.base_url,
            step=step.name,
            request=request,
            pipeline_version=sup.pipeline.version,
            runner_version=sup.runner_version,
        )
        try:
            hit = cache.get(key)
        except CorruptCacheEntry as exc:
            await sup.emitter.cache_miss(step.name, key, reason=str(exc))
        else:
            if hit is not None:
                await sup.emitter.cache_hit(step.name, key)
                return hit.text, 0, True, None
            await sup.emitter.cache_miss(step.name, key)
    response, attempts = await sup.call(provider, request, step)
    if cache is None or key is None:
        return response.text, attempts, False, None
    # In the background, like the output: failing to keep a copy is a `cache.error`.
    # Its directory is not fsynced in batches: under `batch` no file's bytes are, so an
    # entry could not survive a power loss intact anyway (a corrupt one is a miss), and
    # fsyncing up to 256 shard directories per batch cost a cached job 15-20% of its time.
    relpath, entry = cache.entry(key, response)
    ticket = sup.files.submit(cache.root, relpath, entry, sync_dir=False)
    return response.text, attempts, False, (key, ticket)


async def _write_file_blocks(sup: Supervisor, step: str, output: str) -> None:
    blocks = parse_file_blocks(output)
    files_dir = sup.run_dir / "files"
    # Check every path before writing any: a refused path must not leave half the files.
    for block in blocks:
        check_relpath(files_dir, block.path)
    for block in blocks:
        await sup.write_file(step, block.path, block.content)


def _wants_stream(config: Mapping[str, object], max_tokens: int) -> bool:
    setting = config.get("stream", "auto")
    return setting is True or (setting == "auto" and max_tokens > STREAM_ABOVE_MAX_TOKENS)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
