"""The attempt loop around one LLM call: breaker, deadline, events, retries.

A provider's `complete()` makes exactly one attempt. `call_with_retries`
turns that into a reliable call, as DESIGN.md section 6 describes: each
attempt asks the provider's circuit breaker, runs under a hard deadline, is
logged as an `llm.request` / `llm.response` pair, and transient failures are
retried with backoff.
"""

from __future__ import annotations

import hashlib

import trio

from .circuit_breaker import CircuitBreaker
from .errors import (
    CircuitOpenError,
    ProviderError,
    ProviderTimeoutError,
    RetryableProviderError,
)
from .events import EventEmitter
from .providers.base import LLMRequest, LLMResponse, Provider
from .retry import RetryPolicy

__all__ = ["call_with_retries"]


async def call_with_retries(
    provider: Provider,
    request: LLMRequest,
    *,
    step: str,
    emitter: EventEmitter,
    breaker: CircuitBreaker,
    policy: RetryPolicy,
    timeout_s: float,
    limiter: trio.CapacityLimiter | None = None,
) -> tuple[LLMResponse, int]:
    """Call `provider` until it answers, fails permanently, or the retry budget runs out.

    Makes at most ``1 + policy.max_retries`` attempts and returns the
    response with the number of attempts used. Each attempt runs inside
    `trio.fail_after(timeout_s)` (a deadline on the whole call, connect to
    last byte) and, when given, holds a slot of `limiter` (the provider's
    ``max_concurrency``) while it is in flight, but not while sleeping.
    An attempt refused by the open breaker counts too: it waits out the
    cooldown instead of sending.

    Raises the last `ProviderError`, with `attempts` set; a timeout is a
    `ProviderTimeoutError` whose message says "timed out". Cancellation
    propagates untouched. Example::

        response, attempts = await call_with_retries(
            provider, request, step="builder", emitter=emitter, breaker=breaker,
            policy=RetryPolicy.from_settings(settings), timeout_s=settings.provider_timeout_s,
        )
    """
    last_attempt = 1 + policy.max_retries
    for attempt in range(1, last_attempt + 1):
        try:
            response = await _attempt_once(
                provider, request, step, emitter, breaker, timeout_s, limiter, attempt
            )
        except CircuitOpenError as exc:
            if attempt == last_attempt:
                exc.attempts = attempt
                raise
            delay, reason = exc.retry_after or breaker.remaining_cooldown(), exc.reason
        except RetryableProviderError as exc:
            if attempt == last_attempt:
                exc.attempts = attempt
                raise
            delay, reason = policy.delay(attempt, retry_after=exc.retry_after), exc.reason
        except ProviderError as exc:
            # Permanent: another attempt would fail the same way.
            exc.attempts = attempt
            raise
        else:
            return response, attempt
        await emitter.llm_retry(step, attempt=attempt, delay_s=delay, reason=reason)
        await trio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _attempt_once(
    provider: Provider,
    request: LLMRequest,
    step: str,
    emitter: EventEmitter,
    breaker: CircuitBreaker,
    timeout_s: float,
    limiter: trio.CapacityLimiter | None,
    attempt: int,
) -> LLMResponse:
    # The breaker goes outside the limiter: a caller waiting for a half-open
    # probe must not hold a slot the probe itself may need.
    async with breaker.attempt():
        if limiter is None:
            return await _send(provider, request, step, emitter, timeout_s, attempt)
        async with limiter:
            return await _send(provider, request, step, emitter, timeout_s, attempt)


async def _send(
    provider: Provider,
    request: LLMRequest,
    step: str,
    emitter: EventEmitter,
    timeout_s: float,
    attempt: int,
) -> LLMResponse:
    """One attempt under its deadline, logged as an `llm.request` / `llm.response` pair."""
    # Only what identifies the call: never headers, keys or the prompt itself.
    provider_name, model = provider.name, request.model
    await emitter.llm_request(
        step,
        provider=provider_name,
        model=model,
        attempt=attempt,
        prompt_sha256=_prompt_sha256(request),
        prompt_chars=len(request.system or "") + len(request.prompt),
    )
    start = trio.current_time()
    try:
        # trio.fail_after, without its generator-based context manager (one per call).
        with trio.CancelScope(deadline=start + timeout_s) as deadline:
            response = await provider.complete(request)
        if deadline.cancelled_caught:
            # Raised inside the breaker's scope, so a timeout counts as a breaker failure.
            raise ProviderTimeoutError(
                f"{provider_name}: timed out after {timeout_s:g}s", provider=provider_name
            )
    except trio.Cancelled:
        # Keep request/response paired even for an attempt the job's end cut short;
        # shielded, and bounded because the writer outlives every step.
        with trio.CancelScope(shield=True):
            await _log_response(emitter, step, provider_name, model, attempt, start, "cancelled")
        raise
    except Exception as exc:
        status = _failure_status(exc)
        await _log_response(emitter, step, provider_name, model, attempt, start, status)
        raise
    status = response.status if response.status is not None else "ok"
    await _log_response(emitter, step, provider_name, model, attempt, start, status, response)
    return response


async def _log_response(
    emitter: EventEmitter,
    step: str,
    provider: str,
    model: str,
    attempt: int,
    start: float,
    status: int | str,
    response: LLMResponse | None = None,
) -> None:
    await emitter.llm_response(
        step,
        status=status,
        provider=provider,
        model=model,
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
