"""A provider lane: everything between a step and one provider, and the attempt loop.

The supervisor builds one lane per provider a job uses: the provider's client,
its circuit breaker, its concurrency limiter (`max_concurrency`) and the retry
policy. A step calls `lane.call(request)`; each attempt, in this order:

    take the concurrency slot -> ask the breaker -> llm.request
        -> the provider, under the silence deadline -> llm.response

The breaker is asked after the slot is taken, so a call that queued behind
`max_concurrency` while the breaker opened is not sent. The deadline measures
silence: it is `PROVIDER_TIMEOUT_S` from the last piece of the answer that
arrived, so a healthy long stream is never cut; an optional cap bounds a whole
attempt. Transient failures are retried with backoff, or exactly as long as the
server asks; permanent ones fail at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from .circuit_breaker import CircuitBreaker
from .config import Settings
from .errors import (
    CircuitOpenError,
    ProviderError,
    ProviderStartError,
    ProviderTimeoutError,
    RetryableProviderError,
)
from .event_writer import EventEmitter
from .providers import (
    LLMRequest,
    LLMResponse,
    Provider,
    create_provider,
    max_concurrency,
    stream_setting,
)
from .retry import RetryPolicy

__all__ = ["STREAM_ABOVE_MAX_TOKENS", "ProviderLane", "prompt_sha256_of"]

#: Above this many max_tokens, `stream = "auto"` (the default) streams the response.
STREAM_ABOVE_MAX_TOKENS = 1024
_ERROR_CHARS = 200


@attrs.define
class ProviderLane:
    """One provider as the job's steps share it. Build with `ProviderLane.open()`."""

    provider: Provider
    breaker: CircuitBreaker
    policy: RetryPolicy
    timeout_s: float
    emitter: EventEmitter
    limiter: trio.CapacityLimiter | None = None
    config: Mapping[str, Any] = attrs.field(factory=dict)
    #: `PROVIDER_ATTEMPT_CAP_S`: at most this long for a whole attempt (None: no cap).
    attempt_cap_s: float | None = None
    _mode_warned: bool = attrs.field(default=False, init=False)
    #: The models whose failed start was logged (`provider.failed`, once per model).
    _start_failures_told: set[str] = attrs.field(factory=set, init=False)

    @classmethod
    def open(
        cls,
        name: str,
        *,
        settings: Settings,
        config: Mapping[str, Any],
        emitter: EventEmitter,
        job_dir: Path | None = None,
    ) -> ProviderLane:
        """The lane for provider `name` with its `[providers.NAME]` table; `aclose()` it."""

        async def on_transition(transition: str, failures: int) -> None:
            await emitter.breaker(transition, provider=name, failures=failures)

        limit = max_concurrency(name, config)
        return cls(
            provider=create_provider(name, settings, config, job_dir=job_dir),
            breaker=CircuitBreaker(
                name,
                threshold=settings.cb_threshold,
                cooldown_s=settings.cb_cooldown_s,
                on_transition=on_transition,
            ),
            policy=RetryPolicy.from_settings(settings),
            timeout_s=settings.provider_timeout_s,
            emitter=emitter,
            limiter=trio.CapacityLimiter(limit) if limit else None,
            config=config,
            attempt_cap_s=settings.attempt_cap_s,
        )

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def base_url(self) -> str:
        return self.provider.base_url

    def wants_stream(self, max_tokens: int | None) -> bool:
        """`stream` in `[providers.NAME]`: true, false, or "auto" (answers that may be long
        stream: no `max_tokens`, or more than `STREAM_ABOVE_MAX_TOKENS`)."""
        setting = stream_setting(self.name, self.config)
        if setting == "auto":
            return max_tokens is None or max_tokens > STREAM_ABOVE_MAX_TOKENS
        return setting is True

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def call(
        self,
        request: LLMRequest,
        *,
        step: str,
        retries: int | None = None,
        attempt_cap_s: float | None = None,
    ) -> tuple[LLMResponse, int]:
        """Call the provider until it answers, fails permanently, or the retries run out.

        Makes at most ``1 + retries`` attempts (default: the lane's policy) and
        returns the response with the number of attempts used. Raises the last
        `ProviderError`, with `attempts` set; a timeout is a `ProviderTimeoutError`
        whose message says "timed out". Cancellation propagates untouched.
        """
        await self._prepare(request.model, step)
        policy = self.policy if retries is None else attrs.evolve(self.policy, max_retries=retries)
        last_attempt = 1 + policy.max_retries
        for attempt in range(1, last_attempt + 1):
            try:
                return await self._attempt(request, step, attempt, attempt_cap_s), attempt
            except CircuitOpenError as exc:
                if attempt == last_attempt:
                    exc.attempts = attempt
                    raise
                delay, reason, source = self.breaker.remaining_cooldown(), exc.reason, "breaker"
            except RetryableProviderError as exc:
                if policy.waits_too_long(exc.retry_after):
                    raise _asked_too_long(exc, policy, attempt) from exc
                if attempt == last_attempt:
                    exc.attempts = attempt
                    raise
                delay = policy.delay(attempt, retry_after=exc.retry_after)
                reason, source = exc.reason, "server" if exc.retry_after else "backoff"
            except ProviderError as exc:
                # Permanent: another attempt would fail the same way.
                exc.attempts = attempt
                raise
            await self.emitter.llm_retry(
                step, attempt=attempt, delay_s=delay, reason=reason, delay_from=source
            )
            await trio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _prepare(self, model: str, step: str) -> None:
        """Let the provider start what it needs (provider `local`: its server), outside
        every attempt's deadline, and log what it started or why that failed."""
        try:
            started = await self.provider.prepare(model)
        except ProviderStartError as exc:
            if model not in self._start_failures_told:
                self._start_failures_told.add(model)
                await self.emitter.provider_failed(
                    provider=self.name, model=model, message=exc.message, log_tail=exc.log_tail
                )
            raise
        if started is not None:
            await self.emitter.provider_started(provider=self.name, for_step=step, **started)

    async def cache_identity(self, model: str) -> str:
        """Where this lane's answers come from, for cache keys (see `Provider`)."""
        return await self.provider.cache_identity(model)

    async def _attempt(
        self, request: LLMRequest, step: str, attempt: int, attempt_cap_s: float | None
    ) -> LLMResponse:
        # The slot first: the breaker's answer must hold when the call goes out.
        slot = self.limiter if self.limiter is not None else contextlib.nullcontext()
        async with slot, self.breaker.attempt():
            response = await self._send(request, step, attempt, attempt_cap_s)
        if response.streamed is not None and response.streamed != request.stream:
            await self._warn_mode(step, request, response.streamed)
        return response

    async def _warn_mode(self, step: str, request: LLMRequest, streamed: bool) -> None:
        # Read all the same; said once per job and provider.
        if self._mode_warned:
            return
        self._mode_warned = True
        asked, got = ("a stream", "plain JSON") if request.stream else ("plain JSON", "a stream")
        setting = "true" if streamed else "false"
        await self.emitter.llm_warning(
            step,
            provider=self.name,
            model=request.model,
            message=f"asked for {asked}, the server answered with {got};"
            f" set stream = {setting} in [providers.{self.name}]",
        )

    async def _send(
        self, request: LLMRequest, step: str, attempt: int, attempt_cap_s: float | None
    ) -> LLMResponse:
        """One attempt under its deadline, logged as an `llm.request` / `llm.response` pair."""
        # Only what identifies the call: never headers, keys or the prompt itself.
        await self.emitter.llm_request(
            step,
            provider=self.name,
            model=request.model,
            attempt=attempt,
            prompt_sha256=prompt_sha256_of(request),
            prompt_chars=len(request.system or "") + len(request.prompt),
        )
        start = trio.current_time()
        try:
            # Raised inside the breaker's attempt, so a timeout counts as a breaker failure.
            response = await self._within_deadlines(request, attempt_cap_s)
        except trio.Cancelled:
            # Keep request/response paired even for an attempt the job's end cut short;
            # shielded, and bounded because the writer outlives every step.
            with trio.CancelScope(shield=True):
                await self._log_response(step, request, attempt, start, "cancelled")
            raise
        except Exception as exc:
            await self._log_response(
                step, request, attempt, start, _failure_status(exc), error=_short(exc)
            )
            raise
        status = response.status if response.status is not None else "ok"
        await self._log_response(step, request, attempt, start, status, response)
        return response

    async def _within_deadlines(
        self, request: LLMRequest, attempt_cap_s: float | None
    ) -> LLMResponse:
        """`provider.complete()` under the silence deadline, and the whole-attempt cap if any."""
        silence_s = request.timeout_s or self.timeout_s
        cap_s = attempt_cap_s or self.attempt_cap_s
        with trio.move_on_after(cap_s if cap_s else math.inf) as cap:
            with trio.CancelScope() as silence:

                def heard() -> None:
                    silence.deadline = trio.current_time() + silence_s

                heard()
                return await self.provider.complete(request, heard=heard)
        if silence.cancelled_caught:
            message = f"{self.name}: timed out after {silence_s:g}s without a byte"
        else:
            assert cap.cancelled_caught
            message = f"{self.name}: timed out: the attempt took more than {cap_s:g}s in all"
        raise ProviderTimeoutError(message, provider=self.name)

    async def _log_response(
        self,
        step: str,
        request: LLMRequest,
        attempt: int,
        start: float,
        status: int | str,
        response: LLMResponse | None = None,
        *,
        error: str | None = None,
    ) -> None:
        failure = {} if error is None else {"error": error}
        await self.emitter.llm_response(
            step,
            status=status,
            provider=self.name,
            model=request.model,
            attempt=attempt,
            latency_s=round(trio.current_time() - start, 6),
            input_tokens=response.input_tokens if response is not None else None,
            output_tokens=response.output_tokens if response is not None else None,
            **failure,
        )


def _asked_too_long(exc: ProviderError, policy: RetryPolicy, attempt: int) -> ProviderError:
    """The step fails at once: waiting that long is not what a running job should do."""
    assert exc.retry_after is not None
    failure = type(exc)(
        f"{exc}; the server asked to wait {exc.retry_after:g}s before trying again, more"
        f" than RUNNER_RETRY_AFTER_MAX_S ({policy.retry_after_max_s:g}s): run the job again"
        " later with --resume",
        provider=exc.provider,
        status=exc.status,
        retry_after=exc.retry_after,
    )
    failure.attempts = attempt
    return failure


def _short(exc: Exception) -> str:
    # The failed attempt's own words, short: the step's message has the rest.
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


def _failure_status(exc: Exception) -> int | str:
    if isinstance(exc, ProviderError):
        return exc.status if exc.status is not None else exc.reason
    # A provider bug, not a translated failure: still log the attempt, then let it surface.
    return "error"


def prompt_sha256_of(request: LLMRequest) -> str:
    """`llm.request`'s `prompt_sha256`: the system prompt, a newline, the user prompt."""
    text = (request.system or "") + "\n" + request.prompt
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
