"""An event as one line a person reads (`runner tail`, and `runner run` off a terminal)."""

from __future__ import annotations

import json
from typing import Any

from .events import Event

__all__ = ["format_event"]


def format_event(event: Event) -> str:
    """One readable line for an event."""
    data = event.get("data") or {}
    detail = " ".join(f"{k}={_short(v)}" for k, v in data.items())
    step = event.get("step")
    where = f" [{step}]" if step else ""
    return f"{event['ts'][11:23]} {event['level']:<5} {event['type']}{where} {detail}".rstrip()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."
