import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.graph import ancestors, descendants, find_cycle, topological_order

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_topological_order_puts_needs_first():
    assert ["a", "b", "c", "d"] == topological_order(DIAMOND)


def test_topological_order_keeps_declaration_order_for_ties():
    assert ["z", "y", "x"] == topological_order({"z": [], "y": [], "x": []})


def test_topological_order_keeps_a_valid_declaration_order():
    # A FIFO of ready steps would give a, c, b: c was ready first.
    assert ["a", "b", "c"] == topological_order({"a": [], "b": ["a"], "c": []})


def test_topological_order_reorders_only_what_it_must():
    needs = {"report": ["fetch"], "fetch": [], "lint": [], "fix": ["lint"]}
    assert ["fetch", "report", "lint", "fix"] == topological_order(needs)


def test_topological_order_ignores_repeated_needs():
    assert ["a", "b"] == topological_order({"a": [], "b": ["a", "a"]})


def test_topological_order_of_nothing():
    assert [] == topological_order({})


def test_topological_order_raises_on_a_cycle():
    with pytest.raises(ValueError, match=r"^cycle: a -> b -> a$"):
        topological_order({"a": ["b"], "b": ["a"], "c": []})


def test_find_cycle_returns_the_cycle_path():
    needs = {"start": [], "a": ["start", "b"], "b": ["c"], "c": ["a"]}
    assert ["a", "b", "c", "a"] == find_cycle(needs)


def test_find_cycle_finds_a_self_loop():
    assert ["a", "a"] == find_cycle({"a": ["a"]})


def test_find_cycle_is_none_for_a_dag():
    assert find_cycle(DIAMOND) is None


def test_find_cycle_ignores_unknown_names():
    assert find_cycle({"a": ["ghost"]}) is None


def test_ancestors():
    assert {"a", "b", "c"} == ancestors(DIAMOND, "d")
    assert {"a"} == ancestors(DIAMOND, "b")
    assert set() == ancestors(DIAMOND, "a")
    assert set() == ancestors(DIAMOND, "nobody")


def test_descendants():
    assert {"b", "c", "d"} == descendants(DIAMOND, ["a"])
    assert {"d"} == descendants(DIAMOND, ["b"])
    assert {"d"} == descendants(DIAMOND, ["b", "c"])
    assert set() == descendants(DIAMOND, ["d"])
    assert set() == descendants(DIAMOND, [])


def test_a_5000_node_chain_does_not_hit_the_recursion_limit():
    n = 5000
    names = [f"s{i}" for i in range(n)]
    chain = {names[0]: [], **{names[i]: [names[i - 1]] for i in range(1, n)}}
    assert names == topological_order(dict(reversed(chain.items())))
    assert find_cycle(chain) is None
    assert set(names[:-1]) == ancestors(chain, names[-1])
    assert set(names[1:]) == descendants(chain, [names[0]])
    loop = {**chain, names[0]: [names[-1]]}
    cycle = find_cycle(loop)
    assert n + 1 == len(cycle)
    assert cycle[0] == cycle[-1]


# --- properties on random graphs ---------------------------------------------


@st.composite
def graphs(draw):
    """Any directed graph on a few nodes: cycles and self-loops included."""
    names = [f"n{i}" for i in range(draw(st.integers(min_value=0, max_value=8)))]
    if not names:
        return {}
    return {name: draw(st.lists(st.sampled_from(names), max_size=3)) for name in names}


@given(graphs())
def test_find_cycle_is_none_exactly_when_topological_order_succeeds(needs):
    cycle = find_cycle(needs)
    if cycle is None:
        order = topological_order(needs)
        assert sorted(needs) == sorted(order)
        position = {name: i for i, name in enumerate(order)}
        for name, deps in needs.items():
            for dep in deps:
                assert position[dep] < position[name]
    else:
        with pytest.raises(ValueError, match=r"^cycle: \S+( -> \S+)+$"):
            topological_order(needs)


@given(graphs())
def test_a_found_cycle_is_a_real_cycle(needs):
    cycle = find_cycle(needs)
    if cycle is not None:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        for node, dep in itertools.pairwise(cycle):
            assert dep in needs[node]


@given(graphs())
def test_a_valid_declaration_order_is_kept(needs):
    # Keep only edges to earlier nodes: then declaration order is already valid.
    names = list(needs)
    dag = {n: [d for d in deps if names.index(d) < names.index(n)] for n, deps in needs.items()}
    assert names == topological_order(dag)


@given(graphs())
def test_ancestors_and_descendants_mirror_each_other(needs):
    for name in needs:
        for other in needs:
            assert (other in ancestors(needs, name)) == (name in descendants(needs, [other]))
