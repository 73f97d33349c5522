"""A 10-step DAG against a flaky provider: every step succeeds, every failure is accounted for.

The loopback server answers from a script drawn from a seeded random
generator: runs of 503s (one long enough to open the circuit breaker) and
one 429 with Retry-After, mixed with good replies. Whatever order the
parallel steps take their turns in, the log must explain every request the
server saw and every attempt a step made.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

from helpers import events

from runner import Pipeline, Settings, Step, run_dag
from runner.testing import Fail, Reply, open_fake_llm_server

THRESHOLD = 3
COOLDOWN_S = 0.1
RETRY_CAP_S = 0.05
RETRY_AFTER_S = "0.03"

NEEDS = {
    "root": [],
    "a1": ["root"],
    "a2": ["root"],
    "a3": ["root"],
    "a4": ["root"],
    "b1": ["a1", "a2"],
    "b2": ["a3"],
    "b3": ["a4"],
    "c1": ["b1", "b2"],
    "final": ["c1", "b3"],
}


def flaky_script(seed: int) -> list[Fail | Reply]:
    """THRESHOLD 503s for `root` alone (the breaker opens), then a seeded mix.

    Fewer replies than steps are scripted, so the job consumes the whole
    script: the number of failures the server sends is known in advance.
    """
    rng = random.Random(seed)
    mixed: list[Fail | Reply] = []
    while sum(isinstance(action, Reply) for action in mixed) < len(NEEDS) - 1:
        mixed.append(Fail(503) if rng.random() < 0.4 else Reply())
    mixed.insert(rng.randrange(len(mixed)), Fail(429, retry_after=RETRY_AFTER_S))
    return [Fail(503)] * THRESHOLD + mixed


def pipeline() -> Pipeline:
    steps = [
        Step(
            name,
            prompt=f"do {name}" + "".join(f" {{{{ steps.{up}.output }}}}" for up in needs),
            needs=needs,
            retries=20,
        )
        for name, needs in NEEDS.items()
    ]
    return Pipeline(name="flaky", steps=steps, defaults={"provider": "openai", "model": "gpt-test"})


def valid_breaker_sequence(transitions: list[str]) -> bool:
    state = "closed"
    allowed = {
        ("closed", "breaker.opened"): "open",
        ("open", "breaker.half_open"): "half_open",
        ("half_open", "breaker.opened"): "open",
        ("half_open", "breaker.closed"): "closed",
    }
    for transition in transitions:
        if (state, transition) not in allowed:
            return False
        state = allowed[state, transition]
    return state == "closed"


async def test_flaky_provider_every_step_succeeds_and_every_failure_is_logged(
    runs_dir: Path,
) -> None:
    script = flaky_script(seed=20240611)
    failures = Counter(action.status for action in script if isinstance(action, Fail))
    assert failures[503] > THRESHOLD  # the seed gives more than the breaker's share
    async with open_fake_llm_server() as server:
        server.script(*script)
        settings = Settings(
            openai_base_url=server.openai_base_url,
            openai_api_key="sk-test",
            provider_timeout_s=5.0,
            retry_base_s=0.01,
            retry_cap_s=RETRY_CAP_S,
            cb_threshold=THRESHOLD,
            cb_cooldown_s=COOLDOWN_S,
            fsync="never",
        )
        result = await run_dag(pipeline(), runs_dir=runs_dir, settings=settings)

    log = events(result.run_dir)
    assert "succeeded" == result.status
    succeeded = {e.get("step"): e["data"]["attempts"] for e in log if e["type"] == "step.succeeded"}
    assert set(NEEDS) == set(succeeded)

    # The server saw every failure scripted, and one good reply per step.
    assert sum(failures.values()) + len(NEEDS) == len(server.requests)
    # Each request it saw is one llm.request / llm.response pair in the log...
    requests = [e for e in log if e["type"] == "llm.request"]
    responses = [e for e in log if e["type"] == "llm.response"]
    assert len(server.requests) == len(requests) == len(responses)
    assert failures == Counter(e["data"]["status"] for e in responses if e["data"]["status"] != 200)
    # ...and each failed response was retried once, with its own reason.
    retries = [e for e in log if e["type"] == "llm.retry"]
    reasons = Counter(e["data"]["reason"] for e in retries)
    assert failures == Counter(
        {int(r.removeprefix("http_")): n for r, n in reasons.items() if r.startswith("http_")}
    )
    assert set(reasons) <= {"http_503", "http_429", "circuit_open"}
    # The other retries are attempts the open breaker refused: never sent.
    refused = Counter(e.get("step") for e in retries if e["data"]["reason"] == "circuit_open")
    sent = Counter(e.get("step") for e in requests)
    for step, attempts in succeeded.items():
        assert attempts == sent[step] + refused[step], step
        assert attempts - 1 == sum(e.get("step") == step for e in retries), step

    # Delays: Retry-After honoured, jitter within the cap, the breaker's wait within the cooldown.
    for e in retries:
        delay_s, reason = e["data"]["delay_s"], e["data"]["reason"]
        if reason == "http_429":
            assert float(RETRY_AFTER_S) == delay_s
        elif reason == "circuit_open":
            assert 0 <= delay_s <= COOLDOWN_S
        else:
            assert 0 <= delay_s < RETRY_CAP_S

    # The breaker opened on root's THRESHOLD failures and went through legal states only.
    transitions = [e for e in log if e["type"].startswith("breaker.")]
    assert ("breaker.opened", {"provider": "openai", "failures": THRESHOLD}) == (
        transitions[0]["type"],
        transitions[0].get("data"),
    )
    assert valid_breaker_sequence([e["type"] for e in transitions])
    assert refused["root"] >= 1
    # While the breaker was open, nothing was sent.
    marks = [i for i, e in enumerate(log) if e["type"].startswith("breaker.")]
    for start, end in itertools.pairwise(marks):
        if log[start]["type"] == "breaker.opened":
            assert [] == [e for e in log[start:end] if e["type"] == "llm.request"]
