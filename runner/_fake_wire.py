"""How the fake LLM server answers in OpenAI's, Anthropic's and Ollama's own words.

`_reply_answer`, `_error_answer`, `_malformed_answer` and `_stream_error_answer`
turn a `RecordedRequest` and a scripted action into an `_Answer` in the
request's protocol: JSON bodies, SSE or NDJSON streams, usage counts, error
bodies and request-id headers. Sending it is `runner.testing`'s job.
"""

from __future__ import annotations

import abc
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

from ._fake_http import (
    Fail,
    RecordedRequest,
    Reply,
    StreamError,
    _Answer,
    _Chunk,
    _first_pieces,
    _messages,
    _object,
    _ProtocolName,
    _reason,
    _text_of,
)

# -- answers --------------------------------------------------------------------------


def _reply_answer(
    request: RecordedRequest,
    number: int,
    reply: Reply,
    default_text: Callable[[RecordedRequest], str],
) -> _Answer:
    """A normal reply, or the 400 the real service would send; `default_text` only if needed."""
    problem = _problem(request)
    if problem is not None:
        return _error_answer(request, number, Fail(400, problem))
    text = reply.text if reply.text is not None else default_text(request)
    plan = _make_plan(request, reply, text, number)
    dialect = _DIALECTS[request.protocol]
    headers = dialect.id_headers(number)
    if request.stream:
        headers = {"content-type": dialect.stream_content_type, **headers}
        return _Answer(200, headers, dialect.stream(plan), streamed=True)
    headers = {"content-type": dialect.json_content_type, **headers}
    return _Answer(200, headers, [_Chunk(_json(dialect.body(plan)))])


def _stream_error_answer(
    request: RecordedRequest,
    number: int,
    error: StreamError,
    default_text: Callable[[RecordedRequest], str],
) -> _Answer:
    if not request.stream:
        status = 500
        if request.protocol == "anthropic":
            status = _ANTHROPIC_STATUS_BY_TYPE.get(error.error_type, 500)
        fail = Fail(status, error.message, error.error_type)
        return _error_answer(request, number, fail)
    answer = _reply_answer(request, number, Reply(), default_text)
    if answer.status != 200:
        return answer
    error_chunk = _Chunk(_DIALECTS[request.protocol].stream_error(error))
    chunks = [*_first_pieces(answer.chunks, error.after_chunks), error_chunk]
    return attrs.evolve(answer, chunks=chunks)


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


# -- reading requests -----------------------------------------------------------------


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
