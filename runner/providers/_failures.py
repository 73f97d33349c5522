"""What a failed call was: the official SDKs' rules, turned into the `ProviderError` tree.

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
an error object in a 200 body or stream     as the same error with the status its
                                            type has (`STATUS_OF_ERROR_TYPE`);
                                            `ProviderStreamError` (retryable) when
                                            its type says nothing
==========================================  =====================================

Timeouts, broken connections and unreadable bodies are `HTTPProvider`'s to raise.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Collection

import httpx

from ..errors import (
    PermanentProviderError,
    ProviderError,
    ProviderStreamError,
    RateLimitError,
    RetryableProviderError,
)

__all__ = ["STATUS_OF_ERROR_TYPE", "classify", "error_details", "label", "parse_retry_after"]

# Codes that mean "this will fail the same way next time", whatever the status.
_PERMANENT_CODES = frozenset({"insufficient_quota", "context_length_exceeded", "billing_error"})
# A 429 that is about money, not speed: waiting a few seconds will not help.
_SPEND_LIMIT = re.compile(r"spend(ing)? limit|usage limit|credit balance", re.IGNORECASE)
# The status each error type has outside a 200 (OpenAI's and Anthropic's vocabularies):
# it decides how an error object inside a 200 body or stream is treated.
STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
}


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

    `retry-after-ms` wins over `retry-after` (seconds, or an HTTP-date). Any
    positive delay is returned as asked; how long to wait at most is the retry
    policy's business (`RUNNER_RETRY_AFTER_MAX_S`).
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
    if delay is None or not 0 < delay < float("inf"):
        return None
    return delay


def error_details(error: object) -> tuple[str, set[str]]:
    # Covers `{"message", "type", "code"}` (OpenAI, Anthropic) and a bare string (Ollama).
    if isinstance(error, dict):
        codes = {v for k in ("type", "code") if isinstance(v := error.get(k), str) and v}
        message = error.get("message")
        return (message if isinstance(message, str) else json.dumps(error)), codes
    return str(error), set()


def label(message: str, codes: set[str]) -> str:
    return f"{message} ({', '.join(sorted(codes))})" if codes else message
