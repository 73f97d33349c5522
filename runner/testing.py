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

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import h11
import trio

# The public classes live in `_fake_http` so that `_fake_wire` can use them without
# importing this module back; they are re-exported from here, as ever.
from ._fake_http import (
    _ENDPOINTS,
    Drop,
    Fail,
    Hang,
    Malformed,
    RecordedRequest,
    Reply,
    Stall,
    StreamError,
    _Chunk,
    _first_pieces,
    _parse_json,
    _protocol_for,
    _receive_request,
    _send,
    _send_bad_request,
    _wait_until_client_leaves,
)
from ._fake_wire import _error_answer, _malformed_answer, _reply_answer, _stream_error_answer

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
                answer = _reply_answer(request, number, action, self._default_text)
                await _send(stream, conn, answer)
            case Fail(delay_s=delay_s):
                await trio.sleep(delay_s)
                await _send(stream, conn, _error_answer(request, number, action))
            case Malformed(status=status):
                await _send(stream, conn, _malformed_answer(request, number, status))
            case StreamError():
                answer = _stream_error_answer(request, number, action, self._default_text)
                await _send(stream, conn, answer)
            case Hang():
                await _wait_until_client_leaves(stream)
                return False
            case Drop(after_bytes=after_bytes):
                answer = _reply_answer(request, number, Reply(), self._default_text)
                body = b"".join(chunk.data for chunk in answer.chunks)
                cut = _Chunk(body[: max(0, min(after_bytes, len(body) - 1))])
                await _send(stream, conn, answer, [cut], end=False)
                return False
            case Stall(after_chunks=after_chunks):
                answer = _reply_answer(request, number, Reply(), self._default_text)
                chunks = _first_pieces(answer.chunks, after_chunks) if answer.streamed else []
                await _send(stream, conn, answer, chunks, end=False)
                await _wait_until_client_leaves(stream)
                return False
        return True

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


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside `group` and any nested single-member groups, if just one."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
