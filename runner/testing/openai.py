"""How the fake LLM server speaks OpenAI's chat completions (`/v1/chat/completions`)."""

from __future__ import annotations

from typing import Any

from .actions import Fail, StreamError
from .dialect import Dialect, Plan, sse
from .http import Chunk
from .requests import as_dict

_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


class OpenAIDialect(Dialect):
    """Bodies and chunks with every field the API reference marks required, nulls included."""

    def id_headers(self, number: int) -> dict[str, str]:
        return {"x-request-id": f"req_fake{number}"}

    def body(self, plan: Plan) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text,
            "refusal": None,
            "annotations": [],
        }
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self._finish(plan),
        }
        body = {**self._envelope(plan, "chat.completion"), "choices": [choice]}
        if not plan.omit_usage:
            body["usage"] = self._usage(plan)
        return body

    def stream(self, plan: Plan) -> list[Chunk]:
        envelope = self._envelope(plan, "chat.completion.chunk")
        include_usage = bool(as_dict(plan.body.get("stream_options")).get("include_usage"))
        if include_usage and not plan.omit_usage:
            # Every chunk has `usage`: null, but the last one, which has the counts.
            envelope["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse({**envelope, "choices": [choice]})

        first = {"role": "assistant", "content": "", "refusal": None}
        chunks = [Chunk(chunk(first), "head")]
        chunks += [Chunk(chunk({"content": piece}), "text") for piece in plan.pieces]
        chunks.append(Chunk(chunk({}, self._finish(plan))))
        if include_usage and not plan.omit_usage:
            usage_chunk = {**envelope, "choices": [], "usage": self._usage(plan)}
            chunks.append(Chunk(sse(usage_chunk)))
        chunks.append(Chunk(b"data: [DONE]\n\n"))
        return chunks

    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]:
        # With neither an error type nor a code, both follow from the status.
        code = fail.code
        if code is None and fail.error_type is None:
            code = _CODES.get(fail.status)
        error_type = fail.error_type or self._error_type(fail.status, code)
        error = {"message": message, "type": error_type, "param": fail.param, "code": code}
        return {"error": error}

    def stream_error(self, error: StreamError) -> bytes:
        error_type = error.error_type or self.stream_error_type
        body = {"message": error.message, "type": error_type, "param": None, "code": error.code}
        return sse({"error": body})

    @staticmethod
    def _error_type(status: int, code: str | None) -> str:
        if code == "insufficient_quota":
            return "insufficient_quota"
        if status == 429:
            return "requests"
        return "server_error" if status >= 500 else "invalid_request_error"

    @staticmethod
    def _envelope(plan: Plan, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{plan.number}",
            "object": kind,
            "created": int(plan.created),
            "model": plan.model,
            "service_tier": "default",
            "system_fingerprint": None,
        }

    @staticmethod
    def _finish(plan: Plan) -> str:
        return plan.finish_reason or ("length" if plan.truncated else "stop")

    @staticmethod
    def _usage(plan: Plan) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
