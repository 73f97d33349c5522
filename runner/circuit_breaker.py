"""A per-provider circuit breaker: stop hammering a provider that keeps failing.

The states::

    closed ──(threshold consecutive failures)──> open ──(cooldown)──> half_open
      ^                                           ^                      │
      │                                           └─────(probe fails)────┤
      └─────────────────────(probe succeeds)─────────────────────────────┘

Only failures that say "the provider is down" count (timeouts, connection
errors, 5xx): `ProviderError.breaker_failure` decides. A 429, a permanent
error or a cancellation says nothing about the provider's health, so it is
neutral.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import trio

from .errors import CircuitOpenError, ProviderError

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Guards one provider: lets calls through, or refuses them while the provider is down.

    Wrap each attempt (one HTTP call, never the backoff sleep) in
    `attempt()`::

        breaker = CircuitBreaker("openai", threshold=5, cooldown_s=30)
        async with breaker.attempt():
            response = await provider.complete(request)

    Entering raises `CircuitOpenError` (its `retry_after` is the cooldown
    left) while the breaker is open. Once the cooldown has passed, the next
    caller moves the breaker to half-open and becomes the single probe;
    callers arriving meanwhile wait for the probe's verdict instead of
    failing. Time comes from `trio.current_time()`, so tests can use
    trio's `MockClock`.

    `on_transition(name, failures)` is awaited on every state change, with
    `name` one of ``"opened"``, ``"half_open"``, ``"closed"``; the supervisor
    turns it into a `breaker.*` event.
    """

    def __init__(
        self,
        provider: str,
        *,
        threshold: int,
        cooldown_s: float,
        on_transition: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {threshold}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.provider = provider
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._on_transition = on_transition
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        # Bumped on every state change. An attempt let in under an older state
        # reports a stale outcome: counting it would open the breaker twice, or
        # let a late failure from before the outage reopen a healed provider.
        self._epoch = 0
        # Set while a half-open probe is in flight; waiters block on it.
        self._probe_done: trio.Event | None = None
        #: The last failure counted against the provider: what an open breaker says.
        self.last_failure: str | None = None

    @property
    def state(self) -> State:
        """``"closed"``, ``"open"`` or ``"half_open"``.

        Open becomes half-open lazily, when a caller enters `attempt()` after
        the cooldown, so this may still say ``"open"`` once the cooldown is over.
        """
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive breaker failures counted so far (0 after a success)."""
        return self._failures

    def remaining_cooldown(self) -> float:
        """Seconds until an open breaker lets a probe through; 0.0 when not open."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - trio.current_time())

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Run one attempt under the breaker; see the class docstring.

        Leaving without an exception is a success; a `ProviderError` whose
        `breaker_failure` is true is a failure; anything else (a 429, a
        permanent error, cancellation, a bug) is neutral.
        """
        epoch, probe = await self._enter()
        try:
            yield
        except BaseException as exc:
            await self._exit(epoch, probe, exc)
            raise
        await self._exit(epoch, probe, None)

    async def _enter(self) -> tuple[int, bool]:
        # A loop, because every await below lets other callers change the state.
        while True:
            if self._state == "open":
                remaining = self.remaining_cooldown()
                if remaining > 0:
                    cause = f" after: {self.last_failure}" if self.last_failure else ""
                    raise CircuitOpenError(
                        f"circuit breaker for {self.provider} is open"
                        f" (next try in {remaining:.3g}s){cause}",
                        provider=self.provider,
                        retry_after=remaining,
                    )
                await self._transition("half_open")
            elif self._state == "closed":
                return self._epoch, False
            elif self._probe_done is None:
                self._probe_done = trio.Event()
                return self._epoch, True
            else:
                # Cancellation here is harmless: a waiter holds nothing.
                await self._probe_done.wait()

    async def _exit(self, epoch: int, probe: bool, exc: BaseException | None) -> None:
        if probe:
            # Free the slot before anything that could fail or block, so a
            # waiter never hangs. Waiters only run after we yield, by which
            # time the state below is already set.
            done, self._probe_done = self._probe_done, None
            if done is not None:
                done.set()
        if epoch != self._epoch:
            return
        if exc is None:
            if probe:
                await self._transition("closed")
            else:
                self._failures = 0
        elif isinstance(exc, ProviderError) and exc.breaker_failure:
            self._failures += 1
            self.last_failure = str(exc)
            if probe or self._failures >= self.threshold:
                await self._transition("open")
        # Anything else is neutral: a released probe slot goes to the next waiter.

    async def _transition(self, state: State) -> None:
        # Update everything synchronously first: if the callback is cancelled
        # or fails, the breaker is still consistent.
        self._state = state
        self._epoch += 1
        if state == "open":
            self._opened_at = trio.current_time()
        elif state == "closed":
            self._failures = 0
        if self._on_transition is not None:
            await self._on_transition("opened" if state == "open" else state, self._failures)
