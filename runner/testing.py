"""A real loopback HTTP server that speaks OpenAI, Anthropic and Ollama, with faults on demand.

`open_fake_llm_server()` starts an HTTP/1.1 server on 127.0.0.1 (a free port)
that answers the three chat endpoints the way the real services do: JSON
bodies, SSE or NDJSON streams, usage counts, error bodies and headers. Point a
provider at it (`OPENAI_BASE_URL=server.openai_base_url`,
`ANTHROPIC_BASE_URL=server.anthropic_base_url`, `OLLAMA_HOST=server.ollama_host`)
and script what the next requests get: a normal `Reply`, an HTTP error
(`Fail`), or a broken connection (`Hang`, `Drop`, `Stall`, `Malformed`,
`StreamError`). Everything happens over real sockets, so timeouts, retries,
streaming and `Retry-After` are tested the way they happen in production.

Example::

    import httpx
    from runner.testing import Reply, fail_times, open_fake_llm_server

    async def test_retry_then_success():
        async with open_fake_llm_server() as server:
            server.script(*fail_times(2, 529, retry_after="0"), Reply("hi there"))
            body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
            async with httpx.AsyncClient(base_url=server.anthropic_base_url) as client:
                responses = [await client.post("/v1/messages", json=body) for _ in range(3)]
            assert [r.status_code for r in responses] == [529, 529, 200]
            assert responses[2].json()["content"][0]["text"] == "hi there"
            assert len(server.requests_to("/v1/messages")) == 3

Only POST requests to `/v1/chat/completions`, `/v1/messages` and `/api/chat`
consume scripted actions; anything else gets a 404 in the guessed protocol's
error shape. The server is built on trio and h11 and supports keep-alive.
"""

from __future__ import annotations

import abc
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal, TypeAlias

import attrs
import h11
import trio

__all__ = [
    "Action",
    "Drop",
    "Fail",
    "FakeLLMServer",
    "Hang",
    "Malformed",
    "RecordedRequest",
    "Reply",
    "Stall",
    "StreamError",
    "fail_times",
    "open_fake_llm_server",
]

_ProtocolName: TypeAlias = Literal["openai", "anthropic", "ollama"]

_ENDPOINTS: dict[str, _ProtocolName] = {
    "/v1/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}


@attrs.frozen
class RecordedRequest:
    """One request as the server received it, recorded before the server acted on it.

    `headers` has lowercased names; `body` is the parsed JSON (None when the
    body is not JSON); `path` leaves out any query string.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    protocol: _ProtocolName

    @property
    def prompt(self) -> str:
        """The text of the last user message ("" when there is none)."""
        for message in reversed(_messages(self.body)):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream (Ollama streams unless told not to)."""
        return bool(_object(self.body).get("stream", self.protocol == "ollama"))


@attrs.frozen
class Reply:
    """Answer normally, after `delay_s` seconds.

    `text` defaults to the server's `reply`. Token counts default to word
    counts; `omit_usage` leaves usage out where the protocol allows it.
    `finish_reason` is sent as given, in the protocol's own vocabulary.
    """

    text: str | None = None
    delay_s: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    omit_usage: bool = False


@attrs.frozen
class Fail:
    """Answer with HTTP `status` and the protocol's error body, after `delay_s` seconds.

    `retry_after` and `retry_after_ms` become the `retry-after` and
    `retry-after-ms` headers (pass an HTTP-date string as is); `headers` adds
    any others, such as `{"x-should-retry": "false"}`. `code` only exists in
    OpenAI's error shape.
    """

    status: int
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay_s: float = 0.0


@attrs.frozen
class Hang:
    """Read the request and never answer, until the client leaves or the server stops."""


@attrs.frozen
class Malformed:
    """Answer with a body that is not valid JSON (or a stream with a broken event)."""

    status: int = 200


@attrs.frozen
class Drop:
    """Send the status line, headers and `after_bytes` bytes of the body, then hang up."""

    after_bytes: int = 10


@attrs.frozen
class Stall:
    """Stream `after_chunks` pieces of text, then go silent (non-streaming: only headers)."""

    after_chunks: int = 1


@attrs.frozen
class StreamError:
    """Stream `after_chunks` pieces of text, then an error event in the protocol's own shape.

    A non-streaming request gets the error as an error response instead: the
    status Anthropic uses for `error_type` (529 for `overloaded_error`), else 500.
    """

    after_chunks: int = 1
    message: str = "Overloaded"
    error_type: str = "overloaded_error"


Action: TypeAlias = Reply | Fail | Hang | Malformed | Drop | Stall | StreamError


def fail_times(n: int, status: int = 503, **kw: Any) -> tuple[Fail, ...]:
    """`n` identical failures, for `server.script(*fail_times(2), Reply())`."""
    return (Fail(status, **kw),) * n


class FakeLLMServer:
    """The running server; get one from `open_fake_llm_server()`.

    `requests` lists every request received, in order, faults included.
    """

    def __init__(
        self, url: str, *, reply: str | Callable[[RecordedRequest], str] | None = None
    ) -> None:
        self.url = url
        self.openai_base_url = url + "/v1"
        self.anthropic_base_url = url
        self.ollama_host = url
        self.requests: list[RecordedRequest] = []
        self._reply = reply
        self._scripts: dict[str | None, deque[Action]] = {}

    def script(self, *actions: Action, path: str | None = None) -> None:
        """Queue actions for the next requests, first in first out.

        With `path` (e.g. "/v1/messages") only requests to that endpoint take
        them; those queues are served before the shared one. A request that
        finds no queued action gets a normal reply.
        """
        if path is not None and path not in _ENDPOINTS:
            raise ValueError(f"unknown path {path!r}: use one of {', '.join(_ENDPOINTS)}")
        self._scripts.setdefault(path, deque()).extend(actions)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests whose path is `path`."""
        return [request for request in self.requests if request.path == path]

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(stream, conn):
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up; there is nobody left to answer

    async def _serve_one(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Answer one request; False when the connection must close."""
        try:
            received = await _receive_request(stream, conn)
        except h11.RemoteProtocolError:
            await _send_bad_request(stream, conn)
            return False
        if received is None:
            return False
        request = self._record(*received)
        number = len(self.requests)
        if request.method == "POST" and request.path in _ENDPOINTS:
            keep_open = await self._act(stream, conn, request, number, self._next_action(request))
        else:
            fail = Fail(404, f"no such endpoint: {request.method} {request.path}")
            await _send(stream, conn, _error_answer(request, number, fail))
            keep_open = True
        return keep_open and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _record(self, head: h11.Request, raw_body: bytes) -> RecordedRequest:
        headers: dict[str, str] = {}
        for raw_name, raw_value in head.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = head.target.decode("latin-1").partition("?")[0]
        request = RecordedRequest(
            method=head.method.decode("ascii"),
            path=path,
            headers=headers,
            body=_parse_json(raw_body),
            raw_body=raw_body,
            protocol=_protocol_for(path, headers),
        )
        self.requests.append(request)
        return request

    def _next_action(self, request: RecordedRequest) -> Action:
        for key in (request.path, None):
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        return Reply()

    async def _act(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: RecordedRequest,
        number: int,
        action: Action,
    ) -> bool:
        """Carry out one action; False when the connection must close afterwards."""
        match action:
            case Reply(delay_s=delay_s):
                await trio.sleep(delay_s)
                await _send(stream, conn, self._reply_answer(request, number, action))
            case Fail(delay_s=delay_s):
                await trio.sleep(delay_s)
                await _send(stream, conn, _error_answer(request, number, action))
            case Malformed(status=status):
                await _send(stream, conn, _malformed_answer(request, number, status))
            case StreamError():
                await _send(stream, conn, self._stream_error_answer(request, number, action))
            case Hang():
                await _wait_until_client_leaves(stream)
                return False
            case Drop(after_bytes=after_bytes):
                answer = self._reply_answer(request, number, Reply())
                body = b"".join(chunk.data for chunk in answer.chunks)
                cut = _Chunk(body[: max(0, min(after_bytes, len(body) - 1))])
                await _send(stream, conn, answer, [cut], end=False)
                return False
            case Stall(after_chunks=after_chunks):
                answer = self._reply_answer(request, number, Reply())
                chunks = _first_pieces(answer.chunks, after_chunks) if answer.streamed else []
                await _send(stream, conn, answer, chunks, end=False)
                await _wait_until_client_leaves(stream)
                return False
        return True

    def _reply_answer(self, request: RecordedRequest, number: int, reply: Reply) -> _Answer:
        problem = _problem(request)
        if problem is not None:
            return _error_answer(request, number, Fail(400, problem))
        text = reply.text if reply.text is not None else self._default_text(request)
        plan = _make_plan(request, reply, text, number)
        dialect = _DIALECTS[request.protocol]
        headers = dialect.id_headers(number)
        if request.stream:
            headers = {"content-type": dialect.stream_content_type, **headers}
            return _Answer(200, headers, dialect.stream(plan), streamed=True)
        headers = {"content-type": dialect.json_content_type, **headers}
        return _Answer(200, headers, [_Chunk(_json(dialect.body(plan)))])

    def _stream_error_answer(
        self, request: RecordedRequest, number: int, error: StreamError
    ) -> _Answer:
        if not request.stream:
            status = 500
            if request.protocol == "anthropic":
                status = _ANTHROPIC_STATUS_BY_TYPE.get(error.error_type, 500)
            fail = Fail(status, error.message, error.error_type)
            return _error_answer(request, number, fail)
        answer = self._reply_answer(request, number, Reply())
        if answer.status != 200:
            return answer
        error_chunk = _Chunk(_DIALECTS[request.protocol].stream_error(error))
        chunks = [*_first_pieces(answer.chunks, error.after_chunks), error_chunk]
        return attrs.evolve(answer, chunks=chunks)

    def _default_text(self, request: RecordedRequest) -> str:
        if self._reply is None:
            return f"echo: {request.prompt}"
        if isinstance(self._reply, str):
            return self._reply
        return self._reply(request)


@asynccontextmanager
async def open_fake_llm_server(
    *, reply: str | Callable[[RecordedRequest], str] | None = None
) -> AsyncIterator[FakeLLMServer]:
    """Start a `FakeLLMServer` on 127.0.0.1 and a free port, for the duration of the block.

    `reply` is the default answer text: a string, a function of the
    `RecordedRequest`, or None for "echo: <last user message>". On exit the
    server stops: hung handlers are cancelled and every connection is closed.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server = FakeLLMServer(f"http://127.0.0.1:{port}", reply=reply)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, server._serve_connection, listeners)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The server's tasks do not fail on their own, so a group here almost
        # always wraps one error from the caller's block: give it back as is.
        single = _only_exception(group)
        if single is None:
            raise
        raise single from None


# -- HTTP plumbing --------------------------------------------------------------------


@attrs.frozen
class _Chunk:
    """One piece of a response body; `kind` tells stream preambles from text pieces."""

    data: bytes
    kind: Literal["head", "text", "tail"] = "tail"


@attrs.frozen
class _Answer:
    status: int
    headers: dict[str, str]
    chunks: list[_Chunk]
    streamed: bool = False

    def head(self) -> h11.Response:
        headers = dict(self.headers)
        if not self.streamed:  # streamed answers go out chunked
            headers["content-length"] = str(sum(len(chunk.data) for chunk in self.chunks))
        return h11.Response(
            status_code=self.status, headers=list(headers.items()), reason=_reason(self.status)
        )


async def _receive_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """The next request's head and whole body, or None once the client has left."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return head, bytes(body)
        else:
            return None


async def _send_event(stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    answer: _Answer,
    chunks: list[_Chunk] | None = None,
    *,
    end: bool = True,
) -> None:
    """Send `answer`'s head, then `chunks` (default: all of them), then end the message."""
    await _send_event(stream, conn, answer.head())
    for chunk in answer.chunks if chunks is None else chunks:
        await _send_event(stream, conn, h11.Data(data=chunk.data))
    if end:
        await _send_event(stream, conn, h11.EndOfMessage())


async def _send_bad_request(stream: trio.SocketStream, conn: h11.Connection) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = {"content-type": "text/plain", "connection": "close"}
    try:
        await _send(stream, conn, _Answer(400, headers, [_Chunk(b"bad request\n")]))
    except h11.LocalProtocolError:
        pass  # h11 cannot frame a response to this mess; closing says enough


async def _wait_until_client_leaves(stream: trio.SocketStream) -> None:
    while await stream.receive_some():
        pass


def _first_pieces(chunks: list[_Chunk], count: int) -> list[_Chunk]:
    """A stream's preamble and its first `count` text pieces."""
    texts = [chunk for chunk in chunks if chunk.kind == "text"][:count]
    return [chunk for chunk in chunks if chunk.kind == "head"] + texts


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else ""


# -- reading requests -----------------------------------------------------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _messages(body: Any) -> list[dict[str, Any]]:
    messages = _object(body).get("messages")
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, dict)]


def _text_of(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        blocks = [_object(block).get("text") for block in content]
        return " ".join(text for text in blocks if isinstance(text, str))
    return ""


def _parse_json(raw_body: bytes) -> Any:
    try:
        return json.loads(raw_body)
    except ValueError:
        return None


def _protocol_for(path: str, headers: Mapping[str, str]) -> _ProtocolName:
    if path in _ENDPOINTS:
        return _ENDPOINTS[path]
    if path.startswith("/api/"):
        return "ollama"
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"


def _problem(request: RecordedRequest) -> str | None:
    """Why the real service would reject this body with a 400, if it would."""
    body = request.body
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: field required"
    if not isinstance(body.get("messages"), list):
        return "messages: field required"
    if request.protocol == "anthropic" and _count(body.get("max_tokens")) is None:
        return "max_tokens: field required"
    return None


def _count(value: Any) -> int | None:
    """`value` if it is a usable token count (Ollama uses negatives for "no limit")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _max_tokens(protocol: _ProtocolName, body: dict[str, Any]) -> int | None:
    if protocol == "ollama":
        return _count(_object(body.get("options")).get("num_predict"))
    if protocol == "openai" and "max_completion_tokens" in body:
        return _count(body["max_completion_tokens"])
    return _count(body.get("max_tokens"))


def _input_words(body: dict[str, Any]) -> int:
    texts = [_text_of(body.get("system"))]
    texts += [_text_of(message.get("content")) for message in _messages(body)]
    return max(1, sum(len(text.split()) for text in texts))


# -- what a normal reply says ---------------------------------------------------------


@attrs.frozen
class _Plan:
    """A normal reply worked out once, then rendered in a protocol's shape."""

    number: int
    model: str
    body: dict[str, Any]
    text: str
    pieces: list[str]
    truncated: bool
    input_tokens: int
    output_tokens: int
    finish_reason: str | None
    omit_usage: bool
    created: float


def _make_plan(request: RecordedRequest, reply: Reply, text: str, number: int) -> _Plan:
    body = _object(request.body)
    # Each piece is one word with the whitespace around it, so pieces join back to the text.
    pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    limit = _max_tokens(request.protocol, body)
    truncated = limit is not None and len(pieces) > limit
    if truncated:
        pieces = pieces[:limit]
        pieces[-1:] = [piece.rstrip() for piece in pieces[-1:]]
        text = "".join(pieces)
    return _Plan(
        number=number,
        model=str(body.get("model", "fake-model")),
        body=body,
        text=text,
        pieces=pieces,
        truncated=truncated,
        input_tokens=_input_words(body) if reply.input_tokens is None else reply.input_tokens,
        output_tokens=len(text.split()) if reply.output_tokens is None else reply.output_tokens,
        finish_reason=reply.finish_reason,
        omit_usage=reply.omit_usage,
        created=time.time(),
    )


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _sse(payload: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(payload)}\n\n".encode()


def _error_answer(request: RecordedRequest, number: int, fail: Fail) -> _Answer:
    dialect = _DIALECTS[request.protocol]
    model = str(_object(request.body).get("model", "unknown"))
    message = fail.message or _default_message(fail.status, model)
    headers = {"content-type": "application/json", **dialect.id_headers(number)}
    if fail.retry_after is not None:
        headers["retry-after"] = fail.retry_after
    if fail.retry_after_ms is not None:
        headers["retry-after-ms"] = fail.retry_after_ms
    headers.update((name.lower(), value) for name, value in fail.headers.items())
    payload = dialect.error_body(fail, message, number)
    return _Answer(fail.status, headers, [_Chunk(_json(payload))])


def _default_message(status: int, model: str) -> str:
    if status == 404:
        return f"model '{model}' not found"
    return _reason(status) or f"error {status}"


def _malformed_answer(request: RecordedRequest, number: int, status: int) -> _Answer:
    dialect = _DIALECTS[request.protocol]
    headers = dialect.id_headers(number)
    if request.stream and status == 200:
        headers = {"content-type": dialect.stream_content_type, **headers}
        return _Answer(200, headers, [_Chunk(dialect.malformed_stream)], streamed=True)
    headers = {"content-type": "application/json", **headers}
    return _Answer(status, headers, [_Chunk(b'{"id": "malformed", "choices": [')])


# -- the three protocols --------------------------------------------------------------


class _Dialect(abc.ABC):
    stream_content_type = "text/event-stream"
    json_content_type = "application/json"
    malformed_stream = b'data: {"id": "malformed", "choices": [\n\n'

    def id_headers(self, number: int) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def body(self, plan: _Plan) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stream(self, plan: _Plan) -> list[_Chunk]: ...

    @abc.abstractmethod
    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stream_error(self, error: StreamError) -> bytes: ...


_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


class _OpenAI(_Dialect):
    def id_headers(self, number: int) -> dict[str, str]:
        return {"x-request-id": f"req_fake{number}"}

    def body(self, plan: _Plan) -> dict[str, Any]:
        message = {"role": "assistant", "content": plan.text}
        choice = {"index": 0, "message": message, "finish_reason": self._finish(plan)}
        body = {**self._envelope(plan, "chat.completion"), "choices": [choice]}
        if not plan.omit_usage:
            body["usage"] = self._usage(plan)
        return body

    def stream(self, plan: _Plan) -> list[_Chunk]:
        envelope = self._envelope(plan, "chat.completion.chunk")

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return _sse({**envelope, "choices": [choice]})

        chunks = [_Chunk(chunk({"role": "assistant", "content": ""}), "head")]
        chunks += [_Chunk(chunk({"content": piece}), "text") for piece in plan.pieces]
        chunks.append(_Chunk(chunk({}, self._finish(plan))))
        include_usage = _object(plan.body.get("stream_options")).get("include_usage")
        if include_usage and not plan.omit_usage:
            usage_chunk = {**envelope, "choices": [], "usage": self._usage(plan)}
            chunks.append(_Chunk(_sse(usage_chunk)))
        chunks.append(_Chunk(b"data: [DONE]\n\n"))
        return chunks

    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]:
        code = fail.code if fail.code is not None else _OPENAI_CODES.get(fail.status)
        error_type = fail.error_type or self._error_type(fail.status, code)
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    def stream_error(self, error: StreamError) -> bytes:
        body = {"message": error.message, "type": error.error_type, "param": None, "code": None}
        return _sse({"error": body})

    @staticmethod
    def _error_type(status: int, code: str | None) -> str:
        if code == "insufficient_quota":
            return "insufficient_quota"
        if status == 429:
            return "requests"
        return "server_error" if status >= 500 else "invalid_request_error"

    @staticmethod
    def _envelope(plan: _Plan, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{plan.number}",
            "object": kind,
            "created": int(plan.created),
            "model": plan.model,
        }

    @staticmethod
    def _finish(plan: _Plan) -> str:
        return plan.finish_reason or ("length" if plan.truncated else "stop")

    @staticmethod
    def _usage(plan: _Plan) -> dict[str, int]:
        return {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
        }


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ANTHROPIC_STATUS_BY_TYPE = {error_type: status for status, error_type in _ANTHROPIC_TYPES.items()}


class _Anthropic(_Dialect):
    malformed_stream = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'

    def id_headers(self, number: int) -> dict[str, str]:
        return {"request-id": f"req_fake{number}"}

    def body(self, plan: _Plan) -> dict[str, Any]:
        body = self._message(plan, [{"type": "text", "text": plan.text}], *self._stop(plan))
        if not plan.omit_usage:
            body["usage"] = {"input_tokens": plan.input_tokens, "output_tokens": plan.output_tokens}
        return body

    def stream(self, plan: _Plan) -> list[_Chunk]:
        start = self._message(plan, [], None, None)
        if not plan.omit_usage:
            start["usage"] = {"input_tokens": plan.input_tokens, "output_tokens": 1}
        block = {"type": "text", "text": ""}
        stop_reason, stop_sequence = self._stop(plan)
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        }
        if not plan.omit_usage:
            delta["usage"] = {"output_tokens": plan.output_tokens}
        event = self._event

        def text_delta(text: str) -> dict[str, str]:
            return {"type": "text_delta", "text": text}

        return [
            event("head", type="message_start", message=start),
            event("head", type="content_block_start", index=0, content_block=block),
            event("head", type="ping"),
            *(
                event("text", type="content_block_delta", index=0, delta=text_delta(piece))
                for piece in plan.pieces
            ),
            event("tail", type="content_block_stop", index=0),
            event("tail", **delta),
            event("tail", type="message_stop"),
        ]

    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]:
        error = {"type": fail.error_type or self._error_type(fail.status), "message": message}
        return {"type": "error", "error": error, "request_id": f"req_fake{number}"}

    def stream_error(self, error: StreamError) -> bytes:
        body = {"type": error.error_type, "message": error.message}
        return _sse({"type": "error", "error": body}, event="error")

    @staticmethod
    def _event(kind: Literal["head", "text", "tail"], **payload: Any) -> _Chunk:
        return _Chunk(_sse(payload, event=payload["type"]), kind)

    @staticmethod
    def _error_type(status: int) -> str:
        default = "api_error" if status >= 500 else "invalid_request_error"
        return _ANTHROPIC_TYPES.get(status, default)

    @staticmethod
    def _message(
        plan: _Plan,
        content: list[dict[str, str]],
        stop_reason: str | None,
        stop_sequence: str | None,
    ) -> dict[str, Any]:
        return {
            "id": f"msg_fake{plan.number}",
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        }

    @staticmethod
    def _stop(plan: _Plan) -> tuple[str, str | None]:
        reason = plan.finish_reason or ("max_tokens" if plan.truncated else "end_turn")
        sequences = plan.body.get("stop_sequences")
        if reason == "stop_sequence" and isinstance(sequences, list) and sequences:
            return reason, str(sequences[0])
        return reason, None


class _Ollama(_Dialect):
    stream_content_type = "application/x-ndjson"
    json_content_type = "application/json; charset=utf-8"
    malformed_stream = b'{"model": "malformed", "message": {"content": \n'

    def body(self, plan: _Plan) -> dict[str, Any]:
        return {**self._line(plan, plan.text), **self._done(plan)}

    def stream(self, plan: _Plan) -> list[_Chunk]:
        chunks = [
            _Chunk(_json({**self._line(plan, piece), "done": False}) + b"\n", "text")
            for piece in plan.pieces
        ]
        chunks.append(_Chunk(_json({**self._line(plan, ""), **self._done(plan)}) + b"\n"))
        return chunks

    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]:
        return {"error": message}

    def stream_error(self, error: StreamError) -> bytes:
        return _json({"error": error.message}) + b"\n"

    @staticmethod
    def _line(plan: _Plan, content: str) -> dict[str, Any]:
        created_at = datetime.fromtimestamp(plan.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = {"role": "assistant", "content": content}
        return {"model": plan.model, "created_at": created_at, "message": message}

    @staticmethod
    def _done(plan: _Plan) -> dict[str, Any]:
        # Durations are in nanoseconds, made up but proportional to the work.
        load_ns = 1_000_000
        prompt_ns = plan.input_tokens * 1_000_000
        eval_ns = plan.output_tokens * 10_000_000
        done: dict[str, Any] = {
            "done_reason": plan.finish_reason or ("length" if plan.truncated else "stop"),
            "done": True,
            "total_duration": load_ns + prompt_ns + eval_ns,
            "load_duration": load_ns,
            "prompt_eval_count": plan.input_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": plan.output_tokens,
            "eval_duration": eval_ns,
        }
        if plan.omit_usage:  # what Ollama sends when the prompt was cached
            del done["prompt_eval_count"], done["prompt_eval_duration"]
        return done


_DIALECTS: dict[_ProtocolName, _Dialect] = {
    "openai": _OpenAI(),
    "anthropic": _Anthropic(),
    "ollama": _Ollama(),
}


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside `group` and any nested single-member groups, if just one."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
