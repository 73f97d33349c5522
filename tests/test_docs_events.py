"""The docs stay true: docs/EVENTS.md lists exactly the event types the code knows, and
the docs' relative links lead to files of this repository.

The code's list of types is `runner.events.EVENT_TYPES`: `emit()` refuses any other
type. The helpers of `EventEmitter` build events without that check, so the source is
also scanned for the types they are given.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from runner.events import EVENT_TYPES, LEVELS

ROOT = Path(__file__).resolve().parents[1]
EVENTS_MD = ROOT / "docs" / "EVENTS.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED_DOCS = [*DOCS, ROOT / "README.md"]

# Calls that take an event type, and where: `emitter.emit("x.y")`, `_emit(...)`,
# `emitter.event(...)`, `make_event(job_id, "x.y")`, `build_event(ts, level, job_id,
# "x.y")`; or as the keyword `type=`.
_TYPE_ARG = {"emit": 0, "_emit": 0, "event": 0, "make_event": 1, "build_event": 3}
# What an event type looks like (`family.name`); other `.event("...")` calls, such as
# the loopback server's SSE events, pass other strings.
_TYPE_SHAPE = re.compile(r"[a-z_]+\.[a-z_]+")


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def documented_types(text: str) -> dict[str, str]:
    """{type: level cell} from the table whose first header is `type`; one row per type."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append(_cells(line))
        else:
            current = None
    matching = [table for table in tables if table[0][0].lower() == "type"]
    assert 1 == len(matching), "docs/EVENTS.md needs exactly one table whose first column is 'type'"
    header, _separator, *rows = matching[0]
    level_column = [name.lower() for name in header].index("level")
    types: dict[str, str] = {}
    for row in rows:
        name = row[0].strip("`")
        assert name not in types, f"{name!r} is listed twice"
        types[name] = row[level_column]
    return types


def emitted_type_literals(package: Path) -> dict[str, list[str]]:
    """{type: [where]} for every string literal passed as an event type in `package`."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            index = _TYPE_ARG.get(name or "")
            if index is None:
                continue
            given = [k.value for k in node.keywords if k.arg == "type"]
            if len(node.args) > index:
                given.append(node.args[index])
            for arg in given:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and _TYPE_SHAPE.fullmatch(arg.value)
                ):
                    where = f"{path.relative_to(package.parent)}:{node.lineno}"
                    found.setdefault(arg.value, []).append(where)
    return found


def test_events_md_lists_exactly_the_types_the_code_knows() -> None:
    documented = set(documented_types(EVENTS_MD.read_text(encoding="utf-8")))
    known = set(EVENT_TYPES)
    assert ([], []) == (sorted(known - documented), sorted(documented - known)), (
        "(types missing from docs/EVENTS.md, types docs/EVENTS.md lists that the code lacks)"
    )


def test_events_md_levels_include_each_types_default_level() -> None:
    documented = documented_types(EVENTS_MD.read_text(encoding="utf-8"))
    wrong = []
    for name, cell in sorted(documented.items()):
        words = re.findall(r"[A-Z]{3,}", cell)
        if not words or any(word not in LEVELS for word in words):
            wrong.append((name, cell, "not a list of levels"))
        elif name in EVENT_TYPES and EVENT_TYPES[name] not in words:
            wrong.append((name, cell, f"lacks the default level {EVENT_TYPES[name]}"))
    assert [] == wrong


def test_every_type_the_code_passes_is_registered() -> None:
    found = emitted_type_literals(ROOT / "runner")
    # The scan must see the emitter's helpers, or it would pass without checking anything.
    assert "job.started" in found
    unknown = {name: where for name, where in found.items() if name not in EVENT_TYPES}
    assert {} == unknown


# -- links -----------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def link_targets(text: str) -> list[str]:
    """The targets of a markdown text's links, outside code blocks and code spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    found = _INLINE_LINK.findall(text) + _REFERENCE.findall(text)
    return [target.strip("<>") for target in found]


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in link_targets(doc.read_text(encoding="utf-8")):
        path = re.split(r"[#?]", target, maxsplit=1)[0]
        if not path or _SCHEME.match(target):
            continue  # an anchor in the same page, or a web address
        resolved = Path(os.path.normpath(doc.parent / path))
        inside = resolved == ROOT or ROOT in resolved.parents
        if not inside or not resolved.exists():
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda path: path.name)
def test_relative_links_lead_to_files_of_this_repository(doc: Path) -> None:
    assert [] == broken_links(doc)


def test_the_link_check_sees_the_links() -> None:
    # Guards the checker itself: it must find these links and skip the code.
    text = "[a](../runner/events.py) [b](EVENTS.md#x) ![c](<d e.png>)\n`[x](y)`\n```\n[z](w)\n```"
    assert ["../runner/events.py", "EVENTS.md#x", "d e.png"] == link_targets(text)
    assert [] != [path for path in DOCS if link_targets(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize(
    "doc", sorted(p for p in (ROOT / "docs").rglob("*") if p.is_file()), ids=lambda p: p.name
)
def test_docs_do_not_point_at_files_users_do_not_have(doc: Path) -> None:
    # The internal design notes live outside the repository: the docs must stand alone.
    text = doc.read_text(encoding="utf-8", errors="replace")
    found = re.findall(r"shared/|\b(?:DESIGN|PROVIDERS|STYLE)\.md\b", text)
    assert [] == found
