"""The streams the APIs send, line by line: server-sent events (OpenAI, Anthropic) and NDJSON
(Ollama). A line handler takes one line and says when the answer is complete."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["SSEDecoder", "SSEEvent", "ndjson_lines", "sse_lines"]


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
