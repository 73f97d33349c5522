"""One step's life: streaming choice, handoffs, upstream outputs, a failed output write."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers import events, of_type

import runner
from runner import Pipeline, PipelineError, Settings, Step, StepContext, run_dag
from runner.event_writer import EventEmitter
from runner.provider_lane import ProviderLane
from runner.run_dir import RunDir
from runner.step import Handoff, StepServices, UpstreamOutputs, run_step
from runner.testing import open_fake_llm_server

STEP_JOB = ("step", "job")


@pytest.mark.parametrize(
    ("config", "max_tokens", "streamed"),
    [
        ({}, 4096, True),  # auto: a long generation streams
        ({}, 256, False),
        ({"stream": "auto"}, 1024, False),
        ({"stream": True}, 64, True),
        ({"stream": False}, 8192, False),
    ],
)
async def test_streaming_is_chosen_per_provider_table_and_length(
    runs_dir: Path, config: dict[str, object], max_tokens: int, streamed: bool
) -> None:
    async with open_fake_llm_server() as server:
        pipeline = Pipeline(
            name="s",
            steps=[Step("a", prompt="hello", provider="openai", model="m", max_tokens=max_tokens)],
            providers={"openai": config},
        )
        settings = Settings(openai_base_url=server.openai_base_url, openai_api_key="sk-test")
        result = await run_dag(pipeline, runs_dir=runs_dir, settings=settings)
    assert "succeeded" == result.status
    assert "echo: hello" == result.outputs["a"]
    assert [streamed] == [request.stream for request in server.requests]


@pytest.mark.parametrize(
    ("providers", "message"),
    [
        (
            {"openai": {"max_concurrency": 0}},
            r"providers\.openai\.max_concurrency: expected a positive",
        ),
        (
            {"openai": {"stream": "yes"}},
            r'providers\.openai\.stream: expected true, false or "auto"',
        ),
        ({"openai": {"replies": {}}}, r"providers\.openai\.replies: unknown field"),
        (
            {"fake": {"latency_s": -1}},
            r"providers\.fake\.latency_s: expected a number of seconds >= 0",
        ),
        (
            {"fake": {"replies": {"a": 3}}},
            r"providers\.fake\.replies: expected a table of step = reply",
        ),
        (
            {"local": {"context_size": 100}},
            r"providers\.local\.context_size: expected a whole number of tokens >= 256",
        ),
        ({"local": {"threads": 0}}, r"providers\.local\.threads: expected a positive"),
        (
            {"local": {"start_timeout_s": "soon"}},
            r"providers\.local\.start_timeout_s: expected a positive number",
        ),
        ({"openai": {"threads": 2}}, r"providers\.openai\.threads: unknown field"),
    ],
)
def test_provider_tables_are_validated(
    providers: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(PipelineError, match=rf"^<python>: {message}"):
        Pipeline(name="p", steps=[Step("a", prompt="x")], providers=providers)


async def test_a_failed_output_write_fails_the_step_and_skips_its_dependents(
    runs_dir: Path,
) -> None:
    async def a(ctx: StepContext) -> str:
        # A directory where the output file must go: writing the output fails.
        (ctx.run_dir / "outputs" / "a.txt").mkdir()
        return "a's text"

    pipeline = Pipeline(
        name="p",
        steps=[Step("a", fn=a), Step("b", prompt="{{ steps.a.output }}", needs=["a"])],
        defaults={"provider": "fake", "model": "echo"},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=Settings(fsync="never"))

    assert ("failed", {}) == (result.status, dict(result.outputs))
    assert [
        ("step.started", "a"),
        ("step.failed", "a"),
        ("step.skipped", "b"),
        ("job.finished", None),
    ] == [
        (e["type"], e.get("step"))
        for e in events(result.run_dir)
        if e["type"].split(".")[0] in STEP_JOB
    ][1:]
    failed = of_type(result.run_dir, "step.failed")[0]
    assert ("StorageError", "upstream_failed") == (
        failed["data"]["error"],
        of_type(result.run_dir, "step.skipped")[0]["data"]["reason"],
    )


async def test_upstream_outputs_reach_every_step_below_through_the_handoffs(
    runs_dir: Path,
) -> None:
    seen: dict[str, dict[str, str]] = {}

    async def last(ctx: StepContext) -> str:
        seen["last"] = dict(ctx.outputs)
        return ctx.outputs["a"] + "|" + ctx.outputs["c"]

    # a -> b -> c -> last, and a -> d -> last: `last` sees all four, each once.
    pipeline = Pipeline(
        name="p",
        steps=[
            Step("a", prompt="A"),
            Step("b", prompt="{{ steps.a.output }}b", needs=["a"]),
            Step("c", prompt="{{ steps.a.output }}{{ steps.b.output }}c", needs=["b"]),
            Step("d", prompt="d", needs=["a"]),
            Step("last", fn=last, needs=["c", "d"]),
        ],
        defaults={"provider": "fake", "model": "echo"},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=Settings(fsync="never"))

    assert "succeeded" == result.status
    assert {"a": "A", "b": "Ab", "c": "AAbc", "d": "d"} == seen["last"]
    assert ["c", "d", "b", "a"] == list(seen["last"])  # nearest first
    assert "A|AAbc" == result.outputs["last"]


def test_upstream_outputs_is_a_mapping_that_misses_unknown_steps() -> None:
    a = Handoff("a", ok=True, output="1")
    b = Handoff("b", ok=True, output="2", upstream=(a,))
    outputs = UpstreamOutputs((b, a))
    assert (2, "1", True, False) == (len(outputs), outputs["a"], "b" in outputs, "z" in outputs)
    with pytest.raises(KeyError):
        outputs["z"]


# -- the step path, driven directly ------------------------------------------------


def _services(tmp_path: Path, **changes: object) -> tuple[StepServices, object]:
    """Services for one step, with its events caught in a channel (no writer, no job)."""
    send_channel, receive_channel = trio.open_memory_channel[runner.Event](100)
    emitter = EventEmitter("j", send_channel)
    run_dir = RunDir.of(tmp_path, "j")
    (run_dir.path / "outputs").mkdir(parents=True)
    settings = Settings(fsync="never")
    lane = ProviderLane.open("fake", settings=settings, config={}, emitter=emitter)
    fields: dict[str, object] = {
        "job_id": "j",
        "inputs": {"topic": "trio"},
        "run_dir": run_dir,
        "emitter": emitter,
        "lanes": {"fake": lane},
        "cache": None,
        "settings": settings,
        "pipeline_version": "1",
    }
    fields.update(changes)
    return StepServices(**fields), receive_channel  # type: ignore[arg-type]


async def _run_one(services: StepServices, step: Step, *received: Handoff) -> Handoff:
    send_channel, inbox = trio.open_memory_channel[Handoff](max(1, len(received)))
    for handoff in received:
        send_channel.send_nowait(handoff)
    send_channel.close()
    dependent_send, dependent_inbox = trio.open_memory_channel[Handoff](1)
    handoff = await run_step(services, step, inbox, [dependent_send])
    assert [handoff] == [h async for h in dependent_inbox]  # handed on, then closed
    return handoff


def _drain(receive_channel: object) -> list[tuple[str, str | None]]:
    out = []
    while True:
        try:
            event = receive_channel.receive_nowait()  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return out
        out.append((event["type"], event.get("step")))


ECHO = dict(provider="fake", model="echo")


async def test_a_step_renders_calls_writes_its_output_then_succeeds(tmp_path: Path) -> None:
    services, caught = _services(tmp_path)
    up = Handoff("a", ok=True, output="A")
    step = Step("b", prompt="{{ inputs.topic }} {{ steps.a.output }}", needs=["a"], **ECHO)
    handoff = await _run_one(services, step, up)
    assert Handoff("b", ok=True, output="trio A", upstream=(up,)) == handoff
    assert "trio A" == services.run_dir.output_path("b").read_text()
    assert [
        ("step.started", "b"),
        ("llm.request", "b"),
        ("llm.response", "b"),
        ("step.succeeded", "b"),
    ] == _drain(caught)


async def test_a_failed_upstream_skips_the_step_without_starting_it(tmp_path: Path) -> None:
    services, caught = _services(tmp_path)
    step = Step("c", prompt="x", needs=["a", "b"], **ECHO)
    handoff = await _run_one(
        services, step, Handoff("a", ok=False), Handoff("b", ok=True, output="B")
    )
    assert Handoff("c", ok=False) == handoff
    assert [("step.skipped", "c")] == _drain(caught)
    assert not services.run_dir.output_path("c").exists()


async def test_a_resumed_step_hands_on_its_stored_output(tmp_path: Path) -> None:
    services, caught = _services(tmp_path, resumed=frozenset({"b"}))
    services.run_dir.output_path("b").write_text("stored")
    handoff = await _run_one(services, Step("b", prompt="x", **ECHO))
    assert ("stored", True) == (handoff.output, handoff.ok)
    assert [("step.skipped", "b")] == _drain(caught)


async def test_an_answer_whose_files_are_refused_is_not_kept_in_the_cache(runs_dir: Path) -> None:
    reply = "```python path=../../evil.py\nprint('x')\n```\n"
    pipeline = Pipeline(
        name="p",
        steps=[Step("b", prompt="build", files=True)],
        defaults={"provider": "fake", "model": "echo"},
        providers={"fake": {"replies": {"b": reply}}},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=Settings(fsync="never"))
    assert "failed" == result.status
    assert [] == [p for p in (result.run_dir / ".cache").rglob("*") if p.is_file()]
    # So a resume asks the model again instead of replaying the refused answer.
    again = await run_dag(
        pipeline, runs_dir=runs_dir, job_id=result.job_id, resume=True, settings=Settings()
    )
    assert ["cache.miss", "llm.request"] == [
        e["type"] for e in events(again.run_dir)[-6:] if e["type"] in ("cache.miss", "llm.request")
    ]


async def test_a_files_step_whose_answer_holds_no_file_block_warns_and_succeeds(
    runs_dir: Path,
) -> None:
    pipeline = Pipeline(
        name="p",
        steps=[Step("build", prompt="x", files=True)],
        providers={"fake": {"replies": {"build": "I would rather describe the code."}}},
    )
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=Settings())
    assert "succeeded" == result.status
    [warning] = of_type(result.run_dir, "llm.warning")
    assert ("build", "fake", "echo") == (
        warning["step"],
        warning["data"]["provider"],
        warning["data"]["model"],
    )
    assert warning["data"]["message"].startswith("files = true, but the answer holds no file")
    assert {} == result.files
