"""The fields a pipeline accepts, and what each must hold.

`FIELD_RULES` are a step's fields that `[defaults]` may also set, `STEP_ONLY_RULES`
those only a step has, `provider_fields(NAME)` what `[providers.NAME]` takes. Each
rule is (a check, what the error message says was expected). `pipeline.py` applies
them to every pipeline; `pipeline_files.py` uses them to word a file's errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FIELD_RULES", "NAME_PATTERN", "STEP_ONLY_RULES", "Rules", "provider_fields"]

Rules = Mapping[str, tuple[Callable[[Any], bool], str]]

# The names of the pipeline and its steps. \Z, not $: "$" also matches before a trailing newline.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Field -> (check of type and range, what it expects). Shared by [defaults] and [steps.X].
FIELD_RULES: Rules = {
    "provider": (lambda v: isinstance(v, str), "a provider name"),
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "system": (lambda v: isinstance(v, str), "a string"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number from 0 to 2"),
    "top_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "max_tokens": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "stop": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "a list of strings",
    ),
    "seed": (_is_int, "a whole number"),
    "files": (lambda v: isinstance(v, bool), "true or false"),
    "timeout_s": (lambda v: _is_number(v) and v > 0, "a positive number of seconds"),
    "attempt_cap_s": (lambda v: _is_number(v) and v > 0, "a positive number of seconds"),
    "retries": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "options": (lambda v: isinstance(v, Mapping), "a table of provider options"),
    "omit": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "a list of request fields",
    ),
}
STEP_ONLY_RULES: Rules = {
    "prompt": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "needs": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "a list of step names",
    ),
}
# [providers.NAME] tables.
_PROVIDER_FIELDS: Rules = {
    "max_concurrency": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "stream": (lambda v: isinstance(v, bool) or v == "auto", 'true, false or "auto"'),
}
_OPENAI_FIELDS: Rules = {
    "token_limit_field": (
        lambda v: v in ("max_tokens", "max_completion_tokens"),
        '"max_tokens" or "max_completion_tokens"',
    ),
}
_LOCAL_FIELDS: Rules = {
    "context_size": (lambda v: _is_int(v) and v >= 256, "a whole number of tokens >= 256"),
    "threads": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "start_timeout_s": (lambda v: _is_number(v) and v > 0, "a positive number of seconds"),
}
_FAKE_FIELDS: Rules = {
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
# Each provider's own [providers.NAME] fields.
_OWN_FIELDS = {"fake": _FAKE_FIELDS, "openai": _OPENAI_FIELDS, "local": _LOCAL_FIELDS}


def provider_fields(name: str) -> Rules:
    """The fields `[providers.NAME]` accepts: every provider's, and that provider's own."""
    return {**_PROVIDER_FIELDS, **_OWN_FIELDS.get(name, {})}
