"""How the fake LLM server speaks Ollama's chat API (`/api/chat`, NDJSON streams)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .actions import Fail, StreamError
from .dialect import Dialect, Plan, json_bytes
from .http import Chunk


class OllamaDialect(Dialect):
    stream_content_type = "application/x-ndjson"
    json_content_type = "application/json; charset=utf-8"
    malformed_stream = b'{"model": "malformed", "message": {"content": \n'

    def body(self, plan: Plan) -> dict[str, Any]:
        return {**self._line(plan, plan.text), **self._done(plan)}

    def stream(self, plan: Plan) -> list[Chunk]:
        chunks = [
            Chunk(json_bytes({**self._line(plan, piece), "done": False}) + b"\n", "text")
            for piece in plan.pieces
        ]
        chunks.append(Chunk(json_bytes({**self._line(plan, ""), **self._done(plan)}) + b"\n"))
        return chunks

    def error_body(self, fail: Fail, message: str, number: int) -> dict[str, Any]:
        return {"error": message}

    def stream_error(self, error: StreamError) -> bytes:
        return json_bytes({"error": error.message}) + b"\n"

    @staticmethod
    def _line(plan: Plan, content: str) -> dict[str, Any]:
        created_at = datetime.fromtimestamp(plan.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = {"role": "assistant", "content": content}
        return {"model": plan.model, "created_at": created_at, "message": message}

    @staticmethod
    def _done(plan: Plan) -> dict[str, Any]:
        # Durations are in nanoseconds, made up but proportional to the work.
        load_ns = 1_000_000
        prompt_ns = plan.input_tokens * 1_000_000
        eval_ns = plan.output_tokens * 10_000_000
        done: dict[str, Any] = {
            "done_reason": plan.finish_reason or ("length" if plan.truncated else "stop"),
            "done": True,
            "total_duration": load_ns + prompt_ns + eval_ns,
            "load_duration": load_ns,
            "prompt_eval_count": plan.input_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": plan.output_tokens,
            "eval_duration": eval_ns,
        }
        if plan.omit_usage:  # what Ollama sends when the prompt was cached
            del done["prompt_eval_count"], done["prompt_eval_duration"]
        return done
