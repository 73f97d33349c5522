"""Live progress for `runner run`: a redrawn step table on a terminal, plain lines otherwise.

Only the CLI uses this; it prints, so the library never does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .event_format import format_event
from .events import Event

_SHOWN_PLAIN = ("job.", "step.", "llm.retry", "breaker.", "file.written")
_ICONS = {
    "pending": "·",
    "running": "…",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "-",
    "cancelled": "!",
}
_REDRAW_S = 0.1


class Progress:
    def __init__(self, stream: TextIO, steps: Iterable[str]) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.status = dict.fromkeys(steps, "pending")
        self.notes: dict[str, str] = {}
        self._drawn = 0
        self._last_draw = 0.0

    def begin(self, job_id: str, run_dir: Path, *, resumed: set[str], changed: set[str]) -> None:
        self._print(f"job {job_id} -> {run_dir}")
        if changed:
            # The changed steps, then everything that runs again with them.
            again = [name for name in self.status if name not in resumed]
            self._print(
                f"pipeline changed since the job started: {', '.join(sorted(changed))};"
                f" running again: {', '.join(again)}"
            )
        if resumed:
            self._print(f"resuming: {len(resumed)} completed step(s) will not run again")

    def show(self, event: Event) -> None:
        step, kind = event.get("step"), event["type"]
        if step and kind.startswith("step."):
            data = event.get("data") or {}
            self.status[step] = {
                "step.started": "running",
                "step.succeeded": "succeeded",
                "step.failed": "failed",
                "step.skipped": "succeeded" if data.get("reason") == "resumed" else "skipped",
            }[kind]
            note = (
                data.get("message")
                or data.get("reason")
                or ("cached" if data.get("cached") else "")
            )
            self.notes[step] = str(note)[:60]
        if self.live:
            now = time.monotonic()
            if now - self._last_draw >= _REDRAW_S or kind == "job.finished":
                self._draw()
                self._last_draw = now
        elif kind.startswith(_SHOWN_PLAIN) and kind != "job.started":
            self._print(format_event(event))

    def end(self, status: str) -> None:
        if self.live:
            self._draw()
        self._print(f"job {status}")

    def _draw(self) -> None:
        lines = [
            f" {_ICONS[state]} {name:<24} {state:<10} {self.notes.get(name, '')}".rstrip()
            for name, state in self.status.items()
        ]
        # Move up over the previous table and rewrite it in place.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = 0
