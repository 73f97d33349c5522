"""What a script can tell the fake LLM server to do with the next request.

`Reply` answers normally; `Fail` answers with an HTTP error; `Hang`, `Drop`,
`Stall`, `Malformed` and `StreamError` break the connection or the body in
the ways real services and networks do. `server.script(...)` takes any of
them (`Action`), and `fail_times()` repeats a `Fail`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import attrs


@attrs.frozen
class Reply:
    """Answer normally, after `delay_s` seconds.

    `text` defaults to the server's `reply`. Token counts default to word
    counts; `omit_usage` leaves usage out where the protocol allows it.
    `finish_reason` is sent as given, in the protocol's own vocabulary.

    `mode` forces the shape of the answer: "json" answers a streamed request
    with one JSON body (a server that ignores `stream: true`), "stream"
    answers a plain request with a stream; None answers as the request asked.
    In a stream, `chunk_delay_s` is the pause before each piece of text after
    the first, and before the stream's end: the text arrives one word at a
    time, that far apart.
    """

    text: str | None = None
    delay_s: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    omit_usage: bool = False
    mode: Literal["json", "stream"] | None = None
    chunk_delay_s: float = 0.0


@attrs.frozen
class Fail:
    """Answer with HTTP `status` and the protocol's error body, after `delay_s` seconds.

    `retry_after` and `retry_after_ms` become the `retry-after` and
    `retry-after-ms` headers (pass an HTTP-date string as is); `headers` adds
    any others, such as `{"x-should-retry": "false"}`. `code` and `param` only
    exist in OpenAI's error shape; given neither `error_type` nor `code`, the
    error's type and code are those the service uses for `status`.

    `Fail(200, "Overloaded", error_type="overloaded_error")` sends the error
    body with a 200 status, as some proxies and gateways do: a client has to
    read the provider's message out of a successful response.
    """

    status: int
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
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
    """Stream `after_chunks` pieces of text, then go silent (non-streaming: only headers).

    With `resume_after_s`, the silence ends after that many seconds and the
    rest of the answer follows; without it, it lasts until the client leaves.
    """

    after_chunks: int = 1
    resume_after_s: float | None = None


@attrs.frozen
class StreamError:
    """Stream `after_chunks` pieces of text, then an error event in the protocol's own shape.

    `error_type` defaults to the protocol's usual one: `overloaded_error` for
    Anthropic, `server_error` for OpenAI (Ollama's error has only a message).
    `code` only exists in OpenAI's error shape. A non-streaming request gets
    the error as an error response instead: the status Anthropic uses for
    the error type (529 for `overloaded_error`), else 500.
    """

    after_chunks: int = 1
    message: str = "Overloaded"
    error_type: str | None = None
    code: str | None = None


Action: TypeAlias = Reply | Fail | Hang | Malformed | Drop | Stall | StreamError


def fail_times(n: int, status: int = 503, **kw: Any) -> tuple[Fail, ...]:
    """`n` identical failures, for `server.script(*fail_times(2), Reply())`."""
    return (Fail(status, **kw),) * n
