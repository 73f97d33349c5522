"""runner's JSON for what it stores (the log, the manifest, cache entries, pipeline.json).

One place decides how: orjson, which reads and writes the log ~2-5x faster than json
(`runner show` and resume on a 1,000,000-event log: bench/resume.py), and json for the
little orjson refuses: a str holding a lone surrogate, which json escapes (still valid
JSON), and the escaped lone surrogate json writes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads", "sorted_json"]

_SORTED = orjson.OPT_SORT_KEYS
_INDENTED = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2


def dumps(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON, keys in their order (a log line)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def sorted_json(value: Any, *, indent: bool = False) -> bytes:
    """`value` as JSON with sorted keys: compact, or indented by two spaces.

    The same value always gives the same bytes (cache keys, `manifest.json`).
    """
    try:
        return orjson.dumps(value, option=_INDENTED if indent else _SORTED)
    except TypeError:
        if indent:
            return json.dumps(value, sort_keys=True, indent=2).encode()
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """One JSON document; raises `ValueError` when it is not one."""
    try:
        return orjson.loads(data)
    except ValueError:
        return json.loads(data)
