"""Templates in prompts: `{{ inputs.NAME }}` and `{{ steps.NAME.output }}`, nothing else.

Checked when a pipeline is built (`template_problem`), filled when a step runs (`render`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from .errors import PipelineError
from .graph import ancestors

if TYPE_CHECKING:
    from .pipeline import Step

__all__ = ["referenced_inputs", "render", "template_problem"]

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INPUT_REF = re.compile(r"^\s*inputs\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")
_STEP_REF = re.compile(r"^\s*steps\.([A-Za-z_][A-Za-z0-9_-]*)\.output\s*$")


def render(template: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    """Fill `{{ inputs.NAME }}` and `{{ steps.NAME.output }}` in one pass (no re-rendering)."""

    def substitute(match: re.Match[str]) -> str:
        expr = match.group(1)
        if m := _INPUT_REF.match(expr):
            return inputs[m.group(1)]
        if m := _STEP_REF.match(expr):
            return outputs[m.group(1)]
        raise PipelineError(f"unsupported template expression {{{{{expr}}}}}")

    return _TEMPLATE.sub(substitute, template)


def render_prompts(
    step: Step, inputs: Mapping[str, str], outputs: Mapping[str, str]
) -> tuple[str, str | None]:
    """A resolved LLM step's (user prompt, system prompt or None), as it sends them.

    One rendering for the step that calls its model and for `runner show --step`,
    which renders them again to show what was sent.
    """
    assert step.prompt is not None
    system = render(step.system, inputs, outputs) if step.system else None
    return render(step.prompt, inputs, outputs), system


def referenced_inputs(text: str) -> set[str]:
    """The names of the inputs `text` uses."""
    return {m.group(1) for t in _TEMPLATE.finditer(text) if (m := _INPUT_REF.match(t.group(1)))}


def template_problem(
    text: str | None,
    *,
    inputs: Collection[str],
    needs: Mapping[str, Iterable[str]],
    step: str | None,
) -> str | None:
    """What is wrong with the templates in `text`, or None when nothing is.

    `step` is the step whose text this is; it may use the outputs of the steps
    upstream of it in `needs`. None (the `[defaults]` system prompt) may use no output.
    """
    if not text:
        return None
    upstream: set[str] | None = None
    for match in _TEMPLATE.finditer(text):
        expr = match.group(1)
        # One line: a multi-line expression must not break the one-line error.
        shown = "{{ " + " ".join(expr.split()) + " }}"
        if m := _INPUT_REF.match(expr):
            if m.group(1) not in inputs:
                return f"unknown input {m.group(1)!r} in {shown}"
        elif m := _STEP_REF.match(expr):
            if step is not None and m.group(1) in needs[step]:
                continue
            # Ancestors only past the direct needs: a long chain stays fast to validate.
            if upstream is None:
                upstream = ancestors(needs, step) if step is not None else set()
            if m.group(1) not in upstream:
                return f"step {m.group(1)!r} is not upstream (add it to needs)"
        else:
            return f"unsupported template {shown} (use inputs.NAME or steps.NAME.output)"
    return None
