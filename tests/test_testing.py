"""The loopback fake LLM server, exercised with a real httpx client over real sockets."""

import ast
import json
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
    Reply,
    Stall,
    StreamError,
    fail_times,
    open_fake_llm_server,
)

SHORT = httpx.Timeout(0.2)
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


async def test_openai_reply(client):
    response = await post(client, "openai")

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_fake1"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "openai-test"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: say hello to the world",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}


async def test_openai_stream_with_usage(client):
    extra = {"stream": True, "stream_options": {"include_usage": True}}
    response = await post(client, "openai", **extra)

    assert response.headers["content-type"] == "text/event-stream"
    events = [data for _, data in parse_sse(response.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len(pieces) > 3
    assert "".join(pieces) == "echo: say hello to the world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}


async def test_openai_stream_without_include_usage_sends_no_usage(client):
    response = await post(client, "openai", stream=True)

    events = [data for _, data in parse_sse(response.text)]
    assert events[-1] == "[DONE]"
    assert all("usage" not in chunk and chunk["choices"] for chunk in events[:-1])


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
    assert body["usage"] == {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}


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
        "message": "max_tokens: field required",
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
        return "".join(e["choices"][0]["delta"]["content"] for e in events)
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
