"""The HTTP providers against `httpx.MockTransport`: request shape, reply parsing, error mapping.

Timeouts, cancellation and broken sockets are proven over real sockets in
test_providers_loopback.py.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from runner.config import Settings
from runner.errors import (
    MalformedResponseError,
    PermanentProviderError,
    ProviderConnectionError,
    ProviderError,
    ProviderStreamError,
    ProviderTimeoutError,
    RateLimitError,
    RetryableProviderError,
)
from runner.providers import LLMRequest, Provider, create_provider
from runner.providers._failures import parse_retry_after
from runner.providers._lines import SSEDecoder, SSEEvent
from runner.providers.anthropic import AnthropicProvider
from runner.providers.ollama import OllamaProvider
from runner.providers.openai import OpenAIProvider

OPENAI_KEY = "sk-test-SECRET123"
ANTHROPIC_KEY = "sk-ant-test-SECRET456"
SETTINGS = Settings(
    openai_api_key=OPENAI_KEY,
    openai_base_url="https://openai.test/v1",
    anthropic_api_key=ANTHROPIC_KEY,
    anthropic_base_url="https://anthropic.test",
    ollama_host="http://ollama.test:11434",
)
CLASSES = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "ollama": OllamaProvider}
NAMES = list(CLASSES)
URLS = {
    "openai": "https://openai.test/v1/chat/completions",
    "anthropic": "https://anthropic.test/v1/messages",
    "ollama": "http://ollama.test:11434/api/chat",
}


class Server:
    """A MockTransport handler: answers with the given responses in turn, records requests."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response

    @property
    def body(self):
        return json.loads(self.requests[-1].content)


@asynccontextmanager
async def serving(name, *responses, settings=SETTINGS):
    server = Server(*responses)
    provider = CLASSES[name](settings, {}, transport=httpx.MockTransport(server))
    try:
        yield provider, server
    finally:
        await provider.aclose()


async def call(name, response, **request):
    async with serving(name, response) as (provider, _):
        return await provider.complete(LLMRequest(model="m", prompt="hi", **request))


async def failure(name, response, **request) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call(name, response, **request)
    return info.value


def error_body(name, message, error_type="some_error", code=None):
    if name == "openai":
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    if name == "anthropic":
        return {"type": "error", "error": {"type": error_type, "message": message}}
    return {"error": message}


def sse(*events) -> bytes:
    """An SSE body; each event is `data` or `(event_name, data)`, dicts become JSON."""
    out = []
    for event in events:
        name, data = event if isinstance(event, tuple) else (None, event)
        if name:
            out.append(f"event: {name}\n")
        out.append(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n")
    return "".join(out).encode()


def ndjson(*objects) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


# -- what is sent ----------------------------------------------------------------------

FULL_REQUEST = dict(
    system="be brief",
    temperature=0.2,
    max_tokens=64,
    stop=("END",),
    seed=7,
    options={"top_p": 0.5},
)


async def test_openai_request_shape():
    async with serving("openai", httpx.Response(200, json=OPENAI_REPLY)) as (provider, server):
        await provider.complete(LLMRequest(model="gpt-x", prompt="hi", **FULL_REQUEST))
    request = server.requests[0]
    assert ("POST", URLS["openai"]) == (request.method, str(request.url))
    assert f"Bearer {OPENAI_KEY}" == request.headers["authorization"]
    assert "application/json" == request.headers["content-type"]
    assert {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "stop": ["END"],
        "seed": 7,
        "top_p": 0.5,
        "stream": False,
    } == server.body


async def test_openai_minimal_request_sends_no_generation_parameter_and_no_key_when_unset():
    settings = SETTINGS.evolve(openai_api_key=None)
    async with serving("openai", httpx.Response(200, json=OPENAI_REPLY), settings=settings) as (
        provider,
        server,
    ):
        await provider.complete(LLMRequest(model="m", prompt="hi"))
    assert "authorization" not in server.requests[0].headers
    # Nothing the pipeline did not set: reasoning models refuse temperature 0 and max_tokens.
    assert {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    } == server.body


async def test_openai_streaming_asks_for_usage():
    async with serving("openai", httpx.Response(200, content=sse("[DONE]"))) as (provider, server):
        await provider.complete(LLMRequest(model="m", prompt="hi", stream=True))
    assert (True, {"include_usage": True}) == (server.body["stream"], server.body["stream_options"])


async def test_openai_max_completion_tokens_option_replaces_max_tokens():
    async with serving("openai", httpx.Response(200, json=OPENAI_REPLY)) as (provider, server):
        options = {"max_completion_tokens": 99}
        await provider.complete(LLMRequest(model="m", prompt="hi", options=options))
    assert "max_tokens" not in server.body
    assert 99 == server.body["max_completion_tokens"]


async def test_anthropic_request_shape():
    async with serving("anthropic", httpx.Response(200, json=ANTHROPIC_REPLY)) as (
        provider,
        server,
    ):
        await provider.complete(LLMRequest(model="claude-x", prompt="hi", **FULL_REQUEST))
    request = server.requests[0]
    assert ("POST", URLS["anthropic"]) == (request.method, str(request.url))
    assert ANTHROPIC_KEY == request.headers["x-api-key"]
    assert "2023-06-01" == request.headers["anthropic-version"]
    assert "authorization" not in request.headers
    assert {
        "model": "claude-x",
        "max_tokens": 64,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "top_p": 0.5,
        "stream": False,
    } == server.body


async def test_ollama_request_shape():
    async with serving("ollama", httpx.Response(200, json=OLLAMA_REPLY)) as (provider, server):
        request = LLMRequest(
            model="llama",
            prompt="hi",
            **{**FULL_REQUEST, "options": {"num_ctx": 4096, "keep_alive": "5m"}},
        )
        await provider.complete(request)
    sent = server.requests[0]
    assert ("POST", URLS["ollama"]) == (sent.method, str(sent.url))
    assert {
        "model": "llama",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "keep_alive": "5m",
        "options": {
            "temperature": 0.2,
            "num_predict": 64,
            "seed": 7,
            "stop": ["END"],
            "num_ctx": 4096,
        },
        "stream": False,
    } == server.body


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", NAMES)
async def test_stream_flag_is_always_explicit_and_options_cannot_override_it(name, stream):
    response = httpx.Response(500)  # only the request matters here
    async with serving(name, response) as (provider, server):
        with pytest.raises(ProviderError):
            await provider.complete(
                LLMRequest(model="m", prompt="hi", stream=stream, options={"stream": not stream})
            )
    assert stream is server.body["stream"]


@pytest.mark.parametrize("name", NAMES)
async def test_a_key_is_only_sent_to_its_own_provider(name):
    async with serving(name, httpx.Response(500)) as (provider, server):
        with pytest.raises(ProviderError):
            await provider.complete(LLMRequest(model="m", prompt="hi"))
    request = server.requests[0]
    sent = " ".join(request.headers.values()) + request.content.decode()
    expected = {"openai": [OPENAI_KEY], "anthropic": [ANTHROPIC_KEY], "ollama": []}[name]
    assert expected == [key for key in (OPENAI_KEY, ANTHROPIC_KEY) if key in sent]


@pytest.mark.parametrize(
    ("name", "base_url"),
    [
        ("openai", "https://openai.test/v1"),
        ("anthropic", "https://anthropic.test"),
        ("ollama", "http://ollama.test:11434"),
    ],
)
async def test_create_provider_builds_each_class_from_settings_and_config(name, base_url):
    provider = create_provider(name, SETTINGS, {"max_concurrency": 2, "stream": True})
    try:
        assert isinstance(provider, CLASSES[name])
        assert isinstance(provider, Provider)
        assert (name, base_url) == (provider.name, provider.base_url)
    finally:
        await provider.aclose()


# -- what comes back -------------------------------------------------------------------

OPENAI_REPLY = {
    "id": "chatcmpl-1",
    "model": "gpt-x-2024",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
}
ANTHROPIC_REPLY = {
    "id": "msg_1",
    "type": "message",
    "model": "claude-x-2024",
    "content": [
        {"type": "text", "text": "hel"},
        {"type": "tool_use"},
        {"type": "text", "text": "lo"},
    ],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 11,
        "output_tokens": 3,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 2,
    },
}
OLLAMA_REPLY = {
    "model": "llama:8b",
    "message": {"role": "assistant", "content": "hello"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 3,
}


@pytest.mark.parametrize(
    ("name", "body", "headers", "expected"),
    [
        ("openai", OPENAI_REPLY, {"x-request-id": "req_o"}, ("gpt-x-2024", 11, 3, "stop", "req_o")),
        (
            "anthropic",
            ANTHROPIC_REPLY,
            {"request-id": "req_a"},
            ("claude-x-2024", 18, 3, "end_turn", "req_a"),
        ),
        ("ollama", OLLAMA_REPLY, {}, ("llama:8b", 11, 3, "stop", None)),
    ],
)
async def test_reply_is_parsed(name, body, headers, expected):
    response = await call(name, httpx.Response(200, json=body, headers=headers))
    assert ("hello", 200, *expected) == (
        response.text,
        response.status,
        response.model,
        response.input_tokens,
        response.output_tokens,
        response.finish_reason,
        response.request_id,
    )


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("openai", {k: v for k, v in OPENAI_REPLY.items() if k != "usage"}),
        ("anthropic", {k: v for k, v in ANTHROPIC_REPLY.items() if k != "usage"}),
        ("ollama", {k: v for k, v in OLLAMA_REPLY.items() if not k.endswith("_count")}),
    ],
)
async def test_unreported_token_counts_are_none_not_zero(name, body):
    response = await call(name, httpx.Response(200, json=body))
    assert (None, None) == (response.input_tokens, response.output_tokens)


async def test_ollama_cached_prompt_has_unknown_input_tokens():
    body = {k: v for k, v in OLLAMA_REPLY.items() if k != "prompt_eval_count"}
    response = await call("ollama", httpx.Response(200, json=body))
    assert (None, 3) == (response.input_tokens, response.output_tokens)


def openai_chunk(content=None, finish_reason=None, **extra):
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "c1", "model": "gpt-x-2024", "choices": [choice], "usage": None, **extra}


OPENAI_STREAM = [
    openai_chunk(**{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    openai_chunk("hel"),
    openai_chunk("lo"),
    openai_chunk(finish_reason="length"),
    {
        "id": "c1",
        "model": "gpt-x-2024",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3},
    },
    "[DONE]",
]
ANTHROPIC_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "claude-x-2024",
                "content": [],
                "usage": {"input_tokens": 11, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hel"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 3},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]
OLLAMA_STREAM = [
    {"model": "llama:8b", "message": {"role": "assistant", "content": "hel"}, "done": False},
    {"model": "llama:8b", "message": {"role": "assistant", "content": "lo"}, "done": False},
    {
        "model": "llama:8b",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 11,
        "eval_count": 3,
    },
]
STREAMS = {
    "openai": (sse(*OPENAI_STREAM), ("gpt-x-2024", "length")),
    "anthropic": (sse(*ANTHROPIC_STREAM), ("claude-x-2024", "max_tokens")),
    "ollama": (ndjson(*OLLAMA_STREAM), ("llama:8b", "length")),
}


@pytest.mark.parametrize("name", NAMES)
async def test_stream_is_parsed(name):
    body, (model, finish) = STREAMS[name]
    response = await call(name, httpx.Response(200, content=body), stream=True)
    assert ("hello", model, 11, 3, finish, 200) == (
        response.text,
        response.model,
        response.input_tokens,
        response.output_tokens,
        response.finish_reason,
        response.status,
    )


@pytest.mark.parametrize("name", NAMES)
async def test_stream_split_at_odd_byte_boundaries_is_parsed(name):
    body, _ = STREAMS[name]
    body = body.replace(b"\n", b"\r\n")  # CRLF line ends are legal SSE too

    async def pieces():
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await call(name, httpx.Response(200, content=pieces()), stream=True)
    assert "hello" == response.text


async def test_openai_stream_without_usage_chunk_has_unknown_tokens():
    chunks = [c for c in OPENAI_STREAM if c == "[DONE]" or c["choices"]]
    body = b": keep-alive\n\n" + sse(*chunks)
    response = await call("openai", httpx.Response(200, content=body), stream=True)
    assert ("hello", None, None) == (response.text, response.input_tokens, response.output_tokens)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("openai", sse(*OPENAI_STREAM[:-1])),
        ("anthropic", sse(*ANTHROPIC_STREAM[:-1])),
        ("ollama", ndjson(*OLLAMA_STREAM[:-1])),
    ],
)
async def test_stream_that_ends_before_its_end_marker_is_a_connection_error(name, body):
    exc = await failure(name, httpx.Response(200, content=body), stream=True)
    assert ProviderConnectionError is type(exc)
    assert exc.message.startswith(f"{name}: stream ended before the reply was complete")


def test_sse_decoder_joins_data_lines_and_skips_comments():
    decoder = SSEDecoder()
    lines = [": hi", "event: x", "data: a", "data:b", "id: 3", "", "", "data: c", ""]
    events = [e for e in map(decoder.feed, lines) if e is not None]
    assert [SSEEvent("x", "a\nb"), SSEEvent("message", "c")] == events


# -- errors ------------------------------------------------------------------------------

STATUS_CLASSES = [
    *[(s, PermanentProviderError) for s in (400, 401, 402, 403, 404, 413, 422)],
    *[(s, RetryableProviderError) for s in (408, 409, 500, 502, 503, 529)],
    (429, RateLimitError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
@pytest.mark.parametrize("name", NAMES)
async def test_http_status_maps_to_error_class(name, status, cls):
    body = error_body(name, "the server says no")
    exc = await failure(name, httpx.Response(status, json=body))
    assert (cls, name, status, None) == (type(exc), exc.provider, exc.status, exc.retry_after)
    assert exc.message.startswith(f"{name}: {status} the server says no")


@pytest.mark.parametrize(
    ("name", "status", "message", "error_type", "code", "cls"),
    [
        (
            "openai",
            429,
            "You exceeded your current quota",
            "insufficient_quota",
            "insufficient_quota",
            PermanentProviderError,
        ),
        ("openai", 429, "quota", "requests", "insufficient_quota", PermanentProviderError),
        ("openai", 429, "Rate limit reached", "requests", "rate_limit_exceeded", RateLimitError),
        (
            "openai",
            400,
            "too long",
            "invalid_request_error",
            "context_length_exceeded",
            PermanentProviderError,
        ),
        (
            "openai",
            500,
            "too long",
            "invalid_request_error",
            "context_length_exceeded",
            PermanentProviderError,
        ),
        (
            "anthropic",
            429,
            "You have reached your spend limit",
            "rate_limit_error",
            None,
            PermanentProviderError,
        ),
        (
            "anthropic",
            429,
            "You have reached your specified workspace API usage limits.",
            "rate_limit_error",
            None,
            PermanentProviderError,
        ),
        (
            "anthropic",
            429,
            "Number of requests has exceeded your per-minute rate limit",
            "rate_limit_error",
            None,
            RateLimitError,
        ),
        (
            "anthropic",
            402,
            "Your credit balance is too low",
            "billing_error",
            None,
            PermanentProviderError,
        ),
        ("anthropic", 529, "Overloaded", "overloaded_error", None, RetryableProviderError),
        ("ollama", 404, "model 'llama' not found", None, None, PermanentProviderError),
    ],
)
async def test_error_body_refines_the_status(name, status, message, error_type, code, cls):
    body = error_body(name, message, error_type, code)
    exc = await failure(name, httpx.Response(status, json=body))
    assert (cls, status) == (type(exc), exc.status)
    assert exc.message.startswith(f"{name}: {status} {message}")


@pytest.mark.parametrize(
    ("status", "flag", "cls"),
    [
        (400, "true", RetryableProviderError),
        (429, "true", RateLimitError),
        (503, "false", PermanentProviderError),
        (429, "False", PermanentProviderError),
        (503, "maybe", RetryableProviderError),
    ],
)
async def test_x_should_retry_header_overrides_the_status(status, flag, cls):
    response = httpx.Response(
        status, json=error_body("openai", "x"), headers={"x-should-retry": flag}
    )
    exc = await failure("openai", response)
    assert cls is type(exc)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        # Any positive delay, as asked: how long to wait at most is the retry policy's call.
        ({"retry-after": "60"}, 60.0),
        ({"retry-after": "61"}, 61.0),
        ({"retry-after": "0"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after-ms": "120000"}, 120.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_parsed_and_bounded(headers, expected):
    assert expected == parse_retry_after(httpx.Headers(headers), now=NOW)


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), st.text()))
def test_retry_after_is_none_or_within_bounds(headers):
    try:
        parsed = httpx.Headers(headers)
    except (UnicodeEncodeError, ValueError):
        return  # not a header httpx can even hold
    delay = parse_retry_after(parsed, now=NOW)
    # Any finite positive delay, as asked (the retry policy caps it), else None.
    assert delay is None or 0 < delay < math.inf


@pytest.mark.parametrize("name", NAMES)
async def test_retry_after_reaches_the_error(name):
    response = httpx.Response(429, json=error_body(name, "slow down"), headers={"retry-after": "3"})
    exc = await failure(name, response)
    assert (RateLimitError, 3.0) == (type(exc), exc.retry_after)


@pytest.mark.parametrize("name", NAMES)
async def test_error_that_is_not_json_keeps_the_status_and_text(name):
    response = httpx.Response(502, text="<html><h1>502 Bad   Gateway</h1></html>")
    exc = await failure(name, response)
    assert (RetryableProviderError, 502) == (type(exc), exc.status)
    assert f"{name}: 502 <html><h1>502 Bad Gateway</h1></html>" == exc.message


@pytest.mark.parametrize(
    ("name", "body", "stream"),
    [
        *[(n, b'{"choices": [', False) for n in NAMES],
        ("openai", b'{"choices": []}', False),
        ("anthropic", b'{"content": "not blocks"}', False),
        ("ollama", b'{"done": true}', False),
        ("openai", sse("{not json"), True),
        ("anthropic", sse(("message_start", "[1]")), True),
        ("ollama", b"{not json\n", True),
    ],
)
async def test_unreadable_success_body_is_malformed_and_retryable(name, body, stream):
    exc = await failure(name, httpx.Response(200, content=body), stream=stream)
    assert MalformedResponseError is type(exc)
    assert isinstance(exc, RetryableProviderError)
    assert "malformed_response" == exc.reason
    assert exc.message.startswith(f"{name}: malformed response")


@pytest.mark.parametrize(
    ("name", "body", "cls"),
    [
        (
            "openai",
            sse(
                openai_chunk("he"),
                {"error": {"message": "server had an error", "type": "server_error"}},
                "[DONE]",
            ),
            ProviderStreamError,
        ),
        (
            "openai",
            sse({"error": {"message": "quota", "code": "insufficient_quota"}}),
            PermanentProviderError,
        ),
        *[
            (
                "anthropic",
                sse(
                    ANTHROPIC_STREAM[0],
                    (
                        "error",
                        {
                            "type": "error",
                            "error": {"type": kind, "message": "server had an error"},
                        },
                    ),
                ),
                cls,
            )
            for kind, cls in [
                ("overloaded_error", ProviderStreamError),
                ("api_error", ProviderStreamError),
                ("something_new", ProviderStreamError),
                ("rate_limit_error", RateLimitError),
                ("invalid_request_error", PermanentProviderError),
            ]
        ],
        ("ollama", ndjson(OLLAMA_STREAM[0], {"error": "server had an error"}), ProviderStreamError),
        # Checked before `done`: a last line carrying both is still an error.
        (
            "ollama",
            ndjson({**OLLAMA_STREAM[-1], "error": "server had an error"}),
            ProviderStreamError,
        ),
    ],
)
async def test_error_inside_a_stream(name, body, cls):
    exc = await failure(name, httpx.Response(200, content=body), stream=True)
    assert (cls, None) == (type(exc), exc.status)
    assert exc.message.startswith(f"{name}: error in stream: ")


async def test_error_mid_stream_does_not_wait_for_the_server_to_hang_up(autojump_clock):
    async def error_then_silence():
        yield sse({"error": {"message": "boom", "type": "server_error"}})
        await trio.sleep_forever()

    with trio.fail_after(60):  # on the mock clock: reached only if the read is not cut short
        exc = await failure(
            "openai", httpx.Response(200, content=error_then_silence()), stream=True
        )
    assert ProviderStreamError is type(exc)


@pytest.mark.parametrize(
    ("raised", "cls", "message"),
    [
        (
            httpx.ConnectTimeout("connect timed out"),
            ProviderTimeoutError,
            r"^openai: timed out \(ConnectTimeout",
        ),
        (
            httpx.ReadTimeout("read timed out"),
            ProviderTimeoutError,
            r"^openai: timed out \(ReadTimeout",
        ),
        (
            httpx.ConnectError("refused"),
            ProviderConnectionError,
            r"^openai: connection failed \(ConnectError: refused\)$",
        ),
        (
            httpx.RemoteProtocolError("peer closed"),
            ProviderConnectionError,
            r"^openai: connection failed \(RemoteProtocolError",
        ),
        (
            httpx.ReadError(""),
            ProviderConnectionError,
            r"^openai: connection failed \(ReadError\)$",
        ),
    ],
)
async def test_transport_failures_are_translated(raised, cls, message):
    exc = await failure("openai", raised)
    assert cls is type(exc)
    assert exc.__cause__ is raised
    assert None is exc.status
    assert re.match(message, exc.message)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_api_key_never_appears_in_an_error_message(name):
    def echo_everything(request: httpx.Request) -> httpx.Response:
        # The worst server: it echoes our headers back in its error message.
        echoed = f"bad key {dict(request.headers)}"
        return httpx.Response(401, json=error_body(name, echoed), headers={"x-echo": echoed})

    provider = CLASSES[name](SETTINGS, transport=httpx.MockTransport(echo_everything))
    try:
        with pytest.raises(PermanentProviderError) as info:
            await provider.complete(LLMRequest(model="m", prompt="hi"))
    finally:
        await provider.aclose()
    exc = info.value
    assert "[redacted]" in exc.message
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        assert key not in str(exc)
        assert key not in repr(exc)


# -- what is sent, as today's models accept it -------------------------------------------


@pytest.mark.parametrize("name", NAMES)
async def test_unset_generation_parameters_are_not_sent(name):
    replies = {"openai": OPENAI_REPLY, "anthropic": ANTHROPIC_REPLY, "ollama": OLLAMA_REPLY}
    async with serving(name, httpx.Response(200, json=replies[name])) as (provider, server):
        await provider.complete(LLMRequest(model="m", prompt="hi"))
    sent = server.body
    options = sent.get("options", {})
    assert {"temperature", "top_p", "seed", "stop"}.isdisjoint(sent | options)
    # Anthropic requires max_tokens: its default goes; the others send no token limit.
    limits = {k: v for k, v in (sent | options).items() if "tokens" in k or k == "num_predict"}
    assert ({"max_tokens": 2048} if name == "anthropic" else {}) == limits


@pytest.mark.parametrize(
    ("base_url", "config", "field"),
    [
        ("https://api.openai.com/v1", {}, "max_completion_tokens"),
        ("http://127.0.0.1:8080/v1", {}, "max_tokens"),
        ("https://api.openai.com/v1", {"token_limit_field": "max_tokens"}, "max_tokens"),
        (
            "http://127.0.0.1:8080/v1",
            {"token_limit_field": "max_completion_tokens"},
            "max_completion_tokens",
        ),
    ],
)
async def test_openai_token_limit_field_follows_the_target(base_url, config, field):
    server = Server(httpx.Response(200, json=OPENAI_REPLY))
    settings = SETTINGS.evolve(openai_base_url=base_url)
    provider = OpenAIProvider(settings, config, transport=httpx.MockTransport(server))
    try:
        await provider.complete(LLMRequest(model="m", prompt="hi", max_tokens=99))
    finally:
        await provider.aclose()
    assert {field: 99} == {k: v for k, v in server.body.items() if "tokens" in k}


@pytest.mark.parametrize("name", NAMES)
async def test_omit_removes_a_field_the_provider_would_send(name):
    replies = {"openai": OPENAI_REPLY, "anthropic": ANTHROPIC_REPLY, "ollama": OLLAMA_REPLY}
    async with serving(name, httpx.Response(200, json=replies[name])) as (provider, server):
        request = LLMRequest(model="m", prompt="hi", temperature=0.5, omit=("temperature",))
        await provider.complete(request)
    assert "temperature" not in server.body


async def test_anthropic_version_is_a_setting():
    settings = SETTINGS.evolve(anthropic_version="2099-01-01")
    async with serving(
        "anthropic", httpx.Response(200, json=ANTHROPIC_REPLY), settings=settings
    ) as (
        provider,
        server,
    ):
        await provider.complete(LLMRequest(model="m", prompt="hi"))
    assert "2099-01-01" == server.requests[0].headers["anthropic-version"]
    assert "2023-06-01" == Settings().anthropic_version


# -- the cause of a failure -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error_type", "cls"),
    [
        ("openai", "invalid_request_error", PermanentProviderError),
        ("openai", "server_error", ProviderStreamError),
        ("anthropic", "authentication_error", PermanentProviderError),
        ("anthropic", "overloaded_error", ProviderStreamError),
    ],
)
async def test_a_200_carrying_an_error_object_fails_with_the_providers_message(
    name, error_type, cls
):
    body = error_body(name, "the model said no", error_type)
    error = await failure(name, httpx.Response(200, json=body))
    assert cls is type(error)
    assert re.match(
        rf"^{name}: error in a 200 answer: the model said no \(.*{error_type}", str(error)
    )


@pytest.mark.parametrize(
    ("error_type", "cls"),
    [
        ("invalid_request_error", PermanentProviderError),
        ("authentication_error", PermanentProviderError),
        ("rate_limit_exceeded", RateLimitError),
        ("server_error", ProviderStreamError),
    ],
)
async def test_an_openai_error_inside_a_stream_is_classified_by_its_type(error_type, cls):
    chunk = {"choices": [{"index": 0, "delta": {"content": "he"}}]}
    body = sse(chunk, {"error": {"message": "stop there", "type": error_type, "code": None}})
    error = await failure("openai", httpx.Response(200, content=body), stream=True)
    assert cls is type(error)
    assert str(error).startswith("openai: error in stream: stop there")


# -- answers in the other mode ---------------------------------------------------------


async def test_a_plain_json_answer_to_a_streamed_request_is_read():
    reply = httpx.Response(200, json=OPENAI_REPLY)  # application/json, though we asked to stream
    response = await call("openai", reply, stream=True)
    assert (OPENAI_REPLY["choices"][0]["message"]["content"], False) == (
        response.text,
        response.streamed,
    )


async def test_a_stream_answering_a_plain_request_is_read():
    body = sse({"choices": [{"index": 0, "delta": {"content": "streamed"}}]}, "[DONE]")
    reply = httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    response = await call("openai", reply, stream=False)
    assert ("streamed", True) == (response.text, response.streamed)


async def test_heard_is_called_for_the_headers_and_every_line():
    body = sse(*({"choices": [{"index": 0, "delta": {"content": w}}]} for w in "abc"), "[DONE]")
    calls = []
    async with serving(
        "openai",
        httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}),
    ) as (provider, _):
        await provider.complete(
            LLMRequest(model="m", prompt="hi", stream=True), heard=lambda: calls.append(1)
        )
    # The headers, then each of the 4 events' data line and blank line.
    assert 1 + 8 == len(calls)
