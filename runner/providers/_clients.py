"""A provider's httpx clients: small pools, so no pool ever gets slow.

httpcore's connection pool re-scans every queued request against every connection
(and polls each idle one) whenever a request starts or ends: the cost of a call grows
with the number of calls sharing the pool. With 200 calls in flight on one client,
that scan, not the network, dominated (bench/latency.py; encode/httpcore#1035). So a
provider spreads its calls over as many clients as it needs, each carrying at most
`calls_per_client` at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

__all__ = ["ClientPool"]


class ClientPool:
    def __init__(
        self,
        *,
        timeout_s: float,
        verify: object,
        transport: httpx.AsyncBaseTransport | None = None,
        calls_per_client: int = 16,
    ) -> None:
        self._timeout = httpx.Timeout(timeout_s)
        self._verify = verify
        self._transport = transport
        self._calls_per_client = calls_per_client
        self._clients: list[httpx.AsyncClient] = []
        self._in_flight: list[int] = []

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The least busy client, or a new one when every client is full."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__, default=-1)
        if index < 0 or self._in_flight[index] >= self._calls_per_client:
            self._clients.append(
                httpx.AsyncClient(
                    timeout=self._timeout,
                    transport=self._transport,
                    verify=self._verify,  # type: ignore[arg-type]
                )
            )
            self._in_flight.append(0)
            index = len(self._clients) - 1
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    @property
    def size(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
