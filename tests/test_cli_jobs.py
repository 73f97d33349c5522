"""Managing jobs: `runner list`, `cancel`, `rm` and `prune` (and `runner/job_admin.py`).

Running jobs are real: a `runner run` subprocess on a slow fake provider, or a small
process that holds a job's lock the way a run does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from helpers import events, invoke, wait_until

from runner.durations import parse_duration
from runner.errors import JobError
from runner.events import event_line, make_event
from runner.job_admin import disk_usage, remove_job, wait_for_end
from runner.run_dir import RunDir

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "app_builder.toml")
OFFLINE = ("--provider", "fake")
V1_JOB = Path(__file__).parent / "data" / "v1_job" / "notes-20240312-101500"
SLOW = """
name = "slow"
[providers.fake]
latency_s = 30
[steps.a]
prompt = "a"
[steps.b]
prompt = "b"
needs = ["a"]
"""
# A process that holds a job's lock as a run does and logs its start with its pid and
# the host it is given; it ignores SIGINT, and lets go when its stdin closes.
HOLDER = """
import os, signal, sys
from runner.events import event_line, make_event
from runner.run_dir import RunDir

signal.signal(signal.SIGINT, signal.SIG_IGN)
run_dir = RunDir.of(sys.argv[1], sys.argv[2])
run_dir.path.mkdir(parents=True)
fd = run_dir.lock()
data = {"pipeline": "p", "steps": ["a"], "pid": os.getpid(), "host": sys.argv[3]}
os.write(fd, event_line(make_event(run_dir.job_id, "job.started", data=data)))
print("ready", flush=True)
sys.stdin.read()
"""


def ago(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(**delta)).isoformat(timespec="microseconds")


def write_job(
    runs_dir: Path,
    job_id: str,
    *,
    started: str,
    status: str | None = "succeeded",
    pipeline: str = "p",
) -> Path:
    """A finished (or, with `status=None`, unfinished) job of two steps, a and b."""
    run_dir = runs_dir / job_id
    (run_dir / "outputs").mkdir(parents=True)
    (run_dir / "outputs" / "a.txt").write_text("x" * 5000)
    data = {"pipeline": pipeline, "steps": ["a", "b"], "pid": 1, "host": socket.gethostname()}
    lines = [
        make_event(job_id, "job.started", ts=started, data=data),
        make_event(job_id, "step.started", step="a", ts=started),
        make_event(job_id, "step.succeeded", step="a", ts=started, data={}),
    ]
    if status is not None:
        finished = {"status": status, "duration_s": 1.5}
        lines.append(make_event(job_id, "job.finished", ts=started, data=finished))
    (run_dir / "events.jsonl").write_bytes(b"".join(event_line(e) for e in lines))
    return run_dir


def table(out: str) -> list[list[str]]:
    """`runner list`'s rows (header first), each split into its cells."""
    return [line.split() for line in out.splitlines()]


def runner_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


@asynccontextmanager
async def slow_job(runs_dir: Path, job_id: str) -> AsyncIterator[trio.Process]:
    """A `runner run` subprocess whose first step is waiting for its LLM call."""
    pipeline = runs_dir.parent / "slow.toml"
    pipeline.write_text(SLOW)
    log = runs_dir / job_id / "events.jsonl"
    process = await trio.lowlevel.open_process(
        runner_args("run", str(pipeline), "--job-id", job_id, "--runs-dir", str(runs_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: log.is_file() and '"type":"llm.request"' in log.read_text())
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def lock_holder(runs_dir: Path, job_id: str, host: str) -> AsyncIterator[trio.Process]:
    """A process holding the job's lock (see HOLDER); it lets go on leaving."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", HOLDER, str(runs_dir), job_id, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        said = b""
        with trio.fail_after(20):
            while not said.endswith(b"\n"):
                said += await process.stdout.receive_some()
        assert b"ready\n" == said
        yield process
    finally:
        await process.stdin.aclose()
        with trio.fail_after(20):
            await process.wait()


# -- list --------------------------------------------------------------------------------


def test_list_is_a_table_with_a_header_newest_first(runs_dir: Path) -> None:
    write_job(runs_dir, "old-job", started=ago(hours=3), status="failed")
    write_job(runs_dir, "a-much-longer-job-id", started=ago(minutes=50), pipeline="longer-name")
    write_job(runs_dir, "new", started=ago(minutes=2), status=None)  # its pid 1 is init: alive
    code, out, err = invoke("list", "--runs-dir", str(runs_dir))
    assert (0, "") == (code, err)
    assert [
        ["JOB", "STATUS", "STEPS", "AGE", "PIPELINE"],
        ["new", "running", "1/2", "2m", "p"],
        ["a-much-longer-job-id", "succeeded", "1/2", "50m", "longer-name"],
        ["old-job", "failed", "1/2", "3h", "p"],
    ] == table(out)
    # Aligned: every cell starts where its header does.
    header, *rows = out.splitlines()
    starts = [header.index(name) for name in ("STATUS", "STEPS", "AGE", "PIPELINE")]
    for row, cells in zip(rows, table(out)[1:], strict=True):
        assert starts == [row.index(cell, 3) for cell in cells[1:]]


def test_list_filters_by_status_and_pipeline_and_limits(runs_dir: Path) -> None:
    write_job(runs_dir, "f1", started=ago(hours=3), status="failed")
    write_job(runs_dir, "c1", started=ago(hours=2), status="cancelled", pipeline="q")
    write_job(runs_dir, "s1", started=ago(hours=1))
    write_job(runs_dir, "s2", started=ago(minutes=1), pipeline="q")

    def ids(*args: str) -> list[str]:
        code, out, _ = invoke("list", "--runs-dir", str(runs_dir), *args)
        assert 0 == code
        return [row[0] for row in table(out)[1:]]

    assert ["c1", "f1"] == ids("--status", "failed", "--status", "cancelled")
    assert ["s2", "c1"] == ids("--pipeline", "q")
    assert ["s2"] == ids("--pipeline", "q", "--status", "succeeded")
    assert ["s2", "s1"] == ids("--limit", "2")
    _, out, _ = invoke("list", "--runs-dir", str(runs_dir), "--status", "running")
    assert f"no jobs match in {runs_dir}\n" == out


def test_list_json_is_an_array_of_jobs_newest_first(runs_dir: Path) -> None:
    old = write_job(runs_dir, "old", started=ago(days=2), status="failed")
    invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", "demo")
    code, out, _ = invoke("list", "--runs-dir", str(runs_dir), "--json")
    jobs = json.loads(out)
    assert 0 == code
    assert ["demo", "old"] == [job["job_id"] for job in jobs]
    fields = ["job_id", "pipeline", "status", "started", "finished", "duration_s", "runs", "steps"]
    assert [fields, fields] == [list(job) for job in jobs]
    demo = jobs[0]
    last = events(runs_dir / "demo")[-1]
    assert ("app-builder", "succeeded", 1, {"succeeded": 3}) == (
        demo["pipeline"],
        demo["status"],
        demo["runs"],
        demo["steps"],
    )
    assert (events(runs_dir / "demo")[0]["ts"], last["ts"]) == (demo["started"], demo["finished"])
    assert last["data"]["duration_s"] == demo["duration_s"]
    assert {"succeeded": 1, "pending": 1} == jobs[1]["steps"]
    assert events(old)[0]["ts"] == jobs[1]["started"]
    _, out, _ = invoke("list", "--runs-dir", str(runs_dir), "--json", "--pipeline", "nope")
    assert [] == json.loads(out)


def test_list_leaves_out_dot_files_and_directories_no_job_can_have(runs_dir: Path) -> None:
    write_job(runs_dir, "good", started=ago(hours=1))
    (runs_dir / ".model-sha256.json").write_text("{}")
    shutil.copytree(runs_dir / "good", runs_dir / ".hidden")
    shutil.copytree(runs_dir / "good", runs_dir / "sp ace")
    _, out, _ = invoke("list", "--runs-dir", str(runs_dir))
    assert ["good"] == [row[0] for row in table(out)[1:]]
    _, out, _ = invoke("list", "--runs-dir", str(runs_dir), "--json")
    assert ["good"] == [job["job_id"] for job in json.loads(out)]
    # Nor does prune touch them.
    invoke("prune", "--older-than", "0s", "--runs-dir", str(runs_dir))
    assert {".model-sha256.json", ".hidden", "sp ace"} == {p.name for p in runs_dir.iterdir()}


def test_list_of_no_jobs_says_so(runs_dir: Path) -> None:
    assert (0, f"no jobs in {runs_dir}\n") == invoke("list", "--runs-dir", str(runs_dir))[:2]


@pytest.mark.parametrize("command", [["list"], ["prune", "--older-than", "1d"]])
def test_an_unknown_status_is_one_line_exit_2(runs_dir: Path, command: list[str]) -> None:
    code, out, err = invoke(*command, "--status", "done", "--runs-dir", str(runs_dir))
    assert (2, "") == (code, out)
    assert (
        "runner: --status 'done': expected one of succeeded, failed, cancelled, running,"
        " interrupted, pending\n"
    ) == err


# -- job references: latest and unique prefixes, in every command -----------------------


def test_latest_and_a_prefix_name_a_job_in_show_and_tail(runs_dir: Path) -> None:
    write_job(runs_dir, "first-job", started=ago(hours=2))
    write_job(runs_dir, "second-job", started=ago(hours=1), status="failed")
    _, out, _ = invoke("show", "latest", "--runs-dir", str(runs_dir))
    assert out.startswith("job second-job  pipeline p  status failed")
    _, out, _ = invoke("show", "fir", "--runs-dir", str(runs_dir), "--json")
    assert "first-job" == json.loads(out)["job_id"]
    _, out, _ = invoke("tail", "latest", "--runs-dir", str(runs_dir), "--json")
    assert {"second-job"} == {json.loads(line)["job_id"] for line in out.splitlines()}
    _, out, _ = invoke("tail", "first", "--runs-dir", str(runs_dir), "--type", "job.finished")
    assert "status=succeeded" in out


@pytest.mark.parametrize(
    "command", [["show"], ["tail"], ["rm"], ["cancel"], ["graph"], ["rm", "--dry-run"]]
)
def test_an_ambiguous_prefix_is_exit_2_naming_the_candidates(
    runs_dir: Path, command: list[str]
) -> None:
    write_job(runs_dir, "job-1", started=ago(hours=2))
    write_job(runs_dir, "job-2", started=ago(hours=1))
    code, out, err = invoke(*command, "job-", "--runs-dir", str(runs_dir))
    assert (2, "") == (code, out)
    assert f"runner: job 'job-' is ambiguous in {runs_dir}: job-1, job-2\n" == err
    assert {"job-1", "job-2"} == {p.name for p in runs_dir.iterdir()}


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_stops_a_running_job_which_records_cancelled(runs_dir: Path) -> None:
    async with slow_job(runs_dir, "slow-job-1") as job:
        # A prefix names the job, from another process, as from another terminal.
        done = await trio.run_process(
            runner_args("cancel", "slow-j", "--runs-dir", str(runs_dir)),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert (0, b"job slow-job-1 cancelled\n", b"") == (
            done.returncode,
            done.stdout,
            done.stderr,
        )
        with trio.fail_after(20):
            await job.wait()
        assert 130 == job.returncode
    last = events(runs_dir / "slow-job-1")[-1]
    assert ("job.finished", "cancelled") == (last["type"], last["data"]["status"])


def test_cancel_a_job_that_is_not_running_is_exit_2(runs_dir: Path) -> None:
    write_job(runs_dir, "done", started=ago(hours=1), status="failed")
    code, out, err = invoke("cancel", "latest", "--runs-dir", str(runs_dir))
    assert (2, "", "runner: job 'done' is not running (status: failed)\n") == (code, out, err)
    code, _, err = invoke("cancel", "ghost", "--runs-dir", str(runs_dir))
    assert (2, f"runner: job 'ghost' not found in {runs_dir}\n") == (code, err)


async def test_cancel_a_job_running_on_another_host_is_exit_2_naming_it(runs_dir: Path) -> None:
    async with lock_holder(runs_dir, "far", "build-box-7"):
        code, out, err = invoke("cancel", "far", "--runs-dir", str(runs_dir))
        assert (2, "") == (code, out)
        assert err.startswith("runner: job 'far' runs on host 'build-box-7', not on this one")
        assert 1 == len(err.splitlines())


async def test_cancel_gives_up_after_its_timeout_exit_1(runs_dir: Path) -> None:
    async with lock_holder(runs_dir, "stubborn", socket.gethostname()) as holder:
        done = await trio.run_process(
            runner_args("cancel", "stubborn", "--runs-dir", str(runs_dir), "--timeout", "0.3"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert (1, b"") == (done.returncode, done.stdout)
        assert (
            b"runner: job 'stubborn' did not stop within 0.3s of the cancel request (SIGINT)\n"
        ) == done.stderr
        assert holder.returncode is None  # it ignored the signal and still runs


async def test_wait_for_end_reads_the_end_logged_after_the_offset(
    runs_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_dir = RunDir.of(runs_dir, "j")
    run_dir.path.mkdir(parents=True)
    fd = run_dir.lock()
    try:
        os.write(fd, event_line(make_event("j", "job.finished", data={"status": "failed"})))
        os.write(fd, event_line(make_event("j", "job.started", data={})))
        offset = run_dir.events_path.stat().st_size
        end = event_line(make_event("j", "job.finished", data={"status": "cancelled"}))

        async def end_later() -> None:
            await trio.sleep(5)
            os.write(fd, end[:30])  # half a line: not an end yet
            await trio.sleep(5)
            os.write(fd, end[30:])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(end_later)
            assert "cancelled" == await wait_for_end(run_dir, offset)
            assert trio.current_time() >= 10
        # No end after the offset while the lock is held: it waits as long as it is let.
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(30):
                await wait_for_end(run_dir, run_dir.events_path.stat().st_size)
    finally:
        os.close(fd)
    # The lock gone without an end: the process was killed.
    assert "interrupted" == await wait_for_end(run_dir, run_dir.events_path.stat().st_size)


# -- rm ----------------------------------------------------------------------------------


def test_rm_removes_jobs_by_id_latest_and_prefix_and_totals_the_space(runs_dir: Path) -> None:
    for n, job_id in enumerate(["keep", "alpha-1", "beta-1", "gamma"]):
        write_job(runs_dir, job_id, started=ago(hours=4 - n))
    code, out, err = invoke("rm", "alpha-1", "bet", "latest", "gamma", "--runs-dir", str(runs_dir))
    assert (0, "") == (code, err)
    lines = out.splitlines()
    assert ["alpha-1", "beta-1", "gamma"] == [line.split()[1] for line in lines[:-1]]
    assert all(re.fullmatch(r"removed \S+ \(\d+\.\d kB\)", line) for line in lines[:-1])
    assert re.fullmatch(r"removed 3 jobs, \d+\.\d kB freed", lines[-1])
    assert ["keep"] == [p.name for p in runs_dir.iterdir()]


def test_rm_dry_run_removes_nothing(runs_dir: Path) -> None:
    write_job(runs_dir, "j", started=ago(hours=1))
    size = disk_usage(runs_dir / "j")
    code, out, _ = invoke("rm", "j", "--dry-run", "--runs-dir", str(runs_dir))
    assert 0 == code
    assert [f"would remove j ({size / 1000:.1f} kB)"] == out.splitlines()[:1]
    assert f"would remove 1 job, {size / 1000:.1f} kB would be freed" == out.splitlines()[-1]
    assert (runs_dir / "j" / "events.jsonl").is_file()


def test_rm_of_an_unknown_job_removes_nothing(runs_dir: Path) -> None:
    write_job(runs_dir, "j", started=ago(hours=1))
    code, out, err = invoke("rm", "j", "ghost", "--runs-dir", str(runs_dir))
    assert (2, "", f"runner: job 'ghost' not found in {runs_dir}\n") == (code, out, err)
    assert (runs_dir / "j").is_dir()


@pytest.mark.parametrize("job_id", ["../j", "/tmp", ".hidden", "a/b"])
def test_rm_refuses_an_id_that_is_a_path(runs_dir: Path, tmp_path: Path, job_id: str) -> None:
    write_job(runs_dir, "j", started=ago(hours=1))
    (runs_dir / ".hidden").mkdir()
    code, _, err = invoke("rm", job_id, "--runs-dir", str(runs_dir / "j" / "outputs"))
    assert 2 == code
    assert err.startswith(f"runner: invalid job id {job_id!r}")
    assert (runs_dir / "j" / "outputs" / "a.txt").is_file()
    assert (runs_dir / ".hidden").is_dir()


def test_rm_refuses_a_symlinked_job_directory(runs_dir: Path, tmp_path: Path) -> None:
    elsewhere = write_job(tmp_path / "elsewhere", "j", started=ago(hours=1))
    runs_dir.mkdir()
    (runs_dir / "link").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = invoke("rm", "link", "--runs-dir", str(runs_dir))
    assert (2, f"runner: job 'link' is a symlink in {runs_dir}; not removing it\n") == (code, err)
    assert (elsewhere / "events.jsonl").is_file()
    assert (runs_dir / "link").is_symlink()


async def test_rm_refuses_a_running_job_and_removes_nothing(runs_dir: Path) -> None:
    write_job(runs_dir, "old", started=ago(days=1))
    async with slow_job(runs_dir, "busy") as job:
        code, out, err = invoke("rm", "old", "latest", "--runs-dir", str(runs_dir))
        assert (2, "") == (code, out)
        assert (
            f"runner: job 'busy' is running (pid {job.pid} on this host); not removing it\n"
        ) == err
        assert {"old", "busy"} == {p.name for p in runs_dir.iterdir() if p.is_dir()}
        assert job.returncode is None


async def test_rm_refuses_a_job_whose_lock_another_host_holds(runs_dir: Path) -> None:
    async with lock_holder(runs_dir, "far", "build-box-7") as holder:
        code, _, err = invoke("rm", "far", "--runs-dir", str(runs_dir))
    assert 2 == code
    assert (
        f"runner: job 'far' is running on host 'build-box-7' (pid {holder.pid}); not removing it\n"
    ) == err
    assert (runs_dir / "far" / "events.jsonl").is_file()


def test_rm_never_removes_an_unfinished_job_of_another_host(runs_dir: Path) -> None:
    # Its lock may be invisible from here (a network filesystem): it may still run.
    run_dir = runs_dir / "far"
    run_dir.mkdir(parents=True)
    data = {"pipeline": "p", "steps": [], "pid": 4242, "host": "build-box-7"}
    (run_dir / "events.jsonl").write_bytes(event_line(make_event("far", "job.started", data=data)))
    code, _, err = invoke("rm", "far", "--runs-dir", str(runs_dir))
    assert 2 == code
    assert (
        "runner: job 'far' is maybe running on host 'build-box-7' (its last run has no end);"
        " not removing it\n"
    ) == err
    assert run_dir.is_dir()


def test_remove_job_takes_the_lock_so_a_run_that_holds_it_wins(runs_dir: Path) -> None:
    # A run may start between `rm`'s checks and the removal: then nothing is removed.
    run_dir = RunDir.of(runs_dir, "j")
    write_job(runs_dir, "j", started=ago(hours=1))
    fd = run_dir.lock()
    try:
        with pytest.raises(JobError, match=r"^job 'j' is running in another process$"):
            remove_job(run_dir)
    finally:
        os.close(fd)
    assert (run_dir.path / "outputs" / "a.txt").is_file()
    assert disk_usage(run_dir.path) == remove_job(run_dir)
    assert not run_dir.path.exists()


def test_disk_usage_counts_what_du_counts(runs_dir: Path) -> None:
    run_dir = write_job(runs_dir, "j", started=ago(hours=1))
    (run_dir / "files" / "deep").mkdir(parents=True)
    (run_dir / "files" / "deep" / "big.bin").write_bytes(os.urandom(300_000))
    (run_dir / "files" / "link").symlink_to("/usr")
    du = subprocess.run(["du", "-s", "-B1", str(run_dir)], capture_output=True, text=True)
    assert int(du.stdout.split()[0]) == disk_usage(run_dir)


# -- prune -------------------------------------------------------------------------------


def test_prune_removes_the_jobs_older_than_the_duration(runs_dir: Path) -> None:
    write_job(runs_dir, "ten-days", started=ago(days=10))
    write_job(runs_dir, "two-days", started=ago(days=2))
    write_job(runs_dir, "now", started=ago(seconds=1))
    code, out, _ = invoke("prune", "--older-than", "7d", "--runs-dir", str(runs_dir))
    assert 0 == code
    assert re.fullmatch(r"removed ten-days \(\S+ kB\)\nremoved 1 job, \S+ kB freed\n", out)
    code, out, _ = invoke("prune", "--older-than", "1d", "--runs-dir", str(runs_dir))
    assert "removed two-days" in out
    assert ["now"] == [p.name for p in runs_dir.iterdir()]
    _, out, _ = invoke("prune", "--older-than", "1w", "--runs-dir", str(runs_dir))
    assert "removed 0 jobs, 0 B freed\n" == out


def test_prune_only_the_statuses_and_pipeline_asked_for(runs_dir: Path) -> None:
    write_job(runs_dir, "ok", started=ago(days=3))
    write_job(runs_dir, "bad", started=ago(days=3), status="failed")
    write_job(runs_dir, "stopped", started=ago(days=3), status="cancelled", pipeline="q")
    write_job(runs_dir, "bad-q", started=ago(days=3), status="failed", pipeline="q")
    args = ("prune", "--older-than", "1d", "--runs-dir", str(runs_dir))
    _, out, _ = invoke(*args, "--status", "failed", "--status", "cancelled", "--pipeline", "q")
    assert ["bad-q", "stopped"] == sorted(line.split()[1] for line in out.splitlines()[:-1])
    _, out, _ = invoke(*args, "--status", "failed")
    assert ["removed bad"] == [" ".join(line.split()[:2]) for line in out.splitlines()[:-1]]
    assert ["ok"] == [p.name for p in runs_dir.iterdir()]


def test_prune_dry_run_removes_nothing(runs_dir: Path) -> None:
    write_job(runs_dir, "old", started=ago(days=30))
    code, out, _ = invoke("prune", "--older-than", "7d", "--dry-run", "--runs-dir", str(runs_dir))
    assert 0 == code
    assert out.startswith("would remove old (")
    assert (runs_dir / "old" / "events.jsonl").is_file()


async def test_prune_never_removes_a_running_job(runs_dir: Path) -> None:
    write_job(runs_dir, "finished", started=ago(seconds=1))
    async with slow_job(runs_dir, "busy") as job:
        code, out, _ = invoke("prune", "--older-than", "0s", "--runs-dir", str(runs_dir))
        assert 0 == code
        lines = out.splitlines()
        assert f"kept busy: running (pid {job.pid} on this host)" == lines[0]
        assert lines[1].startswith("removed finished (")
        assert lines[2].startswith("removed 1 job, ")
        assert ["busy"] == [p.name for p in runs_dir.iterdir() if p.is_dir()]
        assert job.returncode is None
    # It ran on, untouched, to its cancellation.
    assert "cancelled" == events(runs_dir / "busy")[-1]["data"]["status"]


def test_prune_judges_a_log_without_start_times_by_its_last_write(runs_dir: Path) -> None:
    shutil.copytree(V1_JOB, runs_dir / V1_JOB.name)
    log = runs_dir / V1_JOB.name / "events.jsonl"
    args = ("prune", "--older-than", "7d", "--runs-dir", str(runs_dir))
    assert "removed 0 jobs, 0 B freed\n" == invoke(*args)[1]  # copied just now
    month_ago = (dt.datetime.now() - dt.timedelta(days=30)).timestamp()
    os.utime(log, (month_ago, month_ago))
    assert invoke(*args)[1].startswith(f"removed {V1_JOB.name} (")
    assert not runs_dir.joinpath(V1_JOB.name).exists()


@pytest.mark.parametrize("duration", ["7", "7x", "-1d", "d", "1d12h", "", "7 days"])
def test_prune_with_a_bad_duration_is_one_line_exit_2(runs_dir: Path, duration: str) -> None:
    write_job(runs_dir, "old", started=ago(days=30))
    code, out, err = invoke("prune", "--older-than", duration, "--runs-dir", str(runs_dir))
    assert (2, "") == (code, out)
    assert (
        f"runner: --older-than: invalid duration {duration!r}: expected a number and a unit,"
        " s, m, h, d or w (7d)\n"
    ) == err
    assert (runs_dir / "old").is_dir()


def test_parse_duration_units() -> None:
    assert [90, 900, 43200, 7 * 86400, 14 * 86400, 0, 1.5 * 3600] == [
        parse_duration(text).total_seconds()
        for text in ("90s", "15m", "12h", "7d", "2w", "0s", "1.5h")
    ]
