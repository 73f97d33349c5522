"""An event as one line a person reads (`runner tail`, and `runner run` off a terminal)."""

from __future__ import annotations

import json
import re
from typing import Any

from .events import Event

__all__ = ["HASH_FIELDS", "STATUS_COLORS", "format_event", "short_hash"]

#: The fields that hold a SHA-256 (64 hex digits); a person needs only its start.
HASH_FIELDS = frozenset({"sha256", "output_sha256", "prompt_sha256", "key", "pipeline_sha256"})
_HASH = re.compile(r"[0-9a-f]{64}")
_HASH_SHOWN = 12

#: A job's or a step's status word on a terminal: the same colour in every command
#: (click and rich both know these names).
STATUS_COLORS = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "interrupted": "yellow",
    "running": "cyan",
    "skipped": "bright_black",
    "pending": "bright_black",
}


def short_hash(sha256: str | None) -> str:
    """A SHA-256 as a person reads it: its first 12 hex digits (`-` for none)."""
    return "-" if sha256 is None else sha256[:_HASH_SHOWN]


def format_event(event: Event) -> str:
    """One readable line for an event: time, level, type, `[step]`, then `field=value`s.

    No value is ever cut: a long error message is printed in full. Only a hash field's
    64 hex digits are shortened to their first 12 (`--json` has them whole).
    """
    data = event.get("data") or {}
    detail = " ".join(f"{k}={_value(k, v)}" for k, v in data.items())
    step = event.get("step")
    where = f" [{step}]" if step else ""
    return f"{event['ts'][11:23]} {event['level']:<5} {event['type']}{where} {detail}".rstrip()


def _value(field: str, value: Any) -> str:
    if isinstance(value, str):
        if field in HASH_FIELDS and _HASH.fullmatch(value):
            return short_hash(value)
        if value.isprintable():
            return value
        # A newline or a control character would break the one line or drive the
        # terminal: such a string is shown quoted, with JSON's escapes.
        return _visible(json.dumps(value, ensure_ascii=False))
    return _visible(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _visible(text: str) -> str:
    # JSON escapes C0 controls but not the others (C1's 8-bit escape, a line separator).
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)
