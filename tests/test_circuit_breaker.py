from functools import partial

import pytest
import trio
import trio.testing

from runner.circuit_breaker import CircuitBreaker
from runner.errors import (
    CircuitOpenError,
    PermanentProviderError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitError,
    RetryableProviderError,
)

COOLDOWN = 30.0


def make_breaker(threshold=3, cooldown_s=COOLDOWN):
    transitions = []

    async def on_transition(name, failures):
        transitions.append((name, failures))

    breaker = CircuitBreaker(
        "acme", threshold=threshold, cooldown_s=cooldown_s, on_transition=on_transition
    )
    return breaker, transitions


async def fail(breaker, error=None, *, wait=trio.lowlevel.checkpoint):
    """One attempt that waits for `wait()`, then fails with `error`."""
    error = error or ProviderConnectionError("acme: connection refused", provider="acme")

    async def attempt():
        async with breaker.attempt():
            await wait()
            raise error

    with pytest.raises(type(error)):
        await attempt()


async def succeed(breaker):
    async with breaker.attempt():
        await trio.lowlevel.checkpoint()


async def open_breaker(breaker):
    for _ in range(breaker.threshold):
        await fail(breaker)
    assert breaker.state == "open"


async def test_opens_after_threshold_consecutive_failures(autojump_clock):
    breaker, transitions = make_breaker(threshold=3)
    await fail(breaker)
    await fail(breaker)
    assert ("closed", 2) == (breaker.state, breaker.failures)
    assert [] == transitions

    await fail(breaker, ProviderTimeoutError("acme timed out after 5s", provider="acme"))

    assert ("open", 3) == (breaker.state, breaker.failures)
    assert [("opened", 3)] == transitions
    assert COOLDOWN == breaker.remaining_cooldown()
    with pytest.raises(CircuitOpenError, match=r"^circuit breaker for acme is open") as info:
        async with breaker.attempt():
            pytest.fail("an open breaker let a call through")
    assert COOLDOWN == info.value.retry_after
    assert "acme" == info.value.provider
    assert [("opened", 3)] == transitions


async def test_concurrent_failures_open_it_once():
    breaker, transitions = make_breaker(threshold=2)
    release = trio.Event()

    error = RetryableProviderError("acme: http 503", provider="acme", status=503)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(partial(fail, breaker, error, wait=release.wait))
        await trio.testing.wait_all_tasks_blocked()
        release.set()

    assert "open" == breaker.state
    assert [("opened", 2)] == transitions


async def test_success_resets_the_count():
    breaker, transitions = make_breaker(threshold=3)
    await fail(breaker)
    await fail(breaker)
    await succeed(breaker)
    assert ("closed", 0) == (breaker.state, breaker.failures)
    await fail(breaker)
    await fail(breaker)
    assert "closed" == breaker.state
    assert [] == transitions


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError("acme: http 429", provider="acme", status=429),
        PermanentProviderError("acme: http 400", provider="acme", status=400),
        ValueError("a bug, not an outage"),
    ],
)
async def test_neutral_outcomes_do_not_count(error):
    breaker, transitions = make_breaker(threshold=2)
    await fail(breaker)
    for _ in range(5):
        await fail(breaker, error)
    assert ("closed", 1) == (breaker.state, breaker.failures)
    assert [] == transitions


async def test_half_open_after_cooldown_then_closed_on_success(autojump_clock):
    breaker, transitions = make_breaker(threshold=3)
    await open_breaker(breaker)

    await trio.sleep(COOLDOWN - 1)
    assert 1.0 == pytest.approx(breaker.remaining_cooldown())
    with pytest.raises(CircuitOpenError) as info:
        await succeed(breaker)
    assert 1.0 == pytest.approx(info.value.retry_after)

    await trio.sleep(1)
    assert 0.0 == breaker.remaining_cooldown()
    assert "open" == breaker.state  # the move to half-open waits for a caller
    async with breaker.attempt():
        assert "half_open" == breaker.state
    assert ("closed", 0) == (breaker.state, breaker.failures)
    assert [("opened", 3), ("half_open", 3), ("closed", 0)] == transitions


def probe_scenario(breaker, first_outcome):
    """A caller that records getting in, then waits for its own gate.

    The k-th caller to get in waits for `gates[k]`; the first one then raises
    `first_outcome` (None: succeeds), every later one succeeds.
    """
    entered = []
    results = []
    gates = [trio.Event() for _ in range(10)]

    async def caller(i):
        try:
            async with breaker.attempt():
                order = len(entered)
                entered.append(i)
                await gates[order].wait()
                if order == 0 and first_outcome is not None:
                    raise first_outcome
        except Exception as exc:
            results.append((i, type(exc).__name__))
        else:
            results.append((i, "ok"))

    return caller, entered, results, gates


async def test_exactly_one_probe_others_wait_then_proceed(autojump_clock):
    breaker, transitions = make_breaker()
    await open_breaker(breaker)
    await trio.sleep(COOLDOWN)
    caller, entered, results, gates = probe_scenario(breaker, None)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(caller, i)
        await trio.testing.wait_all_tasks_blocked()
        assert 1 == len(entered)
        assert [] == results
        assert "half_open" == breaker.state
        for gate in gates:
            gate.set()

    assert 5 == len(entered)
    assert ["ok"] * 5 == [outcome for _, outcome in results]
    assert "closed" == breaker.state
    assert [("opened", 3), ("half_open", 3), ("closed", 0)] == transitions


async def test_probe_failure_reopens_and_waiters_are_refused(autojump_clock):
    breaker, transitions = make_breaker()
    await open_breaker(breaker)
    await trio.sleep(COOLDOWN)
    error = ProviderConnectionError("acme: connection reset", provider="acme")
    caller, entered, results, gates = probe_scenario(breaker, error)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(caller, i)
        await trio.testing.wait_all_tasks_blocked()
        gates[0].set()

    [probe] = entered
    expected = {i: "CircuitOpenError" for i in range(5)} | {probe: "ProviderConnectionError"}
    assert expected == dict(results)
    assert ("open", 4) == (breaker.state, breaker.failures)
    assert COOLDOWN == breaker.remaining_cooldown()
    assert [("opened", 3), ("half_open", 3), ("opened", 4)] == transitions


@pytest.mark.parametrize(
    "neutral",
    [
        RateLimitError("acme: http 429", provider="acme", status=429),
        PermanentProviderError("acme: http 400", provider="acme", status=400),
    ],
)
async def test_neutral_probe_hands_the_slot_to_a_waiter(autojump_clock, neutral):
    breaker, transitions = make_breaker()
    await open_breaker(breaker)
    await trio.sleep(COOLDOWN)
    caller, entered, results, gates = probe_scenario(breaker, neutral)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(caller, i)
        await trio.testing.wait_all_tasks_blocked()
        gates[0].set()
        await trio.testing.wait_all_tasks_blocked()
        # The first probe said nothing about health: still half-open, and exactly
        # one waiter took over as the next probe.
        assert [(entered[0], type(neutral).__name__)] == results
        assert 2 == len(entered)
        assert "half_open" == breaker.state
        for gate in gates[1:]:
            gate.set()

    assert 3 == len(entered)
    assert [type(neutral).__name__, "ok", "ok"] == [outcome for _, outcome in results]
    assert [("opened", 3), ("half_open", 3), ("closed", 0)] == transitions


async def test_cancelled_probe_hands_the_slot_to_a_waiter(autojump_clock):
    breaker, transitions = make_breaker()
    await open_breaker(breaker)
    await trio.sleep(COOLDOWN)
    entered = []

    async def hanging_probe(task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            async with breaker.attempt():
                entered.append("probe")
                task_status.started(scope)
                await trio.sleep_forever()

    async def waiter():
        async with breaker.attempt():
            entered.append("waiter")

    async with trio.open_nursery() as nursery:
        probe_scope = await nursery.start(hanging_probe)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert ["probe"] == entered
        probe_scope.cancel()

    assert ["probe", "waiter"] == entered
    assert "closed" == breaker.state
    assert [("opened", 3), ("half_open", 3), ("closed", 0)] == transitions


async def test_cancelled_waiter_is_harmless(autojump_clock):
    breaker, transitions = make_breaker()
    await open_breaker(breaker)
    await trio.sleep(COOLDOWN)
    release = trio.Event()
    waiter_got_in = []

    async def probe(task_status=trio.TASK_STATUS_IGNORED):
        async with breaker.attempt():
            task_status.started()
            await release.wait()

    async def waiter(task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with breaker.attempt():
                waiter_got_in.append(True)

    async with trio.open_nursery() as nursery:
        await nursery.start(probe)
        waiter_scope = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        waiter_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert "half_open" == breaker.state
        release.set()

    assert [] == waiter_got_in
    assert ("closed", 0) == (breaker.state, breaker.failures)
    await succeed(breaker)
    await fail(breaker)
    assert ("closed", 1) == (breaker.state, breaker.failures)
    assert [("opened", 3), ("half_open", 3), ("closed", 0)] == transitions


async def test_late_failure_from_before_the_outage_is_ignored(autojump_clock):
    breaker, transitions = make_breaker(threshold=1)
    release = trio.Event()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(fail, breaker, wait=release.wait))
        await trio.testing.wait_all_tasks_blocked()
        await open_breaker(breaker)
        await trio.sleep(COOLDOWN)
        await succeed(breaker)  # the probe: closed again
        release.set()

    assert ("closed", 0) == (breaker.state, breaker.failures)
    assert [("opened", 1), ("half_open", 1), ("closed", 0)] == transitions


def test_rejects_a_threshold_below_one():
    with pytest.raises(ValueError, match=r"^threshold must be at least 1"):
        CircuitBreaker("acme", threshold=0, cooldown_s=1)
