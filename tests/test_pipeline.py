import re
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import PipelineError
from runner.pipeline import (
    InputSpec,
    Pipeline,
    Step,
    load_pipeline,
    pipeline_from_dict,
    render,
)

PROVIDERS = "fake, openai, anthropic, ollama"


async def shout(ctx):
    return "HELLO"


def write(tmp_path, text, name="p.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path, text):
    return load_pipeline(write(tmp_path, text))


APP = """\
    name = "app-builder"
    version = "7"

    [inputs]
    idea = { default = "a todo list", description = "what to build" }
    lang = "python"
    audience = {}

    [defaults]
    model = "small"
    temperature = 0.5
    stop = ["END"]

    [providers.openai]
    max_concurrency = 8

    [providers.fake.replies]
    builder = "ok"

    [steps.architect]
    system = "You are careful."
    prompt = "Design {{ inputs.idea }} in {{ inputs.lang }} for {{ inputs.audience }}."

    [steps.builder]
    needs = ["architect"]
    prompt = "Implement {{ steps.architect.output }}"
    model = "big"
    files = true
    timeout_s = 120
    retries = 5

    [steps.reviewer]
    needs = ["builder"]
    prompt = "Review {{ steps.builder.output }} against {{ steps.architect.output }}"
    provider = "openai"
"""


# --- loading a valid file ----------------------------------------------------


def test_load_reads_name_version_and_steps_in_declaration_order(tmp_path):
    pipeline = load(tmp_path, APP)
    assert "app-builder" == pipeline.name
    assert "7" == pipeline.version
    assert ["architect", "builder", "reviewer"] == pipeline.step_names
    assert ("architect",) == pipeline.step("builder").needs
    assert str(tmp_path / "p.toml") == pipeline.source


def test_load_reads_inputs_in_table_and_shorthand_form(tmp_path):
    pipeline = load(tmp_path, APP)
    expected = {
        "idea": InputSpec(default="a todo list", description="what to build"),
        "lang": InputSpec(default="python"),
        "audience": InputSpec(default=None),
    }
    assert expected == dict(pipeline.inputs)


def test_defaults_fill_in_and_a_steps_own_value_wins(tmp_path):
    pipeline = load(tmp_path, APP)
    architect = pipeline.resolved(pipeline.step("architect"))
    builder = pipeline.resolved(pipeline.step("builder"))
    reviewer = pipeline.resolved(pipeline.step("reviewer"))
    assert ("small", 0.5, ("END",)) == (architect.model, architect.temperature, architect.stop)
    assert "big" == builder.model
    assert (True, 120, 5) == (builder.files, builder.timeout_s, builder.retries)
    assert ("openai", "fake") == (reviewer.provider, architect.provider)


def test_built_in_defaults(tmp_path):
    pipeline = load(
        tmp_path,
        """\
        name = "p"
        [steps.a]
        prompt = "hi"
        """,
    )
    step = pipeline.resolved(pipeline.step("a"))
    expected = Step(
        "a", prompt="hi", provider="fake", model="echo", temperature=0.0, max_tokens=2048
    )
    assert expected == step
    assert "1" == pipeline.version


def test_resolved_leaves_the_step_itself_unchanged(tmp_path):
    pipeline = load(tmp_path, APP)
    assert pipeline.step("architect").model is None


def test_providers_tables(tmp_path):
    pipeline = load(tmp_path, APP)
    expected = {"openai": {"max_concurrency": 8}, "fake": {"replies": {"builder": "ok"}}}
    assert expected == pipeline.providers


def test_an_integer_version_is_kept_as_a_string(tmp_path):
    pipeline = load(
        tmp_path,
        """\
        name = "p"
        version = 2
        [steps.a]
        prompt = "hi"
        """,
    )
    assert "2" == pipeline.version


def test_a_step_may_name_a_python_function(tmp_path):
    pipeline = load(
        tmp_path,
        f"""\
        name = "p"
        [steps.a]
        fn = "{__name__}:shout"
        [steps.b]
        needs = ["a"]
        prompt = "{{{{ steps.a.output }}}}"
        """,
    )
    assert shout is pipeline.step("a").fn


def test_a_transitive_upstream_reference_is_fine(tmp_path):
    pipeline = load(
        tmp_path,
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        [steps.b]
        needs = ["a"]
        prompt = "y"
        [steps.c]
        needs = ["b"]
        system = "{{ steps.a.output }}"
        prompt = "{{ steps.a.output }} {{ steps.b.output }}"
        """,
    )
    assert ["a", "b", "c"] == pipeline.order()


# --- every user mistake is one line naming file, step and field --------------

BAD_FILES = {
    "toml syntax": (
        """\
        name = "p"
        [steps.a
        """,
        r"invalid TOML: .*\(at line 2, column \d+\)",
    ),
    "unknown top-level field": (
        """\
        name = "p"
        nmae = "q"
        [steps.a]
        prompt = "x"
        """,
        r"nmae: unknown field \(expected one of defaults, description, inputs, name, "
        r"providers, steps, version\)",
    ),
    "unknown step field": (
        """\
        name = "p"
        [steps.builder]
        promt = "x"
        """,
        r"steps\.builder\.promt: unknown field \(expected one of files, max_tokens, model, "
        r"needs, options, prompt, provider, retries, seed, stop, system, temperature, "
        r"timeout_s\)",
    ),
    "unknown defaults field": (
        """\
        name = "p"
        [defaults]
        prompt = "x"
        [steps.a]
        prompt = "x"
        """,
        r"defaults\.prompt: unknown field \(expected one of .*\)",
    ),
    "unknown input field": (
        """\
        name = "p"
        [inputs]
        idea = { defualt = "x" }
        [steps.a]
        prompt = "x"
        """,
        r"inputs\.idea\.defualt: unknown field \(expected default or description\)",
    ),
    "cycle": (
        """\
        name = "p"
        [steps.a]
        needs = ["b"]
        prompt = "x"
        [steps.b]
        needs = ["a"]
        prompt = "x"
        """,
        r"steps: cycle: a -> b -> a",
    ),
    "self cycle": (
        """\
        name = "p"
        [steps.a]
        needs = ["a"]
        prompt = "x"
        """,
        r"steps: cycle: a -> a",
    ),
    "needs names an unknown step": (
        """\
        name = "p"
        [steps.architect]
        prompt = "x"
        [steps.builder]
        needs = ["architec"]
        prompt = "x"
        """,
        r"steps\.builder\.needs: unknown step 'architec' \(known: architect, builder\)",
    ),
    "template names an unknown input": (
        """\
        name = "p"
        [inputs]
        idea = "x"
        [steps.a]
        prompt = "{{ inputs.ideas }}"
        """,
        r"steps\.a\.prompt: unknown input 'ideas' in \{\{ inputs\.ideas \}\}",
    ),
    "multi-line template expression names an unknown input": (
        """\
        name = "p"
        [steps.a]
        prompt = \"\"\"{{
            inputs.idea
        }}\"\"\"
        """,
        r"steps\.a\.prompt: unknown input 'idea' in \{\{ inputs\.idea \}\}",
    ),
    "template names a step that is not upstream": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        [steps.b]
        prompt = "{{ steps.a.output }}"
        """,
        r"steps\.b\.prompt: step 'a' is not upstream \(add it to needs\)",
    ),
    "template names a downstream step": (
        """\
        name = "p"
        [steps.a]
        system = "{{ steps.b.output }}"
        prompt = "x"
        [steps.b]
        needs = ["a"]
        prompt = "x"
        """,
        r"steps\.a\.system: step 'b' is not upstream \(add it to needs\)",
    ),
    "defaults system names a step": (
        """\
        name = "p"
        [defaults]
        system = "{{ steps.a.output }}"
        [steps.a]
        prompt = "x"
        """,
        r"defaults\.system: step 'a' is not upstream \(add it to needs\)",
    ),
    "unsupported template expression": (
        """\
        name = "p"
        [steps.a]
        prompt = "{{ inputs.idea | upper }}"
        """,
        r"steps\.a\.prompt: unsupported template \{\{ inputs\.idea \| upper \}\} "
        r"\(use inputs\.NAME or steps\.NAME\.output\)",
    ),
    "step output without .output": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        [steps.b]
        needs = ["a"]
        prompt = "{{ steps.a }}"
        """,
        r"steps\.b\.prompt: unsupported template \{\{ steps\.a \}\} "
        r"\(use inputs\.NAME or steps\.NAME\.output\)",
    ),
    "unknown provider in a step": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        provider = "gpt"
        """,
        rf"steps\.a\.provider: unknown provider 'gpt' \(known: {PROVIDERS}\)",
    ),
    "unknown provider in defaults": (
        """\
        name = "p"
        [defaults]
        provider = "gpt"
        [steps.a]
        prompt = "x"
        """,
        rf"defaults\.provider: unknown provider 'gpt' \(known: {PROVIDERS}\)",
    ),
    "unknown provider table": (
        """\
        name = "p"
        [providers.gpt]
        max_concurrency = 2
        [steps.a]
        prompt = "x"
        """,
        rf"providers\.gpt: unknown provider \(known: {PROVIDERS}\)",
    ),
    "provider settings not a table": (
        """\
        name = "p"
        providers = { openai = 3 }
        [steps.a]
        prompt = "x"
        """,
        r"providers\.openai: expected a table",
    ),
    "temperature is a string": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        temperature = "hot"
        """,
        r"steps\.a\.temperature: expected a number from 0 to 2, got 'hot'",
    ),
    "temperature out of range": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        temperature = 2.5
        """,
        r"steps\.a\.temperature: expected a number from 0 to 2, got 2\.5",
    ),
    "max_tokens is 0": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        max_tokens = 0
        """,
        r"steps\.a\.max_tokens: expected a positive whole number, got 0",
    ),
    "max_tokens in defaults is a float": (
        """\
        name = "p"
        [defaults]
        max_tokens = 10.5
        [steps.a]
        prompt = "x"
        """,
        r"defaults\.max_tokens: expected a positive whole number, got 10\.5",
    ),
    "retries is -1": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        retries = -1
        """,
        r"steps\.a\.retries: expected a whole number >= 0, got -1",
    ),
    "retries is a boolean": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        retries = true
        """,
        r"steps\.a\.retries: expected a whole number >= 0, got True",
    ),
    "files is a string": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        files = "yes"
        """,
        r"steps\.a\.files: expected true or false, got 'yes'",
    ),
    "needs is not a list": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        [steps.b]
        needs = "a"
        prompt = "x"
        """,
        r"steps\.b\.needs: expected a list of step names, got 'a'",
    ),
    "timeout_s is 0": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        timeout_s = 0
        """,
        r"steps\.a\.timeout_s: expected a positive number of seconds, got 0",
    ),
    "empty prompt": (
        """\
        name = "p"
        [steps.a]
        prompt = "  "
        """,
        r"steps\.a\.prompt: expected a non-empty string, got '  '",
    ),
    "neither prompt nor fn": (
        """\
        name = "p"
        [steps.a]
        model = "m"
        """,
        r"steps\.a: a step needs exactly one of prompt or fn",
    ),
    "both prompt and fn": (
        f"""\
        name = "p"
        [steps.a]
        prompt = "x"
        fn = "{__name__}:shout"
        """,
        r"steps\.a: a step needs exactly one of prompt or fn",
    ),
    "fn cannot be imported": (
        """\
        name = "p"
        [steps.a]
        fn = "no_such_module_here:go"
        """,
        r"steps\.a\.fn: cannot import 'no_such_module_here:go'",
    ),
    "step is not a table": (
        """\
        name = "p"
        steps = { a = "x" }
        """,
        r"steps\.a: expected a table",
    ),
    "missing name": (
        """\
        [steps.a]
        prompt = "x"
        """,
        r"name: expected a name of letters, digits, '-' or '_'",
    ),
    "name with a space": (
        """\
        name = "my app"
        [steps.a]
        prompt = "x"
        """,
        r"name: expected a name of letters, digits, '-' or '_'",
    ),
    "name with a trailing newline": (
        """\
        name = "app\\n"
        [steps.a]
        prompt = "x"
        """,
        r"name: expected a name of letters, digits, '-' or '_'",
    ),
    "step name with a newline": (
        """\
        name = "p"
        [steps."a\\n"]
        prompt = "x"
        """,
        r"steps\.'a\\n': step names are letters, digits, '-' or '_'",
    ),
    "no steps": (
        """\
        name = "p"
        """,
        r"steps: a pipeline needs at least one step",
    ),
    "empty steps table": (
        """\
        name = "p"
        [steps]
        """,
        r"steps: a pipeline needs at least one step",
    ),
    "inputs is not a table": (
        """\
        name = "p"
        inputs = ["idea"]
        [steps.a]
        prompt = "x"
        """,
        r"inputs: expected a table",
    ),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_user_mistake_is_one_line_naming_the_file_and_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: {message}$") as info:
        load_pipeline(path)
    assert "\n" not in str(info.value)


def test_an_unreadable_file_is_a_pipeline_error(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(
        PipelineError,
        match=rf"^{re.escape(str(path))}: cannot read pipeline \(No such file or directory\)$",
    ):
        load_pipeline(path)


def test_a_file_that_is_not_utf8_is_a_pipeline_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'name = "p\xff"\n')
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: invalid TOML: .*$"):
        load_pipeline(path)


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


# --- render ------------------------------------------------------------------


def test_render_substitutes_inputs_and_outputs_in_one_pass():
    template = "Build {{ inputs.idea }} from {{ steps.a.output }}."
    outputs = {"a": "a design that mentions {{ inputs.idea }} and {{ steps.a.output }}"}
    expected = "Build todo from a design that mentions {{ inputs.idea }} and {{ steps.a.output }}."
    assert expected == render(template, {"idea": "todo"}, outputs)


@pytest.mark.parametrize(
    "template",
    [
        "{{inputs.x}}-{{steps.s.output}}",
        "{{ inputs.x }}-{{ steps.s.output }}",
        "{{   inputs.x\t}}-{{\tsteps.s.output   }}",
        "{{\n  inputs.x\n}}-{{\n steps.s.output\n}}",
    ],
)
def test_render_accepts_whitespace_inside_the_braces(template):
    assert "X-S" == render(template, {"x": "X"}, {"s": "S"})


def test_render_leaves_text_without_templates_alone():
    assert "a { b } {c}" == render("a { b } {c}", {}, {})


def test_render_refuses_an_unsupported_expression():
    with pytest.raises(PipelineError, match=r"^unsupported template expression \{\{ x \}\}$"):
        render("{{ x }}", {}, {})


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


# --- serialisation, hashes, overrides ----------------------------------------


def test_to_dict_round_trips_a_loaded_file(tmp_path):
    pipeline = load(tmp_path, APP)
    assert pipeline == pipeline_from_dict(pipeline.to_dict())


def test_to_dict_round_trips_a_python_pipeline_with_a_function_step():
    pipeline = Pipeline(
        "demo",
        inputs={"idea": InputSpec(description="what")},
        defaults={"stop": ["END"], "options": {"top_p": 0.5}},
        steps=[
            Step("fetch", fn=shout),
            Step("draft", needs=["fetch"], prompt="{{ steps.fetch.output }}", stop=["x"], seed=1),
        ],
    )
    data = pipeline.to_dict()
    assert f"{__name__}:shout" == data["steps"]["fetch"]["fn"]
    again = pipeline_from_dict(data)
    assert pipeline == again
    assert shout is again.step("fetch").fn
    assert pipeline.to_json_bytes() == again.to_json_bytes()


def test_sha256_is_stable_across_loads(tmp_path):
    first = load_pipeline(write(tmp_path, APP, "one.toml"))
    second = load_pipeline(write(tmp_path, APP, "two.toml"))
    assert first.sha256() == second.sha256()
    assert first.to_json_bytes() == second.to_json_bytes()


def test_sha256_and_step_sha256_change_only_where_the_pipeline_changed(tmp_path):
    before = load_pipeline(write(tmp_path, APP, "one.toml"))
    after = load_pipeline(write(tmp_path, APP.replace("Implement", "Write"), "two.toml"))
    assert before.sha256() != after.sha256()
    changed = [n for n in before.step_names if before.step_sha256(n) != after.step_sha256(n)]
    assert ["builder"] == changed


def test_step_sha256_changes_with_the_defaults_a_step_uses(tmp_path):
    before = load(tmp_path, APP)
    after = load(tmp_path, APP.replace('model = "small"', 'model = "medium"'))
    changed = [n for n in before.step_names if before.step_sha256(n) != after.step_sha256(n)]
    # builder sets its own model, so only the others change.
    assert ["architect", "reviewer"] == changed


def test_step_sha256_changes_with_the_version(tmp_path):
    before = load(tmp_path, APP)
    after = load(tmp_path, APP.replace('version = "7"', 'version = "8"'))
    assert before.step_sha256("architect") != after.step_sha256("architect")


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
