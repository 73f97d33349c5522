"""What every provider implements, and what goes in and out of a call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["Heard", "LLMRequest", "LLMResponse", "Provider", "nobody_listens"]


@attrs.frozen
class LLMRequest:
    """One call to a model: the rendered prompt and every parameter that shapes the output.

    A generation parameter left as None (or empty) is not sent: the model uses its own
    default. `omit` names fields the provider would otherwise send, to leave out.
    `step` names the pipeline step making the call (the fake provider uses it to
    find a scripted reply). `options` holds provider-specific extras, sent as is.
    """

    model: str
    prompt: str
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    omit: tuple[str, ...] = ()
    stream: bool = False
    step: str = ""
    #: Seconds of silence (no byte) after which an attempt fails; providers bound their
    #: own I/O waits by it too.
    timeout_s: float | None = None


@attrs.frozen
class LLMResponse:
    """What came back. Token counts the provider did not report are `None`, never 0.

    `streamed` says how the answer actually came (a server may ignore `stream`).
    """

    text: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    request_id: str | None = None
    streamed: bool | None = None


#: Called by a provider for every piece of an answer it receives: the attempt's
#: silence deadline moves forward (see `ProviderLane`).
Heard = Callable[[], None]


def nobody_listens() -> None:
    """The default `heard`: nobody listens."""


@runtime_checkable
class Provider(Protocol):
    """An LLM backend.

    `complete()` makes exactly one attempt: it raises a `ProviderError`
    subclass on failure (`RetryableProviderError` or `PermanentProviderError`)
    and never retries by itself; retries, deadlines and the circuit breaker
    are the caller's job. It calls `heard()` whenever a piece of the answer
    arrives (the headers, each chunk), so that the caller's deadline measures
    silence, not the length of a healthy stream.

    `prepare(model)` runs before a call's first attempt, outside its deadline:
    a provider that starts its own server (`local`) starts it there and returns
    what it started (the `provider.started` event's data), the others return
    None. `cache_identity(model)` says where answers come from, for cache keys
    (the base URL; for `local`, the model file's SHA-256). `base_url` is shown
    in events. `aclose()` releases the provider's connections and servers.
    """

    name: str
    base_url: str

    async def prepare(self, model: str) -> dict[str, Any] | None: ...

    async def cache_identity(self, model: str) -> str: ...

    async def complete(self, request: LLMRequest, *, heard: Heard = ...) -> LLMResponse: ...

    async def aclose(self) -> None: ...
