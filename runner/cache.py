"""The response cache: deterministic keys, atomic entries, corruption is a miss.

`compute_cache_key()` hashes everything that can change a model's answer.
Leaving one of them out (the base URL, a stop sequence, the runner version)
is the classic stale-cache bug; the key never includes the job id, so a
shared `--cache-dir` serves every job that asks the same question.

A job's own cache lives in its directory (`runs/<job_id>/.cache/`), so a job
stays self-contained and removing it removes its entries. A miss there looks
in the caches of the earlier jobs of the same pipeline in the same runs
directory (`EarlierJobs`), newest first, and copies a hit into the job's own
cache: a plain second `runner run` of the same pipeline and inputs makes no
request.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import attrs

from ._json import loads, sorted_json
from .filestore import FsyncPolicy, safe_write, write_atomic
from .providers.base import LLMRequest, LLMResponse
from .run_dir import CACHE, EVENTS, is_valid_job_id

__all__ = ["Cache", "CacheHit", "CorruptCacheEntry", "EarlierJobs", "compute_cache_key"]

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


@attrs.frozen
class CacheHit:
    """A cached response; `from_job` names the earlier job it was found in, if not this one's."""

    response: LLMResponse
    from_job: str | None = None


class Cache:
    """Entries at `root/subdir/ab/abcdef....json`, sharded by the key's first two hex digits.

    A job's own cache is `Cache(run_dir, ".cache", earlier=EarlierJobs(...))`, so its
    entries are confined by the job directory like every other write; a shared
    `--cache-dir` is `Cache(cache_dir)`, and looks nowhere else.
    """

    def __init__(
        self,
        root: Path,
        subdir: str = "",
        *,
        fsync: FsyncPolicy = "batch",
        earlier: EarlierJobs | None = None,
    ) -> None:
        self.root = root
        self._prefix = f"{subdir}/" if subdir else ""
        self._fsync = fsync
        self._earlier = earlier

    def _relpath(self, key: str) -> str:
        return f"{self._prefix}{key[:2]}/{key}.json"

    async def get(self, key: str) -> CacheHit | None:
        """The cached response, None when absent; `CorruptCacheEntry` when ours is unreadable.

        A miss looks in the earlier jobs' caches; a hit there is copied into this cache
        (an entry there that cannot be read is a miss: it is not ours to report).
        """
        response = _read_entry(self.root / self._relpath(key), key)
        if response is not None:
            return CacheHit(response)
        found = self._earlier.find(key) if self._earlier is not None else None
        if found is None:
            return None
        job_id, path = found
        try:
            raw = path.read_bytes()
            response = _parse_entry(raw, key)
        except (OSError, CorruptCacheEntry):
            return None
        # The same bytes: an entry holds its key and response, nothing of its job.
        write_atomic(self.root, self._relpath(key), raw, fsync=self._fsync)
        return CacheHit(response, from_job=job_id)

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


def _read_entry(path: Path, key: str) -> LLMResponse | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptCacheEntry(f"unreadable: {exc.strerror}") from None
    return _parse_entry(raw, key)


def _parse_entry(raw: bytes, key: str) -> LLMResponse:
    try:
        record = loads(raw)
        if record.get("format") != _ENTRY_FORMAT or record.get("key") != key:
            raise ValueError("wrong format or key")
        fields: dict[str, Any] = record["response"]
        return LLMResponse(**fields)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptCacheEntry(f"corrupt: {exc}") from None


_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
# job.started is a log's first line; a longer first line is not one we wrote.
_FIRST_LINE_MAX = 1 << 16


class EarlierJobs:
    """The caches of the other jobs of pipeline `pipeline` in `runs_dir`, newest first.

    Indexed once, on the first lookup (so a job that never misses never reads them):
    the first line of each job's log (`job.started`: its pipeline and start time) and
    the names in its `.cache/` shards. An entry written later by a job that runs at
    the same time is not seen; that costs a request, never a wrong answer (entries
    are checked against their key when read).
    """

    def __init__(self, runs_dir: Path, *, pipeline: str, job_id: str) -> None:
        self._runs_dir = runs_dir
        self._pipeline = pipeline
        self._job_id = job_id
        self._entries: dict[str, tuple[str, str]] | None = None

    def find(self, key: str) -> tuple[str, Path] | None:
        """(job id, entry path) of the newest earlier job holding `key`, or None."""
        if self._entries is None:
            # In the event loop, once per job: ~0.1 s for 1,000 earlier jobs, ~1 ms for
            # a few dozen (bench/cache_lookup.py). A worker thread would not stall the
            # other steps, but would make the job's timing depend on a thread.
            self._entries = self._index()
        found = self._entries.get(key)
        return None if found is None else (found[0], Path(found[1]))

    def _index(self) -> dict[str, tuple[str, str]]:
        # Plain strings and os.scandir: with 1,000 jobs, pathlib objects were most of
        # the time it takes (bench/cache_lookup.py).
        entries: dict[str, tuple[str, str]] = {}
        for job_id, cache in self._caches_newest_first():
            for shard in _subdirs(cache):
                for name, path in _entries_in(shard):
                    entries.setdefault(name[:-5], (job_id, path))
        return entries

    def _caches_newest_first(self) -> list[tuple[str, str]]:
        found = []
        for job in _subdirs(os.fspath(self._runs_dir)):
            name = os.path.basename(job)
            if name == self._job_id or not is_valid_job_id(name):
                continue
            started = _job_started(os.path.join(job, EVENTS))
            if started is not None and started[1] == self._pipeline:
                found.append((started[0], name, os.path.join(job, CACHE)))
        found.sort(reverse=True)
        return [(job_id, cache) for _, job_id, cache in found]


def _subdirs(path: str) -> list[str]:
    # Real directories only: a symlink in a runs dir is not followed anywhere.
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _entries_in(shard: str) -> list[tuple[str, str]]:
    try:
        with os.scandir(shard) as entries:
            return [
                (e.name, e.path)
                for e in entries
                if _ENTRY_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)
            ]
    except OSError:
        return []


def _job_started(log: str) -> tuple[str, str] | None:
    """(ts, pipeline) of the `job.started` that opens `log`, or None."""
    try:
        with open(log, "rb") as file:
            line = file.readline(_FIRST_LINE_MAX)
        record = loads(line)
        if record.get("type") != "job.started":
            return None
        return str(record.get("ts") or ""), str(record["data"]["pipeline"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _number(value: float | None) -> float | None:
    # 1 and 1.0 are the same temperature; None (unset) stays apart from any number.
    return None if value is None else float(value)
