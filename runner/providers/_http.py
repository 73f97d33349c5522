"""What the HTTP providers (OpenAI, Anthropic, Ollama) share, written once.

A provider subclasses `HTTPProvider` and describes its wire format (URL,
headers, body, how to read a reply or a stream line); this module does the
rest: the `httpx.AsyncClient`, a response closed however the call ends,
`Retry-After`, SSE / NDJSON lines, and failures translated into the
`ProviderError` tree by the official SDKs' rules:

==========================================  =====================================
what came back                              raised
==========================================  =====================================
``x-should-retry: true`` / ``false``        retryable / permanent, whatever else
error code for no quota, billing, or        `PermanentProviderError`
context too long (see _PERMANENT_CODES)
429 naming a spend or usage limit           `PermanentProviderError`
429                                         `RateLimitError`
408, 409, 5xx (529 included)                `RetryableProviderError`
other non-2xx (400, 401, 403, 404, 422...)  `PermanentProviderError`
timeout / broken or refused connection      `ProviderTimeoutError` / `ProviderConnectionError`
2xx body we cannot read                     `MalformedResponseError` (retryable)
error inside a 200 stream                   `ProviderStreamError` (retryable) unless
                                            the rules above say otherwise
==========================================  =====================================
"""

from __future__ import annotations

import abc
import email.utils
import functools
import json
import re
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import trio

from ..config import Settings
from ..errors import (
    MalformedResponseError,
    PermanentProviderError,
    ProviderConnectionError,
    ProviderError,
    ProviderStreamError,
    ProviderTimeoutError,
    RateLimitError,
    RetryableProviderError,
)
from ._clients import ClientPool
from .base import LLMRequest, LLMResponse

__all__ = [
    "Draft",
    "HTTPProvider",
    "SSEDecoder",
    "SSEEvent",
    "classify",
    "ndjson_lines",
    "parse_retry_after",
    "sse_lines",
    "tokens",
]

_E = TypeVar("_E", bound=ProviderError)

# json pairs up valid surrogate escapes, so any surrogate left in a str is half a pair.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Codes that mean "this will fail the same way next time", whatever the status.
_PERMANENT_CODES = frozenset({"insufficient_quota", "context_length_exceeded", "billing_error"})
# A 429 that is about money, not speed: waiting a few seconds will not help.
_SPEND_LIMIT = re.compile(r"spend(ing)? limit|usage limit|credit balance", re.IGNORECASE)
# What a body of the wrong shape raises while we pick it apart.
_PARSE_ERRORS = (LookupError, TypeError, AttributeError, ValueError)
_MAX_MESSAGE_CHARS = 500


def classify(
    status: int | None,
    codes: Collection[str] = (),
    message: str = "",
    should_retry: str | None = None,
) -> type[ProviderError]:
    """Which `ProviderError` a failure is; `status` is None for an error inside a stream."""
    flag = (should_retry or "").strip().lower()
    if flag == "true":
        return RateLimitError if status == 429 else RetryableProviderError
    if flag == "false":
        return PermanentProviderError
    if _PERMANENT_CODES.intersection(codes):
        return PermanentProviderError
    if status == 429:
        return PermanentProviderError if _SPEND_LIMIT.search(message) else RateLimitError
    if status is None:
        return ProviderStreamError
    if status in (408, 409) or status >= 500:
        return RetryableProviderError
    return PermanentProviderError


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The delay in seconds the server asked for, or None.

    `retry-after-ms` wins over `retry-after` (seconds, or an HTTP-date). Like
    the official SDKs, only 0 < delay <= 60 is trusted; anything else is left
    to our own backoff.
    """
    delay: float | None = None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            delay = float(raw_ms) / 1000
        except ValueError:
            delay = None
    raw = headers.get("retry-after")
    if delay is None and raw is not None:
        try:
            delay = float(raw)
        except ValueError:
            parsed = email.utils.parsedate_tz(raw)
            if parsed is not None:
                delay = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if delay is None or not 0 < delay <= 60:
        return None
    return delay


def tokens(value: object) -> int | None:
    """A token count as reported, or None when absent or not a count (never a made-up 0)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@attrs.define
class Draft:
    """A reply being assembled, from one body or from many stream chunks."""

    model: str
    parts: list[str] = attrs.Factory(list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None


@attrs.frozen
class SSEEvent:
    event: str
    data: str


class SSEDecoder:
    """Turns server-sent-event lines into events (the WHATWG rules we need)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line (without its newline); return an event when a blank line ends one."""
        if not line:
            event = None
            if self._data:  # a blank line after no data dispatches nothing
                event = SSEEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):  # a comment, used as a keep-alive
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def sse_lines(on_event: Callable[[SSEEvent], bool]) -> Callable[[str], bool]:
    """Adapt an event handler (returns True when the reply is complete) to a line handler."""
    decoder = SSEDecoder()

    def on_line(line: str) -> bool:
        event = decoder.feed(line)
        return event is not None and on_event(event)

    return on_line


def ndjson_lines(on_object: Callable[[Any], bool]) -> Callable[[str], bool]:
    """Adapt a handler of parsed JSON objects to a line handler, skipping blank lines."""

    def on_line(line: str) -> bool:
        return bool(line.strip()) and on_object(json.loads(line))

    return on_line


def _error_details(error: object) -> tuple[str, set[str]]:
    # Covers `{"message", "type", "code"}` (OpenAI, Anthropic) and a bare string (Ollama).
    if isinstance(error, dict):
        codes = {v for k in ("type", "code") if isinstance(v := error.get(k), str) and v}
        message = error.get("message")
        return (message if isinstance(message, str) else json.dumps(error)), codes
    return str(error), set()


class HTTPProvider(abc.ABC):
    """Base of the HTTP providers: subclasses fill in the wire format.

    The caller bounds the whole call with a trio cancel scope; `httpx.Timeout`
    (from `provider_timeout_s`) only bounds each connect, read and write.
    `transport` replaces the network, for tests (`httpx.MockTransport`).
    """

    name: str
    base_url: str
    #: Response header holding the provider's request id, if it sends one.
    request_id_header: str | None = None
    #: The `Settings` fields holding this provider's address and key.
    base_url_setting: str
    api_key_setting: str | None = None

    def __init__(
        self,
        settings: Settings,
        config: Mapping[str, Any] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # `config` is the pipeline's [providers.NAME] table: nothing in it concerns the
        # wire (max_concurrency and stream are the supervisor's and the step's business).
        self.base_url = str(getattr(settings, self.base_url_setting)).rstrip("/")
        key = getattr(settings, self.api_key_setting) if self.api_key_setting else None
        self._api_key: str | None = key or None
        self._clients = ClientPool(
            timeout_s=settings.provider_timeout_s,
            transport=transport,
            verify=_shared_ssl_context(),
        )

    @abc.abstractmethod
    def _url(self) -> str:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def _body(self, request: LLMRequest) -> dict[str, Any]:
        raise NotImplementedError

    @abc.abstractmethod
    def _parse(self, data: Any, draft: Draft) -> None:
        """Fill `draft` from a whole (non-streamed) JSON reply."""
        raise NotImplementedError

    @abc.abstractmethod
    def _line_handler(self, draft: Draft) -> Callable[[str], bool]:
        """A function that takes each line of a stream and says when the reply is complete."""
        raise NotImplementedError

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one attempt; raise a `ProviderError` on failure (see the module docstring)."""
        draft = Draft(model=request.model)
        try:
            with self._clients.lease() as client:
                return await self._attempt(client, request, draft)
        except httpx.TimeoutException as exc:
            raise self._error(ProviderTimeoutError, f"timed out ({_describe(exc)})") from exc
        except httpx.TransportError as exc:
            message = f"connection failed ({_describe(exc)})"
            raise self._error(ProviderConnectionError, message) from exc
        except httpx.DecodingError as exc:
            raise self._malformed(exc) from exc

    async def _attempt(
        self, client: httpx.AsyncClient, request: LLMRequest, draft: Draft
    ) -> LLMResponse:
        # `stream()` even for a plain reply: its `async with` closes the response
        # however we leave, so a cancelled call frees its connection.
        async with client.stream(
            "POST",
            self._url(),
            json=self._body(request),
            headers=self._headers(),
            # A step's timeout_s may be longer than PROVIDER_TIMEOUT_S, the client's default.
            timeout=httpx.Timeout(request.timeout_s)
            if request.timeout_s
            else httpx.USE_CLIENT_DEFAULT,
        ) as response:
            if not response.is_success:
                await response.aread()
                raise self._status_error(response)
            if request.stream:
                await self._read_lines(response, self._line_handler(draft))
            else:
                body = await response.aread()
                try:
                    self._parse(json.loads(body), draft)
                except _PARSE_ERRORS as exc:
                    raise self._malformed(exc) from exc
            return self._finish(response, draft)

    async def aclose(self) -> None:
        """Close the provider's connections."""
        await self._clients.aclose()

    async def _read_lines(self, response: httpx.Response, on_line: Callable[[str], bool]) -> None:
        done = False
        failure: ProviderError | None = None
        with trio.CancelScope() as rest_of_stream:
            async for line in response.aiter_lines():
                # Never break out of httpx's iterators: a half-read async
                # generator is finalized by the garbage collector, and trio
                # warns about it. After the end we read on (the server closes
                # at once); after an error we cancel the read instead, which
                # ends those generators and discards the connection.
                if done or failure is not None:
                    continue
                try:
                    done = on_line(line)
                except ProviderError as exc:
                    failure = exc
                except _PARSE_ERRORS as exc:
                    failure = self._malformed(exc)
                    failure.__cause__ = exc
                if failure is not None:
                    rest_of_stream.cancel()
        if failure is not None:
            raise failure
        if not done:
            raise self._error(ProviderConnectionError, "stream ended before the reply was complete")

    def _finish(self, response: httpx.Response, draft: Draft) -> LLMResponse:
        header = self.request_id_header
        # JSON may carry half a surrogate pair (a model cut mid-emoji): such a str cannot be
        # encoded to UTF-8 for the output file or the cache, so it becomes U+FFFD here.
        text = _LONE_SURROGATE.sub("\ufffd", "".join(draft.parts))
        return LLMResponse(
            text=text,
            model=draft.model,
            input_tokens=draft.input_tokens,
            output_tokens=draft.output_tokens,
            finish_reason=draft.finish_reason,
            status=response.status_code,
            request_id=response.headers.get(header) if header else None,
        )

    def _error(
        self,
        cls: type[_E],
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> _E:
        if self._api_key:
            # Some servers echo the key back in their message; it stops here. Redact
            # before cutting to length, or a key straddling the cut would leak in part.
            message = message.replace(self._api_key, "[redacted]")
        text = f"{self.name}: {message[:_MAX_MESSAGE_CHARS]}"
        return cls(text, provider=self.name, status=status, retry_after=retry_after)

    def _status_error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        try:
            data = response.json()
            message, codes = _error_details(data["error"])
        except _PARSE_ERRORS:
            # Not the provider's JSON (a proxy's HTML page, an empty body...).
            message, codes = " ".join(response.text.split()), set()
        cls = classify(status, codes, message, response.headers.get("x-should-retry"))
        return self._error(
            cls,
            f"{status} {_label(message or response.reason_phrase, codes)}",
            status=status,
            retry_after=parse_retry_after(response.headers),
        )

    def _stream_error(self, error: object, *, as_status: int | None = None) -> ProviderError:
        """The error for `error` reported inside a 200 stream (or 200 body).

        `as_status` is the status the provider documents for this error type
        outside a stream; it picks the class, but the error's `status` stays
        None since the HTTP status really was 200.
        """
        message, codes = _error_details(error)
        cls = classify(as_status, codes, message)
        if cls is RetryableProviderError:
            cls = ProviderStreamError
        return self._error(cls, f"error in stream: {_label(message, codes)}")

    def _malformed(self, exc: Exception) -> MalformedResponseError:
        return self._error(MalformedResponseError, f"malformed response ({_describe(exc)})")


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    # Building a context (loading the CA bundle) takes ~30-130 ms here: once per process,
    # not once per provider per job. httpx's own helper keeps SSL_CERT_FILE/DIR working.
    return httpx.create_ssl_context()


def _label(message: str, codes: set[str]) -> str:
    return f"{message} ({', '.join(sorted(codes))})" if codes else message


def _describe(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
