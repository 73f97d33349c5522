"""Pipeline files: a TOML file, or a job's `pipeline.json`, read into a `Pipeline`.

A private cattrs converter structures the file's tables into the classes below,
which say what each table may hold and of what type; it refuses unknown keys and
never coerces (no `"2"` for 2, no `"yes"` for true). `Pipeline` then checks the
rest: names, ranges, needs, cycles, templates, providers. A structuring error
becomes the same one-line `PipelineError` as every other mistake::

    app.toml: steps.builder.temperature: expected a number from 0 to 2, got 'hot'
"""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .errors import PipelineError
from .pipeline import InputSpec, Pipeline, Step, StepFunction
from .pipeline_rules import FIELD_RULES, NAME_PATTERN, STEP_ONLY_RULES

__all__ = ["load_pipeline", "pipeline_from_dict"]


@attrs.frozen(kw_only=True)
class _Defaults:
    """`[defaults]`: the step fields that steps share. None is "not in the file"."""

    provider: str | None = None
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    files: bool | None = None
    timeout_s: float | None = None
    attempt_cap_s: float | None = None
    retries: int | None = None
    options: dict[str, Any] | None = None
    omit: list[str] | None = None


@attrs.frozen(kw_only=True)
class _StepTable(_Defaults):
    """`[steps.NAME]`: a step's own fields; its name is the table's key."""

    prompt: str | None = None
    needs: list[str] | None = None
    fn: str | None = None  # "module:qualname" of an async function


@attrs.frozen(kw_only=True)
class _PipelineFile:
    """A whole file, as written."""

    name: str
    version: str | int = "1"
    description: Any = None  # for readers of the file; not kept
    inputs: dict[str, InputSpec] = attrs.field(factory=dict)
    defaults: _Defaults = attrs.field(factory=_Defaults)
    providers: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    steps: dict[str, _StepTable] = attrs.field(factory=dict)


def _exactly(*types: type) -> Callable[[Any, Any], Any]:
    """A hook that takes a value of one of `types` as it is (a bool is not an int)."""

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise TypeError(f"expected {' or '.join(t.__name__ for t in types)}, got {value!r}")
        return value

    return structure


def _strings(value: Any, _: Any) -> list[str]:
    # Not cattrs' own list hook: it takes any iterable, so "ab" would be ["a", "b"].
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return [_converter.structure(item, str) for item in value]


def _input(value: Any, _: Any) -> InputSpec:
    # `idea = "x"` is short for `idea = { default = "x" }`.
    if isinstance(value, str):
        return InputSpec(default=value)
    if isinstance(value, Mapping):
        return _input_table(value, InputSpec)
    raise TypeError(f"expected a string or a table, got {value!r}")


_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook(str, _exactly(str))
_converter.register_structure_hook(int, _exactly(int))
# An int stays an int (timeout_s = 120), so pipeline.json and the hashes keep their bytes.
_converter.register_structure_hook(float, _exactly(int, float))
_converter.register_structure_hook(bool, _exactly(bool))
_converter.register_structure_hook_func(lambda t: t == str | int, _exactly(str, int))
_converter.register_structure_hook_func(lambda t: t == list[str], _strings)
# Made after the hooks above, which it uses for the fields' types.
_input_table = make_dict_structure_fn(InputSpec, _converter)
_converter.register_structure_hook(InputSpec, _input)

# What a step field must be, for the message when it is not.
_EXPECTS = {field: expects for field, (_, expects) in {**FIELD_RULES, **STEP_ONLY_RULES}.items()}
_EXPECTS["fn"] = 'a "module:function" reference'


def _field_names(cls: type[Any], *, leave_out: tuple[str, ...] = ()) -> str:
    names = sorted(field.name for field in attrs.fields(cls) if field.name not in leave_out)
    return " or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}"


# Table class -> the fields it accepts, for the message about an unknown one.
_KNOWN_FIELDS = {
    _PipelineFile: _field_names(_PipelineFile),
    _Defaults: _field_names(_Defaults),
    # `fn` is accepted but not listed, as docs/PIPELINES.md says.
    _StepTable: _field_names(_StepTable, leave_out=("fn",)),
    InputSpec: _field_names(InputSpec),
}


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
    """Build a `Pipeline` from the tables of a TOML file or of `pipeline.json`."""
    if not isinstance(data, Mapping):
        raise PipelineError(f"{source}: expected a table, got {type(data).__name__}")
    try:
        file = _converter.structure(data, _PipelineFile)
    except cattrs.BaseValidationError as exc:
        path, error = _first_error(exc)
        raise PipelineError(f"{source}: {_describe(data, path, error)}") from None
    steps = []
    for name, table in file.steps.items():
        fields = _given(table)
        if table.fn is not None:
            fields["fn"] = _import_fn(table.fn, source=source, step=name)
        steps.append(Step(name=name, **fields))
    return Pipeline(
        name=file.name,
        version=str(file.version),
        inputs=file.inputs,
        defaults=_given(file.defaults),
        providers=file.providers,
        steps=steps,
        source=source,
    )


def _given(table: _Defaults) -> dict[str, Any]:
    """The fields the file gave a value."""
    return {k: v for k, v in attrs.asdict(table, recurse=False).items() if v is not None}


def _import_fn(ref: str, *, source: str, step: str) -> StepFunction:
    module_name, _, qualname = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError):
        where = _where(("steps", step, "fn"))
        raise PipelineError(f"{source}: {where}: cannot import {ref!r}") from None
    fn: StepFunction = target
    return fn


def _first_error(exc: Exception) -> tuple[tuple[str, ...], Exception]:
    """Where in the file the first problem of a cattrs error is, and the problem.

    At each level an unknown key comes first: it often explains a missing or a wrong one.
    """
    path: tuple[str, ...] = ()
    while isinstance(exc, cattrs.BaseValidationError):
        unknown = [e for e in exc.exceptions if isinstance(e, cattrs.ForbiddenExtraKeysError)]
        exc = unknown[0] if unknown else exc.exceptions[0]
        for note in getattr(exc, "__notes__", ()):
            if isinstance(note, cattrs.AttributeValidationNote):
                path = (*path, note.name)
            elif isinstance(note, cattrs.IterableValidationNote):
                path = (*path, str(note.index))
    return path, exc


def _describe(data: Mapping[str, Any], path: tuple[str, ...], error: Exception) -> str:
    """`WHERE: WHAT` for a structuring error at `path`."""
    value = _value_at(data, path)
    if isinstance(error, cattrs.ForbiddenExtraKeysError):
        # The first unknown key in the file's order.
        key = next(str(k) for k in value if k in error.extra_fields)
        return f"{_where((*path, key))}: unknown field (expected {_KNOWN_FIELDS[error.cl]})"
    match path:
        case ("name",):
            expected = "expected a name of letters, digits, '-' or '_'"
        case ("version",):
            expected = "expected a string"
        case ("inputs", _):
            expected = "expected a string default or a table {default, description}"
        case ("inputs", _, _):
            expected = "expected a string"
        case ("defaults", field) | ("steps", _, field) if field in _EXPECTS:
            expected = f"expected {_EXPECTS[field]}, got {value!r}"
        case ("inputs" | "defaults" | "providers" | "steps",) | ("providers" | "steps", _):
            expected = "expected a table"
        case _:
            expected = f"invalid value {value!r}"
    return f"{_where(path)}: {expected}"


def _value_at(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _where(path: tuple[str, ...]) -> str:
    """`steps.builder.needs`; a key that is not a plain name is quoted, to keep one line."""
    return ".".join(key if NAME_PATTERN.match(key) else repr(key) for key in path)
