"""Ollama's chat API, for models served on your own machine (no key, no cost)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._http import Draft, HTTPProvider, tokens
from ._lines import ndjson_lines
from .base import LLMRequest

__all__ = ["OllamaProvider"]

# Request options that Ollama reads at the top level of the body, not in `options`.
_TOP_LEVEL_OPTIONS = frozenset({"keep_alive", "format", "think"})


class OllamaProvider(HTTPProvider):
    """Calls `POST {OLLAMA_HOST}/api/chat`, plain or streamed (NDJSON).

    `request.options` go into Ollama's `options` (`num_ctx`, `top_k`...),
    except `keep_alive`, `format` and `think`, which Ollama reads at the top
    level. A model that is not pulled is a 404, a permanent error.
    """

    name = "ollama"
    base_url_setting = "ollama_host"

    def _url(self) -> str:
        return f"{self.base_url}/api/chat"

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.prompt})
        # Only what the pipeline sets; the model's own Modelfile decides the rest.
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.seed is not None:
            options["seed"] = request.seed
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        for key, value in request.options.items():
            (body if key in _TOP_LEVEL_OPTIONS else options)[key] = value
        if options:
            body["options"] = options
        # Always explicit: Ollama streams unless told not to.
        body["stream"] = request.stream
        for field in request.omit:
            body.pop(field, None)
        return body

    def _parse(self, data: Any, draft: Draft) -> None:
        self._read_object(data, draft)

    def _line_handler(self, draft: Draft) -> Callable[[str], bool]:
        return ndjson_lines(lambda data: self._read_object(data, draft))

    def _read_object(self, data: Any, draft: Draft) -> bool:
        # An error can arrive as a line of a 200 stream: look for it before `done`.
        if data.get("error"):
            raise self._error_object(data["error"])
        draft.parts.append(data["message"].get("content") or "")
        draft.model = data.get("model") or draft.model
        if not data.get("done"):
            return False
        draft.finish_reason = data.get("done_reason")
        # prompt_eval_count is absent when the whole prompt came from Ollama's cache.
        draft.input_tokens = tokens(data.get("prompt_eval_count"))
        draft.output_tokens = tokens(data.get("eval_count"))
        return True
