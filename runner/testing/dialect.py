"""What each protocol's answers are made from: a `Plan` of the reply and the `Dialect` that says it.

A normal reply is worked out once (`make_plan()`: the text, its pieces for a
stream, token counts, whether `max_tokens` cut it short) and then rendered by
the request's `Dialect`: `runner.testing.openai`, `.anthropic` or `.ollama`.
"""

from __future__ import annotations

import abc
import json
import re
import time
from typing import Any

import attrs

from .actions import Fail, Reply, StreamError
from .http import Chunk
from .requests import RecordedRequest, as_dict, input_words, max_tokens


@attrs.frozen
class Plan:
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


def make_plan(request: RecordedRequest, reply: Reply, text: str, number: int) -> Plan:
    """The `Plan` for answering the server's `number`th request with `text`."""
    body = as_dict(request.body)
    # Each piece is one word with the whitespace around it, so pieces join back to the text.
    pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    limit = max_tokens(request.protocol, body)
    truncated = limit is not None and len(pieces) > limit
    if truncated:
        pieces = pieces[:limit]
        pieces[-1:] = [piece.rstrip() for piece in pieces[-1:]]
        text = "".join(pieces)
    return Plan(
        number=number,
        model=str(body.get("model", "fake-model")),
        body=body,
        text=text,
        pieces=pieces,
        truncated=truncated,
        input_tokens=input_words(body) if reply.input_tokens is None else reply.input_tokens,
        output_tokens=len(text.split()) if reply.output_tokens is None else reply.output_tokens,
        finish_reason=reply.finish_reason,
        omit_usage=reply.omit_usage,
        created=time.time(),
    )


class Dialect(abc.ABC):
    """How one protocol says a reply, an error and a broken stream."""

    stream_content_type = "text/event-stream"
    json_content_type = "application/json"
    malformed_stream = b'data: {"id": "malformed", "choices": [\n\n'
    # The error type of a `StreamError` that names none.
    stream_error_type = "server_error"

    def id_headers(self, number: int) -> dict[str, str]:
        return {}

    def error_status(self, error_type: str) -> int:
        """The status of an error response for `error_type`, when there is no stream to break."""
        return 500

    @abc.abstractmethod
    def body(self, plan: Plan) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stream(self, plan: Plan) -> list[Chunk]: ...

    @abc.abstractmethod
    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stream_error(self, error: StreamError) -> bytes: ...


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def sse(payload: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(payload)}\n\n".encode()
