"""Anthropic's Messages API.

`ANTHROPIC_BASE_URL` has no `/v1` (it is added per request), so a proxy or
gateway is reached with `ANTHROPIC_BASE_URL=https://gateway.example.com`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._http import Draft, HTTPProvider, SSEEvent, sse_lines, tokens
from .base import LLMRequest

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"

# The status each error type has outside a stream; it decides how an `event:
# error` inside a 200 stream is treated (overloaded_error is their 529).
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicProvider(HTTPProvider):
    """Calls `POST {ANTHROPIC_BASE_URL}/v1/messages`, plain or streamed (SSE)."""

    name = "anthropic"
    base_url_setting = "anthropic_base_url"
    api_key_setting = "anthropic_api_key"
    request_id_header = "request-id"

    def _url(self) -> str:
        return f"{self.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
            "temperature": request.temperature,
        }
        # There is no system role: the system prompt is a top-level field.
        if request.system:
            body["system"] = request.system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        # No `seed`: the API has none, and rejects unknown fields.
        body.update(request.options)
        # Set last: the reply is parsed as a stream or not according to request.stream.
        body["stream"] = request.stream
        return body

    def _parse(self, data: Any, draft: Draft) -> None:
        draft.parts.extend(block["text"] for block in data["content"] if block["type"] == "text")
        draft.finish_reason = data.get("stop_reason")
        _read_usage(data.get("usage"), draft)
        draft.model = data.get("model") or draft.model

    def _line_handler(self, draft: Draft) -> Callable[[str], bool]:
        def on_event(event: SSEEvent) -> bool:
            data = json.loads(event.data)
            # The event line names the event; a proxy that drops it leaves `type`.
            kind = data.get("type") if event.event == "message" else event.event
            if kind == "error":
                error = data["error"]
                raise self._stream_error(
                    error, as_status=_STATUS_OF_ERROR_TYPE.get(error.get("type"))
                )
            if kind == "message_start":
                message = data["message"]
                draft.model = message.get("model") or draft.model
                _read_usage(message.get("usage"), draft)
            elif kind == "content_block_delta":
                delta = data["delta"]
                if delta.get("type") == "text_delta":
                    draft.parts.append(delta["text"])
            elif kind == "message_delta":
                draft.finish_reason = data["delta"].get("stop_reason") or draft.finish_reason
                _read_usage(data.get("usage"), draft)
            # ping, content_block_start/stop and event types added later: nothing to read.
            return kind == "message_stop"

        return sse_lines(on_event)


def _read_usage(usage: Any, draft: Draft) -> None:
    # Only the fields present are read: message_delta's counts are running
    # totals, and message_start's output_tokens is a placeholder overwritten later.
    if not isinstance(usage, dict):
        return
    if "input_tokens" in usage:
        # Cached prompt tokens are billed apart but are part of the prompt, as in
        # OpenAI's prompt_tokens.
        parts = [usage.get(k) for k in ("cache_creation_input_tokens", "cache_read_input_tokens")]
        draft.input_tokens = tokens(usage["input_tokens"])
        if draft.input_tokens is not None:
            draft.input_tokens += sum(n for n in map(tokens, parts) if n is not None)
    if "output_tokens" in usage:
        draft.output_tokens = tokens(usage["output_tokens"])
