"""How the fake LLM server speaks Anthropic's Messages API (`/v1/messages`)."""

from __future__ import annotations

from typing import Any, Literal

from .actions import Fail, StreamError
from .dialect import Dialect, Plan, sse
from .http import Chunk

_TYPES = {
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
_STATUS_BY_TYPE = {error_type: status for status, error_type in _TYPES.items()}


class AnthropicDialect(Dialect):
    malformed_stream = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'
    stream_error_type = "overloaded_error"

    def id_headers(self, number: int) -> dict[str, str]:
        return {"request-id": f"req_fake{number}"}

    def error_status(self, error_type: str) -> int:
        return _STATUS_BY_TYPE.get(error_type, 500)

    def body(self, plan: Plan) -> dict[str, Any]:
        body = self._message(plan, [{"type": "text", "text": plan.text}], *self._stop(plan))
        if not plan.omit_usage:
            body["usage"] = {"input_tokens": plan.input_tokens, "output_tokens": plan.output_tokens}
        return body

    def stream(self, plan: Plan) -> list[Chunk]:
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
        body = {"type": error.error_type or self.stream_error_type, "message": error.message}
        return sse({"type": "error", "error": body}, event="error")

    @staticmethod
    def _event(kind: Literal["head", "text", "tail"], **payload: Any) -> Chunk:
        return Chunk(sse(payload, event=payload["type"]), kind)

    @staticmethod
    def _error_type(status: int) -> str:
        default = "api_error" if status >= 500 else "invalid_request_error"
        return _TYPES.get(status, default)

    @staticmethod
    def _message(
        plan: Plan,
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
    def _stop(plan: Plan) -> tuple[str, str | None]:
        reason = plan.finish_reason or ("max_tokens" if plan.truncated else "end_turn")
        sequences = plan.body.get("stop_sequences")
        if reason == "stop_sequence" and isinstance(sequences, list) and sequences:
            return reason, str(sequences[0])
        return reason, None
