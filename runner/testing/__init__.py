"""A real loopback HTTP server that speaks OpenAI, Anthropic and Ollama, with faults on demand.

`open_fake_llm_server()` starts an HTTP/1.1 server on 127.0.0.1 (a free port)
that answers the three chat endpoints the way the real services do: JSON
bodies, SSE or NDJSON streams, usage counts, error bodies and headers. Point a
provider at it (`OPENAI_BASE_URL=server.openai_base_url`,
`ANTHROPIC_BASE_URL=server.anthropic_base_url`, `OLLAMA_HOST=server.ollama_host`)
and script what the next requests get: a normal `Reply`, an HTTP error
(`Fail`), or a broken connection (`Hang`, `Drop`, `Stall`, `Malformed`,
`StreamError`). Everything happens over real sockets, so timeouts, retries,
streaming and `Retry-After` are tested the way they happen in production.

The server is as strict as the real APIs: it refuses what they refuse, with
their status, error shape and message (an unknown Anthropic field, a missing
`max_tokens`; with `api_key=`, a missing or wrong key), and its answers carry
every field the OpenAI reference marks required, nulls included. `models=`
plays models that refuse some fields (`ModelRules`), such as a reasoning
model refusing `max_tokens`. The official `openai`, `anthropic` and `ollama`
Python clients parse every answer it gives.

Example::

    import httpx
    from runner.testing import Reply, fail_times, open_fake_llm_server

    async def test_retry_then_success():
        async with open_fake_llm_server() as server:
            server.script(*fail_times(2, 529, retry_after="0"), Reply("hi there"))
            body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
            async with httpx.AsyncClient(base_url=server.anthropic_base_url) as client:
                responses = [await client.post("/v1/messages", json=body) for _ in range(3)]
            assert [r.status_code for r in responses] == [529, 529, 200]
            assert responses[2].json()["content"][0]["text"] == "hi there"
            assert len(server.requests_to("/v1/messages")) == 3

Only POST requests to `/v1/chat/completions`, `/v1/messages` and `/api/chat`
consume scripted actions, and only those the server does not refuse; anything
else gets a 404 in the guessed protocol's error shape. The server is built on
trio and h11 and supports keep-alive; `open_fake_llm_server_in_thread()` runs
it in a thread for tests that are synchronous or run asyncio.

Import these names from `runner.testing`. They live in `runner.testing.server`
(the server), `.actions` (what a script holds), `.rules` (`ModelRules`) and
`.requests` (what the server records); the other modules are the server's
workings: `.http` (h11 plumbing), `.strict` (what it refuses), `.answers`,
`.dialect`, `.openai`, `.anthropic` and `.ollama` (what each protocol says).
"""

from .actions import Action as Action
from .actions import Drop as Drop
from .actions import Fail as Fail
from .actions import Hang as Hang
from .actions import Malformed as Malformed
from .actions import Reply as Reply
from .actions import Stall as Stall
from .actions import StreamError as StreamError
from .actions import fail_times as fail_times
from .requests import RecordedRequest as RecordedRequest
from .rules import ModelRules as ModelRules
from .server import FakeLLMServer as FakeLLMServer
from .server import open_fake_llm_server as open_fake_llm_server
from .server import open_fake_llm_server_in_thread as open_fake_llm_server_in_thread

__all__ = [
    "Action",
    "Drop",
    "Fail",
    "FakeLLMServer",
    "Hang",
    "Malformed",
    "ModelRules",
    "RecordedRequest",
    "Reply",
    "Stall",
    "StreamError",
    "fail_times",
    "open_fake_llm_server",
    "open_fake_llm_server_in_thread",
]
