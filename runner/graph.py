"""Pure graph algorithms over `{step: needs}`: no trio, no files."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

__all__ = ["ancestors", "descendants", "find_cycle", "topological_order"]


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
