import pytest

from runner.errors import PipelineError
from runner.templates import referenced_inputs, render, template_problem

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


# --- checks at load time -----------------------------------------------------

NEEDS = {"a": (), "b": ("a",), "c": ("b",)}


@pytest.mark.parametrize(
    ("text", "step"),
    [
        (None, "c"),
        ("", "c"),
        ("plain { text }", None),
        ("{{ inputs.idea }} {{ steps.b.output }} {{ steps.a.output }}", "c"),
    ],
)
def test_template_problem_finds_none_in_good_text(text, step):
    assert None is template_problem(text, inputs={"idea"}, needs=NEEDS, step=step)


@pytest.mark.parametrize(
    ("text", "step", "problem"),
    [
        ("{{ inputs.idee }}", "a", "unknown input 'idee' in {{ inputs.idee }}"),
        ("{{ steps.c.output }}", "b", "step 'c' is not upstream (add it to needs)"),
        ("{{ steps.a.output }}", None, "step 'a' is not upstream (add it to needs)"),
        (
            "x {{ steps.a }}",
            "b",
            "unsupported template {{ steps.a }} (use inputs.NAME or steps.NAME.output)",
        ),
        ("{{ inputs.x }} {{ inputs.y }}", "a", "unknown input 'x' in {{ inputs.x }}"),
    ],
)
def test_template_problem_names_the_first_problem(text, step, problem):
    assert problem == template_problem(text, inputs={"idea"}, needs=NEEDS, step=step)


def test_referenced_inputs_are_the_inputs_named_in_the_text():
    text = "{{ inputs.a }} {{steps.s.output}} {{\n inputs.b }} {{ inputs.a }} {{ input.c }}"
    assert {"a", "b"} == referenced_inputs(text)
