"""The loopback fake LLM server, exercised with a real httpx client over real sockets."""

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
import trio

import runner.testing
from runner.testing import (
    Drop,
    Fail,
    Hang,
    Malformed,
    ModelRules,
    Reply,
    Stall,
    StreamError,
    fail_times,
    open_fake_llm_server,
    open_fake_llm_server_in_thread,
)

# A hung answer shows as a ReadTimeout in 0.2 s; connecting to the loopback server may
# take longer on a busy machine (CI saw a 0.2 s ConnectTimeout), and proves nothing here.
SHORT = httpx.Timeout(10.0, read=0.2)
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "say hello to the world"},
]
PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
}


def chat_body(protocol, **extra):
    if protocol == "anthropic":
        body = {"model": "claude-test", "max_tokens": 100, "system": "be brief"}
        body["messages"] = MESSAGES[1:]
    else:
        body = {"model": f"{protocol}-test", "messages": MESSAGES}
    if protocol == "ollama":
        body["stream"] = False
    return {**body, **extra}


def parse_sse(text):
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        data = fields["data"]
        events.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return events


def parse_ndjson(text):
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
async def server():
    async with open_fake_llm_server() as server:
        yield server


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
        yield client


async def post(client, protocol, **extra):
    return await client.post(PATHS[protocol], json=chat_body(protocol, **extra))


async def test_base_urls_follow_each_sdk_convention(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.openai_base_url == server.url + "/v1"
    assert server.anthropic_base_url == server.url
    assert server.ollama_host == server.url


# -- normal replies -----------------------------------------------------------------


async def test_openai_reply_has_every_required_field(client):
    response = await post(client, "openai")

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_fake1"
    body = response.json()
    assert isinstance(body.pop("created"), int)
    assert body == {
        "id": "chatcmpl-fake1",
        "object": "chat.completion",
        "model": "openai-test",
        "service_tier": "default",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "echo: say hello to the world",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 6,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }


def counts(usage):
    return {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


async def test_openai_stream_with_usage(client):
    extra = {"stream": True, "stream_options": {"include_usage": True}}
    response = await post(client, "openai", **extra)

    assert response.headers["content-type"] == "text/event-stream"
    events = [data for _, data in parse_sse(response.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-fake1"}
    assert all(chunk["system_fingerprint"] is None for chunk in chunks)
    # `usage` is null on every chunk but the last, whose choices are empty.
    assert [chunk["usage"] is None for chunk in chunks] == [True] * (len(chunks) - 1) + [False]
    assert chunks[-1]["choices"] == []
    assert counts(chunks[-1]["usage"]) == {
        "prompt_tokens": 7,
        "completion_tokens": 6,
        "total_tokens": 13,
    }
    choices = [chunk["choices"][0] for chunk in chunks[:-1]]
    assert all((c["index"], c["logprobs"]) == (0, None) for c in choices)
    assert choices[0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    pieces = [c["delta"].get("content", "") for c in choices]
    assert len(pieces) > 3
    assert "".join(pieces) == "echo: say hello to the world"
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["stop"]
    assert choices[-1]["delta"] == {}


async def test_anthropic_reply(client):
    response = await post(client, "anthropic")

    assert response.status_code == 200
    assert response.headers["request-id"] == "req_fake1"
    assert response.json() == {
        "id": "msg_fake1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": "echo: say hello to the world"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 6},
    }


async def test_anthropic_stream(client):
    response = await post(client, "anthropic", stream=True)

    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 1}
    text = "".join(data["delta"]["text"] for name, data in events[3:-3])
    assert text == "echo: say hello to the world"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"] == {"output_tokens": 6}


async def test_ollama_reply(client):
    response = await post(client, "ollama")

    body = response.json()
    assert body["model"] == "ollama-test"
    assert body["message"] == {"role": "assistant", "content": "echo: say hello to the world"}
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert (body["prompt_eval_count"], body["eval_count"]) == (7, 6)
    durations = ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"]
    assert all(isinstance(body[key], int) for key in durations)


async def test_ollama_streams_when_the_body_does_not_say(server, client):
    body = chat_body("ollama")
    del body["stream"]
    response = await client.post("/api/chat", json=body)

    assert response.headers["content-type"] == "application/x-ndjson"
    lines = parse_ndjson(response.text)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(line["message"]["content"] for line in lines) == "echo: say hello to the world"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (7, 6)
    assert server.requests[0].stream is True


@pytest.mark.parametrize(
    ("protocol", "extra", "finish"),
    [
        ("openai", {"max_tokens": 3}, ("choices", 0, "finish_reason", "length")),
        ("openai", {"max_completion_tokens": 3}, ("choices", 0, "finish_reason", "length")),
        ("anthropic", {"max_tokens": 3}, ("stop_reason", "max_tokens")),
        ("ollama", {"options": {"num_predict": 3}}, ("done_reason", "length")),
    ],
)
async def test_max_tokens_truncates_the_reply(client, protocol, extra, finish):
    body = (await post(client, protocol, **extra)).json()

    *keys, expected = finish
    value = body
    for key in keys:
        value = value[key]
    assert expected == value
    text = {
        "openai": lambda: body["choices"][0]["message"]["content"],
        "anthropic": lambda: body["content"][0]["text"],
        "ollama": lambda: body["message"]["content"],
    }[protocol]()
    assert text == "echo: say hello"


async def test_max_tokens_truncates_a_stream(client):
    response = await post(client, "anthropic", max_tokens=2, stream=True)

    events = parse_sse(response.text)
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert deltas == ["echo: ", "say"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"] == {"output_tokens": 2}


async def test_reply_text_argument_and_function():
    async with open_fake_llm_server(reply="fixed answer") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            body = (await post(client, "ollama")).json()
    assert body["message"]["content"] == "fixed answer"

    async with open_fake_llm_server(reply=lambda r: r.prompt.upper()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            body = (await post(client, "anthropic")).json()
    assert body["content"][0]["text"] == "SAY HELLO TO THE WORLD"


async def test_scripted_reply_overrides_text_counts_and_finish(server, client):
    server.script(
        Reply("scripted", input_tokens=50, output_tokens=9, finish_reason="content_filter")
    )

    body = (await post(client, "openai")).json()

    assert body["choices"][0]["message"]["content"] == "scripted"
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert counts(body["usage"]) == {
        "prompt_tokens": 50,
        "completion_tokens": 9,
        "total_tokens": 59,
    }


async def test_anthropic_stop_sequence_names_the_sequence(server, client):
    server.script(Reply(finish_reason="stop_sequence"))

    body = (await post(client, "anthropic", stop_sequences=["END"])).json()

    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")


async def test_omit_usage(server, client):
    server.script(*[Reply(omit_usage=True)] * 4)

    openai = (await post(client, "openai")).json()
    stream = parse_sse(
        (await post(client, "openai", stream=True, stream_options={"include_usage": True})).text
    )
    anthropic = (await post(client, "anthropic")).json()
    ollama = (await post(client, "ollama")).json()

    assert "usage" not in openai
    assert all("usage" not in data for _, data in stream[:-1])
    assert "usage" not in anthropic
    assert "prompt_eval_count" not in ollama
    assert ollama["eval_count"] == 6


# -- recording ----------------------------------------------------------------------


async def test_records_method_path_headers_and_body(server, client):
    headers = {"Authorization": "Bearer sk-test", "X-Custom": "yes"}
    await client.post(
        "/v1/chat/completions?trace=1", json=chat_body("openai", stream=True), headers=headers
    )
    await client.post("/v1/messages", content=b"not json", headers={"anthropic-version": "x"})

    first, second = server.requests
    assert (first.method, first.path, first.protocol) == ("POST", "/v1/chat/completions", "openai")
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-custom"] == "yes"
    assert first.body == chat_body("openai", stream=True)
    assert json.loads(first.raw_body) == first.body
    assert first.prompt == "say hello to the world"
    assert first.stream is True
    assert (second.body, second.raw_body, second.protocol) == (None, b"not json", "anthropic")
    assert second.stream is False
    assert server.requests_to("/v1/messages") == [second]


async def test_prompt_reads_content_blocks(server, client):
    blocks = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    messages = [{"role": "user", "content": blocks}]
    body = (await post(client, "anthropic", messages=messages)).json()

    assert server.requests[0].prompt == "first second"
    assert body["content"][0]["text"] == "echo: first second"


async def test_invalid_bodies_get_400_in_the_protocol_shape(client):
    anthropic = await client.post("/v1/messages", json={"model": "m", "messages": []})
    ollama = await client.post("/api/chat", content=b"{")

    assert anthropic.status_code == 400
    assert anthropic.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    assert ollama.status_code == 400
    assert ollama.json() == {"error": "request body must be a JSON object"}


async def test_unknown_paths_get_404_and_leave_the_script_alone(server, client):
    server.script(Fail(500))

    missing = await client.get("/api/tags")
    scripted = await post(client, "ollama")

    assert missing.status_code == 404
    assert missing.json() == {"error": "no such endpoint: GET /api/tags"}
    assert scripted.status_code == 500
    assert [r.path for r in server.requests] == ["/api/tags", "/api/chat"]


# -- scripting ----------------------------------------------------------------------


async def test_script_is_first_in_first_out(server, client):
    server.script(Fail(500), Fail(429), Reply("third"))

    responses = [await post(client, "openai") for _ in range(4)]

    assert [r.status_code for r in responses] == [500, 429, 200, 200]
    assert responses[2].json()["choices"][0]["message"]["content"] == "third"
    assert len(server.requests) == 4


async def test_script_for_one_path(server, client):
    server.script(Fail(529), path="/v1/messages")
    server.script(Fail(500))

    openai = await post(client, "openai")
    anthropic = await post(client, "anthropic")
    anthropic_again = await post(client, "anthropic")

    assert [openai.status_code, anthropic.status_code, anthropic_again.status_code] == [
        500,
        529,
        200,
    ]


async def test_script_rejects_unknown_paths(server):
    with pytest.raises(ValueError, match=r"^unknown path '/v1/complete': use one of "):
        server.script(Reply(), path="/v1/complete")


async def test_fail_times(server, client):
    server.script(*fail_times(2, retry_after="1"), Reply())

    responses = [await post(client, "openai") for _ in range(3)]

    assert fail_times(2) == (Fail(503), Fail(503))
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert [r.headers.get("retry-after") for r in responses] == ["1", "1", None]


# -- errors -------------------------------------------------------------------------


async def test_openai_error_body_and_retry_headers(server, client):
    server.script(Fail(429, retry_after="2", retry_after_ms="1500"))

    response = await post(client, "openai")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.headers["x-request-id"] == "req_fake1"
    assert response.json() == {
        "error": {
            "message": "Too Many Requests",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


@pytest.mark.parametrize(
    ("fail", "error_type", "code"),
    [
        (Fail(400), "invalid_request_error", None),
        (Fail(401), "invalid_request_error", "invalid_api_key"),
        (Fail(404), "invalid_request_error", "model_not_found"),
        (Fail(429, code="insufficient_quota"), "insufficient_quota", "insufficient_quota"),
        (Fail(500), "server_error", None),
        (Fail(503, error_type="custom", code="x"), "custom", "x"),
    ],
)
async def test_openai_error_types(server, client, fail, error_type, code):
    server.script(fail)

    error = (await post(client, "openai")).json()["error"]

    assert (error["type"], error["code"]) == (error_type, code)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
async def test_anthropic_error_types(server, client, status, error_type):
    server.script(Fail(status, "nope"))

    response = await post(client, "anthropic")

    assert response.status_code == status
    assert response.json() == {
        "type": "error",
        "error": {"type": error_type, "message": "nope"},
        "request_id": response.headers["request-id"],
    }


async def test_ollama_error_body(server, client):
    server.script(Fail(404), Fail(502, "upstream gone"))

    missing = await post(client, "ollama")
    gateway = await post(client, "ollama")

    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "model 'ollama-test' not found"},
    )
    assert (gateway.status_code, gateway.json()) == (502, {"error": "upstream gone"})


async def test_fail_extra_headers_and_http_date(server, client):
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.script(Fail(503, retry_after=date, headers={"X-Should-Retry": "false"}))

    response = await post(client, "anthropic")

    assert response.headers["retry-after"] == date
    assert response.headers["x-should-retry"] == "false"


# -- faults -------------------------------------------------------------------------


async def test_hang_times_out_then_the_server_carries_on(server, client):
    server.script(Hang())

    with pytest.raises(httpx.ReadTimeout):
        await post(client, "openai")
    response = await post(client, "openai")

    assert response.status_code == 200
    assert len(server.requests) == 2


async def test_delay_is_a_real_wait(server, client):
    server.script(Reply(delay_s=1.0), Fail(500, delay_s=1.0))

    with pytest.raises(httpx.ReadTimeout):
        await post(client, "ollama")
    with pytest.raises(httpx.ReadTimeout):
        await post(client, "ollama")
    assert (await post(client, "ollama")).status_code == 200


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "ollama"])
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_body_is_not_json(server, client, protocol, stream):
    server.script(Malformed())

    response = await post(client, protocol, stream=stream)

    parse = parse_ndjson if protocol == "ollama" else parse_sse
    decode = (lambda: parse(response.text)) if stream else response.json
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        decode()


async def test_malformed_with_error_status(server, client):
    server.script(Malformed(502))

    response = await post(client, "openai")

    assert response.status_code == 502
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_breaks_the_connection_mid_body(server, client, stream):
    server.script(Drop(after_bytes=5))

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await post(client, "openai", stream=stream)
    assert (await post(client, "openai")).status_code == 200


async def test_drop_while_streaming_delivers_the_first_bytes(server, client):
    server.script(Drop(after_bytes=5))
    received = []

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await read_stream(client, "ollama", received, raw=True)

    assert b"".join(received) == b'{"mod'


@pytest.mark.parametrize(
    ("protocol", "after_chunks", "expected"),
    [("openai", 2, "echo: say "), ("anthropic", 1, "echo: "), ("ollama", 3, "echo: say hello ")],
)
async def test_stall_sends_some_text_then_goes_silent(
    server, client, protocol, after_chunks, expected
):
    server.script(Stall(after_chunks=after_chunks))
    lines = []

    with pytest.raises(httpx.ReadTimeout):
        await read_stream(client, protocol, lines)

    assert expected == text_of_stream(protocol, "\n".join(lines) + "\n")


async def read_stream(client, protocol, into, *, raw=False, stream=True):
    """Read a response piece by piece into `into`, so a test sees what came before an error."""
    body = chat_body(protocol, stream=stream)
    async with client.stream("POST", PATHS[protocol], json=body) as response:
        pieces = response.aiter_raw() if raw else response.aiter_lines()
        async for piece in pieces:
            into.append(piece)


def text_of_stream(protocol, text):
    if protocol == "ollama":
        return "".join(line["message"]["content"] for line in parse_ndjson(text))
    events = [data for _, data in parse_sse(text)]
    if protocol == "openai":
        choices = [e["choices"][0] for e in events if e != "[DONE]" and e["choices"]]
        return "".join(choice["delta"].get("content", "") for choice in choices)
    return "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")


async def test_stall_without_stream_sends_headers_only(server, client):
    server.script(Stall())

    with pytest.raises(httpx.ReadTimeout):
        await read_stream(client, "openai", [], stream=False)
    assert server.requests[0].stream is False


async def test_openai_stream_error(server, client):
    server.script(StreamError(after_chunks=2, message="busy", error_type="server_error"))

    response = await post(client, "openai", stream=True)

    events = [data for _, data in parse_sse(response.text)]
    assert response.status_code == 200
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-1]) == "echo: say "
    assert events[-1] == {
        "error": {"message": "busy", "type": "server_error", "param": None, "code": None}
    }


async def test_anthropic_stream_error(server, client):
    server.script(StreamError())

    response = await post(client, "anthropic", stream=True)

    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_ollama_stream_error(server, client):
    server.script(StreamError(after_chunks=0, message="model crashed"))

    response = await post(client, "ollama", stream=True)

    assert response.status_code == 200
    assert parse_ndjson(response.text) == [{"error": "model crashed"}]


@pytest.mark.parametrize(("protocol", "status"), [("anthropic", 529), ("openai", 500)])
async def test_stream_error_without_stream_is_an_error_response(server, client, protocol, status):
    server.script(StreamError())

    response = await post(client, protocol)

    assert response.status_code == status


async def test_stream_error_code_and_default_types(server, client):
    server.script(StreamError(message="slow down", code="rate_limit_exceeded"), StreamError())

    openai = [data for _, data in parse_sse((await post(client, "openai", stream=True)).text)]
    anthropic = parse_sse((await post(client, "anthropic", stream=True)).text)

    assert openai[-1] == {
        "error": {
            "message": "slow down",
            "type": "server_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert anthropic[-1][1]["error"]["type"] == "overloaded_error"


# -- answer shapes and pacing -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "ollama"])
async def test_reply_mode_json_answers_a_stream_request_with_one_body(server, client, protocol):
    server.script(Reply("plain answer", mode="json"))
    extra = {"stream_options": {"include_usage": True}} if protocol == "openai" else {}

    response = await post(client, protocol, stream=True, **extra)

    assert response.headers["content-type"].startswith("application/json")
    assert "plain answer" == {
        "openai": lambda body: body["choices"][0]["message"]["content"],
        "anthropic": lambda body: body["content"][0]["text"],
        "ollama": lambda body: body["message"]["content"],
    }[protocol](response.json())


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "ollama"])
async def test_reply_mode_stream_answers_a_plain_request_with_a_stream(server, client, protocol):
    server.script(Reply("streamed anyway", mode="stream"))

    response = await post(client, protocol, stream=False)

    assert response.headers["content-type"] in ("text/event-stream", "application/x-ndjson")
    assert "streamed anyway" == text_of_stream(protocol, response.text)


async def test_fail_200_sends_an_error_body_with_a_200(server, client):
    server.script(
        Fail(200, "Overloaded", error_type="overloaded_error"),
        Fail(200, "quota", code="insufficient_quota"),
    )

    anthropic = await post(client, "anthropic")
    openai = await post(client, "openai")

    assert (anthropic.status_code, anthropic.json()["error"]) == (
        200,
        {"type": "overloaded_error", "message": "Overloaded"},
    )
    assert (openai.status_code, openai.json()["error"]["message"]) == (200, "quota")
    assert openai.json()["error"]["code"] == "insufficient_quota"


async def test_chunk_delay_paces_the_stream(server):
    server.script(
        Reply("one two three", chunk_delay_s=0.5), Reply("one two three", chunk_delay_s=0.02)
    )
    slow, fast = [], []

    async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
        # Half a second between pieces: a 0.2 s read timeout fires after the first one.
        with pytest.raises(httpx.ReadTimeout):
            await read_stream(client, "ollama", slow)
        await read_stream(client, "ollama", fast)

    assert "one " == text_of_stream("ollama", "\n".join(slow) + "\n")
    assert "one two three" == text_of_stream("ollama", "\n".join(fast) + "\n")
    assert 4 == len(fast)


@pytest.mark.parametrize("stream", [True, False])
async def test_stall_that_resumes_sends_the_rest_later(server, stream):
    server.script(*[Stall(after_chunks=2, resume_after_s=0.5)] * 2)
    stalled, resumed = [], []

    async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
        with pytest.raises(httpx.ReadTimeout):
            await read_stream(client, "ollama", stalled, stream=stream)
        client.timeout = httpx.Timeout(2)
        await read_stream(client, "ollama", resumed, stream=stream)

    # Without a stream, the silence comes after the headers and the body follows it.
    before_silence = "echo: say " if stream else ""
    assert before_silence == text_of_stream("ollama", "".join(f"{line}\n" for line in stalled))
    assert "echo: say hello to the world" == text_of_stream("ollama", "\n".join(resumed) + "\n")


# -- strictness: what the real APIs refuse ----------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "body", "headers", "error"),
    [
        (
            "anthropic",
            {"seed": 3},
            {},
            {"type": "invalid_request_error", "message": "seed: Extra inputs are not permitted"},
        ),
        (
            "anthropic",
            {"temperature": 0.5},
            {"anthropic-version": "2026-10-21"},
            {
                "type": "invalid_request_error",
                "message": "temperature: Extra inputs are not permitted",
            },
        ),
        (
            "anthropic",
            {"top_k": 5},
            {"anthropic-version": "2026-10-21"},
            {"type": "invalid_request_error", "message": "top_k: Extra inputs are not permitted"},
        ),
        (
            "anthropic",
            {"max_tokens": None},
            {},
            {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        ),
        (
            "anthropic",
            {"max_tokens": "100"},
            {},
            {
                "type": "invalid_request_error",
                "message": "max_tokens: Input should be a valid integer",
            },
        ),
        (
            "anthropic",
            {},
            {"anthropic-version": "2024-01-01"},
            {
                "type": "invalid_request_error",
                "message": 'anthropic-version: "2024-01-01" is not a valid version',
            },
        ),
        (
            "openai",
            {"stream_options": {"include_usage": True}},
            {},
            {
                "message": "The 'stream_options' parameter is only allowed when 'stream'"
                " is enabled.",
                "type": "invalid_request_error",
                "param": "stream_options",
                "code": None,
            },
        ),
        (
            "openai",
            {"messages": None},
            {},
            {
                "message": "Missing required parameter: 'messages'.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "missing_required_parameter",
            },
        ),
        (
            "openai",
            {"model": None},
            {},
            {
                "message": "you must provide a model parameter",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
        ),
        ("ollama", {"model": None}, {}, "model is required"),
    ],
)
async def test_bodies_the_real_apis_refuse(client, protocol, body, headers, error):
    request_body = chat_body(protocol, **body)
    request_body = {key: value for key, value in request_body.items() if value is not None}

    response = await client.post(PATHS[protocol], json=request_body, headers=headers)

    assert response.status_code == 400
    assert error == response.json()["error"]


@pytest.mark.parametrize(
    ("version", "status"), [("2023-06-01", 200), ("2023-01-01", 200), ("2026-10-21", 400)]
)
async def test_anthropic_sampling_fields_exist_until_2026_10_21(client, version, status):
    body = chat_body("anthropic", temperature=0.2, top_p=0.9, top_k=40)

    response = await client.post(
        PATHS["anthropic"], json=body, headers={"anthropic-version": version}
    )

    assert status == response.status_code


async def test_anthropic_accepts_every_documented_field(client):
    extra = {
        "system": [{"type": "text", "text": "be brief"}],
        "stop_sequences": ["END"],
        "stream": False,
        "metadata": {"user_id": "u1"},
        "tools": [],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "disabled"},
        "service_tier": "auto",
        "output_config": {},
        "cache_control": {"type": "ephemeral"},
    }

    response = await post(client, "anthropic", **extra)

    assert 200 == response.status_code


KEY = "sk-fake-key-0123456789"
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("protocol", "headers", "status", "error"),
    [
        ("openai", {"Authorization": f"Bearer {KEY}"}, 200, None),
        ("openai", {"Authorization": "Bearer sk-wrong-key-9876543210"}, 401, "invalid_api_key"),
        ("openai", {}, 401, None),
        ("openai", {"Authorization": KEY}, 401, None),
        ("anthropic", {"x-api-key": KEY, **ANTHROPIC_VERSION}, 200, None),
        ("anthropic", {"Authorization": f"Bearer {KEY}", **ANTHROPIC_VERSION}, 200, None),
        ("anthropic", {"x-api-key": "wrong", **ANTHROPIC_VERSION}, 401, "invalid x-api-key"),
        (
            "anthropic",
            {"Authorization": "Bearer wrong", **ANTHROPIC_VERSION},
            401,
            "Invalid bearer token",
        ),
        # With both headers, the API goes by x-api-key.
        (
            "anthropic",
            {"x-api-key": "wrong", "Authorization": f"Bearer {KEY}", **ANTHROPIC_VERSION},
            401,
            "invalid x-api-key",
        ),
        ("anthropic", ANTHROPIC_VERSION, 401, "x-api-key header is required"),
        ("anthropic", {"x-api-key": KEY}, 400, "anthropic-version: header is required"),
        ("ollama", {}, 200, None),
    ],
)
async def test_api_key(protocol, headers, status, error):
    async with open_fake_llm_server(api_key=KEY) as server:
        server.script(Fail(503))
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            response = await post_with(client, protocol, headers)
            after = await post_with(client, protocol, GOOD_HEADERS[protocol])

    if status == 200:
        # Accepted: the request took the scripted action.
        assert (503, 200) == (response.status_code, after.status_code)
        return
    # Refused: the request took no scripted action, so the next one gets it.
    assert (status, 503) == (response.status_code, after.status_code)
    body = response.json()["error"]
    if protocol == "anthropic":
        expected_type = {401: "authentication_error", 400: "invalid_request_error"}[status]
        assert (expected_type, error) == (body["type"], body["message"])
    else:
        assert ("invalid_request_error", error) == (body["type"], body["code"])


GOOD_HEADERS = {
    "openai": {"Authorization": f"Bearer {KEY}"},
    "anthropic": {"x-api-key": KEY, **ANTHROPIC_VERSION},
    "ollama": {},
}


async def post_with(client, protocol, headers, **extra):
    return await client.post(PATHS[protocol], json=chat_body(protocol, **extra), headers=headers)


async def test_openai_key_messages():
    async with open_fake_llm_server(api_key=KEY) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            wrong = await post_with(
                client, "openai", {"Authorization": "Bearer sk-wrong-key-98765"}
            )
            missing = await post_with(client, "openai", {})

    assert wrong.json()["error"]["message"] == (
        "Incorrect API key provided: sk-wr*********8765. You can find your API key at"
        " https://platform.openai.com/account/api-keys."
    )
    assert re.match(r"^You didn't provide an API key\. ", missing.json()["error"]["message"])


async def test_a_refused_request_takes_no_scripted_action(server, client):
    server.script(Fail(503), Reply("second"))

    refused = await post(client, "anthropic", seed=1)
    first = await post(client, "anthropic")
    second = await post(client, "anthropic")

    assert [400, 503, 200] == [r.status_code for r in (refused, first, second)]
    assert "second" == second.json()["content"][0]["text"]
    assert 3 == len(server.requests)
    assert {"seed": 1} == {k: v for k, v in server.requests[0].body.items() if k == "seed"}


MODELS = {
    "reasoner": ModelRules(rejects=("max_tokens", "temperature")),
    "claude-new": ModelRules(rejects=("temperature", "top_p")),
    "picky": ModelRules(rejects="logit_bias"),
}


@pytest.mark.parametrize(
    ("protocol", "extra", "error"),
    [
        (
            "openai",
            {"max_tokens": 10},
            {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "unsupported_parameter",
            },
        ),
        (
            "openai",
            {"temperature": 0.0},
            {
                "message": "Unsupported value: 'temperature' does not support 0 with this model."
                " Only the default (1) value is supported.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_value",
            },
        ),
        (
            "openai",
            {"temperature": 0.2},
            {
                "message": "Unsupported value: 'temperature' does not support 0.2 with this"
                " model. Only the default (1) value is supported.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_value",
            },
        ),
        ("openai", {"temperature": 1}, None),
        ("openai", {"max_completion_tokens": 10}, None),
        (
            "anthropic",
            {"temperature": 0.0},
            {
                "type": "invalid_request_error",
                "message": "`temperature` is deprecated for this model.",
            },
        ),
        ("anthropic", {"temperature": 1.0}, None),
        (
            "anthropic",
            {"top_p": 1},
            {"type": "invalid_request_error", "message": "`top_p` is deprecated for this model."},
        ),
        ("ollama", {"temperature": 0, "max_tokens": 3}, None),
    ],
)
async def test_model_rules(protocol, extra, error):
    model = {"openai": "reasoner", "anthropic": "claude-new", "ollama": "reasoner"}[protocol]
    async with open_fake_llm_server(models=MODELS) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            response = await post(client, protocol, model=model, **extra)

    assert (400 if error else 200) == response.status_code
    if error:
        assert error == response.json()["error"]


async def test_model_rules_take_one_name_and_leave_other_models_alone():
    async with open_fake_llm_server(models=MODELS) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT) as client:
            picky = await post(client, "openai", model="picky", logit_bias={"1": 2})
            other = await post(client, "openai", model="gpt-test", max_tokens=5, logit_bias={})

    assert ("logit_bias",) == MODELS["picky"].rejects
    assert (400, "Unsupported parameter: 'logit_bias' is not supported with this model.") == (
        picky.status_code,
        picky.json()["error"]["message"],
    )
    assert 200 == other.status_code


# -- a server for tests that are not on trio ----------------------------------------------


def test_in_thread_serves_a_synchronous_client():
    with open_fake_llm_server_in_thread(reply="from the thread", api_key=KEY) as server:
        server.script(Fail(503))
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, timeout=2, headers=headers) as client:
            body = chat_body("openai")
            statuses = [client.post(PATHS["openai"], json=body).status_code for _ in range(2)]
            answer = client.post(PATHS["openai"], json=body).json()

    assert [503, 200] == statuses
    assert "from the thread" == answer["choices"][0]["message"]["content"]
    assert 3 == len(server.requests)


def test_in_thread_stops_with_a_request_still_hanging():
    with open_fake_llm_server_in_thread() as server:
        server.script(Hang())
        with httpx.Client(base_url=server.url, timeout=SHORT) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post(PATHS["ollama"], json=chat_body("ollama"))

    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=1) as client:
        client.post(server.url + PATHS["ollama"], json=chat_body("ollama"))


def test_in_thread_gives_back_errors_of_the_block():
    with pytest.raises(KeyError, match=r"^'boom'$"), open_fake_llm_server_in_thread():
        raise KeyError("boom")


# -- connections --------------------------------------------------------------------


def local_port(response):
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


async def test_keep_alive_reuses_the_connection(server, client):
    server.script(Fail(500))

    responses = []
    for protocol, stream in [("openai", False), ("anthropic", True), ("ollama", False)]:
        response = await post(client, protocol, stream=stream)
        responses.append((response.status_code, local_port(response)))

    port = responses[0][1]
    assert responses == [(500, port), (200, port), (200, port)]


async def test_a_fault_closes_the_connection(server, client):
    server.script(Reply(), Drop())
    before = local_port(await post(client, "openai"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await post(client, "openai")
    after = local_port(await post(client, "openai"))

    assert before != after


async def test_garbage_gets_400():
    async with open_fake_llm_server() as server:
        port = int(server.url.rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            received = b""
            while data := await stream.receive_some():
                received += data

    assert received.startswith(b"HTTP/1.1 400 ")


async def test_exit_cancels_stuck_handlers_and_closes_connections():
    async with httpx.AsyncClient(timeout=5) as client, trio.open_nursery() as nursery:
        async with open_fake_llm_server() as server:
            server.script(Stall(after_chunks=0))

            async def call(task_status=trio.TASK_STATUS_IGNORED):
                body = chat_body("ollama", stream=True)
                async with client.stream("POST", server.url + "/api/chat", json=body) as response:
                    task_status.started()
                    with pytest.raises(httpx.RemoteProtocolError):
                        await response.aread()

            await nursery.start(call)


async def test_errors_in_the_block_come_out_unwrapped():
    with pytest.raises(KeyError, match=r"^'boom'$"):
        async with open_fake_llm_server():
            raise KeyError("boom")


# -- where the public names live --------------------------------------------------------


def public_objects():
    """Each name in `runner.testing.__all__` with its objects; a union alias gives its members."""
    for name in runner.testing.__all__:
        value = getattr(runner.testing, name)
        members = value.__args__ if isinstance(value, types.UnionType) else (value,)
        yield from ((name, member) for member in members)


@pytest.mark.parametrize(("name", "value"), list(public_objects()))
def test_public_names_live_in_public_modules(name, value):
    module = value.__module__

    assert (True, False) == (module.startswith("runner.testing."), "._" in module), module


def test_the_package_init_imports_only_public_names_from_its_own_modules():
    init = Path(runner.testing.__file__)
    imports = [
        node for node in ast.walk(ast.parse(init.read_text())) if isinstance(node, ast.ImportFrom)
    ]
    private = [
        f"{'.' * node.level}{node.module}: {alias.name}"
        for node in imports
        for alias in node.names
        if node.level != 1 or node.module.startswith("_") or alias.name.startswith("_")
    ]

    assert [] == private


def test_importing_it_loads_no_private_runner_module():
    # `import runner` loads private modules of its own (such as `_version`), which
    # `runner.testing` may share; it must not add any.
    code = (
        "import sys, runner\n"
        "before = set(sys.modules)\n"
        "import runner.testing\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    root = Path(runner.testing.__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    loaded = [name for name in result.stdout.split() if name.split(".")[0] == "runner"]

    assert "runner.testing" in loaded
    assert [] == [name for name in loaded if "._" in name]
