"""Anthropic's Messages API.

`ANTHROPIC_BASE_URL` has no `/v1` (it is added per request), so a proxy or
gateway is reached with `ANTHROPIC_BASE_URL=https://gateway.example.com`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._http import Draft, HTTPProvider, tokens
from ._lines import SSEEvent, sse_lines
from .base import LLMRequest

__all__ = ["AnthropicProvider"]

# The API requires max_tokens: what is sent when the pipeline sets none.
DEFAULT_MAX_TOKENS = 2048


class AnthropicProvider(HTTPProvider):
    """Calls `POST {ANTHROPIC_BASE_URL}/v1/messages`, plain or streamed (SSE)."""

    name = "anthropic"
    base_url_setting = "anthropic_base_url"
    api_key_setting = "anthropic_api_key"
    api_key_variable = "ANTHROPIC_API_KEY"
    official_host = "api.anthropic.com"
    request_id_header = "request-id"

    def _url(self) -> str:
        return f"{self.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.settings.anthropic_version}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        # Only what the pipeline sets: models from Opus 4.7 on refuse any temperature.
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        # There is no system role: the system prompt is a top-level field.
        if request.system:
            body["system"] = request.system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        # No `seed`: the API has none, and rejects unknown fields.
        body.update(request.options)
        body["stream"] = request.stream
        for field in request.omit:
            body.pop(field, None)
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
                raise self._error_object(data["error"])
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
