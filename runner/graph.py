"""Pure graph algorithms over `{step: needs}`, and the DAG drawn as text: no trio, no files.

`layers()` groups the steps by depth; `mermaid()` and `dot()` draw the DAG for
Mermaid (a `flowchart TD` block) and Graphviz (a `digraph`), each node marked with
its status when `statuses` are given (`runner graph JOB`).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "ancestors",
    "descendants",
    "dot",
    "find_cycle",
    "layers",
    "mermaid",
    "topological_order",
]


def find_cycle(needs: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as `[a, b, ..., a]`, or None. Unknown names in `needs` are ignored."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(needs, white)
    for start in needs:
        if colour[start] != white:
            continue
        # Iterative DFS: a pipeline with thousands of steps must not hit the recursion limit.
        path: list[str] = [start]
        stack = [iter(needs[start])]
        colour[start] = grey
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                colour[path.pop()] = black
                continue
            if node not in colour:
                continue
            if colour[node] == grey:
                return [*path[path.index(node) :], node]
            if colour[node] == white:
                colour[node] = grey
                path.append(node)
                stack.append(iter(needs[node]))
    return None


def topological_order(needs: Mapping[str, Iterable[str]]) -> list[str]:
    """Steps ordered so that each comes after everything it needs; ties keep declaration order."""
    remaining = {name: set(deps) for name, deps in needs.items()}
    dependents: dict[str, list[str]] = {name: [] for name in needs}
    for name, deps in remaining.items():
        for dep in deps:
            dependents[dep].append(name)
    # Always take the earliest-declared ready step (a FIFO would not): an
    # already valid declaration order comes back unchanged.
    index = {name: i for i, name in enumerate(needs)}
    ready = [index[name] for name, deps in remaining.items() if not deps]
    names = list(needs)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dependent in dependents[name]:
            remaining[dependent].discard(name)
            if not remaining[dependent]:
                heapq.heappush(ready, index[dependent])
    if len(order) != len(needs):
        raise ValueError(f"cycle: {' -> '.join(find_cycle(needs) or [])}")
    return order


def ancestors(needs: Mapping[str, Iterable[str]], name: str) -> set[str]:
    """Everything `name` needs, directly or transitively."""
    seen: set[str] = set()
    stack = list(needs.get(name, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(needs.get(node, ()))
    return seen


def descendants(needs: Mapping[str, Iterable[str]], names: Iterable[str]) -> set[str]:
    """Every step that needs one of `names`, directly or transitively (not `names` themselves)."""
    dependents: dict[str, list[str]] = {}
    for step, deps in needs.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(step)
    seen: set[str] = set()
    stack = [d for name in names for d in dependents.get(name, ())]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(dependents.get(node, ()))
    return seen


def layers(needs: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The steps by depth: layer 0 needs nothing, a step's layer is 1 + the deepest it needs.

    Within a layer, steps keep their declaration order. `ValueError` on a cycle.
    """
    depth: dict[str, int] = {}
    for name in topological_order(needs):
        depth[name] = 1 + max((depth[dep] for dep in needs[name]), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in needs:
        grouped[depth[name]].append(name)
    return grouped


def _edges(needs: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(need, step) pairs, step by step in layer order, each step's needs as declared."""
    edges: list[tuple[str, str]] = []
    for layer in layers(needs):
        for name in layer:
            edges.extend((dep, name) for dep in dict.fromkeys(needs[name]))
    return edges


#: A node's fill colour for each status, in both drawings.
_FILLS = {
    "succeeded": "#d4edda",
    "failed": "#f8d7da",
    "cancelled": "#fff3cd",
    "interrupted": "#fff3cd",
    "skipped": "#e2e3e5",
    "running": "#cce5ff",
    "pending": "#ffffff",
}
_PLAIN_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
# Words Mermaid's flowchart grammar reads as its own (`end` closes a subgraph).
_MERMAID_WORDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "style", "classdef", "class", "click"}
    | {"linkstyle", "direction", "default", "call", "href", "callback", "interpolate"}
)
# Graphviz's keywords, which it reads case-insensitively.
_DOT_WORDS = frozenset({"node", "edge", "graph", "digraph", "subgraph", "strict"})


def mermaid(needs: Mapping[str, Iterable[str]], statuses: Mapping[str, str] | None = None) -> str:
    """A Mermaid `flowchart TD` block: one node per step, one `need --> step` edge per need.

    A step name Mermaid could misread (`my-step`, `end`) gets a plain id (`n1`) and
    keeps its name as the label. With `statuses`, each label says the step's status
    and the node gets the class of that status (`classDef` lines at the end).
    """
    ids = _mermaid_ids(needs)
    lines = ["flowchart TD"]
    for name in (name for layer in layers(needs) for name in layer):
        label = name if statuses is None else f"{name}: {statuses.get(name, 'pending')}"
        label = label.replace('"', "#quot;")
        status = "" if statuses is None else f":::{statuses.get(name, 'pending')}"
        lines.append(f'    {ids[name]}["{label}"]{status}')
    lines.extend(f"    {ids[dep]} --> {ids[name]}" for dep, name in _edges(needs))
    if statuses is not None:
        for status in dict.fromkeys(statuses.get(name, "pending") for name in needs):
            fill = _FILLS.get(status, "#ffffff")
            lines.append(f"    classDef {status} fill:{fill},stroke:#555555")
    return "\n".join(lines) + "\n"


def _mermaid_ids(needs: Mapping[str, Iterable[str]]) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken = set(needs)
    for index, name in enumerate(needs, start=1):
        if _PLAIN_ID.match(name) and name.lower() not in _MERMAID_WORDS:
            ids[name] = name
            continue
        ident = f"n{index}"
        while ident in taken:
            ident += "_"
        taken.add(ident)
        ids[name] = ident
    return ids


def dot(
    needs: Mapping[str, Iterable[str]],
    statuses: Mapping[str, str] | None = None,
    *,
    name: str = "pipeline",
) -> str:
    """A Graphviz `digraph` named `name`: one node per step, one `need -> step` edge per need.

    A name that is not a plain identifier, or is a Graphviz keyword, is quoted. With
    `statuses`, each node's label says its status and its fill colour shows it.
    """
    lines = [f"digraph {_dot_id(name)} {{", "    node [shape=box];"]
    for step in (step for layer in layers(needs) for step in layer):
        if statuses is None:
            lines.append(f"    {_dot_id(step)};")
            continue
        status = statuses.get(step, "pending")
        label = f'"{_dot_escape(step)}\\n{_dot_escape(status)}"'  # \n: a line break
        fill = _FILLS.get(status, "#ffffff")
        lines.append(f'    {_dot_id(step)} [label={label}, style=filled, fillcolor="{fill}"];')
    lines.extend(f"    {_dot_id(dep)} -> {_dot_id(step)};" for dep, step in _edges(needs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_id(text: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.lower() not in _DOT_WORDS:
        return text
    return f'"{_dot_escape(text)}"'


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
