"""Canonical JSON bytes: sorted keys, UTF-8, by orjson (~10x json), json for what it refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["sorted_json"]


def sorted_json(value: Any, *, indent: bool = False) -> bytes:
    """`value` as JSON with sorted keys: compact, or indented by two spaces.

    The same value always gives the same bytes. orjson refuses a str holding a
    lone surrogate and a non-str key; json then writes them (ASCII-escaped).
    """
    try:
        return orjson.dumps(value, option=_INDENTED if indent else orjson.OPT_SORT_KEYS)
    except TypeError:
        if indent:
            return json.dumps(value, sort_keys=True, indent=2).encode()
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


_INDENTED = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
