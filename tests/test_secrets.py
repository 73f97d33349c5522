"""API keys never leave the request that needs them.

Pipelines run against the loopback server with distinctive keys in the
environment, through the library and through the `runner` command, with
calls that succeed, calls whose 401 error body echoes the key back, and a
call that times out. Then every file under the test's directory and
everything the commands printed is searched for the keys: they must appear
nowhere. The server records each request's headers, so the tests also check
that each key went to its own provider only.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from helpers import events

from runner import Pipeline, Settings, Step, load_pipeline, run_dag
from runner.testing import Fail, Hang, Reply, open_fake_llm_server

OPENAI_KEY = "sk-live-SECRET-9f8e7d"
ANTHROPIC_KEY = "sk-ant-live-SECRET-c3b2a1"
KEYS = (OPENAI_KEY, ANTHROPIC_KEY)
OPENAI_PATH, ANTHROPIC_PATH, OLLAMA_PATH = "/v1/chat/completions", "/v1/messages", "/api/chat"

PIPELINE = """
name = "secrets"

[defaults]
retries = 0

[steps.openai_1]
provider = "openai"
model = "gpt-test"
prompt = "first question for openai"

[steps.openai_2]
provider = "openai"
model = "gpt-test"
prompt = "second question for openai"

[steps.openai_3]
provider = "openai"
model = "gpt-test"
prompt = "third question for openai"

[steps.anthropic_1]
provider = "anthropic"
model = "claude-test"
prompt = "first question for anthropic"

[steps.anthropic_2]
provider = "anthropic"
model = "claude-test"
prompt = "second question for anthropic"

[steps.local]
provider = "ollama"
model = "llama-test"
prompt = "a question for ollama"

[steps.notes]
provider = "ollama"
model = "llama-test"
needs = ["local"]
files = true
prompt = "write notes on {{ steps.local.output }}"
"""

NOTES = "```text path=notes.txt\nnothing secret here\n```"


def script(server) -> None:
    """What each endpoint answers. Same-provider steps run in parallel, so which
    step gets which answer varies; what each provider answers overall does not."""
    server.script(
        Reply("fine"),
        Fail(401, message=f"Incorrect API key provided: {OPENAI_KEY}"),
        Hang(),
        path=OPENAI_PATH,
    )
    server.script(
        Reply("fine"),
        Fail(401, message=f"invalid x-api-key {ANTHROPIC_KEY}", error_type="authentication_error"),
        path=ANTHROPIC_PATH,
    )
    server.script(Reply("fine"), Reply(NOTES), path=OLLAMA_PATH)


def provider_env(server) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_BASE_URL": server.openai_base_url,
        "ANTHROPIC_BASE_URL": server.anthropic_base_url,
        "OLLAMA_HOST": server.ollama_host,
        "PROVIDER_TIMEOUT_S": "0.3",
        "MAX_RETRIES": "0",
        "RUNNER_FSYNC": "never",
    }


def files_under(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def assert_no_key(where: str, data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for key in KEYS:
        assert key not in text, f"{key} leaked into {where}"
    # Nor a recognisable piece of one (a cut-off key is still a leak).
    assert "SECRET" not in text, f"part of a key leaked into {where}"


def assert_keys_went_to_their_own_provider(server) -> None:
    seen = Counter(request.path for request in server.requests)
    assert {OPENAI_PATH: 3, ANTHROPIC_PATH: 2, OLLAMA_PATH: 2} == seen
    for request in server.requests:
        headers = request.headers
        sent = json.dumps(headers) + request.raw_body.decode()
        if request.path == OPENAI_PATH:
            assert f"Bearer {OPENAI_KEY}" == headers["authorization"]
            assert "x-api-key" not in headers
            assert ANTHROPIC_KEY not in sent
        elif request.path == ANTHROPIC_PATH:
            assert ANTHROPIC_KEY == headers["x-api-key"]
            assert "authorization" not in headers
            assert OPENAI_KEY not in sent
        else:
            assert "authorization" not in headers
            assert "x-api-key" not in headers
            assert all(key not in sent for key in KEYS)
        # Never in the body, even for its own provider.
        assert all(key not in request.raw_body.decode() for key in KEYS)


def assert_expected_outcome(run_dir: Path) -> None:
    log = events(run_dir)
    failed = Counter(e["data"]["error"] for e in log if e["type"] == "step.failed")
    assert {"PermanentProviderError": 2, "ProviderTimeoutError": 1} == failed
    succeeded = {e.get("step") for e in log if e["type"] == "step.succeeded"}
    assert {"local", "notes"} <= succeeded
    assert 4 == len(succeeded)
    # The echoed keys were there to leak: the messages kept, the keys cut out.
    messages = [e["data"]["message"] for e in log if e["type"] == "step.failed"]
    assert any("Incorrect API key provided: [redacted]" in m for m in messages)
    assert any("invalid x-api-key [redacted]" in m for m in messages)


def assert_run_wrote_everything(run_dir: Path) -> dict[Path, bytes]:
    written = files_under(run_dir)
    names = {path.relative_to(run_dir).parts[0] for path in written}
    # Make sure the search below covers every kind of file a run writes.
    assert {"events.jsonl", "manifest.json", "pipeline.json", "outputs", "files", ".cache"} <= names
    return written


async def test_keys_never_reach_the_log_the_run_directory_or_errors(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "secrets.toml"
    toml.write_text(PIPELINE)
    async with open_fake_llm_server() as server:
        script(server)
        for name, value in provider_env(server).items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        result = await run_dag(load_pipeline(toml), runs_dir=runs_dir, settings=settings)

    assert "failed" == result.status
    assert_expected_outcome(result.run_dir)
    assert_run_wrote_everything(result.run_dir)
    for path, data in files_under(tmp_path).items():
        assert_no_key(str(path), data)
    assert_no_key("the settings' repr", repr(settings))
    assert_no_key("the job result", repr(result))
    assert_keys_went_to_their_own_provider(server)


async def test_keys_never_reach_the_cli_output_or_the_run_directory(
    runs_dir: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "secrets.toml"
    toml.write_text(PIPELINE)

    async def runner_cli(*args: str) -> tuple[int, bytes, bytes]:
        done = await trio.run_process(
            [sys.executable, "-m", "runner", *args, "--runs-dir", str(runs_dir)],
            env=env,
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    async with open_fake_llm_server() as server:
        script(server)
        env = {**os.environ, **provider_env(server)}
        printed = {"run": await runner_cli("run", str(toml), "--job-id", "secrets")}
        # The rest only read the finished job: run them side by side.
        readers = {
            "show": ("show", "secrets"),
            "show --json": ("show", "secrets", "--json"),
            "tail": ("tail", "secrets"),
            "tail --json": ("tail", "secrets", "--json"),
            "tail --level ERROR": ("tail", "secrets", "--level", "ERROR"),
            "list": ("list",),
        }

        async def read(name: str, args: tuple[str, ...]) -> None:
            printed[name] = await runner_cli(*args)

        async with trio.open_nursery() as nursery:
            for name, args in readers.items():
                nursery.start_soon(read, name, args)

    assert 1 == printed["run"][0]  # the job failed, as scripted
    assert {0} == {printed[name][0] for name in readers}
    run_dir = runs_dir / "secrets"
    assert_expected_outcome(run_dir)
    written = assert_run_wrote_everything(run_dir)
    # `tail --json` prints the events as stored; the other commands saw them too.
    assert (run_dir / "events.jsonl").read_bytes() == printed["tail --json"][1]
    assert b"[redacted]" in printed["tail --level ERROR"][1]
    for name, (_, out, err) in printed.items():
        assert_no_key(f"the stdout of `runner {name}`", out)
        assert_no_key(f"the stderr of `runner {name}`", err)
    for path, data in {**files_under(tmp_path), **written}.items():
        assert_no_key(str(path), data)
    assert_keys_went_to_their_own_provider(server)


@pytest.mark.parametrize(
    ("variable", "expected_stderr"),
    [
        ("OPENAI_BASE_URL", "runner: OPENAI_BASE_URL (environment): expected an http"),
        ("PROVIDER_TIMEOUT_S", "runner: PROVIDER_TIMEOUT_S (environment): expected a positive"),
    ],
)
async def test_a_key_pasted_into_the_wrong_variable_is_not_echoed(
    tmp_path: Path, variable: str, expected_stderr: str
) -> None:
    toml = tmp_path / "secrets.toml"
    toml.write_text(PIPELINE)
    done = await trio.run_process(
        [sys.executable, "-m", "runner", "run", str(toml)],
        env={**os.environ, variable: OPENAI_KEY},
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert 2 == done.returncode
    assert done.stderr.decode().startswith(expected_stderr)
    assert_no_key("stdout", done.stdout)
    assert_no_key("stderr", done.stderr)


async def test_a_key_cut_by_the_message_length_limit_does_not_leak_in_part(
    runs_dir: Path,
) -> None:
    # The key starts 15 characters before the 500-character cut of error messages.
    message = "x" * 479 + " key: " + OPENAI_KEY
    async with open_fake_llm_server() as server:
        server.script(Fail(401, message=message))
        settings = Settings(openai_base_url=server.openai_base_url, openai_api_key=OPENAI_KEY)
        pipeline = Pipeline(
            name="one", steps=[Step("ask", prompt="hello", provider="openai", model="gpt-test")]
        )
        result = await run_dag(pipeline, runs_dir=runs_dir, settings=settings)

    [failed] = [e for e in events(result.run_dir) if e["type"] == "step.failed"]
    assert "sk-live-SECRET" not in failed["data"]["message"]
