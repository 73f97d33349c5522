"""`runner run`'s display, as a user sees it.

On a terminal: a real `runner run` process on a pseudo-terminal, its output fed to a
terminal emulator (pyte) whose screen (and the lines that scrolled off it) the tests
read. Off a terminal (a pipe, captured in-process): plain lines, and `--quiet`.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pyte
import trio
from helpers import invoke, wait_until

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "app_builder.toml")
STEP_ROW = r"[·…✓✗\-!] {name}\s+(\w+)\s*(\S*)"  # icon, name, status, time


def chain(name: str, steps: list[str], latency_s: float) -> str:
    """A pipeline file's text: `steps` one after the other, each call taking `latency_s`."""
    text = f'name = "{name}"\n[providers.fake]\nlatency_s = {latency_s}\n'
    for before, step in zip([None, *steps], steps, strict=False):
        text += f'[steps.{step}]\nprompt = "{step}"\n'
        text += f'needs = ["{before}"]\n' if before else ""
    return text


class Terminal:
    """A child process on a pseudo-terminal, and the screen a terminal would show."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.child_side = os.openpty()
        self.screen = pyte.HistoryScreen(cols, rows, history=10_000)
        self.feed = pyte.ByteStream(self.screen)
        self.raw = b""
        self.closed = trio.Event()
        self.process: trio.Process | None = None
        self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal window does when it is resized: new size, then SIGWINCH."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.screen.resize(rows, cols)
        if self.process is not None:
            self.process.send_signal(signal.SIGWINCH)

    def lines(self) -> list[str]:
        """The screen now, without trailing blanks."""
        return [line.rstrip() for line in self.screen.display]

    def everything(self) -> list[str]:
        """What scrolled off the top, then the screen."""
        columns = self.screen.columns
        scrolled = [
            "".join(line[x].data for x in range(columns)).rstrip()
            for line in self.screen.history.top
        ]
        return scrolled + self.lines()

    def text(self) -> str:
        return "\n".join(self.lines())

    async def pump(self) -> None:
        """Read what the child writes until it closes the terminal."""
        stream = trio.lowlevel.FdStream(self.master)
        try:
            while data := await stream.receive_some(65536):
                self.raw += data
                self.feed.feed(data)
        except (trio.BrokenResourceError, OSError):
            pass  # EIO: every descriptor of the child's side is closed
        finally:
            self.closed.set()

    async def wait_for(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        """The first match of `pattern` on the screen, once it is there."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.text())
            found[:] = [match] if match else []
            return bool(found)

        await wait_until(seen, timeout_s=timeout_s)
        return found[0]

    async def exit_code(self) -> int:
        assert self.process is not None
        with trio.fail_after(30):
            code = await self.process.wait()
            await self.closed.wait()
        return code


@asynccontextmanager
async def runner_on_terminal(
    *args: str, cwd: Path, rows: int = 24, cols: int = 100, env: dict[str, str] | None = None
) -> AsyncIterator[Terminal]:
    """`python -m runner ARGS` with a pseudo-terminal of `rows` x `cols` as its stdio."""
    terminal = Terminal(rows, cols)
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    environ.update(TERM="xterm-256color", PYTHONUNBUFFERED="1", **(env or {}))
    side = terminal.child_side
    terminal.process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runner", *args],
        stdin=side,
        stdout=side,
        stderr=side,
        cwd=cwd,
        env=environ,
        start_new_session=True,
    )
    os.close(side)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminal.pump)
            yield terminal
            await terminal.exit_code()
    finally:
        if terminal.process.returncode is None:
            terminal.process.kill()
            await terminal.process.wait()


def _logged(path: Path, type_: str) -> Callable[[], bool]:
    return lambda: path.exists() and f'"type":"{type_}"' in path.read_text()


def _row(lines: list[str], name: str) -> list[str]:
    """The step rows naming `name`, as [status, time] each."""
    pattern = STEP_ROW.format(name=re.escape(name)) + r"(?:\s|$)"
    return [list(match.groups()) for line in lines if (match := re.search(pattern, line))]


# -- on a terminal ----------------------------------------------------------------------


async def test_a_running_step_shows_its_elapsed_time_ticking(tmp_path: Path) -> None:
    (tmp_path / "slow.toml").write_text(chain("slow", ["alpha", "beta"], latency_s=30))
    args = ("run", "slow.toml", "--runs-dir", "runs", "--job-id", "t")
    async with runner_on_terminal(*args, cwd=tmp_path) as terminal:
        await wait_until(_logged(tmp_path / "runs/t/events.jsonl", "llm.request"))
        # No event arrives for 30 s now: only the live view's own tick can move the time.
        first = await terminal.wait_for(r"… alpha\s+running\s+(\S+)\s+attempt 1")
        await terminal.wait_for(rf"… alpha\s+running\s+(?!{re.escape(first[1])}\s)\S+", 10)
        assert [["pending", ""]] == _row(terminal.lines(), "beta")
        terminal.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
    assert 130 == terminal.process.returncode  # type: ignore[union-attr]


async def test_more_steps_than_rows_get_the_compact_view_and_no_copies(
    tmp_path: Path,
) -> None:
    steps = [f"s{i:02d}" for i in range(30)]
    (tmp_path / "big.toml").write_text(chain("big", steps, latency_s=0.1))
    args = ("run", "big.toml", "--runs-dir", "runs", "--job-id", "big")
    async with runner_on_terminal(*args, cwd=tmp_path, rows=15, cols=100) as terminal:
        # The running step, the latest finished one and the counts; never the 30 rows.
        await terminal.wait_for(r"… s1\d +running.*\nlatest: ✓ s1\d.*\n.*· 1 running ·")
        now = terminal.everything()
        assert 1 == sum(line.startswith("job big · running") for line in now)
        assert 2 == sum(1 for step in steps if _row(now, step))
    assert 0 == terminal.process.returncode  # type: ignore[union-attr]
    seen = terminal.everything()
    assert not any(line.startswith("job big ·") for line in seen)  # the live region is gone
    assert all(len(_row(seen, step)) <= 1 for step in steps), seen
    assert [["succeeded", _row(seen, "s29")[0][1]]] == _row(seen, "s29")
    assert "job succeeded" == [line for line in seen if line][-1]
    assert seen[0] == "job big -> runs/big"
    assert [] == list(terminal.screen.history.top)  # all of it fitted: nothing scrolled off


async def test_ctrl_c_ends_with_the_cancelled_steps_and_the_resume_command(
    tmp_path: Path,
) -> None:
    pipeline = tmp_path / "slow.toml"
    pipeline.write_text(chain("slow", ["alpha", "beta", "gamma"], latency_s=30))
    args = ("run", "slow.toml", "--runs-dir", "runs", "--job-id", "s")
    async with runner_on_terminal(*args, cwd=tmp_path) as terminal:
        await terminal.wait_for(r"… alpha\s+running")
        terminal.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
    assert 130 == terminal.process.returncode  # type: ignore[union-attr]
    lines = terminal.everything()
    assert [row[0] for row in _row(lines, "alpha")] == ["cancelled"]
    assert re.search(r"! alpha\s+cancelled\s+\S+\s+cut short", terminal.text())
    assert re.search(r"! beta\s+cancelled\s+not started", terminal.text())
    assert [row[0] for row in _row(lines, "gamma")] == ["cancelled"]
    assert not any("running" in line for line in lines)
    assert any(re.match(r"job s cancelled in \S+: 3 cancelled$", line) for line in lines)
    resume = "runner run slow.toml --resume --job-id s --runs-dir runs"
    assert f"  next: {resume}" in lines
    assert "job cancelled" == [line for line in lines if line][-1]
    # The command is exact: run as printed (on a fast copy of the pipeline), it finishes.
    pipeline.write_text(chain("slow", ["alpha", "beta", "gamma"], latency_s=0))
    done = await trio.run_process(
        [sys.executable, "-m", "runner", *resume.split()[1:]],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert (0, b"job succeeded") == (done.returncode, done.stdout.splitlines()[-1])


async def test_a_resize_is_followed(tmp_path: Path) -> None:
    steps = [f"s{i:02d}" for i in range(10)]
    (tmp_path / "slow.toml").write_text(chain("slow", steps, latency_s=30))
    args = ("run", "slow.toml", "--runs-dir", "runs", "--job-id", "r")
    async with runner_on_terminal(*args, cwd=tmp_path, rows=30, cols=100) as terminal:
        await terminal.wait_for(r"… s00\s+running")
        assert [["pending", ""]] == _row(terminal.lines(), "s09")  # every step fits
        terminal.resize(rows=6, cols=50)
        await terminal.wait_for(r"\n1 running · 9 pending")
        assert [] == _row(terminal.lines(), "s09")  # the compact view: only what runs
        assert 1 == len(_row(terminal.lines(), "s00"))
        terminal.resize(rows=30, cols=100)
        await terminal.wait_for(r"· s09\s+pending")
        terminal.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
    assert 130 == terminal.process.returncode  # type: ignore[union-attr]


async def test_colours_on_a_terminal_none_with_no_color(tmp_path: Path) -> None:
    colour = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38)[;m]")
    args = ("run", EXAMPLE, "--provider", "fake", "--runs-dir", "runs", "--job-id")
    async with runner_on_terminal(*args, "plain", cwd=tmp_path) as terminal:
        pass
    assert colour.search(terminal.raw)
    async with runner_on_terminal(*args, "bw", cwd=tmp_path, env={"NO_COLOR": "1"}) as terminal:
        pass
    assert not colour.search(terminal.raw)
    assert "job succeeded" == [line for line in terminal.lines() if line][-1]


# -- off a terminal ----------------------------------------------------------------------


def test_a_pipe_gets_one_plain_line_per_transition_and_the_summary(
    runs_dir: Path, tmp_path: Path
) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        chain("p", ["ok", "bad", "after"], latency_s=0) + '[providers.fake.errors]\nbad = "nope"\n'
    )
    code, out, err = invoke("run", str(pipeline), "--runs-dir", str(runs_dir), "--job-id", "p")
    assert (1, "") == (code, err)
    assert "\x1b" not in out
    lines = out.splitlines()
    assert f"job p -> {runs_dir / 'p'}" == lines[0]
    assert [
        ("job.started", ""),
        ("step.started", "[ok]"),
        ("step.succeeded", "[ok]"),
        ("step.started", "[bad]"),
        ("step.failed", "[bad]"),
        ("step.skipped", "[after]"),
        ("job.finished", ""),
    ] == [_type_and_step(line) for line in lines[1:8]]
    assert re.fullmatch(r"job p failed in \S+: 1 succeeded, 1 failed, 1 skipped", lines[8])
    assert "  LLM calls 2 · retries 0 · tokens" in lines[9]
    assert f"  outputs: {runs_dir / 'p'}/outputs/   files: {runs_dir / 'p'}/files/" == lines[10]
    resume = f"runner run {pipeline} --resume --job-id p --runs-dir {runs_dir}"
    assert [f"  next: {resume}", "job failed"] == lines[11:]


def _type_and_step(line: str) -> tuple[str, str]:
    """`03:12:32.366 INFO  step.started [ok]` -> ("step.started", "[ok]")."""
    words = [*line.split(), ""]
    return words[2], words[3] if words[3].startswith("[") else ""


def test_a_pipe_summary_after_success_points_to_show(runs_dir: Path) -> None:
    args = ("run", EXAMPLE, "--provider", "fake", "--runs-dir", str(runs_dir), "--job-id", "d")
    code, out, _ = invoke(*args)
    lines = out.splitlines()
    assert 0 == code
    assert "files written 4" in lines[-4]
    assert [f"  next: runner show d --runs-dir {runs_dir}", "job succeeded"] == lines[-2:]


def test_quiet_prints_the_first_and_the_last_line_only(runs_dir: Path) -> None:
    args = ("run", EXAMPLE, "--provider", "fake", "--runs-dir", str(runs_dir), "--job-id", "q")
    code, out, err = invoke(*args, "--quiet")
    assert (0, "") == (code, err)
    assert [f"job q -> {runs_dir / 'q'}", "job succeeded"] == out.splitlines()
