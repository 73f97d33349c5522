"""The physical floor for bench/overhead.py: a hand-written trio DAG, no runner.

Each step is a task that waits for its upstreams' events, appends one JSON line at
its start and one at its end to a log, and signals its dependents. No validation,
no outputs, no manifest, no fsync: what any trio DAG must at least pay.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio


async def run_baseline(needs: dict[str, list[str]], log_path: Path) -> float:
    done = {name: trio.Event() for name in needs}
    with open(log_path, "a", buffering=1) as log:  # noqa: ASYNC230 - the baseline is plain

        async def step(name: str) -> None:
            for upstream in needs[name]:
                await done[upstream].wait()
            log.write(json.dumps({"type": "step.started", "step": name}) + "\n")
            await trio.lowlevel.checkpoint()
            log.write(json.dumps({"type": "step.succeeded", "step": name}) + "\n")
            done[name].set()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for name in needs:
                nursery.start_soon(step, name)
        return time.perf_counter() - start
