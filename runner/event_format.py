"""An event as one line a person reads (`runner tail`, and `runner run` off a terminal)."""

from __future__ import annotations

import json
import re
from typing import Any

from .events import Event

__all__ = ["format_event"]

#: The fields that hold a SHA-256 (64 hex digits); a person needs only its start.
HASH_FIELDS = frozenset({"sha256", "output_sha256", "prompt_sha256", "key", "pipeline_sha256"})
_HASH = re.compile(r"[0-9a-f]{64}")
_HASH_SHOWN = 12


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
            return value[:_HASH_SHOWN]
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
