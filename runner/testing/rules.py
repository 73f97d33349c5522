"""How one fake model differs from the others: `ModelRules`, for `open_fake_llm_server()`."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


def _field_names(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class ModelRules:
    """The request fields one model refuses, each with the real service's 400 for it.

    OpenAI (the reasoning models' answers): `max_tokens` gets "Unsupported
    parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead."; `temperature` and `top_p` get
    "Unsupported value: 'temperature' does not support 0 with this model. Only
    the default (1) value is supported." unless they are 1; any other field
    gets "Unsupported parameter: '<field>' is not supported with this model.".

    Anthropic (the newest models' answers, with `anthropic-version:
    2023-06-01`): "`<field>` is deprecated for this model.", except that a
    `temperature` of 1 passes, as it does on the real API.

    Ollama ignores the fields it does not use, so these rules do not apply to it.
    """

    rejects: tuple[str, ...] = attrs.field(default=(), converter=_field_names)
