"""The fake LLM server: `open_fake_llm_server()` and the running `FakeLLMServer`.

It accepts connections on 127.0.0.1, records each request, refuses it as the
real service would (`runner.testing.strict`), or else takes the next scripted
action for it and carries the action out over the socket.
`open_fake_llm_server_in_thread()` runs the same server for tests that do
not run on trio.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import h11
import trio

from .actions import Action, Drop, Fail, Hang, Malformed, Reply, Stall, StreamError
from .answers import error_answer, malformed_answer, reply_answer, stream_error_answer
from .http import (
    Chunk,
    receive_request,
    send,
    send_bad_request,
    send_body,
    split_stream,
    wait_until_client_leaves,
)
from .requests import ENDPOINTS, RecordedRequest, record
from .rules import ModelRules
from .strict import refusal


class FakeLLMServer:
    """The running server; get one from `open_fake_llm_server()`.

    `requests` lists every request received, in order, faults and refusals
    included. `script()` and `requests` may be used from another thread than
    the server's (see `open_fake_llm_server_in_thread()`).
    """

    def __init__(
        self,
        url: str,
        *,
        reply: str | Callable[[RecordedRequest], str] | None = None,
        api_key: str | None = None,
        models: Mapping[str, ModelRules] | None = None,
    ) -> None:
        self.url = url
        self.openai_base_url = url + "/v1"
        self.anthropic_base_url = url
        self.ollama_host = url
        self.requests: list[RecordedRequest] = []
        self._reply = reply
        self._api_key = api_key
        self._models = dict(models or {})
        self._scripts: dict[str | None, deque[Action]] = {}

    def script(self, *actions: Action, path: str | None = None) -> None:
        """Queue actions for the next requests, first in first out.

        With `path` (e.g. "/v1/messages") only requests to that endpoint take
        them; those queues are served before the shared one. A request that
        finds no queued action gets a normal reply. A request the server
        refuses (a wrong key, an unknown field...) takes no action.
        """
        if path is not None and path not in ENDPOINTS:
            raise ValueError(f"unknown path {path!r}: use one of {', '.join(ENDPOINTS)}")
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
            received = await receive_request(stream, conn)
        except h11.RemoteProtocolError:
            await send_bad_request(stream, conn)
            return False
        if received is None:
            return False
        request = record(*received)
        self.requests.append(request)
        number = len(self.requests)
        if request.method == "POST" and request.path in ENDPOINTS:
            refused = refusal(request, self._api_key, self._models)
            if refused is not None:
                await send(stream, conn, error_answer(request, number, refused))
                keep_open = True
            else:
                action = self._next_action(request)
                keep_open = await self._act(stream, conn, request, number, action)
        else:
            fail = Fail(404, f"no such endpoint: {request.method} {request.path}")
            await send(stream, conn, error_answer(request, number, fail))
            keep_open = True
        return keep_open and conn.our_state is h11.DONE and conn.their_state is h11.DONE

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
                answer = reply_answer(request, number, action, self._default_text)
                await send(stream, conn, answer)
            case Fail(delay_s=delay_s):
                await trio.sleep(delay_s)
                await send(stream, conn, error_answer(request, number, action))
            case Malformed(status=status):
                await send(stream, conn, malformed_answer(request, number, status))
            case StreamError():
                answer = stream_error_answer(request, number, action, self._default_text)
                await send(stream, conn, answer)
            case Hang():
                await wait_until_client_leaves(stream)
                return False
            case Drop(after_bytes=after_bytes):
                answer = reply_answer(request, number, Reply(), self._default_text)
                body = b"".join(chunk.data for chunk in answer.chunks)
                cut = Chunk(body[: max(0, min(after_bytes, len(body) - 1))])
                await send(stream, conn, answer, [cut], end=False)
                return False
            case Stall(after_chunks=after_chunks, resume_after_s=resume_after_s):
                answer = reply_answer(request, number, Reply(), self._default_text)
                first, rest = split_stream(answer.chunks, after_chunks)
                if not answer.streamed:
                    first, rest = [], answer.chunks
                await send(stream, conn, answer, first, end=False)
                if resume_after_s is None:
                    await wait_until_client_leaves(stream)
                    return False
                await trio.sleep(resume_after_s)
                await send_body(stream, conn, rest)
        return True

    def _default_text(self, request: RecordedRequest) -> str:
        if self._reply is None:
            return f"echo: {request.prompt}"
        if isinstance(self._reply, str):
            return self._reply
        return self._reply(request)


@asynccontextmanager
async def open_fake_llm_server(
    *,
    reply: str | Callable[[RecordedRequest], str] | None = None,
    api_key: str | None = None,
    models: Mapping[str, ModelRules] | None = None,
) -> AsyncIterator[FakeLLMServer]:
    """Start a `FakeLLMServer` on 127.0.0.1 and a free port, for the duration of the block.

    `reply` is the default answer text: a string, a function of the
    `RecordedRequest`, or None for "echo: <last user message>". On exit the
    server stops: hung handlers are cancelled and every connection is closed.

    The server refuses what the real services refuse, with their status,
    error shape and message, and such a request takes no scripted action: an
    Anthropic body with a field the Messages API does not know (`temperature`,
    `top_p` and `top_k` included under `anthropic-version: 2026-10-21`) or
    without `max_tokens`, an `anthropic-version` that is no version; an OpenAI
    `stream_options` without `stream`. With `api_key`, it also wants the key:
    OpenAI in `Authorization: Bearer`, Anthropic in `x-api-key` or
    `Authorization: Bearer`, and an `anthropic-version` header (Ollama has no
    keys). `models` maps a model name to the `ModelRules` it follows, such as
    `{"o3": ModelRules(rejects=("max_tokens",))}`.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = FakeLLMServer(url, reply=reply, api_key=api_key, models=models)
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


@contextmanager
def open_fake_llm_server_in_thread(
    *,
    reply: str | Callable[[RecordedRequest], str] | None = None,
    api_key: str | None = None,
    models: Mapping[str, ModelRules] | None = None,
) -> Iterator[FakeLLMServer]:
    """`open_fake_llm_server()` run by trio in a thread of its own, for the duration of the block.

    For tests that are not on trio: synchronous ones, or ones that run
    asyncio (`asyncio.run`, the official SDKs' async clients). Script the
    server and read its `requests` from the test's thread as usual; `reply`,
    when a function, is called in the server's thread.
    """
    started: queue.Queue[FakeLLMServer | BaseException] = queue.Queue()
    stop = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        async with open_fake_llm_server(reply=reply, api_key=api_key, models=models) as server:
            started.put(server)
            await trio.to_thread.run_sync(stop.wait)

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)
            started.put(exc)  # in case it came before the server started

    thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
    thread.start()
    server = started.get()
    if isinstance(server, BaseException):
        thread.join()
        raise server
    try:
        yield server
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside `group` and any nested single-member groups, if just one."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
