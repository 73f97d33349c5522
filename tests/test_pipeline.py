import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import PipelineError
from runner.pipeline import InputSpec, Pipeline, Step

PROVIDERS = "fake, openai, anthropic, ollama, local"


async def shout(ctx):
    return "HELLO"


# --- the Python API ----------------------------------------------------------


def test_a_python_pipeline_with_an_async_function_step():
    pipeline = Pipeline(
        "demo",
        inputs={"topic": InputSpec(default="trio")},
        steps=[
            Step("fetch", fn=shout),
            Step("draft", needs=["fetch"], prompt="{{ inputs.topic }}: {{ steps.fetch.output }}"),
        ],
    )
    assert ["fetch", "draft"] == pipeline.order()
    assert "<python>" == pipeline.source
    assert shout is pipeline.step("fetch").fn


async def test_a_function_step_is_awaitable():
    pipeline = Pipeline("demo", steps=[Step("fetch", fn=shout)])
    assert "HELLO" == await pipeline.step("fetch").fn(None)


def test_a_string_needs_or_stop_means_one_item_not_its_letters():
    step = Step("b", needs="abc", stop="\n\n", prompt="x")
    assert ("abc",) == step.needs
    assert ("\n\n",) == step.stop


def test_step_lookup_of_an_unknown_name_is_a_key_error():
    pipeline = Pipeline("demo", steps=[Step("a", prompt="x")])
    with pytest.raises(KeyError, match=r"^'b'$"):
        pipeline.step("b")


BAD_PYTHON = {
    "duplicate step names": (
        {"steps": [Step("a", prompt="x"), Step("a", prompt="y")]},
        r"steps\.a: duplicate step name",
    ),
    "cycle": (
        {"steps": [Step("a", needs=["b"], prompt="x"), Step("b", needs=["a"], prompt="x")]},
        r"steps: cycle: a -> b -> a",
    ),
    "unknown needs": (
        {"steps": [Step("a", needs=["zz"], prompt="x")]},
        r"steps\.a\.needs: unknown step 'zz' \(known: a\)",
    ),
    "template names an unknown input": (
        {"steps": [Step("a", prompt="{{ inputs.nope }}")]},
        r"steps\.a\.prompt: unknown input 'nope' in \{\{ inputs\.nope \}\}",
    ),
    "template names a step that is not upstream": (
        {"steps": [Step("a", prompt="x"), Step("b", prompt="{{ steps.a.output }}")]},
        r"steps\.b\.prompt: step 'a' is not upstream \(add it to needs\)",
    ),
    "unknown provider": (
        {"steps": [Step("a", prompt="x", provider="gpt")]},
        rf"steps\.a\.provider: unknown provider 'gpt' \(known: {PROVIDERS}\)",
    ),
    "unknown provider in defaults": (
        {"steps": [Step("a", prompt="x")], "defaults": {"provider": "gpt"}},
        rf"defaults\.provider: unknown provider 'gpt' \(known: {PROVIDERS}\)",
    ),
    "unknown provider table": (
        {"steps": [Step("a", prompt="x")], "providers": {"gpt": {}}},
        rf"providers\.gpt: unknown provider \(known: {PROVIDERS}\)",
    ),
    "unknown defaults field": (
        {"steps": [Step("a", prompt="x")], "defaults": {"promt": "x"}},
        r"defaults\.promt: unknown field \(expected one of .*\)",
    ),
    "temperature is a string": (
        {"steps": [Step("a", prompt="x", temperature="hot")]},
        r"steps\.a\.temperature: expected a number from 0 to 2, got 'hot'",
    ),
    "max_tokens is 0": (
        {"steps": [Step("a", prompt="x", max_tokens=0)]},
        r"steps\.a\.max_tokens: expected a positive whole number, got 0",
    ),
    "retries is -1": (
        {"steps": [Step("a", prompt="x", retries=-1)]},
        r"steps\.a\.retries: expected a whole number >= 0, got -1",
    ),
    "files is a string": (
        {"steps": [Step("a", prompt="x", files="yes")]},
        r"steps\.a\.files: expected true or false, got 'yes'",
    ),
    "empty prompt": (
        {"steps": [Step("a", prompt="")]},
        r"steps\.a\.prompt: expected a non-empty string, got ''",
    ),
    "neither prompt nor fn": (
        {"steps": [Step("a")]},
        r"steps\.a: a step needs exactly one of prompt or fn",
    ),
    "both prompt and fn": (
        {"steps": [Step("a", prompt="x", fn=shout)]},
        r"steps\.a: a step needs exactly one of prompt or fn",
    ),
    "bad step name": (
        {"steps": [Step("a b", prompt="x")]},
        r"steps\.'a b': step names are letters, digits, '-' or '_'",
    ),
    "input is not an InputSpec": (
        {"steps": [Step("a", prompt="x")], "inputs": {"idea": "x"}},
        r"inputs\.idea: expected an InputSpec, got 'x'",
    ),
    "no steps": ({"steps": []}, r"steps: a pipeline needs at least one step"),
}


@pytest.mark.parametrize(("kwargs", "message"), BAD_PYTHON.values(), ids=BAD_PYTHON.keys())
def test_python_mistakes_raise_the_same_errors(kwargs, message):
    with pytest.raises(PipelineError, match=rf"^<python>: {message}$") as info:
        Pipeline("demo", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["", "my app", "app\n", "-app"])
def test_a_bad_pipeline_name_from_python(name):
    with pytest.raises(
        PipelineError, match=r"^<python>: name: expected a name of letters, digits, '-' or '_'$"
    ):
        Pipeline(name, steps=[Step("a", prompt="x")])


def test_a_long_chain_validates():
    steps = [Step("s0", prompt="x")] + [
        Step(f"s{i}", needs=[f"s{i - 1}"], prompt=f"{{{{ steps.s{i - 1}.output }}}}")
        for i in range(1, 3000)
    ]
    pipeline = Pipeline("chain", steps=steps)
    assert [f"s{i}" for i in range(3000)] == pipeline.order()


# --- inputs ------------------------------------------------------------------


@pytest.fixture
def with_inputs():
    return Pipeline(
        "demo",
        inputs={"idea": InputSpec(default="todo"), "lang": InputSpec(description="language")},
        steps=[Step("a", prompt="{{ inputs.idea }} in {{ inputs.lang }}")],
    )


def test_resolve_inputs_applies_defaults_and_overrides(with_inputs):
    assert {"idea": "todo", "lang": "go"} == with_inputs.resolve_inputs({"lang": "go"})
    assert {"idea": "chat", "lang": "go"} == with_inputs.resolve_inputs(
        {"lang": "go", "idea": "chat"}
    )


def test_resolve_inputs_without_given_values_uses_defaults():
    pipeline = Pipeline("demo", inputs={"idea": InputSpec("todo")}, steps=[Step("a", prompt="x")])
    assert {"idea": "todo"} == pipeline.resolve_inputs(None)


def test_resolve_inputs_refuses_an_unknown_input(with_inputs):
    with pytest.raises(
        PipelineError, match=r"^<python>: inputs\.colour: unknown input \(known: idea, lang\)$"
    ):
        with_inputs.resolve_inputs({"lang": "go", "colour": "red"})


def test_resolve_inputs_refuses_a_missing_required_input(with_inputs):
    with pytest.raises(
        PipelineError,
        match=r"^<python>: inputs\.lang: required input missing \(pass --input lang=\.\.\.\)$",
    ):
        with_inputs.resolve_inputs({"idea": "chat"})


# --- overrides ---------------------------------------------------------------


def test_with_overrides_changes_prompt_steps_only():
    pipeline = Pipeline(
        "demo",
        steps=[
            Step("fetch", fn=shout),
            Step("draft", needs=["fetch"], prompt="x", provider="fake", model="echo"),
        ],
    )
    overridden = pipeline.with_overrides(provider="ollama", model="llama3")
    assert Step("fetch", fn=shout) == overridden.step("fetch")
    draft = overridden.step("draft")
    assert ("ollama", "llama3") == (draft.provider, draft.model)
    assert ("fake", "echo") == (pipeline.step("draft").provider, pipeline.step("draft").model)


def test_with_overrides_of_the_model_alone_keeps_the_provider():
    pipeline = Pipeline("demo", steps=[Step("a", prompt="x", provider="openai")])
    step = pipeline.with_overrides(model="gpt-x").step("a")
    assert ("openai", "gpt-x") == (step.provider, step.model)


def test_a_step_moved_to_another_provider_leaves_its_options_behind():
    # llama.cpp's `grammar` means nothing to OpenAI, which refuses unknown fields.
    pipeline = Pipeline(
        "demo",
        steps=[
            Step("own", prompt="x", options={"grammar": "root ::= x"}),
            Step("inherited", prompt="x"),
            Step("there", prompt="x", provider="openai", options={"reasoning_effort": "low"}),
        ],
        defaults={"provider": "local", "options": {"repeat_penalty": 1.1}},
    )
    moved = pipeline.with_overrides(provider="openai", model="gpt-x")
    assert {} == moved.resolved(moved.step("own")).options
    assert {} == moved.resolved(moved.step("inherited")).options
    # Already on that provider: its options were written for it.
    assert {"reasoning_effort": "low"} == moved.resolved(moved.step("there")).options
    # The model alone moves nothing.
    same = pipeline.with_overrides(model="other")
    assert {"grammar": "root ::= x"} == same.resolved(same.step("own")).options


def test_with_no_overrides_is_the_same_pipeline():
    pipeline = Pipeline("demo", steps=[Step("a", prompt="x")])
    assert pipeline is pipeline.with_overrides()


def test_with_overrides_validates_the_provider():
    pipeline = Pipeline("demo", steps=[Step("a", prompt="x")])
    with pytest.raises(
        PipelineError,
        match=rf"^<python>: steps\.a\.provider: unknown provider 'gpt' \(known: {PROVIDERS}\)$",
    ):
        pipeline.with_overrides(provider="gpt")


# --- property: random DAGs ---------------------------------------------------

NAMES = st.builds(
    str.__add__,
    st.sampled_from("aZ_"),
    st.text(alphabet="abyZ09_-", max_size=6),
)


@st.composite
def dags(draw):
    names = draw(st.lists(NAMES, min_size=1, max_size=12, unique=True))
    needs = {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        for i, name in enumerate(names)
    }
    declared = draw(st.permutations(names))
    return [(name, needs[name]) for name in declared]


@given(dags())
def test_random_dags_build_and_order_puts_needs_first(dag):
    pipeline = Pipeline("dag", steps=[Step(name, needs=deps, prompt="x") for name, deps in dag])
    order = pipeline.order()
    assert sorted(name for name, _ in dag) == sorted(order)
    position = {name: i for i, name in enumerate(order)}
    for name, deps in dag:
        for dep in deps:
            assert position[dep] < position[name]
