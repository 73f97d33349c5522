"""The error tree: every error runner raises is drawn in errors.py's docstring, under its parent."""

from __future__ import annotations

import re

import pytest

from runner import errors


def _drawn() -> dict[str, str | None]:
    """Each error drawn in the docstring -> the error drawn above it one level up."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column, name) of the open branches
    for line in (errors.__doc__ or "").splitlines():
        found = re.search(r"\b([A-Z]\w*Error)\b", line)
        if found is None:
            continue
        column = found.start()
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[found.group(1)] = stack[-1][1] if stack else None
        stack.append((column, found.group(1)))
    return parents


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_drawn_under_its_parent(name: str) -> None:
    drawn = _drawn()
    assert name in drawn
    parent = drawn[name]
    if parent is None:
        assert "RunnerError" == name
    else:
        assert getattr(errors, parent) in getattr(errors, name).__bases__
