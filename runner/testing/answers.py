"""What the fake LLM server answers to each scripted action, in the request's own protocol.

`reply_answer()`, `error_answer()`, `malformed_answer()` and
`stream_error_answer()` turn a `RecordedRequest` and an action into an
`Answer`: a JSON body, an SSE or NDJSON stream, or an error body, with the
protocol's request-id headers. Sending it is the server's job. The request
has passed `runner.testing.strict`'s checks by then.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .actions import Fail, Reply, StreamError
from .anthropic import AnthropicDialect
from .dialect import Dialect, json_bytes, make_plan
from .http import Answer, Chunk, first_pieces, reason
from .ollama import OllamaDialect
from .openai import OpenAIDialect
from .requests import ProtocolName, RecordedRequest, as_dict

DIALECTS: dict[ProtocolName, Dialect] = {
    "openai": OpenAIDialect(),
    "anthropic": AnthropicDialect(),
    "ollama": OllamaDialect(),
}


def reply_answer(
    request: RecordedRequest,
    number: int,
    reply: Reply,
    default_text: Callable[[RecordedRequest], str],
) -> Answer:
    """A normal reply, streamed or not as `reply.mode` or the request says."""
    text = reply.text if reply.text is not None else default_text(request)
    plan = make_plan(request, reply, text, number)
    dialect = DIALECTS[request.protocol]
    headers = dialect.id_headers(number)
    streamed = request.stream if reply.mode is None else reply.mode == "stream"
    if streamed:
        headers = {"content-type": dialect.stream_content_type, **headers}
        chunks = dialect.stream(plan)
        return Answer(200, headers, chunks, streamed=True, chunk_delay_s=reply.chunk_delay_s)
    headers = {"content-type": dialect.json_content_type, **headers}
    return Answer(200, headers, [Chunk(json_bytes(dialect.body(plan)))])


def stream_error_answer(
    request: RecordedRequest,
    number: int,
    error: StreamError,
    default_text: Callable[[RecordedRequest], str],
) -> Answer:
    """A stream broken by an error event, or an error response when there is no stream."""
    dialect = DIALECTS[request.protocol]
    if not request.stream:
        error_type = error.error_type or dialect.stream_error_type
        fail = Fail(dialect.error_status(error_type), error.message, error_type, error.code)
        return error_answer(request, number, fail)
    answer = reply_answer(request, number, Reply(), default_text)
    error_chunk = Chunk(dialect.stream_error(error))
    chunks = [*first_pieces(answer.chunks, error.after_chunks), error_chunk]
    return attrs.evolve(answer, chunks=chunks)


def error_answer(request: RecordedRequest, number: int, fail: Fail) -> Answer:
    """`fail` as the protocol's error response, with its retry headers."""
    dialect = DIALECTS[request.protocol]
    model = str(as_dict(request.body).get("model", "unknown"))
    message = fail.message or _default_message(fail.status, model)
    headers = {"content-type": "application/json", **dialect.id_headers(number)}
    if fail.retry_after is not None:
        headers["retry-after"] = fail.retry_after
    if fail.retry_after_ms is not None:
        headers["retry-after-ms"] = fail.retry_after_ms
    headers.update((name.lower(), value) for name, value in fail.headers.items())
    payload = dialect.error_body(fail, message, number)
    return Answer(fail.status, headers, [Chunk(json_bytes(payload))])


def malformed_answer(request: RecordedRequest, number: int, status: int) -> Answer:
    """A body cut off inside its JSON, or a stream whose event is; `status` as given."""
    dialect = DIALECTS[request.protocol]
    headers = dialect.id_headers(number)
    if request.stream and status == 200:
        headers = {"content-type": dialect.stream_content_type, **headers}
        return Answer(200, headers, [Chunk(dialect.malformed_stream)], streamed=True)
    headers = {"content-type": "application/json", **headers}
    return Answer(status, headers, [Chunk(b'{"id": "malformed", "choices": [')])


def _default_message(status: int, model: str) -> str:
    if status == 404:
        return f"model '{model}' not found"
    return reason(status) or f"error {status}"
