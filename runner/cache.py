"""The response cache: deterministic keys, atomic entries, corruption is a miss.

`compute_cache_key()` hashes everything that can change a model's answer.
Leaving one of them out (the base URL, a stop sequence, the runner version)
is the classic stale-cache bug; the key never includes the job id, so a
shared `--cache-dir` serves every job that asks the same question.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import attrs

from ._json import loads, sorted_json
from .filestore import FsyncPolicy, safe_write
from .providers.base import LLMRequest, LLMResponse

__all__ = ["Cache", "CorruptCacheEntry", "compute_cache_key"]

_ENTRY_FORMAT = 1
# An entry stores every field of the response (all plain values: no `attrs.asdict` walk).
_RESPONSE_FIELDS = tuple(field.name for field in attrs.fields(LLMResponse))


def compute_cache_key(
    *,
    provider: str,
    base_url: str,
    step: str,
    request: LLMRequest,
    pipeline_version: str,
    runner_version: str,
) -> str:
    """SHA-256 of the canonical JSON of every input that can change the response.

    Same inputs -> same key, in any process; any change -> a new key::

        key = compute_cache_key(provider="openai", base_url=url, step="architect",
                                request=req, pipeline_version="1", runner_version="2.0.0")
    """
    material = {
        "provider": provider,
        "base_url": base_url,
        "model": request.model,
        "step": step,
        "system": request.system,
        "prompt": request.prompt,
        # An unset parameter (None) is a value of its own: the model's default.
        "temperature": _number(request.temperature),
        "top_p": _number(request.top_p),
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        "seed": request.seed,
        "options": dict(request.options),
        "omit": sorted(request.omit),
        "pipeline_version": pipeline_version,
        "runner_version": runner_version,
    }
    return hashlib.sha256(sorted_json(material)).hexdigest()


class CorruptCacheEntry(Exception):
    """A cache entry exists but cannot be read back; treated as a miss."""


class Cache:
    """Entries at `root/subdir/ab/abcdef....json`, sharded by the key's first two hex digits.

    A job's own cache is `Cache(run_dir, ".cache")`, so its entries are confined by the
    job directory like every other write; a shared `--cache-dir` is `Cache(cache_dir)`.
    """

    def __init__(self, root: Path, subdir: str = "", *, fsync: FsyncPolicy = "batch") -> None:
        self.root = root
        self._prefix = f"{subdir}/" if subdir else ""
        self._fsync = fsync

    def _relpath(self, key: str) -> str:
        return f"{self._prefix}{key[:2]}/{key}.json"

    def get(self, key: str) -> LLMResponse | None:
        """The cached response, None when absent; `CorruptCacheEntry` when unreadable."""
        try:
            raw = (self.root / self._relpath(key)).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptCacheEntry(f"unreadable: {exc.strerror}") from None
        try:
            record = loads(raw)
            if record.get("format") != _ENTRY_FORMAT or record.get("key") != key:
                raise ValueError("wrong format or key")
            fields: dict[str, Any] = record["response"]
            return LLMResponse(**fields)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptCacheEntry(f"corrupt: {exc}") from None

    async def put(self, key: str, response: LLMResponse) -> None:
        """Store `response` under `key` (atomically); `StorageError` if it cannot.

        The entry's directory is left out of `RUNNER_FSYNC=batch`'s fsyncs: under `batch`
        no file's bytes are fsynced, so an entry could not survive a power loss intact
        anyway (a corrupt entry is a miss), and fsyncing up to 256 shard directories per
        batch cost a cached job 15-20% of its time.
        """
        fields = {name: getattr(response, name) for name in _RESPONSE_FIELDS}
        record = {"format": _ENTRY_FORMAT, "key": key, "response": fields}
        await safe_write(self.root, self._relpath(key), sorted_json(record), fsync=self._fsync)


def _number(value: float | None) -> float | None:
    # 1 and 1.0 are the same temperature; None (unset) stays apart from any number.
    return None if value is None else float(value)
