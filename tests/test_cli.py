from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import events, invoke

from runner.run_dir import RunDir

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "app_builder.toml")
# The example runs a real model by default; these tests run its scripted, offline version.
OFFLINE = ("--provider", "fake")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


SLOW = """
name = "slow"
[providers.fake]
latency_s = {latency}
[steps.a]
prompt = "a"
[steps.b]
prompt = "b"
needs = ["a"]
"""


def test_run_example_succeeds_and_show_list_read_it(runs_dir: Path) -> None:
    code, out, err = invoke(
        "run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo"
    )
    assert (0, "") == (code, err)
    assert "job succeeded" in out
    code, out, _ = invoke("show", "demo", "--runs-dir", str(runs_dir))
    assert 0 == code
    lines = out.splitlines()
    assert lines[0].startswith("job demo  pipeline app-builder  status succeeded")
    assert ["architect", "builder", "reviewer"] == [line.split()[0] for line in lines[2:]]
    assert all(line.split()[1] == "succeeded" for line in lines[2:])
    code, out, _ = invoke("list", "--runs-dir", str(runs_dir))
    assert (0, ["demo", "succeeded"]) == (code, out.splitlines()[1].split()[:2])


def test_show_json_is_one_document_derived_from_events(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    (runs_dir / "demo" / "manifest.json").unlink()  # show must not need it
    code, out, _ = invoke("show", "demo", "--runs-dir", str(runs_dir), "--json")
    document = json.loads(out)
    assert (0, "succeeded") == (code, document["status"])
    builder = document["steps"]["builder"]
    assert (1, False) == (builder["attempts"], builder["cached"])
    assert builder["output_tokens"] > 0
    assert 4 == len(document["files"])


def test_show_marks_resumed_and_cached_steps(runs_dir: Path, tmp_path: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    (runs_dir / "demo" / "outputs" / "reviewer.txt").unlink()
    code, _, _ = invoke(
        "run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo", "--resume"
    )
    assert 0 == code
    _, out, _ = invoke("show", "demo", "--runs-dir", str(runs_dir))
    status = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "(resumed)" in status["architect"]
    assert "(cached)" in status["reviewer"]


def test_run_failing_job_exits_1(runs_dir: Path, tmp_path: Path) -> None:
    pipeline = write(
        tmp_path / "p.toml",
        'name = "p"\n[providers.fake.errors]\na = "nope"\n[steps.a]\nprompt = "x"\n',
    )
    code, out, _ = invoke("run", pipeline, "--runs-dir", str(runs_dir))
    assert 1 == code
    assert "job failed" in out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'name = "p"\n[steps.a]\nprompt = "x"\nneeds = ["ghost"]\n',
            r"p\.toml: steps\.a\.needs: unknown step 'ghost'",
        ),
        ('name = "p"\n[steps.a\n', r"p\.toml: invalid TOML"),
        (
            'name = "p"\n[steps.a]\nprompt = "{{ inputs.nope }}"\n',
            r"p\.toml: steps\.a\.prompt: unknown input 'nope'",
        ),
        (
            'name = "p"\n[steps.a]\nprompt = "x"\nprovider = "gpt"\n',
            r"p\.toml: steps\.a\.provider: unknown provider",
        ),
    ],
)
def test_pipeline_mistakes_are_one_line_exit_2(
    runs_dir: Path, tmp_path: Path, toml: str, message: str
) -> None:
    code, out, err = invoke("run", write(tmp_path / "p.toml", toml), "--runs-dir", str(runs_dir))
    assert 2 == code
    assert 1 == len(err.splitlines()), err
    assert err.startswith("runner: ")
    assert __import__("re").search(message, err)
    assert "Traceback" not in out + err
    assert not runs_dir.exists()  # nothing written for a mistake


def test_unknown_input_and_bad_input_syntax_exit_2(runs_dir: Path) -> None:
    code, _, err = invoke(
        "run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--input", "nope=1"
    )
    assert (2, 1) == (code, len(err.splitlines()))
    assert "inputs.nope: unknown input" in err
    code, _, err = invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--input", "idea")
    assert 2 == code
    assert "expected NAME=VALUE" in err


def test_bad_setting_exit_2_names_the_variable(runs_dir: Path) -> None:
    code, _, err = invoke(
        "run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), env={"MAX_RETRIES": "many"}
    )
    assert 2 == code
    assert err.startswith("runner: MAX_RETRIES (environment): expected a whole number >= 0")


def test_existing_job_id_without_resume_exit_2(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    before = (runs_dir / "demo" / "events.jsonl").read_bytes()
    code, _, err = invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    assert 2 == code
    assert "job 'demo' already exists" in err
    assert before == (runs_dir / "demo" / "events.jsonl").read_bytes()


@pytest.mark.parametrize("command", ["show", "tail"])
def test_unknown_job_exit_2(runs_dir: Path, command: str) -> None:
    code, _, err = invoke(command, "ghost", "--runs-dir", str(runs_dir))
    assert (2, "runner: job 'ghost' not found in " + str(runs_dir) + "\n") == (code, err)


def test_runs_dir_from_environment(tmp_path: Path) -> None:
    env = {"RUNNER_RUNS_DIR": str(tmp_path / "elsewhere")}
    assert 0 == invoke("run", EXAMPLE, *OFFLINE, "--job-id", "demo", env=env)[0]
    assert (tmp_path / "elsewhere" / "demo" / "events.jsonl").is_file()
    assert ["demo", "succeeded"] == invoke("list", env=env)[1].splitlines()[1].split()[:2]


def test_provider_and_model_overrides(runs_dir: Path) -> None:
    invoke(
        "run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "d", "--model", "echo-2"
    )
    requests = [e for e in events(runs_dir / "d") if e["type"] == "llm.request"]
    assert {"echo-2"} == {e["data"]["model"] for e in requests}


def test_tail_filters_combine(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    _, out, _ = invoke("tail", "demo", "--runs-dir", str(runs_dir), "--type", "llm", "--json")
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert ["llm.request", "llm.response"] * 3 == types
    _, out, _ = invoke(
        "tail", "demo", "--runs-dir", str(runs_dir), "--type", "step", "--step", "builder", "--json"
    )
    assert ["step.started", "step.succeeded"] == [
        json.loads(line)["type"] for line in out.splitlines()
    ]
    _, out, _ = invoke("tail", "demo", "--runs-dir", str(runs_dir), "--level", "WARN")
    assert "" == out
    _, out, _ = invoke("tail", "demo", "--runs-dir", str(runs_dir))
    assert len(events(runs_dir / "demo")) == len(out.splitlines())


def test_tail_json_prints_events_as_stored(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    _, out, _ = invoke("tail", "demo", "--runs-dir", str(runs_dir), "--json")
    assert (runs_dir / "demo" / "events.jsonl").read_text() == out


# -- real processes: signals and following a live log ---------------------------------


def _spawn(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _log_has(path: Path, type_: str) -> bool:
    return path.exists() and f'"type":"{type_}"' in path.read_text()


def test_ctrl_c_exits_130_records_cancelled_and_resumes(tmp_path: Path) -> None:
    pipeline = write(tmp_path / "slow.toml", SLOW.format(latency=30))
    proc = _spawn("run", pipeline, "--job-id", "s", cwd=tmp_path)
    log = tmp_path / "runs" / "s" / "events.jsonl"
    _wait_for(lambda: _log_has(log, "llm.request"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert 130 == proc.returncode
    assert "Traceback" not in out + err
    last = events(tmp_path / "runs" / "s")[-1]
    assert ("job.finished", "cancelled") == (last["type"], last["data"]["status"])
    # Resumable: a fast pipeline with the same name and steps finishes the job.
    fast = write(tmp_path / "slow.toml", SLOW.format(latency=0))
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", fast, "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert 0 == done.returncode, done.stderr
    assert "succeeded" == events(tmp_path / "runs" / "s")[-1]["data"]["status"]


def test_tail_follow_waits_for_the_log_and_stops_after_job_finished(tmp_path: Path) -> None:
    follower = _spawn("tail", "demo", "-f", "--json", cwd=tmp_path)
    time.sleep(
        0.2
    )  # let it start waiting for a log that does not exist yet (not a timing assertion)
    subprocess.run(
        [sys.executable, "-m", "runner", "run", EXAMPLE, *OFFLINE, "--job-id", "demo"],
        cwd=tmp_path,
        check=True,
    )
    out, _ = follower.communicate(timeout=20)
    assert 0 == follower.returncode
    assert (tmp_path / "runs" / "demo" / "events.jsonl").read_text() == out


def test_tail_follow_never_prints_half_a_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "j"
    run_dir.mkdir(parents=True)
    log = run_dir / "events.jsonl"
    first = (
        '{"ts":"2026-11-24T05:23:34.000001+00:00","level":"INFO","job_id":"j",'
        '"type":"job.started"}\n'
    )
    last = (
        '{"ts":"2026-11-24T05:23:35.000001+00:00","level":"INFO","job_id":"j","type":"job.finished",'
        '"data":{"status":"succeeded"}}\n'
    )
    log.write_text(first + last[:40])  # a torn, still-being-written line
    writer = RunDir(run_dir).lock()  # the job's process holds the lock: it is running
    follower = _spawn("tail", "j", "-f", "--json", cwd=tmp_path)
    line = follower.stdout.readline()  # type: ignore[union-attr]
    assert first == line
    with open(log, "a") as file:
        file.write(last[40:])
    out, _ = follower.communicate(timeout=20)
    os.close(writer)
    assert (0, last) == (follower.returncode, out)


def test_tail_follow_after_a_crash_prints_the_resumed_lines_not_the_torn_one(
    tmp_path: Path,
) -> None:
    from runner.event_writer import _cut_torn_tail
    from runner.events import event_line, make_event

    run_dir = tmp_path / "runs" / "j"
    run_dir.mkdir(parents=True)
    log = run_dir / "events.jsonl"
    first = event_line(make_event("j", "job.started"))
    log.write_bytes(first + b'{"ts":"torn-by-a-crash","level":"INF')
    fd = RunDir(run_dir).lock()  # a resume has locked the log (else tail -f says it is gone)
    follower = _spawn("tail", "j", "-f", "--json", cwd=tmp_path)
    assert first.decode() == follower.stdout.readline()  # type: ignore[union-attr]
    # What a resume does: cut the torn line off, then append where it was.
    resumed = [event_line(make_event("j", "job.started", data={"resume": True}))]
    resumed.append(event_line(make_event("j", "job.finished", data={"status": "succeeded"})))
    try:
        _cut_torn_tail(fd)
        for line in resumed:
            os.write(fd, line)
    finally:
        os.close(fd)
    out, _ = follower.communicate(timeout=20)
    assert (0, b"".join(resumed).decode()) == (follower.returncode, out)


def test_tail_follow_refuses_a_job_id_that_is_a_path(runs_dir: Path) -> None:
    code, _, err = invoke("tail", "../elsewhere", "-f", "--runs-dir", str(runs_dir))
    assert 2 == code
    assert err.startswith("runner: invalid job id '../elsewhere'")


def test_a_job_whose_process_died_reads_interrupted(runs_dir: Path) -> None:
    import socket

    from runner.events import event_line, make_event

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    run_dir = runs_dir / "dead"
    run_dir.mkdir(parents=True)
    started = {"pipeline": "p", "steps": ["a", "b"], "pid": gone.pid, "host": socket.gethostname()}
    lines = [
        make_event("dead", "job.started", data=started),
        make_event("dead", "step.started", step="a"),
    ]
    (run_dir / "events.jsonl").write_bytes(b"".join(event_line(e) for e in lines))
    _, out, _ = invoke("list", "--runs-dir", str(runs_dir))
    assert ["dead", "interrupted"] == out.splitlines()[1].split()[:2]
    _, out, _ = invoke("show", "dead", "--runs-dir", str(runs_dir), "--json")
    document = json.loads(out)
    assert ("interrupted", "interrupted", "pending") == (
        document["status"],
        document["steps"]["a"]["status"],
        document["steps"]["b"]["status"],
    )


def test_version_is_one_value_everywhere() -> None:
    # `runner --version`, runner.__version__ and the installed package's metadata agree.
    from importlib.metadata import version

    import runner

    code, out, _ = invoke("--version")
    assert (0, f"runner, version {runner.__version__}\n") == (code, out)
    assert runner.__version__ == version("runner")


@pytest.mark.parametrize(
    "job_id", ["x\ny", "evil\x7f", "tab\there", "sp ace", "café", ".h", "a" * 129]
)
@pytest.mark.parametrize(
    "command", [["show"], ["tail"], ["tail", "-f"], ["run", EXAMPLE, *OFFLINE, "--job-id"]]
)
def test_every_command_refuses_a_bad_job_id_in_one_line(
    runs_dir: Path, command: list[str], job_id: str
) -> None:
    code, out, err = invoke(*command, job_id, "--runs-dir", str(runs_dir))
    assert (2, "") == (code, out)
    assert 1 == len(err.splitlines())
    assert err.startswith(f"runner: invalid job id {job_id!r}: use ASCII letters")
    assert not runs_dir.exists()


def test_list_leaves_out_directories_no_job_can_have(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "good")
    shutil.copytree(runs_dir / "good", runs_dir / "x\ny")
    code, out, _ = invoke("list", "--runs-dir", str(runs_dir))
    assert (0, ["good"]) == (code, [line.split()[0] for line in out.splitlines()[1:]])


def test_a_missing_key_for_the_official_api_is_exit_2_before_any_call(tmp_path: Path) -> None:
    pipeline = write(
        tmp_path / "p.toml",
        'name = "p"\n[defaults]\nprovider = "openai"\nmodel = "gpt-5"\n'
        '[steps.a]\nprompt = "x"\n[steps.b]\nprompt = "y"\n'
        '[steps.c]\nprompt = "z"\nprovider = "fake"\nmodel = "echo"\n',
    )
    runs = tmp_path / "runs"
    code, out, err = invoke("run", pipeline, "--runs-dir", str(runs))
    assert (2, "") == (code, out)
    assert (
        "runner: OPENAI_API_KEY is not set: steps a, b call openai at https://api.openai.com/v1"
        " (set OPENAI_API_KEY in the environment or .env)\n"
    ) == err
    assert not runs.exists()
    # Another address (a local or compatible server) needs no key.
    code, _, _ = invoke(
        "run",
        pipeline,
        "--runs-dir",
        str(runs),
        env={
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "MAX_RETRIES": "0",
            "PROVIDER_TIMEOUT_S": "2",
        },
    )
    assert 1 == code  # it ran: the connection was refused, the job failed
