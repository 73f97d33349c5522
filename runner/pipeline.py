"""`Pipeline` and `Step`: loading from TOML or Python, validation, templating.

Pure: no I/O but reading the pipeline file.

Every mistake is a `PipelineError` naming the file, the step and the field,
raised before any call is made::

    app.toml: steps.builder.needs: unknown step 'architec' (known: architect, reviewer)
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .errors import PipelineError
from .graph import ancestors, find_cycle, topological_order

if TYPE_CHECKING:
    from .step import StepContext

__all__ = ["InputSpec", "Pipeline", "Step", "load_pipeline", "render"]

StepFunction = Callable[["StepContext"], Awaitable[str]]

_PROVIDERS = ("fake", "openai", "anthropic", "ollama")
# \Z, not $: "$" also matches before a trailing newline.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INPUT_REF = re.compile(r"^\s*inputs\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")
_STEP_REF = re.compile(r"^\s*steps\.([A-Za-z_][A-Za-z0-9_-]*)\.output\s*$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Field -> (type check, what it expects). Shared by [defaults] and [steps.X].
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "provider": (lambda v: isinstance(v, str), "a provider name"),
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "system": (lambda v: isinstance(v, str), "a string"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number from 0 to 2"),
    "max_tokens": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "stop": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "a list of strings",
    ),
    "seed": (_is_int, "a whole number"),
    "files": (lambda v: isinstance(v, bool), "true or false"),
    "timeout_s": (lambda v: _is_number(v) and v > 0, "a positive number of seconds"),
    "retries": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "options": (lambda v: isinstance(v, Mapping), "a table of provider options"),
}
_STEP_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prompt": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "needs": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "a list of step names",
    ),
}
# [providers.NAME] tables.
_PROVIDER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_concurrency": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "stream": (lambda v: isinstance(v, bool) or v == "auto", 'true, false or "auto"'),
}
_FAKE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "latency_s": (lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
    "replies": (
        lambda v: isinstance(v, Mapping) and all(isinstance(t, str) for t in v.values()),
        "a table of step = reply text",
    ),
    "errors": (
        lambda v: isinstance(v, Mapping) and all(isinstance(t, str) for t in v.values()),
        "a table of step = error message",
    ),
}
#: Above this many max_tokens, `stream = "auto"` (the default) streams the response, so a
#: long generation shows progress to httpx's read timeout instead of looking like a hang.
STREAM_ABOVE_MAX_TOKENS = 1024
_BUILTIN_DEFAULTS: dict[str, Any] = {
    "provider": "fake",
    "model": "echo",
    "temperature": 0.0,
    "max_tokens": 2048,
}


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
    defaults (provider "fake", model "echo", temperature 0.0, max_tokens 2048).
    """

    name: str
    prompt: str | None = None
    needs: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    system: str | None = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = attrs.field(default=None, converter=_to_optional_tuple)
    seed: int | None = None
    files: bool | None = None
    timeout_s: float | None = None
    retries: int | None = None
    options: Mapping[str, Any] | None = None
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
        for field in _FIELDS:
            if getattr(step, field) is None:
                value = self.defaults.get(field, _BUILTIN_DEFAULTS.get(field))
                if value is not None:
                    changes[field] = tuple(value) if field == "stop" else value
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
            if "stop" in record:
                record["stop"] = list(record["stop"])
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
        """This pipeline with every LLM step on `provider` / `model` (`--provider`, `--model`)."""
        changes: dict[str, Any] = {
            k: v for k, v in (("provider", provider), ("model", model)) if v is not None
        }
        if not changes:
            return self
        steps = [attrs.evolve(s, **changes) if s.fn is None else s for s in self.steps]
        return attrs.evolve(self, steps=steps)

    def to_json_bytes(self) -> bytes:
        """`pipeline.json`: canonical JSON, so the same pipeline always gives the same bytes."""
        return (self._canonical + "\n").encode()

    def referenced_inputs(self, step: Step) -> set[str]:
        text = (step.prompt or "") + (step.system or "") + (self.defaults.get("system") or "")
        return {m.group(1) for t in _TEMPLATE.finditer(text) if (m := _INPUT_REF.match(t.group(1)))}

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


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read and validate a pipeline TOML file.

    Raises `PipelineError` naming the file, the step and the field.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(f"{source}: cannot read pipeline ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{source}: invalid TOML: {exc}") from None
    return pipeline_from_dict(data, source=source)


def pipeline_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Pipeline:
    """Build a `Pipeline` from the TOML / `pipeline.json` structure, validating every field."""

    def fail(where: str, message: str) -> PipelineError:
        return PipelineError(f"{source}: {where}: {message}")

    known_top = {"name", "version", "description", "inputs", "defaults", "providers", "steps"}
    for key in data:
        if key not in known_top:
            raise fail(key, f"unknown field (expected one of {', '.join(sorted(known_top))})")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("name", "expected a name of letters, digits, '-' or '_'")
    version = data.get("version", "1")
    if not isinstance(version, str | int):
        raise fail("version", "expected a string")
    inputs = {}
    for input_name, spec in _table(data, "inputs", fail).items():
        inputs[input_name] = _input_spec(spec, f"inputs.{input_name}", fail)
    defaults = _fields(_table(data, "defaults", fail), "defaults", _FIELDS, fail)
    providers = _table(data, "providers", fail)
    steps_table = _table(data, "steps", fail)
    if not steps_table:
        raise fail("steps", "a pipeline needs at least one step")
    steps = []
    for step_name, spec in steps_table.items():
        where = f"steps.{step_name}"
        if not isinstance(spec, dict):
            raise fail(where, "expected a table")
        spec = dict(spec)
        fn_ref = spec.pop("fn", None)
        fields = _fields(spec, where, {**_FIELDS, **_STEP_ONLY}, fail)
        if fn_ref is not None:
            fields["fn"] = _import_fn(fn_ref, f"{where}.fn", fail)
        steps.append(Step(name=step_name, **fields))
    return Pipeline(
        name=name,
        version=str(version),
        inputs=inputs,
        defaults=defaults,
        providers=providers,
        steps=steps,
        source=source,
    )


def _table(
    data: Mapping[str, Any], key: str, fail: Callable[[str, str], PipelineError]
) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise fail(key, "expected a table")
    return value


def _input_spec(spec: Any, where: str, fail: Callable[[str, str], PipelineError]) -> InputSpec:
    if isinstance(spec, str):
        return InputSpec(default=spec)
    if not isinstance(spec, dict):
        raise fail(where, "expected a string default or a table {default, description}")
    for key, value in spec.items():
        if key not in ("default", "description"):
            raise fail(f"{where}.{key}", "unknown field (expected default or description)")
        if value is not None and not isinstance(value, str):
            raise fail(f"{where}.{key}", "expected a string")
    return InputSpec(default=spec.get("default"), description=spec.get("description", ""))


def _fields(
    spec: Mapping[str, Any],
    where: str,
    allowed: Mapping[str, tuple[Callable[[Any], bool], str]],
    fail: Callable[[str, str], PipelineError],
) -> dict[str, Any]:
    out = {}
    for key, value in spec.items():
        if key not in allowed:
            raise fail(
                f"{where}.{key}", f"unknown field (expected one of {', '.join(sorted(allowed))})"
            )
        check, expects = allowed[key]
        if not check(value):
            raise fail(f"{where}.{key}", f"expected {expects}, got {value!r}")
        out[key] = value
    return out


def _import_fn(ref: Any, where: str, fail: Callable[[str, str], PipelineError]) -> StepFunction:
    module_name, _, qualname = str(ref).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError):
        raise fail(where, f"cannot import {ref!r}") from None
    fn: StepFunction = target
    return fn


def _validate(pipeline: Pipeline) -> None:
    source = pipeline.source

    def fail(where: str, message: str) -> PipelineError:
        return PipelineError(f"{source}: {where}: {message}")

    if not isinstance(pipeline.name, str) or not _NAME.match(pipeline.name):
        raise fail("name", "expected a name of letters, digits, '-' or '_'")
    for input_name, spec in pipeline.inputs.items():
        if not isinstance(spec, InputSpec):
            raise fail(f"inputs.{input_name}", f"expected an InputSpec, got {spec!r}")
    # The Python API skips `pipeline_from_dict`, so field types are checked here too.
    _fields(pipeline.defaults, "defaults", _FIELDS, fail)
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
        allowed = _PROVIDER_FIELDS | (_FAKE_FIELDS if provider_name == "fake" else {})
        _fields(settings, f"providers.{provider_name}", allowed, fail)
    if not pipeline.steps:
        raise fail("steps", "a pipeline needs at least one step")
    names: set[str] = set()
    for step in pipeline.steps:
        if not isinstance(step.name, str) or not _NAME.match(step.name):
            raise fail(f"steps.{step.name!r}", "step names are letters, digits, '-' or '_'")
        if step.name in names:
            raise fail(f"steps.{step.name}", "duplicate step name")
        names.add(step.name)
        values = {field: getattr(step, field) for field in (*_FIELDS, *_STEP_ONLY)}
        _fields(
            {k: v for k, v in values.items() if v is not None},
            f"steps.{step.name}",
            {**_FIELDS, **_STEP_ONLY},
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
        for field in ("prompt", "system"):
            text = getattr(step, field)
            _check_template(text, pipeline.inputs, needs, step.name, f"{where}.{field}", fail)
    text = pipeline.defaults.get("system")
    _check_template(text, pipeline.inputs, {}, None, "defaults.system", fail)


def _check_template(
    text: str | None,
    inputs: Mapping[str, InputSpec],
    needs: Mapping[str, tuple[str, ...]],
    step: str | None,
    where: str,
    fail: Callable[[str, str], PipelineError],
) -> None:
    if not text:
        return
    upstream: set[str] | None = None
    for match in _TEMPLATE.finditer(text):
        expr = match.group(1)
        # One line: a multi-line expression must not break the one-line error.
        shown = "{{ " + " ".join(expr.split()) + " }}"
        if m := _INPUT_REF.match(expr):
            if m.group(1) not in inputs:
                raise fail(where, f"unknown input {m.group(1)!r} in {shown}")
        elif m := _STEP_REF.match(expr):
            if step is not None and m.group(1) in needs[step]:
                continue
            # Ancestors only past the direct needs: a long chain stays fast to validate.
            if upstream is None:
                upstream = ancestors(needs, step) if step is not None else set()
            if m.group(1) not in upstream:
                raise fail(where, f"step {m.group(1)!r} is not upstream (add it to needs)")
        else:
            raise fail(
                where, f"unsupported template {shown} (use inputs.NAME or steps.NAME.output)"
            )
