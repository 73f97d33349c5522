import json
import re
import textwrap

import attrs
import pytest

from runner.errors import PipelineError
from runner.pipeline import InputSpec, Pipeline, Step
from runner.pipeline_files import load_pipeline, pipeline_from_dict

PROVIDERS = "fake, openai, anthropic, ollama, local"


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
    # No generation parameter is set unless the pipeline sets it: nothing goes on the wire.
    expected = Step("a", prompt="hi", provider="fake", model="echo")
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
        r"steps\.builder\.promt: unknown field \(expected one of attempt_cap_s, files, "
        r"max_tokens, model, needs, omit, options, prompt, provider, retries, seed, stop, "
        r"system, temperature, timeout_s, top_p\)",
    ),
    "anthropic temperature above 1": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        provider = "anthropic"
        model = "claude"
        temperature = 1.5
        """,
        r"steps\.a\.temperature: expected a number from 0 to 1 for anthropic, got 1\.5",
    ),
    "anthropic temperature above 1 from the defaults": (
        """\
        name = "p"
        [defaults]
        temperature = 1.2
        [steps.a]
        prompt = "x"
        provider = "anthropic"
        model = "claude"
        """,
        r"defaults\.temperature: expected a number from 0 to 1 for anthropic, got 1\.2",
    ),
    "unknown openai token limit field": (
        """\
        name = "p"
        [providers.openai]
        token_limit_field = "max_output_tokens"
        [steps.a]
        prompt = "x"
        """,
        r'providers\.openai\.token_limit_field: expected "max_tokens" or '
        r'"max_completion_tokens", got \'max_output_tokens\'',
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
    "misspelt name": (
        """\
        nmae = "p"
        [steps.a]
        prompt = "x"
        """,
        r"nmae: unknown field \(expected one of defaults, description, inputs, name, "
        r"providers, steps, version\)",
    ),
    "name is a number": (
        """\
        name = 3
        [steps.a]
        prompt = "x"
        """,
        r"name: expected a name of letters, digits, '-' or '_'",
    ),
    "version is a boolean": (
        """\
        name = "p"
        version = true
        [steps.a]
        prompt = "x"
        """,
        r"version: expected a string",
    ),
    "input is a number": (
        """\
        name = "p"
        inputs = { idea = 3 }
        [steps.a]
        prompt = "x"
        """,
        r"inputs\.idea: expected a string default or a table \{default, description\}",
    ),
    "input default is not a string": (
        """\
        name = "p"
        inputs = { idea = { default = 3 } }
        [steps.a]
        prompt = "x"
        """,
        r"inputs\.idea\.default: expected a string",
    ),
    "defaults is not a table": (
        """\
        name = "p"
        defaults = 3
        [steps.a]
        prompt = "x"
        """,
        r"defaults: expected a table",
    ),
    "steps is not a table": (
        """\
        name = "p"
        steps = 3
        """,
        r"steps: expected a table",
    ),
    "a provider setting of the wrong type": (
        """\
        name = "p"
        [providers.openai]
        stream = "yes"
        [steps.a]
        prompt = "x"
        """,
        r"providers\.openai\.stream: expected true, false or \"auto\", got 'yes'",
    ),
    "max_tokens is a string of digits": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        max_tokens = "10"
        """,
        r"steps\.a\.max_tokens: expected a positive whole number, got '10'",
    ),
    "stop is a string": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        stop = "END"
        """,
        r"steps\.a\.stop: expected a list of strings, got 'END'",
    ),
    "needs holds a number": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        [steps.b]
        needs = [1]
        prompt = "x"
        """,
        r"steps\.b\.needs: expected a list of step names, got \[1\]",
    ),
    "options is not a table": (
        """\
        name = "p"
        [steps.a]
        prompt = "x"
        options = "x"
        """,
        r"steps\.a\.options: expected a table of provider options, got 'x'",
    ),
    "fn is not a string": (
        """\
        name = "p"
        [steps.a]
        fn = 3
        """,
        r"steps\.a\.fn: expected a \"module:function\" reference, got 3",
    ),
    "a step table names itself": (
        """\
        name = "p"
        [steps.a]
        name = "b"
        prompt = "x"
        """,
        r"steps\.a\.name: unknown field \(expected one of .*\)",
    ),
    "step name with a newline and a field of the wrong type": (
        """\
        name = "p"
        [steps."a\\n"]
        prompt = "x"
        temperature = "hot"
        """,
        r"steps\.'a\\n'\.temperature: expected a number from 0 to 2, got 'hot'",
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


def test_a_structure_that_is_not_a_table_is_a_pipeline_error():
    with pytest.raises(PipelineError, match=r"^pipeline\.json: expected a table, got list$"):
        pipeline_from_dict([], source="pipeline.json")


# --- serialisation and hashes of loaded files --------------------------------


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


def test_pipeline_json_round_trips_through_json(tmp_path):
    pipeline = load(tmp_path, APP)
    again = pipeline_from_dict(json.loads(pipeline.to_json_bytes()), source="pipeline.json")
    assert pipeline == again
    assert pipeline.to_json_bytes() == again.to_json_bytes()


def test_every_step_field_round_trips_through_pipeline_json():
    # A field added to `Step` must also be accepted in a file, or a resume cannot read it back.
    defaults = {
        "provider": "openai",
        "model": "m",
        "system": "s",
        "temperature": 1,
        "top_p": 0.9,
        "max_tokens": 9,
        "stop": ["END"],
        "seed": 3,
        "files": True,
        "timeout_s": 2.5,
        "attempt_cap_s": 600,
        "retries": 0,
        "options": {"logprobs": True},
        "omit": ["stream_options"],
    }
    step = Step("a", prompt="p", **defaults)
    fn_step = Step("b", needs=["a"], fn=shout)
    fields = attrs.fields(Step)
    given = {
        f.name for s in (step, fn_step) for f in fields if getattr(s, f.name) not in (None, ())
    }
    assert {f.name for f in fields} == given
    pipeline = Pipeline("every", steps=[step, fn_step], defaults=defaults)
    again = pipeline_from_dict(json.loads(pipeline.to_json_bytes()))
    assert pipeline == again
    assert shout is again.step("b").fn


def test_whole_numbers_stay_whole_numbers(tmp_path):
    # Read back as 120.0, pipeline.json's bytes and every step hash would change.
    pipeline = load(tmp_path, APP)
    builder = pipeline.to_dict()["steps"]["builder"]
    assert (120, int) == (builder["timeout_s"], type(builder["timeout_s"]))
    assert b'"timeout_s":120}' in pipeline.to_json_bytes()
