"""`Pipeline`, `Step` and `InputSpec`: what a pipeline is, and the rules every pipeline obeys.

Pure: no I/O. Files become pipelines in `pipeline_files.py`; templates live in
`templates.py`. Built from a file or from Python, a `Pipeline` checks itself, and
every mistake is a `PipelineError` naming the file, the step and the field::

    app.toml: steps.builder.needs: unknown step 'architec' (known: architect, builder)
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import PipelineError
from .graph import find_cycle, topological_order
from .pipeline_rules import FIELD_RULES, NAME_PATTERN, STEP_ONLY_RULES, Rules, provider_fields
from .providers import PROVIDER_NAMES as _PROVIDERS
from .templates import referenced_inputs, template_problem

if TYPE_CHECKING:
    from .step import StepContext

__all__ = ["InputSpec", "Pipeline", "Step"]

StepFunction = Callable[["StepContext"], Awaitable[str]]

# Generation parameters have no built-in default: what a pipeline does not set is not
# sent, and the model uses its own (current models refuse some parameters outright).
_BUILTIN_DEFAULTS: dict[str, Any] = {"provider": "fake", "model": "echo"}


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    # A bare string means one name, not a tuple of its letters.
    return (value,) if isinstance(value, str) else tuple(value)


def _to_optional_tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _to_tuple(value)


def _to_steps(value: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(value)


@attrs.frozen
class InputSpec:
    """A pipeline input. No default means the input is required."""

    default: str | None = None
    description: str = ""


@attrs.frozen
class Step:
    """One node of the DAG: a prompt for an LLM, or `fn`, an `async def fn(ctx) -> str`.

    Fields left as None take the pipeline's `[defaults]`, then the built-in
    defaults (provider "fake", model "echo"). Generation parameters (`temperature`,
    `top_p`, `max_tokens`, `stop`, `seed`, `options`) left unset are not sent at all.
    `omit` names request fields to leave out of what the provider would send.
    """

    name: str
    prompt: str | None = None
    needs: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    system: str | None = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = attrs.field(default=None, converter=_to_optional_tuple)
    seed: int | None = None
    files: bool | None = None
    timeout_s: float | None = None
    attempt_cap_s: float | None = None
    retries: int | None = None
    options: Mapping[str, Any] | None = None
    omit: tuple[str, ...] | None = attrs.field(default=None, converter=_to_optional_tuple)
    fn: StepFunction | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Pipeline:
    """A validated DAG of steps. Build it from Python, or with `load_pipeline(path)`.

    Example::

        pipeline = Pipeline(
            name="demo",
            inputs={"topic": InputSpec(default="trio")},
            steps=[
                Step("outline", prompt="Outline an article on {{ inputs.topic }}."),
                Step("draft", needs=["outline"], prompt="Write it: {{ steps.outline.output }}"),
            ],
        )
    """

    name: str
    steps: tuple[Step, ...] = attrs.field(converter=_to_steps)
    inputs: Mapping[str, InputSpec] = attrs.field(factory=dict)
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    providers: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    version: str = "1"
    source: str = attrs.field(default="<python>", eq=False)

    def __attrs_post_init__(self) -> None:
        _validate(self)

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    @property
    def needs(self) -> dict[str, tuple[str, ...]]:
        return {step.name: step.needs for step in self.steps}

    def order(self) -> list[str]:
        return topological_order(self.needs)

    def step(self, name: str) -> Step:
        return self._steps_by_name[name]

    def resolved(self, step: Step) -> Step:
        """The step with `[defaults]` and the built-in defaults filled in."""
        # A step of this pipeline is resolved once; any other `Step` afresh.
        if self._steps_by_name.get(step.name) is step:
            return self._resolved_steps[step.name]
        return self._resolve(step)

    def _resolve(self, step: Step) -> Step:
        changes: dict[str, Any] = {}
        for field in FIELD_RULES:
            if getattr(step, field) is None:
                value = self.defaults.get(field, _BUILTIN_DEFAULTS.get(field))
                if value is not None:
                    changes[field] = tuple(value) if field in ("stop", "omit") else value
        return attrs.evolve(step, **changes) if changes else step

    # Derived once per pipeline (it is frozen): a job reads these once per step.
    @functools.cached_property
    def _steps_by_name(self) -> dict[str, Step]:
        return {step.name: step for step in self.steps}

    @functools.cached_property
    def _resolved_steps(self) -> dict[str, Step]:
        return {step.name: self._resolve(step) for step in self.steps}

    @functools.cached_property
    def _canonical(self) -> str:
        return canonical_json(self.to_dict())

    @functools.cached_property
    def _step_records(self) -> dict[str, Any]:
        steps: dict[str, Any] = json.loads(self._canonical)["steps"]
        return steps

    def resolve_inputs(self, given: Mapping[str, str] | None) -> dict[str, str]:
        """Defaults plus `given`; an unknown or missing input is a `PipelineError`."""
        given = dict(given or {})
        for name in given:
            if name not in self.inputs:
                known = ", ".join(self.inputs) or "none"
                raise PipelineError(f"{self.source}: inputs.{name}: unknown input (known: {known})")
        resolved = {}
        for name, spec in self.inputs.items():
            value = given.get(name, spec.default)
            if value is None:
                raise PipelineError(
                    f"{self.source}: inputs.{name}: required input missing "
                    f"(pass --input {name}=...)"
                )
            resolved[name] = value
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (`pipeline.json`); `fn` steps are stored as `module:qualname`."""
        steps = {}
        for step in self.steps:
            record = {
                k: v for k, v in attrs.asdict(step, recurse=False).items() if v not in (None, ())
            }
            record.pop("name")
            if step.fn is not None:
                record["fn"] = f"{step.fn.__module__}:{step.fn.__qualname__}"
            for listed in ("stop", "omit"):
                if listed in record:
                    record[listed] = list(record[listed])
            if "needs" in record:
                record["needs"] = list(record["needs"])
            steps[step.name] = record
        return {
            "name": self.name,
            "version": self.version,
            "inputs": {k: attrs.asdict(v) for k, v in self.inputs.items()},
            "defaults": dict(self.defaults),
            "providers": {k: dict(v) for k, v in self.providers.items()},
            "steps": steps,
        }

    def with_overrides(self, *, provider: str | None = None, model: str | None = None) -> Pipeline:
        """This pipeline with every LLM step on `provider` / `model` (`--provider`, `--model`).

        A step moved to another provider leaves its `options` behind: they are extras
        of one provider's API (llama.cpp's `grammar` would be refused by OpenAI).
        """
        changes: dict[str, Any] = {
            k: v for k, v in (("provider", provider), ("model", model)) if v is not None
        }
        if not changes:
            return self
        steps = []
        for step in self.steps:
            if step.fn is not None:
                steps.append(step)
                continue
            resolved = self.resolved(step)
            moved = provider is not None and resolved.provider != provider
            step_changes = {**changes, "options": {}} if moved and resolved.options else changes
            steps.append(attrs.evolve(step, **step_changes))
        return attrs.evolve(self, steps=steps)

    def to_json_bytes(self) -> bytes:
        """`pipeline.json`: canonical JSON, so the same pipeline always gives the same bytes."""
        return (self._canonical + "\n").encode()

    def referenced_inputs(self, step: Step) -> set[str]:
        """The inputs the step's prompt and system prompt use (its own, or the default one)."""
        text = (step.prompt or "") + (step.system or "") + (self.defaults.get("system") or "")
        return referenced_inputs(text)

    def sha256(self) -> str:
        return hashlib.sha256(self._canonical.encode()).hexdigest()

    def step_sha256(self, name: str) -> str:
        """A hash of what defines one step's result (its own fields, resolved, and the version)."""
        record = self._step_records[name]
        resolved = attrs.asdict(self.resolved(self.step(name)), recurse=False)
        resolved.pop("fn")
        fake = self.providers.get("fake", {}) if resolved.get("provider") == "fake" else {}
        scripted = {k: fake.get(k, {}).get(name) for k in ("replies", "errors")}
        payload = {"step": record, "resolved": resolved, "version": self.version, "fake": scripted}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=list
    )


def _validate(pipeline: Pipeline) -> None:
    source = pipeline.source

    def fail(where: str, message: str) -> PipelineError:
        return PipelineError(f"{source}: {where}: {message}")

    if not isinstance(pipeline.name, str) or not NAME_PATTERN.match(pipeline.name):
        raise fail("name", "expected a name of letters, digits, '-' or '_'")
    for input_name, spec in pipeline.inputs.items():
        if not isinstance(spec, InputSpec):
            raise fail(f"inputs.{input_name}", f"expected an InputSpec, got {spec!r}")
    # Types as well as ranges: a pipeline built in Python was never structured from a file.
    _fields(pipeline.defaults, "defaults", FIELD_RULES, fail)
    provider = pipeline.defaults.get("provider")
    if provider is not None and provider not in _PROVIDERS:
        raise fail(
            "defaults.provider", f"unknown provider {provider!r} (known: {', '.join(_PROVIDERS)})"
        )
    for provider_name, settings in pipeline.providers.items():
        if provider_name not in _PROVIDERS:
            raise fail(
                f"providers.{provider_name}", f"unknown provider (known: {', '.join(_PROVIDERS)})"
            )
        if not isinstance(settings, Mapping):
            raise fail(f"providers.{provider_name}", "expected a table")
        _fields(settings, f"providers.{provider_name}", provider_fields(provider_name), fail)
    if not pipeline.steps:
        raise fail("steps", "a pipeline needs at least one step")
    names: set[str] = set()
    for step in pipeline.steps:
        if not isinstance(step.name, str) or not NAME_PATTERN.match(step.name):
            raise fail(f"steps.{step.name!r}", "step names are letters, digits, '-' or '_'")
        if step.name in names:
            raise fail(f"steps.{step.name}", "duplicate step name")
        names.add(step.name)
        values = {field: getattr(step, field) for field in (*FIELD_RULES, *STEP_ONLY_RULES)}
        _fields(
            {k: v for k, v in values.items() if v is not None},
            f"steps.{step.name}",
            {**FIELD_RULES, **STEP_ONLY_RULES},
            fail,
        )
    needs = pipeline.needs
    for step in pipeline.steps:
        for dep in step.needs:
            if dep not in names:
                known = ", ".join(sorted(names))
                raise fail(f"steps.{step.name}.needs", f"unknown step {dep!r} (known: {known})")
    cycle = find_cycle(needs)
    if cycle:
        raise fail("steps", f"cycle: {' -> '.join(cycle)}")
    for step in pipeline.steps:
        where = f"steps.{step.name}"
        if (step.prompt is None) == (step.fn is None):
            raise fail(where, "a step needs exactly one of prompt or fn")
        resolved = pipeline.resolved(step)
        if resolved.provider not in _PROVIDERS:
            raise fail(
                f"{where}.provider",
                f"unknown provider {resolved.provider!r} (known: {', '.join(_PROVIDERS)})",
            )
        temperature = resolved.temperature
        if resolved.provider == "anthropic" and temperature is not None:
            if not 0 <= temperature <= 1:  # Anthropic's range; the others take up to 2
                own = step.temperature is not None
                raise fail(
                    f"{where}.temperature" if own else "defaults.temperature",
                    f"expected a number from 0 to 1 for anthropic, got {temperature!r}",
                )
        for field in ("prompt", "system"):
            text = getattr(step, field)
            problem = template_problem(text, inputs=pipeline.inputs, needs=needs, step=step.name)
            if problem is not None:
                raise fail(f"{where}.{field}", problem)
    text = pipeline.defaults.get("system")
    problem = template_problem(text, inputs=pipeline.inputs, needs={}, step=None)
    if problem is not None:
        raise fail("defaults.system", problem)


def _fields(
    spec: Mapping[str, Any],
    where: str,
    allowed: Rules,
    fail: Callable[[str, str], PipelineError],
) -> None:
    for key, value in spec.items():
        if key not in allowed:
            raise fail(
                f"{where}.{key}", f"unknown field (expected one of {', '.join(sorted(allowed))})"
            )
        check, expects = allowed[key]
        if not check(value):
            raise fail(f"{where}.{key}", f"expected {expects}, got {value!r}")
