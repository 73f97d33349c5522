"""Durations as users write them on the command line: `90s`, `10m`, `12h`, `7d`, `2w`."""

from __future__ import annotations

import datetime as _dt
import re

__all__ = ["parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> _dt.timedelta:
    """`90s`, `15m`, `12h`, `7d`, `2w` -> a timedelta; `ValueError` for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit, s, m, h, d or w (7d)"
        )
    return _dt.timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
