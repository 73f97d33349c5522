"""How long to wait before retrying a failed LLM call: exponential backoff with full jitter.

Full jitter (a random delay between zero and the exponential ceiling) spreads
out the retries of many steps that failed together, so they do not hit a
recovering provider in lockstep. When the server says how long to wait
(`Retry-After`), it knows best: we wait exactly that long, above the cap too, up
to `retry_after_max_s`; a server asking for longer is not retried at all.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

import attrs

from .config import Settings

__all__ = ["RetryPolicy"]

# 2.0**1023 is the largest power of two a float holds; past it, the ceiling is the cap anyway.
_MAX_EXPONENT = 1023


@attrs.frozen
class RetryPolicy:
    """How many times to retry, and how long to wait in between.

    `max_retries` is the number of retries after the first attempt, so a call
    makes at most ``1 + max_retries`` attempts. Build it from the settings::

        policy = RetryPolicy.from_settings(settings)
        policy.delay(1)  # a random delay in [0, 0.5) with the defaults
    """

    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    base_s: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    cap_s: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    retry_after_max_s: float = attrs.field(default=120.0, validator=attrs.validators.ge(0))

    @classmethod
    def from_settings(cls, settings: Settings, *, max_retries: int | None = None) -> RetryPolicy:
        """The policy `settings` describe; `max_retries` overrides it (a step's own setting)."""
        return cls(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            retry_after_max_s=settings.retry_after_max_s,
        )

    def delay(
        self,
        retry_number: int,
        *,
        retry_after: float | None = None,
        random: Callable[[], float] = _random.random,
    ) -> float:
        """Seconds to sleep before retry number `retry_number` (1 for the first retry).

        Without `retry_after`: a uniformly random delay in
        ``[0, min(cap_s, base_s * 2**(retry_number - 1)))``. With a positive
        `retry_after` (the server's request): exactly that (see `waits_too_long`).
        `random` returns a float in [0, 1); pass your own for deterministic tests.
        """
        if retry_number < 1:
            raise ValueError(f"retry_number starts at 1, got {retry_number}")
        if retry_after is not None and retry_after > 0:
            return retry_after
        exponent = min(retry_number - 1, _MAX_EXPONENT)
        ceiling = min(self.cap_s, self.base_s * 2.0**exponent)
        return ceiling * random()

    def waits_too_long(self, retry_after: float | None) -> bool:
        """True when the server asks for a longer wait than `retry_after_max_s`."""
        return retry_after is not None and retry_after > self.retry_after_max_s
