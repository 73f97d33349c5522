"""A provider lane: everything between a step and one provider, and the attempt loop.

The supervisor builds one lane per provider a job uses: the provider's client,
its circuit breaker, its concurrency limiter (`max_concurrency`) and the retry
policy. A step calls `lane.call(request)`; each attempt, in this order:

    take the concurrency slot -> ask the breaker -> llm.request
        -> the provider, under the deadline -> llm.response

The breaker is asked after the slot is taken, so a call that queued behind
`max_concurrency` while the breaker opened is not sent. Transient failures are
retried with backoff (or as long as the server asks); permanent ones fail at once.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from .circuit_breaker import CircuitBreaker
from .config import Settings
from .errors import (
    CircuitOpenError,
    ProviderError,
    ProviderTimeoutError,
    RetryableProviderError,
)
from .event_writer import EventEmitter
from .providers import LLMRequest, LLMResponse, Provider, create_provider
from .retry import RetryPolicy

__all__ = ["STREAM_ABOVE_MAX_TOKENS", "ProviderLane"]

#: Above this many max_tokens, `stream = "auto"` (the default) streams the response.
STREAM_ABOVE_MAX_TOKENS = 1024


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

    @classmethod
    def open(
        cls, name: str, *, settings: Settings, config: Mapping[str, Any], emitter: EventEmitter
    ) -> ProviderLane:
        """The lane for provider `name` with its `[providers.NAME]` table; `aclose()` it."""

        async def on_transition(transition: str, failures: int) -> None:
            await emitter.breaker(transition, provider=name, failures=failures)

        limit = config.get("max_concurrency")
        return cls(
            provider=create_provider(name, settings, config),
            breaker=CircuitBreaker(
                name,
                threshold=settings.cb_threshold,
                cooldown_s=settings.cb_cooldown_s,
                on_transition=on_transition,
            ),
            policy=RetryPolicy.from_settings(settings),
            timeout_s=settings.provider_timeout_s,
            emitter=emitter,
            limiter=trio.CapacityLimiter(limit) if isinstance(limit, int) and limit > 0 else None,
            config=config,
        )

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def base_url(self) -> str:
        return self.provider.base_url

    def wants_stream(self, max_tokens: int) -> bool:
        """`stream` in `[providers.NAME]`: true, false, or "auto" (long answers stream)."""
        setting = self.config.get("stream", "auto")
        return setting is True or (setting == "auto" and max_tokens > STREAM_ABOVE_MAX_TOKENS)

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def call(
        self, request: LLMRequest, *, step: str, retries: int | None = None
    ) -> tuple[LLMResponse, int]:
        """Call the provider until it answers, fails permanently, or the retries run out.

        Makes at most ``1 + retries`` attempts (default: the lane's policy) and
        returns the response with the number of attempts used. Raises the last
        `ProviderError`, with `attempts` set; a timeout is a `ProviderTimeoutError`
        whose message says "timed out". Cancellation propagates untouched.
        """
        policy = self.policy if retries is None else attrs.evolve(self.policy, max_retries=retries)
        timeout_s = request.timeout_s or self.timeout_s
        last_attempt = 1 + policy.max_retries
        for attempt in range(1, last_attempt + 1):
            try:
                return await self._attempt(request, step, attempt, timeout_s), attempt
            except CircuitOpenError as exc:
                if attempt == last_attempt:
                    exc.attempts = attempt
                    raise
                delay, reason = exc.retry_after or self.breaker.remaining_cooldown(), exc.reason
            except RetryableProviderError as exc:
                if attempt == last_attempt:
                    exc.attempts = attempt
                    raise
                delay, reason = policy.delay(attempt, retry_after=exc.retry_after), exc.reason
            except ProviderError as exc:
                # Permanent: another attempt would fail the same way.
                exc.attempts = attempt
                raise
            await self.emitter.llm_retry(step, attempt=attempt, delay_s=delay, reason=reason)
            await trio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(
        self, request: LLMRequest, step: str, attempt: int, timeout_s: float
    ) -> LLMResponse:
        # The slot first: the breaker's answer must hold when the call goes out.
        slot = self.limiter if self.limiter is not None else contextlib.nullcontext()
        async with slot, self.breaker.attempt():
            return await self._send(request, step, attempt, timeout_s)

    async def _send(
        self, request: LLMRequest, step: str, attempt: int, timeout_s: float
    ) -> LLMResponse:
        """One attempt under its deadline, logged as an `llm.request` / `llm.response` pair."""
        # Only what identifies the call: never headers, keys or the prompt itself.
        await self.emitter.llm_request(
            step,
            provider=self.name,
            model=request.model,
            attempt=attempt,
            prompt_sha256=_prompt_sha256(request),
            prompt_chars=len(request.system or "") + len(request.prompt),
        )
        start = trio.current_time()
        try:
            try:
                with trio.fail_after(timeout_s):
                    response = await self.provider.complete(request)
            except trio.TooSlowError:
                # Raised inside the breaker's attempt, so a timeout counts as a breaker failure.
                raise ProviderTimeoutError(
                    f"{self.name}: timed out after {timeout_s:g}s", provider=self.name
                ) from None
        except trio.Cancelled:
            # Keep request/response paired even for an attempt the job's end cut short;
            # shielded, and bounded because the writer outlives every step.
            with trio.CancelScope(shield=True):
                await self._log_response(step, request, attempt, start, "cancelled")
            raise
        except Exception as exc:
            await self._log_response(step, request, attempt, start, _failure_status(exc))
            raise
        status = response.status if response.status is not None else "ok"
        await self._log_response(step, request, attempt, start, status, response)
        return response

    async def _log_response(
        self,
        step: str,
        request: LLMRequest,
        attempt: int,
        start: float,
        status: int | str,
        response: LLMResponse | None = None,
    ) -> None:
        await self.emitter.llm_response(
            step,
            status=status,
            provider=self.name,
            model=request.model,
            attempt=attempt,
            latency_s=round(trio.current_time() - start, 6),
            input_tokens=response.input_tokens if response is not None else None,
            output_tokens=response.output_tokens if response is not None else None,
        )


def _failure_status(exc: Exception) -> int | str:
    if isinstance(exc, ProviderError):
        return exc.status if exc.status is not None else exc.reason
    # A provider bug, not a translated failure: still log the attempt, then let it surface.
    return "error"


def _prompt_sha256(request: LLMRequest) -> str:
    text = (request.system or "") + "\n" + request.prompt
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
