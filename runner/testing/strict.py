"""What the fake LLM server refuses before any scripted action, as the real services do.

`refusal()` checks a request's credentials, headers and body the way the real
service would and returns the `Fail` it would answer with, or None when the
request is acceptable. The credentials and the `anthropic-version` header are
only checked when the server has an API key; the body always is. Every message
is the real service's own wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .actions import Fail
from .requests import RecordedRequest, token_count
from .rules import ModelRules

# The values `anthropic-version` can take.
ANTHROPIC_VERSIONS = ("2023-01-01", "2023-06-01", "2026-10-21")
# From this version on, the sampling fields are gone from the Messages API: sending
# one is an unknown field ("temperature: Extra inputs are not permitted").
_SAMPLING_REMOVED_IN = "2026-10-21"
_SAMPLING_FIELDS = frozenset({"temperature", "top_p", "top_k"})
# The Messages API's top-level fields (those of the `anthropic` SDK's
# MessageCreateParams, its beta ones included), the sampling fields aside.
_ANTHROPIC_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "output_config",
        "speed",
        # beta
        "billing_policy",
        "compaction",
        "context_management",
        "fallback_credit_token",
        "fallbacks",
        "mcp_servers",
        "thread",
    }
)

_OPENAI_KEYS_PAGE = "https://platform.openai.com/account/api-keys"
_OPENAI_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization"
    " header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password"
    " field (with blank username) if you're accessing the API from your browser and are"
    f" prompted for a username and password. You can obtain an API key from {_OPENAI_KEYS_PAGE}."
)


def refusal(
    request: RecordedRequest, api_key: str | None, models: Mapping[str, ModelRules]
) -> Fail | None:
    """The error the real service would answer `request` with, if any."""
    if request.protocol == "openai":
        return _openai_auth(request, api_key) or _openai_body(request.body, models)
    if request.protocol == "anthropic":
        return (
            _anthropic_auth(request, api_key)
            or _anthropic_version(request, api_key)
            or _anthropic_body(request, models)
        )
    return _ollama_body(request.body)


# -- OpenAI ---------------------------------------------------------------------------


def _openai_auth(request: RecordedRequest, api_key: str | None) -> Fail | None:
    if api_key is None:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Fail(401, _OPENAI_NO_KEY, "invalid_request_error")
    token = token.strip()
    if token != api_key:
        message = f"Incorrect API key provided: {_masked(token)}. You can find your API key at"
        return Fail(
            401, f"{message} {_OPENAI_KEYS_PAGE}.", "invalid_request_error", "invalid_api_key"
        )
    return None


def _masked(key: str) -> str:
    """A key the way OpenAI quotes it back: its first 5 and last 4 characters."""
    if len(key) <= 9:
        return "*" * len(key)
    return key[:5] + "*" * (len(key) - 9) + key[-4:]


def _openai_body(body: Any, models: Mapping[str, ModelRules]) -> Fail | None:
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        return _invalid("you must provide a model parameter")
    if not isinstance(body.get("messages"), list):
        message = "Missing required parameter: 'messages'."
        return _invalid(message, code="missing_required_parameter", param="messages")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return _invalid(message, param="stream_options")
    for field in _rejected(body, models):
        value = body[field]
        if field == "max_tokens":
            message = (
                "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead."
            )
            return _invalid(message, code="unsupported_parameter", param=field)
        if field in ("temperature", "top_p"):
            if _is_one(value):
                continue
            message = (
                f"Unsupported value: '{field}' does not support {_number(value)} with this"
                " model. Only the default (1) value is supported."
            )
            return _invalid(message, code="unsupported_value", param=field)
        message = f"Unsupported parameter: '{field}' is not supported with this model."
        return _invalid(message, code="unsupported_parameter", param=field)
    return None


def _number(value: Any) -> str:
    """A number the way OpenAI's messages print it: 0 rather than 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- Anthropic ------------------------------------------------------------------------


def _anthropic_auth(request: RecordedRequest, api_key: str | None) -> Fail | None:
    if api_key is None:
        return None
    headers = request.headers
    # With both headers, the API goes by x-api-key.
    if "x-api-key" in headers:
        if headers["x-api-key"] != api_key:
            return Fail(401, "invalid x-api-key", "authentication_error")
        return None
    if "authorization" in headers:
        scheme, _, token = headers["authorization"].partition(" ")
        if scheme.lower() != "bearer" or token.strip() != api_key:
            return Fail(401, "Invalid bearer token", "authentication_error")
        return None
    return Fail(401, "x-api-key header is required", "authentication_error")


def _anthropic_version(request: RecordedRequest, api_key: str | None) -> Fail | None:
    version = request.headers.get("anthropic-version")
    if version is None:
        return _invalid("anthropic-version: header is required") if api_key else None
    if version not in ANTHROPIC_VERSIONS:
        return _invalid(f'anthropic-version: "{version}" is not a valid version')
    return None


def _anthropic_body(request: RecordedRequest, models: Mapping[str, ModelRules]) -> Fail | None:
    body = request.body
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    known = _ANTHROPIC_FIELDS
    if request.headers.get("anthropic-version", "2023-06-01") < _SAMPLING_REMOVED_IN:
        known = known | _SAMPLING_FIELDS
    for field in body:
        if field not in known:
            return _invalid(f"{field}: Extra inputs are not permitted")
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return _invalid(f"{field}: Field required")
    if not isinstance(body["model"], str):
        return _invalid("model: Input should be a valid string")
    if not isinstance(body["messages"], list):
        return _invalid("messages: Input should be a valid list")
    if token_count(body["max_tokens"]) is None:
        return _invalid("max_tokens: Input should be a valid integer")
    for field in _rejected(body, models):
        if field == "temperature" and _is_one(body[field]):
            continue
        return _invalid(f"`{field}` is deprecated for this model.")
    return None


# -- Ollama ---------------------------------------------------------------------------


def _ollama_body(body: Any) -> Fail | None:
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        return _invalid("model is required")
    if not isinstance(body.get("messages"), list):
        return _invalid("messages: field required")
    return None


# -- shared ---------------------------------------------------------------------------


def _invalid(message: str, *, code: str | None = None, param: str | None = None) -> Fail:
    return Fail(400, message, "invalid_request_error", code, param)


def _rejected(body: dict[str, Any], models: Mapping[str, ModelRules]) -> list[str]:
    """The fields of `body` its model refuses (a field sent as null is not sent)."""
    rules = models.get(body["model"])
    if rules is None:
        return []
    return [field for field in rules.rejects if body.get(field) is not None]


def _is_one(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 1
