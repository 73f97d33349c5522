"""What the HTTP providers (OpenAI, Anthropic, Ollama) share, written once.

A provider subclasses `HTTPProvider` and describes its wire format (URL,
headers, body, how to read a reply or a stream line); this module does the
rest: the `httpx.AsyncClient`, a response closed however the call ends, the
answer read as it came (a server may answer plain JSON to `stream: true`, or a
stream to a plain request: the content type says which), `heard()` for every
piece that arrives, and failures turned into the `ProviderError` tree
(`_failures.py`): a timeout or a broken connection is `ProviderTimeoutError` /
`ProviderConnectionError`, a 2xx body we cannot read `MalformedResponseError`.
"""

from __future__ import annotations

import abc
import functools
import json
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import trio

from ..config import Settings
from ..errors import (
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderStreamError,
    ProviderTimeoutError,
    RetryableProviderError,
)
from ._clients import ClientPool
from ._failures import STATUS_OF_ERROR_TYPE, classify, error_details, label, parse_retry_after
from .base import Heard, LLMRequest, LLMResponse, nobody_listens

__all__ = ["Draft", "HTTPProvider", "tokens"]

_E = TypeVar("_E", bound=ProviderError)


# json pairs up valid surrogate escapes, so any surrogate left in a str is half a pair.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What a body of the wrong shape raises while we pick it apart.
_PARSE_ERRORS = (LookupError, TypeError, AttributeError, ValueError)
_MAX_MESSAGE_CHARS = 500
# Content types of the streams the three APIs send (SSE; Ollama's NDJSON).
_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl")


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
        # `config` is the pipeline's [providers.NAME] table: `max_concurrency` and `stream`
        # are the lane's business; a provider reads what concerns its wire format.
        self.config: Mapping[str, Any] = config or {}
        self.settings = settings
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

    async def complete(self, request: LLMRequest, *, heard: Heard = nobody_listens) -> LLMResponse:
        """Make one attempt; raise a `ProviderError` on failure (see the module docstring).

        `heard()` is called when the headers arrive and for every piece of the body.
        """
        draft = Draft(model=request.model)
        try:
            with self._clients.lease() as client:
                return await self._attempt(client, request, draft, heard)
        except httpx.TimeoutException as exc:
            raise self._error(ProviderTimeoutError, f"timed out ({_describe(exc)})") from exc
        except httpx.TransportError as exc:
            message = f"connection failed ({_describe(exc)})"
            raise self._error(ProviderConnectionError, message) from exc
        except httpx.DecodingError as exc:
            raise self._malformed(exc) from exc

    async def _attempt(
        self, client: httpx.AsyncClient, request: LLMRequest, draft: Draft, heard: Heard
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
            heard()
            if not response.is_success:
                await response.aread()
                raise self._status_error(response)
            # Read the answer as it came, whatever was asked: some servers ignore `stream`.
            content_type = response.headers.get("content-type", "")
            streamed = content_type.startswith(_STREAM_TYPES) or (
                request.stream and not content_type.startswith("application/json")
            )
            if streamed:
                await self._read_lines(response, self._line_handler(draft), heard)
            else:
                data = await self._read_json(response, heard)
                if isinstance(data, dict) and data.get("error"):
                    raise self._error_object(data["error"], "error in a 200 answer")
                try:
                    self._parse(data, draft)
                except _PARSE_ERRORS as exc:
                    raise self._malformed(exc) from exc
            return self._finish(response, draft, streamed=streamed)

    async def _read_json(self, response: httpx.Response, heard: Heard) -> Any:
        chunks = []
        async for chunk in response.aiter_bytes():
            heard()
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise self._malformed(exc) from exc

    async def prepare(self, model: str) -> dict[str, Any] | None:
        """Nothing to start: the server is someone else's."""
        return None

    async def cache_identity(self, model: str) -> str:
        return self.base_url

    async def aclose(self) -> None:
        """Close the provider's connections."""
        await self._clients.aclose()

    async def _read_lines(
        self, response: httpx.Response, on_line: Callable[[str], bool], heard: Heard
    ) -> None:
        done = False
        failure: ProviderError | None = None
        with trio.CancelScope() as rest_of_stream:
            async for line in response.aiter_lines():
                heard()
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

    def _finish(self, response: httpx.Response, draft: Draft, *, streamed: bool) -> LLMResponse:
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
            streamed=streamed,
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
            message, codes = error_details(data["error"])
        except _PARSE_ERRORS:
            # Not the provider's JSON (a proxy's HTML page, an empty body...).
            message, codes = " ".join(response.text.split()), set()
        cls = classify(status, codes, message, response.headers.get("x-should-retry"))
        return self._error(
            cls,
            f"{status} {label(message or response.reason_phrase, codes)}",
            status=status,
            retry_after=parse_retry_after(response.headers),
        )

    def _error_object(self, error: object, where: str = "error in stream") -> ProviderError:
        """The error for an error object reported inside a 200 stream or 200 body.

        The status its type has outside a 200 (`STATUS_OF_ERROR_TYPE`) picks the
        class, as it would for that status; the error's `status` stays None since
        the HTTP status really was 200. A type that says nothing: a retryable
        `ProviderStreamError`.
        """
        message, codes = error_details(error)
        as_status = next(
            (STATUS_OF_ERROR_TYPE[c] for c in codes if c in STATUS_OF_ERROR_TYPE), None
        )
        cls = classify(as_status, codes, message)
        if cls is RetryableProviderError:
            cls = ProviderStreamError
        return self._error(cls, f"{where}: {label(message, codes)}")

    def _malformed(self, exc: Exception) -> MalformedResponseError:
        return self._error(MalformedResponseError, f"malformed response ({_describe(exc)})")


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    # Building a context (loading the CA bundle) takes ~30-130 ms here: once per process,
    # not once per provider per job. httpx's own helper keeps SSL_CERT_FILE/DIR working.
    return httpx.create_ssl_context()


def _describe(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
