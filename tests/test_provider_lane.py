import hashlib
import random

import pytest
import trio
import trio.testing

from runner.circuit_breaker import CircuitBreaker
from runner.config import Settings
from runner.errors import (
    CircuitOpenError,
    PermanentProviderError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitError,
    RetryableProviderError,
)
from runner.event_writer import EventEmitter
from runner.provider_lane import ProviderLane
from runner.providers.base import LLMRequest, LLMResponse
from runner.retry import RetryPolicy

HANG = object()
OK = LLMResponse(text="hi", model="m-1", input_tokens=7, output_tokens=3, status=200)
REQUEST = LLMRequest(model="m-1", prompt="say hi", system="be brief", step="greet")


class ScriptedProvider:
    """Pops one outcome per call: a response to return, an error to raise, or HANG."""

    name = "scripted"
    base_url = "scripted://"

    def __init__(self, outcomes, *, latency_s=0.0):
        self.outcomes = list(outcomes)
        self.latency_s = latency_s
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def prepare(self, model):
        return None

    async def cache_identity(self, model):
        return self.base_url

    async def complete(self, request, *, heard=None):
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency_s)
            outcome = self.outcomes.pop(0)
            if outcome is HANG:
                await trio.sleep_forever()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.in_flight -= 1

    async def aclose(self):
        pass


@pytest.fixture
def channel():
    send_channel, receive_channel = trio.open_memory_channel(1000)
    return EventEmitter("job-1", send_channel), receive_channel


@pytest.fixture
def seeded_random():
    """Seed the global random (the policy's default source); restore it afterwards."""
    state = random.getstate()
    random.seed(1234)
    yield random.Random(1234)
    random.setstate(state)


def drain(receive_channel):
    events = []
    while True:
        try:
            event = receive_channel.receive_nowait()
        except trio.WouldBlock:
            return events
        events.append((event["type"], dict(event.get("data") or {})))


def make_breaker(threshold=5, cooldown_s=30.0):
    return CircuitBreaker("scripted", threshold=threshold, cooldown_s=cooldown_s)


async def call(provider, emitter, *, breaker=None, policy=None, timeout_s=60.0, limiter=None):
    lane = ProviderLane(
        provider=provider,
        breaker=breaker or make_breaker(),
        policy=policy or RetryPolicy(max_retries=3, base_s=1.0, cap_s=30.0),
        timeout_s=timeout_s,
        emitter=emitter,
        limiter=limiter,
    )
    return await lane.call(REQUEST, step="greet")


async def trip(breaker):
    """Open `breaker` (threshold 1) with one connection failure."""
    with pytest.raises(ProviderConnectionError):
        async with breaker.attempt():
            raise ProviderConnectionError("scripted: connection refused", provider="scripted")
    assert "open" == breaker.state


def request_event(attempt):
    return (
        "llm.request",
        {
            "provider": "scripted",
            "model": "m-1",
            "attempt": attempt,
            "prompt_sha256": hashlib.sha256(b"be brief\nsay hi").hexdigest(),
            "prompt_chars": len("be brief") + len("say hi"),
        },
    )


def response_event(
    attempt, status, latency_s=0.0, input_tokens=None, output_tokens=None, error=None
):
    data = {
        "status": status,
        "provider": "scripted",
        "model": "m-1",
        "attempt": attempt,
        "latency_s": latency_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    if error is not None:  # a failed attempt says why, in its own words
        data["error"] = error
    return ("llm.response", data)


def retry_event(attempt, delay_s, reason, delay_from="backoff"):
    data = {"attempt": attempt, "delay_s": delay_s, "reason": reason, "delay_from": delay_from}
    return ("llm.retry", data)


async def test_success_on_the_first_try(autojump_clock, channel):
    emitter, events = channel
    provider = ScriptedProvider([OK], latency_s=1.5)

    assert (OK, 1) == await call(provider, emitter)

    assert [request_event(1), response_event(1, 200, 1.5, 7, 3)] == drain(events)


async def test_a_response_without_status_is_logged_as_ok(autojump_clock, channel):
    emitter, events = channel
    response = LLMResponse(text="hi", model="m-1")

    assert (response, 1) == await call(ScriptedProvider([response]), emitter)

    assert [request_event(1), response_event(1, "ok")] == drain(events)


async def test_retryable_failures_then_success(autojump_clock, channel, seeded_random):
    emitter, events = channel
    provider = ScriptedProvider(
        [
            ProviderConnectionError("scripted: connection refused", provider="scripted"),
            RetryableProviderError("scripted: http 503", provider="scripted", status=503),
            OK,
        ]
    )
    policy = RetryPolicy(max_retries=3, base_s=1.0, cap_s=30.0)
    # Replay the draws the policy makes from the seeded global random: base 1s, then 2s.
    expected_delays = [
        round(1.0 * seeded_random.random(), 6),
        round(2.0 * seeded_random.random(), 6),
    ]

    start = trio.current_time()
    assert (OK, 3) == await call(provider, emitter, policy=policy)

    assert pytest.approx(sum(expected_delays), abs=1e-5) == trio.current_time() - start
    assert [
        request_event(1),
        response_event(1, "connection_error", error="scripted: connection refused"),
        retry_event(1, expected_delays[0], "connection_error"),
        request_event(2),
        response_event(2, 503, error="scripted: http 503"),
        retry_event(2, expected_delays[1], "http_503"),
        request_event(3),
        response_event(3, 200, input_tokens=7, output_tokens=3),
    ] == drain(events)


async def test_retry_after_from_the_server_sets_the_delay(autojump_clock, channel):
    emitter, events = channel
    provider = ScriptedProvider(
        [RateLimitError("scripted: http 429", provider="scripted", status=429, retry_after=7.0), OK]
    )

    start = trio.current_time()
    assert (OK, 2) == await call(provider, emitter)

    assert 7.0 == trio.current_time() - start
    assert retry_event(1, 7.0, "http_429", delay_from="server") in drain(events)


async def test_a_permanent_error_is_not_retried(autojump_clock, channel):
    emitter, events = channel
    breaker = make_breaker(threshold=1)
    error = PermanentProviderError("scripted: model not found", provider="scripted", status=404)
    provider = ScriptedProvider([error, OK])

    with pytest.raises(PermanentProviderError, match=r"^scripted: model not found$") as info:
        await call(provider, emitter, breaker=breaker)

    assert 1 == info.value.attempts
    assert 1 == provider.calls
    assert [request_event(1), response_event(1, 404, error="scripted: model not found")] == drain(
        events
    )
    assert "closed" == breaker.state


async def test_a_hanging_provider_times_out(autojump_clock, channel):
    emitter, events = channel
    breaker = make_breaker(threshold=1)

    with pytest.raises(
        ProviderTimeoutError, match=r"^scripted: timed out after 5s without a byte$"
    ) as info:
        await call(
            ScriptedProvider([HANG]),
            emitter,
            breaker=breaker,
            policy=RetryPolicy(max_retries=0),
            timeout_s=5.0,
        )

    assert 1 == info.value.attempts
    assert "timeout" == info.value.reason
    timed_out = response_event(
        1, "timeout", 5.0, error="scripted: timed out after 5s without a byte"
    )
    assert [request_event(1), timed_out] == drain(events)
    assert "open" == breaker.state  # a timeout is a breaker failure


async def test_a_timeout_is_retried(autojump_clock, channel):
    emitter, events = channel
    provider = ScriptedProvider([HANG, OK])

    assert (OK, 2) == await call(provider, emitter, timeout_s=5.0)

    assert "timeout" == drain(events)[2][1]["reason"]


async def test_an_open_breaker_skips_the_attempt_and_waits_out_the_cooldown(
    autojump_clock, channel
):
    emitter, events = channel
    breaker = make_breaker(threshold=1, cooldown_s=10.0)
    await trip(breaker)
    await trio.sleep(4.0)
    provider = ScriptedProvider([OK])

    start = trio.current_time()
    assert (OK, 2) == await call(provider, emitter, breaker=breaker)

    assert 6.0 == trio.current_time() - start
    assert [
        retry_event(1, 6.0, "circuit_open", delay_from="breaker"),
        request_event(2),
        response_event(2, 200, input_tokens=7, output_tokens=3),
    ] == drain(events)
    assert "closed" == breaker.state


async def test_an_open_breaker_on_the_last_attempt_raises(autojump_clock, channel):
    emitter, events = channel
    breaker = make_breaker(threshold=1, cooldown_s=10.0)
    await trip(breaker)
    provider = ScriptedProvider([OK])

    with pytest.raises(CircuitOpenError, match=r"^circuit breaker for scripted is open") as info:
        await call(provider, emitter, breaker=breaker, policy=RetryPolicy(max_retries=0))

    assert 1 == info.value.attempts
    assert 0 == provider.calls
    assert [] == drain(events)


async def test_an_exhausted_budget_raises_the_last_error(autojump_clock, channel):
    emitter, events = channel
    errors = [
        RetryableProviderError(f"scripted: http 50{i}", provider="scripted", status=500 + i)
        for i in range(3)
    ]
    provider = ScriptedProvider(errors)

    with pytest.raises(RetryableProviderError, match=r"^scripted: http 502$") as info:
        await call(provider, emitter, policy=RetryPolicy(max_retries=2, base_s=1.0))

    assert 3 == info.value.attempts
    assert 3 == provider.calls
    types = [event_type for event_type, _ in drain(events)]
    assert ["llm.request", "llm.response", "llm.retry"] * 2 + [
        "llm.request",
        "llm.response",
    ] == types


async def test_the_limiter_caps_calls_in_flight(autojump_clock, channel):
    emitter, _ = channel
    provider = ScriptedProvider([OK] * 6, latency_s=1.0)
    limiter = trio.CapacityLimiter(2)
    results = []

    async def one_call():
        results.append(await call(provider, emitter, limiter=limiter))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(one_call)

    assert [(OK, 1)] * 6 == results
    assert 2 == provider.max_in_flight
    assert 0 == limiter.borrowed_tokens


async def test_the_limiter_is_not_held_while_backing_off(autojump_clock, channel):
    emitter, _ = channel
    limiter = trio.CapacityLimiter(1)
    error = RateLimitError("scripted: http 429", provider="scripted", status=429, retry_after=10.0)

    results = []

    async def one_call():
        results.append(await call(ScriptedProvider([error, OK]), emitter, limiter=limiter))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_call)
        await trio.sleep(1.0)  # the call is now sleeping out its Retry-After
        assert 0 == limiter.borrowed_tokens

    assert [(OK, 2)] == results


async def test_cancellation_propagates_untouched(autojump_clock, channel):
    emitter, events = channel
    breaker = make_breaker(threshold=1)
    limiter = trio.CapacityLimiter(1)

    with trio.move_on_after(3.0) as scope:
        await call(ScriptedProvider([HANG]), emitter, breaker=breaker, limiter=limiter)

    assert scope.cancelled_caught
    # The cut-short attempt still gets its response event, so request/response stay paired.
    assert [request_event(1), response_event(1, "cancelled", latency_s=3.0)] == drain(events)
    assert ("closed", 0) == (breaker.state, breaker.failures)
    assert 0 == limiter.borrowed_tokens


async def test_cancellation_during_backoff_propagates(autojump_clock, channel):
    emitter, events = channel
    # The server asks for 60 s, so the wait is certain to outlast the 3 s scope
    # (a random backoff could be shorter than 3 s).
    error = RetryableProviderError(
        "scripted: http 503", provider="scripted", status=503, retry_after=60.0
    )

    with trio.move_on_after(3.0) as scope:
        await call(ScriptedProvider([error, OK]), emitter, policy=RetryPolicy(max_retries=1))

    assert scope.cancelled_caught
    assert ["llm.request", "llm.response", "llm.retry"] == [t for t, _ in drain(events)]


async def test_a_provider_bug_is_logged_and_surfaces(autojump_clock, channel):
    emitter, events = channel

    with pytest.raises(KeyError):
        await call(ScriptedProvider([KeyError("choices")]), emitter)

    assert [request_event(1), response_event(1, "error", error="'choices'")] == drain(events)


@pytest.mark.parametrize(
    ("name", "config", "max_tokens", "streamed"),
    [
        ("local", {}, 64, True),  # a small CPU may take minutes: stream, and be heard
        ("local", {"stream": False}, 64, False),
        ("local", {"stream": "auto"}, 64, False),
        ("openai", {}, 64, False),
        ("openai", {}, 4096, True),
    ],
)
async def test_the_default_stream_setting_depends_on_the_provider(
    tmp_path, channel, name, config, max_tokens, streamed
):
    emitter, _ = channel
    lane = ProviderLane.open(
        name, settings=Settings(), config=config, emitter=emitter, job_dir=tmp_path
    )
    try:
        assert streamed == lane.wants_stream(max_tokens)
    finally:
        await lane.aclose()
