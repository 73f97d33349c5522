from __future__ import annotations

from pathlib import Path

import pytest

from runner import Pipeline, PipelineError, Settings, Step, run_dag
from runner.testing import open_fake_llm_server


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
    ],
)
def test_provider_tables_are_validated(
    providers: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(PipelineError, match=rf"^<python>: {message}"):
        Pipeline(name="p", steps=[Step("a", prompt="x")], providers=providers)
