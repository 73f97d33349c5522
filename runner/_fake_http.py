"""The fake LLM server's HTTP side, before any protocol has its say.

What goes in and out of `runner.testing`'s server whatever the protocol: the
`RecordedRequest` it keeps, the actions a script holds (`Reply`, `Fail`,
`Hang`...), the `_Answer` it sends as `_Chunk`s, and the h11 plumbing that
reads a request and sends an answer over a trio stream. The public classes
are re-exported by `runner.testing`; `_fake_wire` renders answers from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Literal, TypeAlias

import attrs
import h11
import trio

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


# -- recording requests ---------------------------------------------------------------


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
