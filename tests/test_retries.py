"""Timeouts, retries, Retry-After, the circuit breaker and max_concurrency, end to end.

Every test runs a real pipeline through `run_dag` against runner.testing's
loopback server, so each attempt is a real HTTP request over a real socket.
Deadlines and cooldowns are real and short (fractions of a second); the tests
assert on what happened (requests the server saw, events in the log, their
order), never on how long anything took.
"""

from __future__ import annotations

import email.utils
import itertools
import re
import time
from pathlib import Path

import pytest
from helpers import events

from runner import Pipeline, Settings, Step, run_dag
from runner.testing import Fail, Hang, Reply, Stall, StreamError, fail_times, open_fake_llm_server

BREAKER_EVENTS = ("breaker.opened", "breaker.half_open", "breaker.closed")


def settings_for(server, **changes) -> Settings:
    base = Settings(
        openai_base_url=server.openai_base_url,
        openai_api_key="sk-test",
        provider_timeout_s=0.3,
        max_retries=3,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        fsync="never",
    )
    return base.evolve(**changes)


def openai_pipeline(*steps: Step, **openai_config) -> Pipeline:
    return Pipeline(
        name="retries",
        steps=steps,
        defaults={"provider": "openai", "model": "gpt-test"},
        providers={"openai": openai_config} if openai_config else {},
    )


def parallel(n: int, **step_fields) -> list[Step]:
    return [Step(f"s{i}", prompt=f"question {i}", **step_fields) for i in range(n)]


def of_type(log, type_):
    return [e for e in log if e["type"] == type_]


def retries(log) -> list[tuple[str | None, int, str]]:
    return [
        (e.get("step"), e["data"]["attempt"], e["data"]["reason"])
        for e in of_type(log, "llm.retry")
    ]


def breaker_events(log) -> list[str]:
    return [e["type"] for e in log if e["type"] in BREAKER_EVENTS]


def between(log, first: int, last: int, type_: str) -> list:
    return [e for e in log[first + 1 : last] if e["type"] == type_]


async def test_provider_retries_on_timeout(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Hang(), Hang(), Reply("third time lucky"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )

    assert ("succeeded", "third time lucky") == (result.status, result.outputs["ask"])
    assert 3 == len(server.requests)
    log = events(result.run_dir)
    assert [("ask", 1, "timeout"), ("ask", 2, "timeout")] == retries(log)
    # Full jitter: retry n waits less than min(cap, base * 2**(n-1)).
    assert all(
        0 <= e["data"]["delay_s"] < 0.01 * 2 ** (e["data"]["attempt"] - 1)
        for e in log
        if e["type"] == "llm.retry"
    )
    calls = [
        (e["type"], e["data"]["attempt"])
        for e in log
        if e["type"] in ("llm.request", "llm.response")
    ]
    assert [(t, n) for n in (1, 2, 3) for t in ("llm.request", "llm.response")] == calls
    statuses = [e["data"]["status"] for e in of_type(log, "llm.response")]
    assert ["timeout", "timeout", 200] == statuses
    [succeeded] = of_type(log, "step.succeeded")
    assert 3 == succeeded["data"]["attempts"]


async def test_circuit_breaker_opens_after_threshold(runs_dir: Path) -> None:
    # Threshold 2 and a cooldown far longer than the test: the third attempt
    # finds the breaker open and, being the last one, gives up unsent.
    async with open_fake_llm_server() as server:
        server.script(*fail_times(10, 503))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=2)),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=2, cb_cooldown_s=60.0),
        )

    assert ("failed", 2) == (result.status, len(server.requests))
    log = events(result.run_dir)
    assert ["breaker.opened"] == breaker_events(log)
    [opened] = of_type(log, "breaker.opened")
    assert {"provider": "openai", "failures": 2} == opened.get("data")
    assert 2 == len(of_type(log, "llm.request"))
    assert [("ask", 1, "http_503"), ("ask", 2, "http_503")] == retries(log)
    [failed] = of_type(log, "step.failed")
    assert ("CircuitOpenError", 3) == (failed["data"]["error"], failed["data"]["attempts"])
    assert failed["data"]["message"].startswith("circuit breaker for openai is open (next try in")


async def test_an_attempt_refused_by_the_open_breaker_waits_out_the_cooldown(
    runs_dir: Path,
) -> None:
    # Attempts 1 and 2 open the breaker; attempt 3 is refused unsent (an
    # llm.retry with reason circuit_open and the cooldown left as its delay);
    # attempt 4 is the half-open probe, which fails and opens it again.
    cooldown_s = 0.2
    async with open_fake_llm_server() as server:
        server.script(*fail_times(10, 503))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=3)),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=2, cb_cooldown_s=cooldown_s),
        )

    assert ("failed", 3) == (result.status, len(server.requests))
    log = events(result.run_dir)
    assert [
        ("ask", 1, "http_503"),
        ("ask", 2, "http_503"),
        ("ask", 3, "circuit_open"),
    ] == retries(log)
    refused = of_type(log, "llm.retry")[2]
    assert 0 < refused["data"]["delay_s"] <= cooldown_s
    assert [1, 2, 4] == [e["data"]["attempt"] for e in of_type(log, "llm.request")]
    expected = ["breaker.opened", "breaker.half_open", "breaker.opened"]
    assert expected == breaker_events(log)
    opened = next(i for i, e in enumerate(log) if e["type"] == "breaker.opened")
    half_open = next(i for i, e in enumerate(log) if e["type"] == "breaker.half_open")
    assert [] == between(log, opened, half_open, "llm.request")
    [failed] = of_type(log, "step.failed")
    assert ("RetryableProviderError", 4) == (failed["data"]["error"], failed["data"]["attempts"])
    assert failed["data"]["message"].startswith("openai: 503 ")


@pytest.mark.parametrize(
    ("fail", "cap_s", "expected_delay_s"),
    [
        (Fail(429, retry_after="0.2"), 0.5, 0.2),
        # The server's word wins over the backoff cap: never earlier than asked.
        (Fail(429, retry_after="0.2"), 0.05, 0.2),
        (Fail(503, retry_after_ms="150", retry_after="9"), 0.5, 0.15),
    ],
    ids=["seconds", "seconds-above-the-cap", "milliseconds"],
)
async def test_retry_after_sets_the_delay(runs_dir: Path, fail, cap_s, expected_delay_s) -> None:
    async with open_fake_llm_server() as server:
        server.script(fail, Reply("ok"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server, retry_cap_s=cap_s),
        )

    assert ("succeeded", 2) == (result.status, len(server.requests))
    [retry] = of_type(events(result.run_dir), "llm.retry")
    assert (f"http_{fail.status}", expected_delay_s) == (
        retry["data"]["reason"],
        retry["data"]["delay_s"],
    )


@pytest.mark.parametrize(
    ("offset_s", "in_future"), [(3.0, True), (-30.0, False)], ids=["future", "past"]
)
async def test_retry_after_as_an_http_date(runs_dir: Path, offset_s, in_future) -> None:
    cap_s = 0.3
    date = email.utils.formatdate(time.time() + offset_s, usegmt=True)
    async with open_fake_llm_server() as server:
        server.script(Fail(429, retry_after=date), Reply("ok"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server, retry_cap_s=cap_s),
        )

    assert "succeeded" == result.status
    [retry] = of_type(events(result.run_dir), "llm.retry")
    delay_s = retry["data"]["delay_s"]
    if in_future:
        # The date was read and waited for, above the backoff cap: a date has whole
        # seconds, so the wait is within a second of the offset.
        assert (offset_s - 1.0 <= delay_s <= offset_s, "server") == (
            True,
            retry["data"]["delay_from"],
        )
        assert cap_s < delay_s
    else:
        # A date in the past is no request at all: our own jitter (below base_s) decides.
        assert (delay_s < 0.01, "backoff") == (True, retry["data"]["delay_from"])


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_permanent_errors_are_not_retried(runs_dir: Path, status) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(status, message=f"the provider says no ({status})"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=1),
        )

    assert ("failed", 1) == (result.status, len(server.requests))
    log = events(result.run_dir)
    [failed] = of_type(log, "step.failed")
    assert ("PermanentProviderError", 1) == (failed["data"]["error"], failed["data"]["attempts"])
    assert failed["data"]["message"].startswith(f"openai: {status} the provider says no ({status})")
    assert [] == retries(log)
    assert [] == breaker_events(log)


@pytest.mark.parametrize(
    ("status", "expected_breaker_events"),
    [(429, []), (503, ["breaker.opened", "breaker.half_open", "breaker.closed"])],
)
async def test_429_does_not_count_against_the_breaker(
    runs_dir: Path, status, expected_breaker_events
) -> None:
    # The 503 case shows the same setup does trip the breaker on a real outage.
    async with open_fake_llm_server() as server:
        server.script(Fail(status), Reply("ok"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=1, cb_cooldown_s=0.05),
        )

    assert ("succeeded", 2) == (result.status, len(server.requests))
    assert expected_breaker_events == breaker_events(events(result.run_dir))


async def test_half_open_admits_one_probe_then_closes(runs_dir: Path) -> None:
    # Four steps fail together and open the breaker; after the cooldown all
    # four want to go at once. The probe's reply is slow, so the others are
    # waiting while it is in flight: only it may reach the server.
    async with open_fake_llm_server() as server:
        server.script(*fail_times(4, 503), Reply("probe", delay_s=0.1))
        result = await run_dag(
            openai_pipeline(*parallel(4)),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=1, cb_cooldown_s=0.2, max_retries=5),
        )

    assert "succeeded" == result.status
    assert 4 + 1 + 3 == len(server.requests)
    log = events(result.run_dir)
    assert ["breaker.opened", "breaker.half_open", "breaker.closed"] == breaker_events(log)
    half_open = next(i for i, e in enumerate(log) if e["type"] == "breaker.half_open")
    closed = next(i for i, e in enumerate(log) if e["type"] == "breaker.closed")
    assert 1 == len(between(log, half_open, closed, "llm.request"))
    # Nothing was sent while the breaker was open: every step waited it out.
    opened = next(i for i, e in enumerate(log) if e["type"] == "breaker.opened")
    assert [] == between(log, opened, half_open, "llm.request")
    assert {f"s{i}" for i in range(4)} == {
        e.get("step") for e in of_type(log, "llm.retry") if e["data"]["reason"] == "circuit_open"
    }


async def test_half_open_reopens_after_a_bad_probe(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(*fail_times(4, 503), Fail(503, delay_s=0.1), Reply("probe", delay_s=0.1))
        result = await run_dag(
            openai_pipeline(*parallel(4)),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=1, cb_cooldown_s=0.2, max_retries=6),
        )

    assert "succeeded" == result.status
    assert 4 + 1 + 1 + 3 == len(server.requests)
    log = events(result.run_dir)
    expected = ["breaker.opened", "breaker.half_open", "breaker.opened", "breaker.half_open"]
    assert [*expected, "breaker.closed"] == breaker_events(log)
    marks = [i for i, e in enumerate(log) if e["type"] in BREAKER_EVENTS]
    # One probe per half-open period, nothing at all while open.
    assert [0, 1, 0, 1] == [
        len(between(log, a, b, "llm.request")) for a, b in itertools.pairwise(marks)
    ]
    reopened = log[marks[2]]
    assert {"provider": "openai", "failures": 2} == reopened.get("data")


async def _most_in_flight(runs_dir: Path, **providers_config: object) -> tuple[int, Path]:
    """Six parallel steps answered after 0.2 s: the most requests the server held at once."""
    replied = 0
    in_flight_at_reply: list[int] = []

    def reply(request) -> str:
        # Called as each answer is about to go out: every request received
        # and not yet answered is in flight at the server right now.
        nonlocal replied
        in_flight_at_reply.append(len(server.requests) - replied)
        replied += 1
        return f"answer to {request.prompt}"

    async with open_fake_llm_server(reply=reply) as server:
        server.script(*[Reply(delay_s=0.2)] * 6)
        result = await run_dag(
            openai_pipeline(*parallel(6), **providers_config),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=5.0),
        )
    assert "succeeded" == result.status
    assert 6 == len(server.requests)
    return max(in_flight_at_reply), result.run_dir


async def test_max_concurrency_caps_requests_in_flight(runs_dir: Path) -> None:
    most, run_dir = await _most_in_flight(runs_dir, max_concurrency=2)
    assert 2 == most
    # The log agrees: never more than two requests without their response.
    calls = peak = 0
    for e in events(run_dir):
        if e["type"] == "llm.request":
            calls += 1
            peak = max(peak, calls)
        elif e["type"] == "llm.response":
            calls -= 1
    assert 2 == peak


async def test_max_concurrency_unset_lets_every_step_go(runs_dir: Path) -> None:
    # The control for the test above: the same steps, no limit.
    most, _ = await _most_in_flight(runs_dir)
    assert 6 == most


async def test_timeout_without_retries_fails_the_step_saying_timed_out(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Hang())
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=0)),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )

    assert ("failed", 1) == (result.status, len(server.requests))
    log = events(result.run_dir)
    [failed] = of_type(log, "step.failed")
    assert ("ProviderTimeoutError", 1) == (failed["data"]["error"], failed["data"]["attempts"])
    assert failed["data"]["message"].startswith("openai")
    assert "timed out" in failed["data"]["message"]
    assert [] == retries(log)


async def test_a_step_timeout_shorter_than_the_provider_timeout_is_honoured(
    runs_dir: Path,
) -> None:
    async with open_fake_llm_server() as server:
        server.script(Hang())
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", timeout_s=0.2, retries=0)),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=30.0),
        )

    [failed] = of_type(events(result.run_dir), "step.failed")
    assert "ProviderTimeoutError" == failed["data"]["error"]
    # The step's own deadline ended the call, not the provider's 30 s.
    assert re.match(r"^openai: timed out after 0\.2s without a byte$", failed["data"]["message"])


async def test_a_step_timeout_longer_than_the_provider_timeout_is_honoured(
    runs_dir: Path,
) -> None:
    async with open_fake_llm_server() as server:
        server.script(Reply("slow but fine", delay_s=0.5))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", timeout_s=2.0, retries=0)),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=0.2),
        )

    assert ("succeeded", "slow but fine") == (result.status, result.outputs.get("ask"))


async def test_calls_queued_behind_max_concurrency_do_not_pass_an_open_breaker(
    runs_dir: Path,
) -> None:
    # Eight steps queue for one slot; the first two failures open the breaker. The
    # breaker is asked once a call holds the slot, so the six queued calls are refused
    # unsent instead of going out through the open breaker.
    async with open_fake_llm_server() as server:
        server.script(*fail_times(8))
        result = await run_dag(
            openai_pipeline(*parallel(8), max_concurrency=1),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=2, max_retries=0, cb_cooldown_s=60.0),
        )

    assert "failed" == result.status
    assert 2 == len(server.requests)
    log = events(result.run_dir)
    assert ["breaker.opened"] == breaker_events(log)
    refused = [e for e in of_type(log, "step.failed") if e["data"]["error"] == "CircuitOpenError"]
    assert 6 == len(refused)


# -- time out on silence, not on a live stream ----------------------------------------


async def test_a_slow_healthy_stream_longer_than_the_timeout_succeeds(runs_dir: Path) -> None:
    # A chunk every 0.3 s for about 3 s, with 1 s allowed between chunks.
    text = " ".join(f"w{i}" for i in range(10))
    async with open_fake_llm_server() as server:
        server.script(Reply(text, chunk_delay_s=0.3))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=0), stream=True),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=1.0),
        )
    assert ("succeeded", text) == (result.status, result.outputs["ask"])
    assert 1 == len(server.requests)


async def test_a_stream_that_goes_silent_fails_that_attempt_on_silence(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Stall(after_chunks=1, resume_after_s=2.0), Reply("second time"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello"), stream=True),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=1.0, retry_cap_s=0.01),
        )
    assert ("succeeded", "second time") == (result.status, result.outputs["ask"])
    log = events(result.run_dir)
    [failed_attempt] = [e for e in of_type(log, "llm.response") if e["data"]["attempt"] == 1]
    assert ("timeout", "openai: timed out after 1s without a byte") == (
        failed_attempt["data"]["status"],
        failed_attempt["data"]["error"],
    )
    # The retry went out within the silence (1 s) plus a little, not after the 2 s stall.
    first, second = server.requests
    assert second.received_at - first.received_at < 2.0


async def test_the_attempt_cap_bounds_a_stream_that_trickles_forever(runs_dir: Path) -> None:
    text = " ".join(f"w{i}" for i in range(50))
    async with open_fake_llm_server() as server:
        server.script(Reply(text, chunk_delay_s=0.1))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", attempt_cap_s=0.5, retries=0), stream=True),
            runs_dir=runs_dir,
            settings=settings_for(server, provider_timeout_s=1.0),
        )
    [failed] = of_type(events(result.run_dir), "step.failed")
    assert "openai: timed out: the attempt took more than 0.5s in all" == failed["data"]["message"]


# -- wait as long as the server asks --------------------------------------------------


async def test_retry_after_above_the_backoff_cap_is_waited_for_in_full(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(429, retry_after="3"), Reply("ok"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server, retry_cap_s=1.0),
        )
    assert "succeeded" == result.status
    first, second = server.requests
    assert second.received_at - first.received_at >= 3.0
    [retry] = of_type(events(result.run_dir), "llm.retry")
    assert (3.0, "server") == (retry["data"]["delay_s"], retry["data"]["delay_from"])


async def test_a_server_asking_for_too_long_fails_the_step_at_once(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(429, retry_after="500"), Reply("never asked for"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=3)),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )
    assert ("failed", 1) == (result.status, len(server.requests))
    [failed] = of_type(events(result.run_dir), "step.failed")
    assert re.match(
        r"^openai: 429 .*; the server asked to wait 500s before trying again, more than "
        r"RUNNER_RETRY_AFTER_MAX_S \(120s\): run the job again later with --resume$",
        failed["data"]["message"],
    )
    assert 1 == failed["data"]["attempts"]


# -- keep the cause of every failure ---------------------------------------------------


async def test_a_200_carrying_an_error_fails_with_the_providers_message(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(200, "you sent nonsense", error_type="invalid_request_error"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello")),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )
    [failed] = of_type(events(result.run_dir), "step.failed")
    assert ("PermanentProviderError", 1) == (failed["data"]["error"], len(server.requests))
    assert failed["data"]["message"].startswith("openai: error in a 200 answer: you sent nonsense")


@pytest.mark.parametrize(
    ("error_type", "requests", "error"),
    [
        ("invalid_request_error", 1, "PermanentProviderError"),
        ("server_error", 4, "ProviderStreamError"),
    ],
)
async def test_an_error_inside_a_stream_is_retried_only_when_its_type_says_so(
    runs_dir: Path, error_type: str, requests: int, error: str
) -> None:
    async with open_fake_llm_server() as server:
        server.script(*[StreamError(error_type=error_type, message="stop")] * 4)
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello"), stream=True),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )
    [failed] = of_type(events(result.run_dir), "step.failed")
    assert (error, requests) == (failed["data"]["error"], len(server.requests))


async def test_every_failed_attempt_says_why_and_an_open_breaker_names_the_cause(
    runs_dir: Path,
) -> None:
    async with open_fake_llm_server() as server:
        server.script(*fail_times(2, 503, message="upstream is down"))
        result = await run_dag(
            openai_pipeline(Step("ask", prompt="hello", retries=2)),
            runs_dir=runs_dir,
            settings=settings_for(server, cb_threshold=2, cb_cooldown_s=60.0),
        )
    log = events(result.run_dir)
    errors = [e["data"].get("error") for e in of_type(log, "llm.response")]
    assert ["openai: 503 upstream is down (server_error)"] * 2 == errors
    [failed] = of_type(log, "step.failed")
    assert re.match(
        r"^circuit breaker for openai is open \(next try in .*s\) after: openai: 503 upstream",
        failed["data"]["message"],
    )


# -- answers in the other mode ----------------------------------------------------------


@pytest.mark.parametrize(("stream", "mode"), [(True, "json"), (False, "stream")])
async def test_an_answer_in_the_other_mode_is_read_with_one_warning(
    runs_dir: Path, stream: bool, mode: str
) -> None:
    steps = [Step(f"s{i}", prompt=f"q{i}", retries=0) for i in range(3)]
    async with open_fake_llm_server() as server:
        server.script(*[Reply(f"answer {i}", mode=mode) for i in range(3)])
        result = await run_dag(
            openai_pipeline(*steps, stream=stream),
            runs_dir=runs_dir,
            settings=settings_for(server),
        )
    assert "succeeded" == result.status
    # Steps run side by side and take the scripted answers in any order.
    assert [f"answer {i}" for i in range(3)] == sorted(result.outputs.values())
    [warning] = of_type(events(result.run_dir), "llm.warning")
    assert (
        f"set stream = {'false' if stream else 'true'} in [providers.openai]"
        in (warning["data"]["message"])
    )
