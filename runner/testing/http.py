"""HTTP/1.1 for the fake LLM server, on h11 and a trio stream, whatever the protocol.

An `Answer` is a status, headers and a body in `Chunk`s. `receive_request()`
reads the next request off a connection; `send()` writes an answer, whole or
cut short for the faults that stop half way, and `send_body()` the rest of it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

import attrs
import h11
import trio


@attrs.frozen
class Chunk:
    """One piece of a response body; `kind` tells stream preambles from text pieces."""

    data: bytes
    kind: Literal["head", "text", "tail"] = "tail"


@attrs.frozen
class Answer:
    """A whole response; `streamed` answers go out chunked, the others with a length.

    `chunk_delay_s` is the pause before each chunk that follows a piece of text.
    """

    status: int
    headers: dict[str, str]
    chunks: list[Chunk]
    streamed: bool = False
    chunk_delay_s: float = 0.0

    def head(self) -> h11.Response:
        headers = dict(self.headers)
        if not self.streamed:  # streamed answers go out chunked
            headers["content-length"] = str(sum(len(chunk.data) for chunk in self.chunks))
        return h11.Response(
            status_code=self.status, headers=list(headers.items()), reason=reason(self.status)
        )


async def receive_request(
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


async def send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    answer: Answer,
    chunks: list[Chunk] | None = None,
    *,
    end: bool = True,
) -> None:
    """Send `answer`'s head, then `chunks` (default: all of them), then end the message."""
    await _send_event(stream, conn, answer.head())
    chunks = answer.chunks if chunks is None else chunks
    await send_body(stream, conn, chunks, end=end, chunk_delay_s=answer.chunk_delay_s)


async def send_body(
    stream: trio.SocketStream,
    conn: h11.Connection,
    chunks: list[Chunk],
    *,
    end: bool = True,
    chunk_delay_s: float = 0.0,
) -> None:
    """Send `chunks` of a response whose head is out, pausing after text; then end it."""
    after_text = False
    for chunk in chunks:
        if after_text and chunk_delay_s > 0:
            await trio.sleep(chunk_delay_s)
        await _send_event(stream, conn, h11.Data(data=chunk.data))
        after_text = after_text or chunk.kind == "text"
    if end:
        await _send_event(stream, conn, h11.EndOfMessage())


async def send_bad_request(stream: trio.SocketStream, conn: h11.Connection) -> None:
    """Answer 400 to a request h11 could not parse, if a response can still be sent."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = {"content-type": "text/plain", "connection": "close"}
    try:
        await send(stream, conn, Answer(400, headers, [Chunk(b"bad request\n")]))
    except h11.LocalProtocolError:
        pass  # h11 cannot frame a response to this mess; closing says enough


async def wait_until_client_leaves(stream: trio.SocketStream) -> None:
    while await stream.receive_some():
        pass


def first_pieces(chunks: list[Chunk], count: int) -> list[Chunk]:
    """A stream's preamble and its first `count` text pieces."""
    return split_stream(chunks, count)[0]


def split_stream(chunks: list[Chunk], count: int) -> tuple[list[Chunk], list[Chunk]]:
    """A stream's preamble and first `count` text pieces, and everything after them."""
    cut = 0
    texts = 0
    for index, chunk in enumerate(chunks):
        if chunk.kind == "text":
            if texts == count:
                break
            texts += 1
        elif chunk.kind != "head":
            break
        cut = index + 1
    return chunks[:cut], chunks[cut:]


def reason(status: int) -> str:
    """The reason phrase for `status` ("" when HTTP has none)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else ""


async def _send_event(stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)
