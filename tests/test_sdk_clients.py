"""The official openai, anthropic and ollama clients against runner.testing's fake server.

Each SDK must parse every answer the server gives and raise its own error
class for every failure it scripts: the server users test their pipelines
against speaks the real protocols. The SDKs run on asyncio (`asyncio.run`),
the server on trio in a thread of its own (`open_fake_llm_server_in_thread`).
"""

import asyncio

import anthropic
import ollama
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from runner.testing import (
    Fail,
    ModelRules,
    Reply,
    StreamError,
    fail_times,
    open_fake_llm_server_in_thread,
)

KEY = "sk-fake-key-0123456789"
USER = [{"role": "user", "content": "say hello to the world"}]
MODELS = {
    "o-reasoner": ModelRules(rejects=("max_tokens", "temperature")),
    "claude-strict": ModelRules(rejects=("temperature",)),
}
# Retry after 5 ms: the SDKs honour it, so their retries cost no real time.
RETRY_SOON = {"retry_after_ms": "5"}


@pytest.fixture
def server():
    with open_fake_llm_server_in_thread(api_key=KEY, models=MODELS) as server:
        yield server


def run(client, use):
    """`use(client)` on a fresh asyncio loop, the client closed afterwards."""

    async def main():
        async with client() as opened:
            return await use(opened)

    return asyncio.run(main())


def openai_client(server, *, key=KEY, max_retries=0):
    return lambda: openai.AsyncOpenAI(
        base_url=server.openai_base_url, api_key=key, max_retries=max_retries, timeout=5
    )


def anthropic_client(server, *, key=KEY, max_retries=0, **kw):
    return lambda: anthropic.AsyncAnthropic(
        base_url=server.anthropic_base_url, api_key=key, max_retries=max_retries, timeout=5, **kw
    )


def ollama_client(server):
    return lambda: ollama.AsyncClient(host=server.ollama_host, timeout=5)


def chat(model="gpt-test", **kw):
    return lambda client: client.chat.completions.create(model=model, messages=USER, **kw)


def message(model="claude-test", **kw):
    return lambda client: client.messages.create(model=model, max_tokens=100, messages=USER, **kw)


# -- openai -------------------------------------------------------------------------------


def test_openai_plain_reply(server):
    raw = run(openai_client(server), lambda c: chat()(c.with_raw_response))

    completion = raw.parse()
    assert "echo: say hello to the world" == completion.choices[0].message.content
    assert ("stop", None, None) == (
        completion.choices[0].finish_reason,
        completion.choices[0].message.refusal,
        completion.choices[0].logprobs,
    )
    assert (5, 6, 11) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    )
    # The body passes the SDK's own schema, validated rather than just read.
    assert completion == ChatCompletion.model_validate(raw.http_response.json())
    assert f"Bearer {KEY}" == server.requests[0].headers["authorization"]


def test_openai_stream_with_usage(server):
    async def use(client):
        stream = await chat(stream=True, stream_options={"include_usage": True})(client)
        return [chunk async for chunk in stream]

    chunks = run(openai_client(server), use)

    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "echo: say hello to the world" == text
    assert [None] * (len(chunks) - 1) == [chunk.usage for chunk in chunks[:-1]]
    assert ([], 5, 6) == (
        chunks[-1].choices,
        chunks[-1].usage.prompt_tokens,
        chunks[-1].usage.completion_tokens,
    )


def test_openai_429_is_a_rate_limit_error(server):
    server.script(Fail(429, **RETRY_SOON))

    with pytest.raises(openai.RateLimitError, match=r"^Error code: 429 - ") as caught:
        run(openai_client(server), chat())

    assert ("rate_limit_exceeded", "req_fake1") == (caught.value.code, caught.value.request_id)


def test_openai_retries_after_retry_after_ms(server):
    server.script(*fail_times(2, 429, **RETRY_SOON), Reply("third time"))

    completion = run(openai_client(server, max_retries=2), chat())

    assert "third time" == completion.choices[0].message.content
    assert ["0", "1", "2"] == [r.headers["x-stainless-retry-count"] for r in server.requests]


def test_openai_reads_retry_after_ms(server):
    # The SDK does not retry when told to wait more than two minutes: proof it read the header.
    server.script(Fail(429, retry_after_ms="150000"))

    with pytest.raises(openai.RateLimitError):
        run(openai_client(server, max_retries=2), chat())

    assert 1 == len(server.requests)


def test_openai_500_is_an_internal_server_error(server):
    server.script(Fail(500, "The server had an error"))

    with pytest.raises(openai.InternalServerError, match=r"The server had an error"):
        run(openai_client(server), chat())


def test_openai_error_in_a_stream(server):
    server.script(StreamError(after_chunks=2, message="busy", code="server_overloaded"))
    received = []

    async def use(client):
        async for chunk in await chat(stream=True)(client):
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match=r"^busy$") as caught:
        run(openai_client(server), use)

    assert openai.APIError is type(caught.value)
    assert ("server_error", "server_overloaded") == (caught.value.type, caught.value.code)
    assert "echo: say " == "".join(received)


def test_openai_wrong_key(server):
    with pytest.raises(openai.AuthenticationError, match=r"Incorrect API key provided") as caught:
        run(openai_client(server, key="sk-wrong-key-0000"), chat())

    assert "invalid_api_key" == caught.value.code


def test_openai_model_that_refuses_max_tokens(server):
    with pytest.raises(openai.BadRequestError) as caught:
        run(openai_client(server), chat("o-reasoner", max_tokens=50))
    completion = run(openai_client(server), chat("o-reasoner", max_completion_tokens=50))

    assert (
        "Error code: 400 - Unsupported parameter: 'max_tokens' is not supported with this"
        " model. Use 'max_completion_tokens' instead."
    ) == caught.value.message
    assert ("unsupported_parameter", "max_tokens") == (caught.value.code, caught.value.param)
    assert "stop" == completion.choices[0].finish_reason


def test_openai_model_that_refuses_temperature(server):
    with pytest.raises(openai.BadRequestError) as caught:
        run(openai_client(server), chat("o-reasoner", temperature=0))

    assert ("unsupported_value", "temperature") == (caught.value.code, caught.value.param)
    assert (
        "Unsupported value: 'temperature' does not support 0 with this model."
        " Only the default (1) value is supported."
    ) == caught.value.body["message"]


# -- anthropic ----------------------------------------------------------------------------


def test_anthropic_plain_reply(server):
    async def use(client):
        raw = await message()(client.with_raw_response)
        return await raw.parse(), raw.http_response.json()

    reply, body = run(anthropic_client(server), use)

    assert "echo: say hello to the world" == reply.content[0].text
    assert ("end_turn", 5, 6) == (
        reply.stop_reason,
        reply.usage.input_tokens,
        reply.usage.output_tokens,
    )
    assert reply == Message.model_validate(body)
    # The SDK sends its key as a bearer token, and the API version without sampling fields.
    headers = server.requests[0].headers
    assert (f"Bearer {KEY}", "2026-10-21") == (
        headers["authorization"],
        headers["anthropic-version"],
    )


def test_anthropic_stream(server):
    async def use(client):
        request = {"model": "claude-test", "max_tokens": 100, "messages": USER}
        async with client.messages.stream(**request) as stream:
            pieces = [text async for text in stream.text_stream]
            return pieces, await stream.get_final_message()

    pieces, final = run(anthropic_client(server), use)

    assert len(pieces) > 3
    assert "echo: say hello to the world" == "".join(pieces) == final.content[0].text
    assert ("end_turn", 5, 6) == (
        final.stop_reason,
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_anthropic_429_is_a_rate_limit_error(server):
    server.script(Fail(429, "slow down", **RETRY_SOON))

    with pytest.raises(anthropic.RateLimitError) as caught:
        run(anthropic_client(server), message())

    assert ("rate_limit_error", "slow down", "req_fake1") == (
        caught.value.type,
        caught.value.api_message,
        caught.value.request_id,
    )


def test_anthropic_retries_after_retry_after_ms(server):
    server.script(Fail(429, **RETRY_SOON), Fail(529, **RETRY_SOON), Reply("third time"))

    reply = run(anthropic_client(server, max_retries=2), message())

    assert "third time" == reply.content[0].text
    assert ["0", "1", "2"] == [r.headers["x-stainless-retry-count"] for r in server.requests]


def test_anthropic_obeys_x_should_retry(server):
    server.script(Fail(529, headers={"x-should-retry": "false"}))

    with pytest.raises(anthropic.OverloadedError):
        run(anthropic_client(server, max_retries=2), message())

    assert 1 == len(server.requests)


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_server_errors(server, status, error_class, error_type):
    server.script(Fail(status, "try later"))

    with pytest.raises(error_class) as caught:
        run(anthropic_client(server), message())

    assert (error_class, status, error_type) == (
        type(caught.value),
        caught.value.status_code,
        caught.value.type,
    )


def test_anthropic_error_in_a_stream(server):
    server.script(StreamError(after_chunks=1, message="Overloaded"))
    received = []

    async def use(client):
        request = {"model": "claude-test", "max_tokens": 100, "messages": USER}
        async with client.messages.stream(**request) as stream:
            async for text in stream.text_stream:
                received.append(text)

    with pytest.raises(anthropic.APIStatusError) as caught:
        run(anthropic_client(server), use)

    # The stream's status is 200: the SDK's error class is the general one, its type the event's.
    assert (anthropic.APIStatusError, 200) == (type(caught.value), caught.value.status_code)
    assert ("overloaded_error", "Overloaded") == (caught.value.type, caught.value.api_message)
    assert ["echo: "] == received


def test_anthropic_wrong_key(server):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        run(anthropic_client(server, key="sk-wrong"), message())

    assert ("authentication_error", "Invalid bearer token") == (
        caught.value.type,
        caught.value.api_message,
    )


def test_anthropic_unknown_field(server):
    with pytest.raises(anthropic.BadRequestError) as caught:
        run(anthropic_client(server), message(extra_body={"seed": 7}))

    assert "seed: Extra inputs are not permitted" == caught.value.api_message
    assert 7 == server.requests[0].body["seed"]


def test_anthropic_temperature_is_unknown_in_the_sdks_api_version(server):
    with pytest.raises(anthropic.BadRequestError) as caught:
        run(anthropic_client(server), message(extra_body={"temperature": 0.2}))

    assert "temperature: Extra inputs are not permitted" == caught.value.api_message


def test_anthropic_model_that_refuses_temperature(server):
    old_version = {"default_headers": {"anthropic-version": "2023-06-01"}}
    old_client = anthropic_client(server, **old_version)

    with pytest.raises(anthropic.BadRequestError) as caught:
        run(old_client, message("claude-strict", extra_body={"temperature": 0.2}))
    accepted = run(old_client, message("claude-test", extra_body={"temperature": 0.2}))

    assert "`temperature` is deprecated for this model." == caught.value.api_message
    assert "end_turn" == accepted.stop_reason


# -- ollama -------------------------------------------------------------------------------


def test_ollama_plain_reply(server):
    reply = run(ollama_client(server), lambda c: c.chat(model="llama-test", messages=USER))

    assert "echo: say hello to the world" == reply.message.content
    assert (True, "stop", 5, 6) == (
        reply.done,
        reply.done_reason,
        reply.prompt_eval_count,
        reply.eval_count,
    )


def test_ollama_stream(server):
    async def use(client):
        stream = await client.chat(model="llama-test", messages=USER, stream=True)
        return [part async for part in stream]

    parts = run(ollama_client(server), use)

    assert "echo: say hello to the world" == "".join(part.message.content for part in parts)
    assert [False] * (len(parts) - 1) + [True] == [part.done for part in parts]
    assert (5, 6) == (parts[-1].prompt_eval_count, parts[-1].eval_count)


@pytest.mark.parametrize("status", [429, 500])
def test_ollama_http_errors(server, status):
    server.script(Fail(status, "server busy"))

    with pytest.raises(ollama.ResponseError) as caught:
        run(ollama_client(server), lambda c: c.chat(model="llama-test", messages=USER))

    assert ("server busy", status) == (caught.value.error, caught.value.status_code)


def test_ollama_error_in_a_stream(server):
    server.script(StreamError(after_chunks=2, message="model crashed"))
    received = []

    async def use(client):
        async for part in await client.chat(model="llama-test", messages=USER, stream=True):
            received.append(part.message.content)

    with pytest.raises(ollama.ResponseError) as caught:
        run(ollama_client(server), use)

    assert ("model crashed", -1) == (caught.value.error, caught.value.status_code)
    assert "echo: say " == "".join(received)
