"""The offline provider: deterministic, no network, the default.

Configured by the pipeline's `[providers.fake]` table::

    [providers.fake]
    latency_s = 0.2                      # optional: pretend each call takes this long
    [providers.fake.replies]             # optional: a scripted reply per step
    builder = '''```python path=app.py
    print("hi")
    ```'''
    [providers.fake.errors]              # optional: make a step's call fail permanently
    reviewer = "model is on strike"

A step with no scripted reply gets its rendered prompt echoed back: a dry run
that shows exactly what would be sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import trio

from ..config import Settings
from ..errors import PermanentProviderError
from .base import Heard, LLMRequest, LLMResponse

__all__ = ["FakeProvider"]


def _tokens(text: str) -> int:
    # About four characters a token, like the real tokenizers on English.
    return max(1, math.ceil(len(text) / 4))


class FakeProvider:
    name = "fake"
    base_url = "fake://"

    def __init__(self, settings: Settings | None = None, config: Mapping[str, Any] | None = None):
        config = config or {}
        self.replies: Mapping[str, str] = config.get("replies", {})
        self.errors: Mapping[str, str] = config.get("errors", {})
        self.latency_s = float(config.get("latency_s", 0.0))

    async def prepare(self, model: str) -> dict[str, Any] | None:
        return None

    async def cache_identity(self, model: str) -> str:
        return self.base_url

    async def complete(self, request: LLMRequest, *, heard: Heard | None = None) -> LLMResponse:
        if self.latency_s:
            await trio.sleep(self.latency_s)
        else:
            await trio.lowlevel.checkpoint()
        if request.step in self.errors:
            raise PermanentProviderError(self.errors[request.step], provider=self.name, status=400)
        text = self.replies.get(request.step)
        if text is None:
            text = request.prompt
        prompt_chars = len(request.prompt) + len(request.system or "")
        output_tokens = _tokens(text)
        finish = "stop"
        if request.max_tokens is not None and output_tokens > request.max_tokens:
            text, output_tokens, finish = (
                text[: request.max_tokens * 4],
                request.max_tokens,
                "length",
            )
        return LLMResponse(
            text=text,
            model=request.model,
            input_tokens=max(1, math.ceil(prompt_chars / 4)),
            output_tokens=output_tokens,
            finish_reason=finish,
        )

    async def aclose(self) -> None:
        return None
