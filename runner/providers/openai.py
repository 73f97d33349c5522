"""OpenAI chat completions, and every server that speaks the same API.

`OPENAI_BASE_URL` includes `/v1`, like the official SDK, so vLLM, the
llama.cpp server, LM Studio or a LiteLLM proxy work by pointing it there::

    OPENAI_BASE_URL=http://localhost:8080/v1 runner run pipeline.toml

The key (`OPENAI_API_KEY`) is sent only when set: local servers need none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ._http import Draft, HTTPProvider, tokens
from ._lines import SSEEvent, sse_lines
from .base import LLMRequest

__all__ = ["OFFICIAL_HOST", "OpenAIProvider"]

OFFICIAL_HOST = "api.openai.com"
_TOKEN_FIELDS = frozenset({"max_tokens", "max_completion_tokens"})


class OpenAIProvider(HTTPProvider):
    """Calls `POST {OPENAI_BASE_URL}/chat/completions`, plain or streamed (SSE)."""

    name = "openai"
    base_url_setting = "openai_base_url"
    api_key_setting = "openai_api_key"
    api_key_variable = "OPENAI_API_KEY"
    official_host = OFFICIAL_HOST
    request_id_header = "x-request-id"

    def _url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _token_limit_field(self) -> str:
        """`max_completion_tokens` for OpenAI's own API (its reasoning models refuse
        `max_tokens`), `max_tokens` for the compatible servers that only know it;
        `token_limit_field` in `[providers.openai]` chooses."""
        chosen = self.config.get("token_limit_field")
        if isinstance(chosen, str):
            return chosen
        official = urlsplit(self.base_url).hostname == OFFICIAL_HOST
        return "max_completion_tokens" if official else "max_tokens"

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        # Only what the pipeline sets: reasoning models refuse temperature 0.
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[self._token_limit_field()] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if _TOKEN_FIELDS.intersection(request.options):
            # The model refuses a request that carries both.
            for field in _TOKEN_FIELDS:
                body.pop(field, None)
        body.update(request.options)
        # Set last: the API rejects stream_options on a request that does not stream.
        body.pop("stream_options", None)
        body["stream"] = request.stream
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        for field in request.omit:
            body.pop(field, None)
        return body

    def _parse(self, data: Any, draft: Draft) -> None:
        choice = data["choices"][0]
        draft.parts.append(choice["message"].get("content") or "")
        draft.finish_reason = choice.get("finish_reason")
        _read_common(data, draft)

    def _line_handler(self, draft: Draft) -> Callable[[str], bool]:
        def on_event(event: SSEEvent) -> bool:
            if event.data.strip() == "[DONE]":
                return True
            chunk = json.loads(event.data)
            if chunk.get("error"):
                raise self._error_object(chunk["error"])
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                draft.parts.append((choice.get("delta") or {}).get("content") or "")
                draft.finish_reason = choice.get("finish_reason") or draft.finish_reason
            _read_common(chunk, draft)
            return False

        return sse_lines(on_event)


def _read_common(data: Any, draft: Draft) -> None:
    # In a stream, `usage` is null on every chunk but the last (include_usage).
    usage = data.get("usage")
    if isinstance(usage, dict):
        draft.input_tokens = tokens(usage.get("prompt_tokens"))
        draft.output_tokens = tokens(usage.get("completion_tokens"))
    if isinstance(data.get("model"), str) and data["model"]:
        draft.model = data["model"]
