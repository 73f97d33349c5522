"""`runner tail`: its flags, its human lines, and `-f` ending in each of its ways."""

from __future__ import annotations

import datetime as _dt
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Generator
from functools import partial
from pathlib import Path

import pytest
import trio
from helpers import invoke, wait_until

from runner.event_format import format_event
from runner.events import Event, event_line, make_event
from runner.follow import FollowEnd, follow_job, parse_since
from runner.run_dir import RunDir

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "app_builder.toml")

TWO_STEPS = """
name = "slow"
[providers.fake]
latency_s = {latency}
{errors}
[steps.a]
prompt = "a"
[steps.b]
prompt = "b"
needs = ["a"]
"""
HASH = "0123456789abcdef" * 4


def _two_steps(tmp_path: Path, *, latency: float = 0, fail_b: str | None = None) -> str:
    errors = f"[providers.fake.errors]\nb = {json.dumps(fail_b)}" if fail_b else ""
    path = tmp_path / "slow.toml"
    path.write_text(TWO_STEPS.format(latency=latency, errors=errors))
    return str(path)


def _write_job(runs_dir: Path, job_id: str, lines: list[Event], steps: tuple[str, ...]) -> Path:
    """A job's directory as runner leaves it: `pipeline.json` and a log of `lines`."""
    run_dir = runs_dir / job_id
    run_dir.mkdir(parents=True)
    pipeline = {"name": "p", "steps": {name: {"prompt": name} for name in steps}}
    (run_dir / "pipeline.json").write_text(json.dumps(pipeline))
    (run_dir / "events.jsonl").write_bytes(b"".join(event_line(e) for e in lines))
    return run_dir


def _at(hour: int) -> str:
    return f"2026-01-01T{hour:02d}:00:00.000000+00:00"


def _mixed_job(runs_dir: Path) -> Path:
    """A finished job whose events have every level, an hour apart."""
    return _write_job(
        runs_dir,
        "mixed",
        [
            make_event("mixed", "job.started", ts=_at(0), data={"pipeline": "p"}),
            make_event("mixed", "llm.request", step="a", ts=_at(1), data={"attempt": 1}),
            make_event("mixed", "llm.retry", step="a", ts=_at(2), data={"attempt": 1}),
            make_event("mixed", "step.failed", step="a", ts=_at(3), data={"message": "boom"}),
            make_event(
                "mixed", "job.finished", level="ERROR", ts=_at(4), data={"status": "failed"}
            ),
        ],
        steps=("a", "b"),
    )


def _tail(runs_dir: Path, *args: str) -> tuple[int, list[str], str]:
    code, out, err = invoke("tail", *args, "--runs-dir", str(runs_dir))
    return code, out.splitlines(), err


def _types(lines: list[str]) -> list[str]:
    return [json.loads(line)["type"] for line in lines]


# -- choosing events: -n, --since, --level, --type, --step -------------------------------


def test_lines_prints_only_the_last_n_matching_events(runs_dir: Path) -> None:
    _mixed_job(runs_dir)
    code, lines, err = _tail(runs_dir, "mixed", "-n", "2", "--json")
    assert (0, ["step.failed", "job.finished"], "") == (code, _types(lines), err)
    code, lines, _ = _tail(runs_dir, "mixed", "--lines", "1", "--type", "llm", "--json")
    assert (0, ["llm.retry"]) == (code, _types(lines))
    assert (0, []) == _tail(runs_dir, "mixed", "-n", "0")[:2]
    assert 5 == len(_tail(runs_dir, "mixed", "-n", "99")[1])


@pytest.mark.parametrize(
    ("since", "first"),
    [
        ("2026-01-01T03:00:00", "step.failed"),  # no zone: UTC
        ("2026-01-01T03:00:00+00:00", "step.failed"),
        ("2026-01-01T05:00:00+02:00", "step.failed"),  # 03:00 UTC
        ("2026-01-01T02:30:00Z", "step.failed"),
        ("2026-01-01", "job.started"),
    ],
)
def test_since_takes_an_iso_time_with_or_without_a_zone(
    runs_dir: Path, since: str, first: str
) -> None:
    _mixed_job(runs_dir)
    code, lines, _ = _tail(runs_dir, "mixed", "--since", since, "--json")
    assert (0, first, "job.finished") == (code, _types(lines)[0], _types(lines)[-1])


def test_since_takes_a_duration_before_now(runs_dir: Path) -> None:
    now = _dt.datetime.now(_dt.UTC)

    def ago(**delta: float) -> str:
        return (now - _dt.timedelta(**delta)).isoformat(timespec="microseconds")

    _write_job(
        runs_dir,
        "j",
        [
            make_event("j", "job.started", ts=ago(days=2)),
            make_event("j", "step.started", step="a", ts=ago(hours=3)),
            make_event("j", "step.succeeded", step="a", ts=ago(minutes=30)),
            make_event("j", "job.finished", ts=ago(seconds=10), data={"status": "succeeded"}),
        ],
        steps=("a",),
    )
    counts = {d: len(_tail(runs_dir, "j", "--since", d)[1]) for d in ("90s", "10m", "2h", "1d")}
    assert {"90s": 1, "10m": 1, "2h": 2, "1d": 3} == counts


def test_parse_since_counts_a_duration_back_from_now() -> None:
    now = _dt.datetime(2026, 5, 1, 12, 0, tzinfo=_dt.UTC)
    assert _dt.datetime(2026, 5, 1, 10, 30, tzinfo=_dt.UTC) == parse_since("90m", now)
    assert _dt.datetime(2026, 4, 30, 12, 0, tzinfo=_dt.UTC) == parse_since("1d", now)


@pytest.mark.parametrize("word", ["warning", "WARN", "warn", "Warning"])
def test_level_is_any_case_and_warning_is_warn(runs_dir: Path, word: str) -> None:
    _mixed_job(runs_dir)
    code, lines, _ = _tail(runs_dir, "mixed", "--level", word, "--json")
    assert (0, ["llm.retry", "step.failed", "job.finished"]) == (code, _types(lines))
    _, lines, _ = _tail(runs_dir, "mixed", "--level", "error", "--json")
    assert ["step.failed", "job.finished"] == _types(lines)


def test_type_can_be_given_several_times(runs_dir: Path) -> None:
    _mixed_job(runs_dir)
    _, lines, _ = _tail(runs_dir, "mixed", "--type", "llm", "--type", "job.finished", "--json")
    assert ["llm.request", "llm.retry", "job.finished"] == _types(lines)
    _, lines, _ = _tail(runs_dir, "mixed", "--type", "step", "--step", "a", "--json")
    assert ["step.failed"] == _types(lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "three"], "runner: -n 'three': expected a whole number >= 0"),
        (["--lines", "-1"], "runner: -n '-1': expected a whole number >= 0"),
        (["--since", "yesterday"], "runner: --since 'yesterday': expected a duration"),
        (["--since", "10 minutes"], "runner: --since '10 minutes': expected a duration"),
        (["--level", "loud"], "runner: --level 'loud': expected one of info, warn"),
        (["-f", "--wait", "soon"], "runner: --wait 'soon': expected a number of seconds >= 0"),
        (["--exit-status"], "runner: --exit-status needs -f"),
        (
            ["--type", "llm", "--type", "bogus"],
            "runner: --type 'bogus' is not an event type or family (families: breaker, cache,",
        ),
        (["--type", "llm.nope"], "runner: --type 'llm.nope' is not an event type or family"),
        (
            ["--step", "nope"],
            "runner: --step 'nope' is not a step of job 'mixed' (steps: a, b)\n",
        ),
        (
            ["-f", "--step", "nope"],
            "runner: --step 'nope' is not a step of job 'mixed' (steps: a, b)\n",
        ),
    ],
)
def test_a_bad_value_is_exit_2_in_one_line(runs_dir: Path, args: list[str], message: str) -> None:
    _mixed_job(runs_dir)
    code, lines, err = _tail(runs_dir, "mixed", *args)
    assert (2, [], 1) == (code, lines, len(err.splitlines()))
    assert err.startswith(message)


def test_the_step_message_names_the_steps_of_a_real_job(runs_dir: Path) -> None:
    invoke("run", EXAMPLE, "--provider", "fake", "--runs-dir", str(runs_dir), "--job-id", "demo")
    code, lines, err = _tail(runs_dir, "demo", "--step", "nope")
    assert (2, []) == (code, lines)
    assert (
        "runner: --step 'nope' is not a step of job 'demo' (steps: architect, builder, reviewer)\n"
        == err
    )
    code, lines, _ = _tail(runs_dir, "demo", "--step", "builder", "--type", "step")
    assert (0, 2) == (code, len(lines))


# -- human lines ---------------------------------------------------------------------------


def test_human_lines_keep_long_values_whole_and_shorten_only_hashes(runs_dir: Path) -> None:
    message = "openai: 400 " + "the prompt is too long for this model; " * 10 + "END"
    _write_job(
        runs_dir,
        "j",
        [
            make_event("j", "job.started", data={"pipeline": "p", "pipeline_sha256": HASH}),
            make_event("j", "cache.miss", step="a", data={"key": HASH}),
            make_event("j", "step.failed", step="a", data={"error": "E", "message": message}),
            make_event("j", "file.written", step="a", data={"path": "x", "sha256": HASH}),
            make_event("j", "job.finished", data={"status": "failed", "steps": {"failed": 1}}),
        ],
        steps=("a",),
    )
    code, lines, _ = _tail(runs_dir, "j")
    assert (0, 5) == (code, len(lines))
    assert lines[2].endswith(f"step.failed [a] error=E message={message}")
    assert "pipeline_sha256=0123456789ab " in lines[0] + " "
    assert lines[1].endswith("cache.miss [a] key=0123456789ab")
    assert lines[3].endswith("file.written [a] path=x sha256=0123456789ab")
    assert HASH not in "\n".join(lines)
    assert lines[4].endswith('job.finished status=failed steps={"failed":1}')
    _, out, _ = invoke("tail", "j", "--runs-dir", str(runs_dir), "--json")
    assert (runs_dir / "j" / "events.jsonl").read_text() == out  # --json: as stored


def test_a_value_with_a_newline_or_an_escape_stays_on_one_line() -> None:
    event = make_event(
        "j", "provider.failed", data={"message": "no\nserver \x1b[31mred", "log_tail": ["a\x9b"]}
    )
    line = format_event(event)
    assert 1 == len(line.splitlines())
    assert "\x1b" not in line
    assert "\x9b" not in line
    assert 'message="no\\nserver \\u001b[31mred"' in line
    assert 'log_tail=["a\\u009b"]' in line


def test_only_a_hash_in_a_hash_field_is_shortened() -> None:
    assert format_event(make_event("j", "cache.miss", data={"key": "not-hex"})).endswith(
        "key=not-hex"
    )
    line = format_event(make_event("j", "step.failed", data={"message": HASH}))
    assert line.endswith(f"message={HASH}")


def _tail_on_a_terminal(runs_dir: Path, *args: str, env: dict[str, str]) -> bytes:
    """What `runner tail` writes to a pseudo-terminal."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "tail", *args, "--runs-dir", str(runs_dir)],
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert 0 == process.wait(timeout=20)
    return out


def test_colour_only_on_a_terminal_and_never_with_no_color(runs_dir: Path) -> None:
    _mixed_job(runs_dir)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    lines = _tail_on_a_terminal(runs_dir, "mixed", env=env).splitlines()
    red, yellow = b"\x1b[31m", b"\x1b[33m"
    assert [False, False, True, False, False] == [line.startswith(yellow) for line in lines]
    assert [False, False, False, True, True] == [line.startswith(red) for line in lines]
    plain = _tail_on_a_terminal(runs_dir, "mixed", env={**env, "NO_COLOR": "1"})
    assert 5 == len(plain.splitlines())
    assert b"\x1b" not in plain
    piped = subprocess.run(
        [sys.executable, "-m", "runner", "tail", "mixed", "--runs-dir", str(runs_dir)],
        capture_output=True,
        env=env,
        check=True,
    )
    assert 5 == len(piped.stdout.splitlines())
    assert b"\x1b" not in piped.stdout


# -- -f: it always ends ---------------------------------------------------------------------


def _spawn(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args, "--runs-dir", str(tmp_path / "runs")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _ended(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait (bounded) for `process` to end: its exit code, and the rest of its stdout, stderr.

    Read through the pipes' own readers, so a line a test read already is not lost
    (`communicate()` would skip what they hold buffered). A test that times out kills
    the process in its `finally` (`_stop`), which ends the abandoned thread.
    """

    def read_to_the_end() -> tuple[str, str]:
        with process.stdout, process.stderr:  # type: ignore[union-attr]
            out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
        process.wait()
        return out, err

    with trio.fail_after(60):
        out, err = await trio.to_thread.run_sync(read_to_the_end, abandon_on_cancel=True)
    return process.returncode, out, err


def _stop(*processes: subprocess.Popen[str] | None) -> None:
    """Kill what a failed test left running, and close its pipes."""
    for process in processes:
        if process is None:
            continue
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


async def _runner_run(tmp_path: Path, pipeline: str) -> subprocess.CompletedProcess[bytes]:
    """`runner run PIPELINE --job-id s` in a subprocess, to its end."""
    return await trio.run_process(
        [sys.executable, "-m", "runner", "run", pipeline, "--job-id", "s", "--runs-dir", "runs"],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def _logged(run_dir: Path, type_: str, times: int = 1) -> bool:
    path = run_dir / "events.jsonl"
    return path.exists() and path.read_text().count(f'"type":"{type_}"') >= times


@pytest.mark.parametrize(
    ("fail_b", "exit_status", "code"),
    [(None, False, 0), (None, True, 0), ("boom", False, 0), ("boom", True, 1)],
)
async def test_follow_ends_after_job_finished_with_the_job_status_if_asked(
    tmp_path: Path, fail_b: str | None, exit_status: bool, code: int
) -> None:
    run_dir = tmp_path / "runs" / "s"
    job = _spawn(tmp_path, "run", _two_steps(tmp_path, latency=0.5, fail_b=fail_b), "--job-id", "s")
    flags = ["--exit-status"] if exit_status else []
    follower = None
    try:
        await wait_until(lambda: _logged(run_dir, "llm.request"))
        follower = _spawn(tmp_path, "tail", "s", "-f", "--json", *flags)
        returned, out, err = await _ended(follower)
        await _ended(job)
    finally:
        _stop(job, follower)
    assert (code, "") == (returned, err)
    assert (run_dir / "events.jsonl").read_text() == out


async def test_follow_with_lines_prints_the_last_n_then_follows(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "s"
    job = _spawn(tmp_path, "run", _two_steps(tmp_path, latency=0.5), "--job-id", "s")
    follower = None
    try:
        await wait_until(lambda: _logged(run_dir, "llm.request", times=2))  # b is running
        follower = _spawn(tmp_path, "tail", "s", "-f", "-n", "2", "--json")
        code, out, _ = await _ended(follower)
        await _ended(job)
    finally:
        _stop(job, follower)
    log = (run_dir / "events.jsonl").read_text().splitlines()
    lines = out.splitlines()
    assert 0 == code
    assert 2 <= len(lines) < len(log)
    assert log[-len(lines) :] == lines
    assert "job.finished" == json.loads(lines[-1])["type"]


async def test_follow_ends_with_exit_1_when_the_job_process_is_killed(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "k"
    job = _spawn(tmp_path, "run", _two_steps(tmp_path, latency=30), "--job-id", "k")
    follower = None
    try:
        await wait_until(lambda: _logged(run_dir, "llm.request"))
        follower = _spawn(tmp_path, "tail", "k", "-f", "--json", "--exit-status")
        # Once it printed a line it is following: the job dies under its eyes.
        first = await trio.to_thread.run_sync(follower.stdout.readline)  # type: ignore[union-attr]
        job.send_signal(signal.SIGKILL)
        code, rest, err = await _ended(follower)
    finally:
        _stop(job, follower)
    assert 1 == code
    assert (run_dir / "events.jsonl").read_text() == first + rest  # everything the job wrote
    assert (
        "runner: job 'k' (pipeline 'slow') stopped without finishing (its process is gone);"
        " resume it with: runner run PIPELINE --resume --job-id k\n"
    ) == err


async def test_follow_of_a_job_killed_before_it_started_ends_too(tmp_path: Path) -> None:
    run_dir = _write_job(tmp_path / "runs", "k", [], steps=("a",))
    follower = _spawn(tmp_path, "tail", "k", "-f")
    try:
        code, out, err = await _ended(follower)
    finally:
        _stop(follower)
    assert (1, "") == (code, out)
    assert err.startswith("runner: job 'k' (pipeline 'p') stopped without finishing")
    assert "" == (run_dir / "events.jsonl").read_text()


async def test_follow_gives_up_on_a_job_that_never_appears(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    follower = _spawn(tmp_path, "tail", "ghost", "-f", "--wait", "0.2")
    try:
        code, out, err = await _ended(follower)
    finally:
        _stop(follower)
    assert (2, "") == (code, out)
    assert [
        f"runner: waiting for job 'ghost' to start in {runs}...",
        f"runner: job 'ghost' not found in {runs}",
    ] == err.splitlines()
    # Without -f a missing job is an error at once, with no waiting.
    assert (2, f"runner: job 'ghost' not found in {runs}\n") == invoke(
        "tail", "ghost", "--runs-dir", str(runs)
    )[::2]


async def test_follow_waits_for_a_job_that_starts_later(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    follower = _spawn(tmp_path, "tail", "s", "-f", "--json", "--wait", "60")
    try:
        # It says it waits before it waits (readline returns at the latest when it exits).
        waiting = await trio.to_thread.run_sync(follower.stderr.readline)  # type: ignore[union-attr]
        assert f"runner: waiting for job 's' to start in {runs}...\n" == waiting
        done = await _runner_run(tmp_path, _two_steps(tmp_path))
        code, out, err = await _ended(follower)
    finally:
        _stop(follower)
    assert 0 == done.returncode
    assert (0, "", (runs / "s" / "events.jsonl").read_text()) == (code, err, out)


async def test_follow_of_a_resumed_run_does_not_stop_at_the_earlier_job_finished(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "runs" / "s"
    first = await _runner_run(tmp_path, _two_steps(tmp_path, fail_b="boom"))
    assert 1 == first.returncode  # its log ends with job.finished, status failed
    # The resume runs b again, which now takes 30 s: it is running while we follow.
    job = _spawn(tmp_path, "run", _two_steps(tmp_path, latency=30), "--job-id", "s", "--resume")
    follower = None
    try:
        await wait_until(lambda: _logged(run_dir, "llm.request", times=3))
        follower = _spawn(tmp_path, "tail", "s", "-f", "--exit-status")

        def read_up_to_the_resumed_request() -> str:
            lines = ""
            while lines.count(" llm.request ") < 3:
                line = follower.stdout.readline()  # type: ignore[union-attr]
                if not line:  # it ended: the assertions below say how
                    break
                lines += line
            return lines

        seen = await trio.to_thread.run_sync(read_up_to_the_resumed_request)
        job.send_signal(signal.SIGINT)  # the resumed run ends: cancelled
        code, rest, err = await _ended(follower)
        await _ended(job)
    finally:
        _stop(job, follower)
    assert (130, "") == (code, err)  # --exit-status: the last run's status
    finished = [line for line in (seen + rest).splitlines() if " job.finished " in line]
    assert ["status=failed", "status=cancelled"] == [line.split()[3] for line in finished]


# -- follow_job, the library under -f --------------------------------------------------------


async def _drain(follow: Generator[Event, None, FollowEnd]) -> tuple[list[Event], FollowEnd]:
    """All a `follow_job` generator yields, and the `FollowEnd` it returns (bounded)."""

    def drain() -> tuple[list[Event], FollowEnd]:
        seen: list[Event] = []
        while True:
            try:
                seen.append(next(follow))
            except StopIteration as stop:
                return seen, stop.value

    with trio.fail_after(30):
        return await trio.to_thread.run_sync(drain, abandon_on_cancel=True)


async def test_follow_job_says_why_it_ended(tmp_path: Path) -> None:
    started = make_event("j", "job.started", data={"pipeline": "p", "pid": 1, "host": "h"})
    run_dir = RunDir(_write_job(tmp_path, "j", [started], steps=("a",)))
    assert ([started], FollowEnd("process_gone", pipeline="p")) == await _drain(
        follow_job(run_dir, check_s=0.01)
    )
    with open(run_dir.events_path, "ab") as log:
        log.write(event_line(make_event("j", "job.finished", data={"status": "cancelled"})))
    seen, end = await _drain(follow_job(run_dir, last=1))
    assert (["job.finished"], FollowEnd("finished", "cancelled", "p")) == (
        [e["type"] for e in seen],
        end,
    )
    assert ([], FollowEnd("not_found")) == await _drain(follow_job(RunDir(tmp_path / "nope")))


async def test_follow_job_waits_while_the_job_holds_its_lock(tmp_path: Path) -> None:
    # A job that is starting: its log exists and is locked, and nothing is written yet.
    run_dir = RunDir(_write_job(tmp_path, "j", [], steps=("a",)))
    lock = run_dir.lock()
    seen: list[Event] = []
    ends: list[FollowEnd] = []

    def follow() -> None:
        follow = follow_job(run_dir, check_s=0.01, poll_s=0.005)
        while True:
            try:
                seen.append(next(follow))
            except StopIteration as stop:
                ends.append(stop.value)
                return

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.to_thread.run_sync, follow, abandon_on_cancel=True))
                await trio.sleep(0.2)  # room for many liveness checks: each must see the lock
                os.write(lock, event_line(make_event("j", "job.started", data={"pipeline": "p"})))
                await wait_until(lambda: bool(seen or ends))
                await trio.sleep(0.2)
                finished = make_event("j", "job.finished", data={"status": "failed"})
                os.write(lock, event_line(finished))
    finally:
        os.close(lock)
    assert ["job.started", "job.finished"] == [e["type"] for e in seen]
    assert [FollowEnd("finished", status="failed", pipeline="p")] == ends
