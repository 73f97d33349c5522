"""What `runner run` shows while its job runs, and the summary it ends with.

`open_progress()` picks the display:

- `LiveView`, when the stream is a terminal: a `rich.live.Live` region redrawn after
  each batch of events and on a steady tick (`refresh()`, every `TICK_S`, from the
  CLI's trio task: no thread touches the state), so elapsed times and retry countdowns
  move when no event arrives. Each render reads the terminal's size and shows the full
  step table, or a compact view when the steps do not fit. At the end the region is
  erased and the final view is printed once: nothing is left twice in the scrollback.
- `Progress` itself anywhere else (a pipe, a file, CI): one line per step transition and
  per notable event (`format_event`), no escape codes; with `quiet` (`--quiet`), the
  first and the last line only.

Both keep a `Tally` of the job (the `JobState` fold that `runner show` uses, plus what
only a display needs), print `job <id> -> <run dir>` first and `job <status>` last, and,
unless quiet, a summary just before that last line. Only the CLI uses this module; it
prints, so the library never does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .event_format import STATUS_COLORS, format_event
from .events import Event
from .job_state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
)
from .progress_tally import NextCommands, Tally, duration_text, summary_lines

__all__ = ["TICK_S", "LiveView", "Progress", "open_progress"]

#: How often the CLI redraws the live view when no event arrives (seconds).
TICK_S = 0.1
#: Redraws closer than this are skipped: a burst of fast steps costs a few frames, not one
#: per event, and the next tick shows where the burst ended.
_MIN_GAP_S = 0.02

#: The events a plain display prints, one line each.
_PLAIN_TYPES = frozenset(
    {
        "job.started",
        "job.finished",
        "step.started",
        "step.succeeded",
        "step.failed",
        "step.skipped",
        "llm.retry",
        "llm.warning",
        "provider.started",
        "provider.failed",
        "breaker.opened",
        "breaker.half_open",
        "breaker.closed",
    }
)
_ICONS = {
    PENDING: "·",
    RUNNING: "…",
    SUCCEEDED: "✓",
    FAILED: "✗",
    SKIPPED: "-",
    CANCELLED: "!",
}
_NAME_WIDTH_MAX = 28
#: Rows below the final step rows: the summary, `job <status>` and the cursor's line.
_END_ROWS = 6


class Progress:
    """What `runner run` drives; by itself, plain lines (or, `quiet`, the first and last only).

    Plain: one line per transition and per notable event (`format_event`), then the
    summary; no escape codes, for a pipe, a file or CI.
    """

    #: Whether the caller should call `refresh()` every `TICK_S`.
    ticks = False

    def __init__(
        self,
        stream: TextIO,
        steps: Sequence[str],
        commands: NextCommands,
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tally = Tally(steps, clock)
        self.commands = commands
        self.quiet = quiet
        self.run_dir = Path()

    def begin(self, job_id: str, run_dir: Path, *, resumed: set[str], changed: set[str]) -> None:
        """The job has opened: where it lives (the first line, in every display), what resumes."""
        self.tally.job_id, self.run_dir = job_id, run_dir
        self._print(f"job {job_id} -> {run_dir}")
        if self.quiet:
            return
        if changed:
            # The changed steps, then everything that runs again with them.
            again = [name for name in self.tally.names if name not in resumed]
            self._print(
                f"pipeline changed since the job started: {', '.join(sorted(changed))};"
                f" running again: {', '.join(again)}"
            )
        if resumed:
            self._print(f"resuming: {len(resumed)} completed step(s) will not run again")

    def show(self, event: Event) -> None:
        self.tally.apply(event)
        if not self.quiet and event["type"] in _PLAIN_TYPES:
            self._print(format_event(event))

    def refresh(self) -> None:
        """Redraw now (the live view); plain lines are printed as events come."""

    def close(self) -> None:
        """Give the terminal back (idempotent); called however the job ended."""

    def end(self, status: str) -> None:
        """The job has ended with `status`: the summary, then `job <status>`, the last line."""
        self.tally.finish(status)
        self.close()
        summary = [] if self.quiet else summary_lines(self.tally, self.run_dir, self.commands)
        for line in [*summary, f"job {status}"]:
            self._print(line)

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class LiveView(Progress):
    """On a terminal: a region redrawn in place, always current and sized to the terminal."""

    ticks = True

    def __init__(
        self,
        stream: TextIO,
        steps: Sequence[str],
        commands: NextCommands,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream, steps, commands, clock=clock)
        # rich leaves out colours when NO_COLOR is set.
        self.console = Console(file=stream, highlight=False)
        self._live: Live | None = None
        self._closing = False
        self._drawn_at = -_MIN_GAP_S
        self._name_width = min(_NAME_WIDTH_MAX, max(map(len, steps), default=1))

    def begin(self, job_id: str, run_dir: Path, *, resumed: set[str], changed: set[str]) -> None:
        super().begin(job_id, run_dir, resumed=resumed, changed=changed)
        self._live = Live(
            console=self.console,
            get_renderable=self._frame,
            auto_refresh=False,  # the CLI's trio task redraws: no thread reads our state
            transient=True,  # erased at the end; the final view is printed once instead
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._fit()
        self._live.start(refresh=True)

    def show(self, event: Event) -> None:
        self.tally.apply(event)  # drawn by the next refresh

    def refresh(self) -> None:
        now = self.tally.clock()
        if self._live is not None and not self._closing and now - self._drawn_at >= _MIN_GAP_S:
            self._drawn_at = now
            self._fit()
            self._live.refresh()

    def close(self) -> None:
        if self._live is not None and not self._closing:
            # Rendered once more on stop: an empty frame, so nothing can overflow and scroll.
            self._closing = True
            self._live.stop()

    def end(self, status: str) -> None:
        """The steps as the job left them (once, below the erased region), then the summary."""
        self.tally.finish(status)
        self.close()
        self._fit()
        for row in self._step_lines(self.console.height - _END_ROWS):
            self.console.print(row, no_wrap=True, overflow="ellipsis")
        super().end(status)

    def _print(self, line: str) -> None:
        # Printed as given (no markup, wrapped by the terminal), so commands copy whole.
        self.console.print(Text(line), soft_wrap=True)

    def _fit(self) -> None:
        """Size the console to the terminal the stream is on, read now: a resize is followed."""
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            return  # not a real descriptor: rich's own guess stands
        if size.columns > 0 and size.lines > 0:
            self.console.size = (size.columns, size.lines)

    def _frame(self) -> Group:
        """The live region: a header, the steps as they fit, the counts."""
        if self._closing:
            return Group()
        rows = self.console.height - 1  # the cursor's line stays free: nothing scrolls
        lines = [_line(self.tally.header(), "bold")]
        lines += self._step_lines(rows - 2)
        lines.append(_line(self.tally.counts_line(), "dim"))
        return Group(*lines[: max(rows, 1)])

    def _step_lines(self, rows: int) -> list[Text]:
        """Every step when they fit in `rows`; else the compact view (what is going on now)."""
        names = self.tally.names
        if len(names) <= rows:
            return [self._row(name) for name in names]
        latest = self._latest_lines()
        now = [name for name in names if self.tally.status_of(name) in (RUNNING, CANCELLED)]
        room = max(0, rows - len(latest))
        shown = now if len(now) <= room else now[: max(0, room - 1)]
        lines = [self._row(name) for name in shown]
        if len(shown) < len(now):
            what = RUNNING if self.tally.ended_at is None else CANCELLED
            lines.append(_line(f"   … and {len(now) - len(shown)} more {what}", "dim"))
        return (lines + latest)[: max(rows, 0)]

    def _latest_lines(self) -> list[Text]:
        """The step that ended last, and the one that failed last (compact view)."""
        ended = self.tally.ended
        failed = [name for name in ended if self.tally.status_of(name) == FAILED]
        labelled = [("latest: ", ended[-1])] if ended else []
        if failed and failed[-1] != ended[-1]:
            labelled.append(("failed: ", failed[-1]))
        lines = []
        for label, name in labelled:
            line = _line("")
            line.append(label, style="dim")
            line.append_text(self._row(name, indent=""))
            lines.append(line)
        return lines

    def _row(self, name: str, indent: str = " ") -> Text:
        """One step on one line, cut to the terminal's width (`runner show` has the rest)."""
        tally, width = self.tally, self._name_width
        status = tally.status_of(name)
        seconds = tally.seconds(name)
        style = STATUS_COLORS[status]
        row = Text(no_wrap=True, overflow="ellipsis")
        row.append(f"{indent}{_ICONS[status]} ", style=style)
        row.append(f"{_cut(name, width):<{width}}  ")
        row.append(f"{status:<9}", style=style)
        row.append(f" {duration_text(seconds) if seconds is not None else '':>7}")
        note = tally.note(name)
        if note:
            row.append(f"  {note}", style="red" if status == FAILED else "dim")
        return row


def open_progress(
    stream: TextIO, steps: Sequence[str], commands: NextCommands, *, quiet: bool = False
) -> Progress:
    """The display for `stream`: quiet when asked, live on a terminal, plain lines otherwise."""
    if stream.isatty() and not quiet:
        return LiveView(stream, steps, commands)
    return Progress(stream, steps, commands, quiet=quiet)


def _line(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
