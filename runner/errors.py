"""Every error `runner` raises on purpose.

The tree::

    RunnerError
    ├── PipelineError (ValueError)        a pipeline file or object is wrong
    ├── ConfigError (ValueError)          a setting (environment, .env) is wrong
    ├── JobError (LookupError)            no such job, job exists, nothing to resume
    ├── StorageError (OSError)            the run directory cannot be written or read
    │   └── PathEscapeError (ValueError)  a path would leave the job directory
    └── ProviderError                     an LLM call failed
        ├── RetryableProviderError        worth another attempt
        │   ├── ProviderTimeoutError (TimeoutError)
        │   ├── ProviderConnectionError (ConnectionError)
        │   ├── RateLimitError            429: back off, but the provider is not down
        │   ├── MalformedResponseError    an answer that cannot be read
        │   └── ProviderStreamError       a stream that broke off or reported an error
        ├── PermanentProviderError        retrying would fail the same way
        │   └── ProviderStartError        a local model server did not start
        └── CircuitOpenError              the provider's breaker refused the call

Messages are short, lowercase, and name the thing that was wrong.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "JobError",
    "MalformedResponseError",
    "PathEscapeError",
    "PermanentProviderError",
    "PipelineError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStartError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RetryableProviderError",
    "RunnerError",
    "StorageError",
]


class RunnerError(Exception):
    """Base class of every error `runner` raises on purpose."""


class PipelineError(RunnerError, ValueError):
    """A pipeline is invalid: the message names the file, the step and the field."""


class ConfigError(RunnerError, ValueError):
    """A setting is invalid: the message names the variable and what it expects."""


class JobError(RunnerError, LookupError):
    """A job cannot be found, already exists, or has nothing to resume."""


class StorageError(RunnerError, OSError):
    """Something under the run directory could not be written or read."""


class PathEscapeError(StorageError, ValueError):
    """A path would be written outside the directory it is confined to."""


class ProviderError(RunnerError):
    """An LLM provider call failed.

    `provider` names the provider, `status` is the HTTP status when there was
    one, `retry_after` is the delay in seconds the server asked for, if any.
    """

    #: Does this failure count against the provider's circuit breaker?
    breaker_failure: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        #: How many attempts were made before giving up (set by the retry loop).
        self.attempts = 0

    @property
    def reason(self) -> str:
        """A short machine-friendly reason, used in `llm.retry` and `step.failed` events."""
        if self.status is not None:
            return f"http_{self.status}"
        return _snake(type(self).__name__.removesuffix("Error")) or "error"


class RetryableProviderError(ProviderError):
    """A transient failure: another attempt may succeed."""

    breaker_failure = True


class ProviderTimeoutError(RetryableProviderError, TimeoutError):
    """The attempt did not finish within its deadline."""

    @property
    def reason(self) -> str:
        return "timeout"


class ProviderConnectionError(RetryableProviderError, ConnectionError):
    """The connection could not be made or broke mid-response."""

    @property
    def reason(self) -> str:
        return "connection_error"


class RateLimitError(RetryableProviderError):
    """HTTP 429: slow down. Drives backoff, never trips the breaker."""

    breaker_failure = False


class MalformedResponseError(RetryableProviderError):
    """The provider answered 2xx with a body we cannot read (not JSON, wrong shape)."""

    @property
    def reason(self) -> str:
        return "malformed_response"


class ProviderStreamError(RetryableProviderError):
    """The provider reported an error in the middle of a 200 response."""

    @property
    def reason(self) -> str:
        return "stream_error"


class PermanentProviderError(ProviderError):
    """A failure that another attempt would repeat (bad request, auth, quota...)."""


class ProviderStartError(PermanentProviderError):
    """A model server `runner` starts itself (provider `local`) did not come up.

    `log_tail` holds the last lines of the server's log, for the `provider.failed` event.
    """

    def __init__(self, message: str, *, provider: str, log_tail: list[str]) -> None:
        super().__init__(message, provider=provider)
        self.log_tail = log_tail

    @property
    def reason(self) -> str:
        return "start_failed"


class CircuitOpenError(ProviderError):
    """The provider's circuit breaker is open: the call was not sent."""

    @property
    def reason(self) -> str:
        return "circuit_open"


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
