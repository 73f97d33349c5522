"""The HTTP providers over real sockets, against runner.testing's fake LLM server.

Deadlines here are real and short (fractions of a second); tests assert on
what happened, never on how long it took. pytest turns warnings into errors,
so a response or async generator left open by a cancelled call fails the test.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from runner.config import Settings
from runner.errors import (
    MalformedResponseError,
    PermanentProviderError,
    ProviderConnectionError,
    ProviderStreamError,
    ProviderTimeoutError,
    RateLimitError,
    RetryableProviderError,
)
from runner.providers import LLMRequest, create_provider
from runner.testing import (
    Drop,
    Fail,
    Hang,
    Malformed,
    ModelRules,
    Reply,
    Stall,
    StreamError,
    open_fake_llm_server,
)

OPENAI_KEY = "sk-test-SECRET123"
ANTHROPIC_KEY = "sk-ant-test-SECRET456"
NAMES = ["openai", "anthropic", "ollama"]
DEADLINE_S = 0.3


@asynccontextmanager
async def open_provider(name, *, provider_timeout_s=30.0):
    async with open_fake_llm_server() as server:
        settings = Settings(
            provider_timeout_s=provider_timeout_s,
            openai_api_key=OPENAI_KEY,
            openai_base_url=server.openai_base_url,
            anthropic_api_key=ANTHROPIC_KEY,
            anthropic_base_url=server.anthropic_base_url,
            ollama_host=server.ollama_host,
        )
        provider = create_provider(name, settings, {})
        try:
            yield provider, server
        finally:
            await provider.aclose()


def request(stream=False, **kw):
    return LLMRequest(model="m", prompt="say hi", system="be brief", stream=stream, **kw)


def busy_connections(provider):
    # httpcore's pool, reached through private attributes: the only way to see
    # whether a cancelled call left its connection checked out.
    return [
        c
        for client in provider._clients._clients
        for c in client._transport._pool.connections
        if not c.is_closed() and not c.is_idle()
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", NAMES)
async def test_reply_over_a_real_socket(name, stream):
    async with open_provider(name) as (provider, server):
        server.script(Reply("hello there", input_tokens=7, output_tokens=2))
        response = await provider.complete(request(stream, stop=("END",)))
    assert ("hello there", 7, 2, 200) == (
        response.text,
        response.input_tokens,
        response.output_tokens,
        response.status,
    )
    [sent] = server.requests
    assert (stream, "say hi") == (sent.stream, sent.prompt)
    expected_keys = {"openai": [OPENAI_KEY], "anthropic": [ANTHROPIC_KEY], "ollama": []}[name]
    assert expected_keys == [k for k in (OPENAI_KEY, ANTHROPIC_KEY) if k in str(sent.headers)]


@pytest.mark.parametrize("name", NAMES)
async def test_unreported_usage_is_none_over_a_real_socket(name):
    async with open_provider(name) as (provider, server):
        server.script(Reply("hi", omit_usage=True))
        response = await provider.complete(request())
    assert None is response.input_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", NAMES)
async def test_hang_is_cancelled_by_the_callers_deadline_and_frees_the_connection(name, stream):
    async with open_provider(name) as (provider, server):
        server.script(Hang(), Reply("after the hang"))
        with pytest.raises(trio.TooSlowError), trio.fail_after(DEADLINE_S):
            await provider.complete(request(stream))
        assert [] == busy_connections(provider)
        response = await provider.complete(request(stream))
    assert "after the hang" == response.text


@pytest.mark.parametrize("name", NAMES)
async def test_stall_mid_stream_is_caught_by_the_callers_deadline(name):
    async with open_provider(name) as (provider, server):
        server.script(Stall(after_chunks=1), Reply("after the stall"))
        with pytest.raises(trio.TooSlowError), trio.fail_after(DEADLINE_S):
            await provider.complete(request(stream=True))
        assert [] == busy_connections(provider)
        response = await provider.complete(request(stream=True))
    assert "after the stall" == response.text


@pytest.mark.parametrize("action", [Hang(), Stall()], ids=["hang", "stall"])
async def test_silence_longer_than_the_provider_timeout_is_a_timeout_error(action):
    async with open_provider("openai", provider_timeout_s=0.2) as (provider, server):
        server.script(action)
        with pytest.raises(ProviderTimeoutError, match=r"^openai: timed out \(ReadTimeout"):
            await provider.complete(request(stream=True))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", NAMES)
async def test_dropped_connection_is_a_connection_error(name, stream):
    async with open_provider(name) as (provider, server):
        server.script(Drop(after_bytes=20))
        with pytest.raises(ProviderConnectionError, match=rf"^{name}: connection failed"):
            await provider.complete(request(stream))


async def test_refused_connection_is_a_connection_error():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there any more
    provider = create_provider("ollama", Settings(ollama_host=f"http://127.0.0.1:{port}"), {})
    try:
        with pytest.raises(ProviderConnectionError, match=r"^ollama: connection failed"):
            await provider.complete(request())
    finally:
        await provider.aclose()


@pytest.mark.parametrize("name", NAMES)
async def test_error_event_mid_stream_is_retryable(name):
    async with open_provider(name) as (provider, server):
        server.script(StreamError(after_chunks=1), Reply("after the error"))
        with pytest.raises(ProviderStreamError, match=rf"^{name}: error in stream: Overloaded"):
            await provider.complete(request(stream=True))
        response = await provider.complete(request(stream=True))
    assert "after the error" == response.text


@pytest.mark.parametrize(("name", "status"), [("openai", 500), ("anthropic", 529), ("ollama", 500)])
async def test_stream_error_action_without_streaming_is_a_retryable_status(name, status):
    async with open_provider(name) as (provider, server):
        server.script(StreamError())
        with pytest.raises(RetryableProviderError) as info:
            await provider.complete(request())
    assert (RetryableProviderError, status) == (type(info.value), info.value.status)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", NAMES)
async def test_malformed_body_is_retryable(name, stream):
    async with open_provider(name) as (provider, server):
        server.script(Malformed())
        with pytest.raises(MalformedResponseError, match=rf"^{name}: malformed response"):
            await provider.complete(request(stream))


@pytest.mark.parametrize("name", NAMES)
async def test_rate_limit_carries_retry_after(name):
    async with open_provider(name) as (provider, server):
        server.script(Fail(429, retry_after="1"), Fail(429, retry_after_ms="250", retry_after="9"))
        delays = []
        for _ in range(2):
            with pytest.raises(RateLimitError) as info:
                await provider.complete(request())
            delays.append(info.value.retry_after)
    assert [1.0, 0.25] == delays


async def test_openai_quota_and_should_retry_header_are_permanent_over_a_real_socket():
    async with open_provider("openai") as (provider, server):
        server.script(
            Fail(429, code="insufficient_quota"),
            Fail(503, headers={"x-should-retry": "false"}),
        )
        for status in (429, 503):
            with pytest.raises(PermanentProviderError) as info:
                await provider.complete(request())
            assert status == info.value.status


@pytest.mark.parametrize(("name", "key"), [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)])
async def test_authentication_error_keeps_the_message_and_never_the_key(name, key):
    async with open_provider(name) as (provider, server):
        server.script(Fail(401, message=f"invalid api key {key}"))
        with pytest.raises(PermanentProviderError) as info:
            await provider.complete(request())
    assert f"{name}: 401 invalid api key [redacted]" == info.value.message.split(" (")[0]
    assert key not in str(info.value)


async def test_many_concurrent_calls_are_spread_over_small_pools():
    async with open_provider("openai") as (provider, server):
        server.script(*[Reply("ok", delay_s=0.2) for _ in range(40)])
        results = []

        async def one():
            results.append(await provider.complete(request()))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
        # 40 calls at once, at most 16 per client: three clients, each pool small.
        assert (40, 3) == (len(results), provider._clients.size)
        assert ["ok"] * 40 == [r.text for r in results]
        # Calls one after another reuse the first client instead of growing the pool.
        await provider.complete(request())
        assert 3 == provider._clients.size


# -- what goes on the wire, as today's models accept it ---------------------------------


@asynccontextmanager
async def open_strict(name, *, config=None, **server_options):
    async with open_fake_llm_server(api_key="sk-strict", **server_options) as server:
        settings = Settings(
            openai_api_key="sk-strict",
            openai_base_url=server.openai_base_url,
            anthropic_api_key="sk-strict",
            anthropic_base_url=server.anthropic_base_url,
        )
        provider = create_provider(name, settings, config or {})
        try:
            yield provider, server
        finally:
            await provider.aclose()


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_temperature_goes_on_the_wire_only_as_set(name):
    async with open_strict(name) as (provider, server):
        await provider.complete(request())
        await provider.complete(request(temperature=0.3))
    unset, set_ = (r.body for r in server.requests)
    assert ("temperature" in unset, set_["temperature"]) == (False, 0.3)


async def test_a_model_that_refuses_temperature_answers_when_none_is_sent():
    rules = {"claude-opus-5": ModelRules(rejects=("temperature",))}
    async with open_strict("anthropic", models=rules) as (provider, server):
        server.script(Reply("fine"))
        ok = await provider.complete(LLMRequest(model="claude-opus-5", prompt="hi"))
        with pytest.raises(PermanentProviderError, match="`temperature` is deprecated"):
            await provider.complete(LLMRequest(model="claude-opus-5", prompt="hi", temperature=0.2))
    assert "fine" == ok.text


@pytest.mark.parametrize(
    ("config", "answered"),
    [({}, False), ({"token_limit_field": "max_completion_tokens"}, True)],
)
async def test_a_reasoning_model_needs_max_completion_tokens(config, answered):
    # A compatible server gets `max_tokens` by default; a model that refuses it needs the
    # setting (OpenAI's own API gets max_completion_tokens without it).
    rules = {"o9": ModelRules(rejects=("max_tokens",))}
    async with open_strict("openai", config=config, models=rules) as (provider, _):
        call = provider.complete(LLMRequest(model="o9", prompt="hi", max_tokens=50))
        if answered:
            assert "" != (await call).text
        else:
            with pytest.raises(PermanentProviderError, match="Use 'max_completion_tokens'"):
                await call
