"""What the fake LLM server keeps of each request, and how it reads a chat body.

`record()` turns h11's request head and body into a `RecordedRequest`, with
the protocol guessed from the path and headers. `max_tokens()`,
`token_count()` and `input_words()` read a chat body the way the real
services do, for the checks and answers the other modules make.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import attrs
import h11
import trio

ProtocolName: TypeAlias = Literal["openai", "anthropic", "ollama"]

# The endpoints that take scripted actions, and the protocol each one speaks.
ENDPOINTS: dict[str, ProtocolName] = {
    "/v1/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
}


@attrs.frozen
class RecordedRequest:
    """One request as the server received it, recorded before the server acted on it.

    `headers` has lowercased names; `body` is the parsed JSON (None when the
    body is not JSON); `path` leaves out any query string. `received_at` is
    `trio.current_time()` when the whole request had arrived: tests compare the
    times of two requests (a retry came no earlier than the server asked).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    protocol: ProtocolName
    received_at: float = 0.0

    @property
    def prompt(self) -> str:
        """The text of the last user message ("" when there is none)."""
        for message in reversed(_messages(self.body)):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream (Ollama streams unless told not to)."""
        return bool(as_dict(self.body).get("stream", self.protocol == "ollama"))


def record(head: h11.Request, raw_body: bytes) -> RecordedRequest:
    """The `RecordedRequest` for a request h11 has read; repeated headers are joined."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path = head.target.decode("latin-1").partition("?")[0]
    return RecordedRequest(
        method=head.method.decode("ascii"),
        path=path,
        headers=headers,
        body=_parse_json(raw_body),
        raw_body=raw_body,
        protocol=_protocol_for(path, headers),
        received_at=trio.current_time(),
    )


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def max_tokens(protocol: ProtocolName, body: dict[str, Any]) -> int | None:
    """The reply's token limit, from wherever `protocol` keeps it."""
    if protocol == "ollama":
        return token_count(as_dict(body.get("options")).get("num_predict"))
    if protocol == "openai" and "max_completion_tokens" in body:
        return token_count(body["max_completion_tokens"])
    return token_count(body.get("max_tokens"))


def input_words(body: dict[str, Any]) -> int:
    """The words in the system prompt and all messages (at least 1): the fake input tokens."""
    texts = [_text_of(body.get("system"))]
    texts += [_text_of(message.get("content")) for message in _messages(body)]
    return max(1, sum(len(text.split()) for text in texts))


def token_count(value: Any) -> int | None:
    """`value` if it is a usable token count (Ollama uses negatives for "no limit")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _messages(body: Any) -> list[dict[str, Any]]:
    messages = as_dict(body).get("messages")
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, dict)]


def _text_of(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        blocks = [as_dict(block).get("text") for block in content]
        return " ".join(text for text in blocks if isinstance(text, str))
    return ""


def _parse_json(raw_body: bytes) -> Any:
    try:
        return json.loads(raw_body)
    except ValueError:
        return None


def _protocol_for(path: str, headers: Mapping[str, str]) -> ProtocolName:
    if path in ENDPOINTS:
        return ENDPOINTS[path]
    if path.startswith("/api/"):
        return "ollama"
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"
