"""What every provider implements, and what goes in and out of a call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["LLMRequest", "LLMResponse", "Provider"]


@attrs.frozen
class LLMRequest:
    """One call to a model: the rendered prompt and every parameter that shapes the output.

    `step` names the pipeline step making the call (the fake provider uses it to
    find a scripted reply). `options` holds provider-specific extras, sent as is.
    """

    model: str
    prompt: str
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    stop: tuple[str, ...] = ()
    seed: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    stream: bool = False
    step: str = ""
    #: The attempt's deadline; providers also bound their own I/O waits by it.
    timeout_s: float | None = None


@attrs.frozen
class LLMResponse:
    """What came back. Token counts the provider did not report are `None`, never 0."""

    text: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    request_id: str | None = None


@runtime_checkable
class Provider(Protocol):
    """An LLM backend.

    `complete()` makes exactly one attempt: it raises a `ProviderError`
    subclass on failure (`RetryableProviderError` or `PermanentProviderError`)
    and never retries by itself; retries, deadlines and the circuit breaker
    are the caller's job. `base_url` goes into cache keys. `aclose()` releases
    the provider's connections.
    """

    name: str
    base_url: str

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...
