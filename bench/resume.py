"""`read_completed_steps` and `runner show` on a 1,000,000-event log: time and peak memory.

    python bench/resume.py [--events 1000000] [--steps 5000] [--repeat 3] [--dir DIR] [--keep]

Writes one job of `--steps` steps whose log holds about `--events` events:
the first run makes real calls (cache misses, some retries after a 503,
files written by one step in four), then the job is run again and again
(resumes after pipeline edits: most steps re-run on cache hits and rewrite
their files unchanged, the rest are skipped as resumed) until the log is
long enough. Each step's `outputs/<step>.txt` matches its recorded hash, so
every step counts as completed.

Measures, best of `--repeat`:
- `read_completed_steps()` in this process: wall time, and peak memory with
  tracemalloc (in a separate pass: tracemalloc slows the code it watches);
- `runner show JOB_ID` and `runner show JOB_ID --json` as subprocesses: wall
  time (interpreter start included) and max RSS (`os.wait4`, per child).
The goal (docs/PERFORMANCE.md): under 2 s and under 100 MB each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner import __version__, read_completed_steps
from runner.job_state import fold_log

WORK = Path(__file__).parent / ".work"
JOB_ID = "bench-resume"
GOAL_S, GOAL_MB = 2.0, 100.0


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Clock:
    """Timestamps one millisecond apart, in the log's format."""

    def __init__(self) -> None:
        self.us = 1_790_000_000 * 1_000_000  # November 2026, in microseconds since the epoch

    def __call__(self) -> str:
        self.us += 1_000
        seconds, micros = divmod(self.us, 1_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{stamp}.{micros:06d}+00:00"


def _events(n_events: int, steps: list[str]) -> Iterator[dict[str, Any]]:
    """A job's events, run after run, until at least `n_events` (ends on `job.finished`)."""
    ts = _Clock()
    count = 0
    run = 0

    def event(type_: str, step: str | None = None, level: str = "INFO", **data: Any) -> dict:
        nonlocal count
        count += 1
        record: dict[str, Any] = {"ts": ts(), "level": level, "job_id": JOB_ID, "type": type_}
        if step is not None:
            record["step"] = step
        if data:
            record["data"] = data
        return record

    while count < n_events:
        yield event(
            "job.started",
            pipeline="bench",
            pipeline_sha256=_sha(f"pipeline {run}"),
            inputs={"idea": f"idea {run}"},
            resume=run > 0,
            runner_version=__version__,
            steps=steps,
            pid=4242,
            host="bench",
        )
        for index, step in enumerate(steps):
            files = 1 + index % 12 if index % 4 == 0 else 0
            key = _sha(f"{step} {run}")
            if run > 0 and index % 5 == 4:
                yield event("step.skipped", step, reason="resumed", output_sha256=_sha(step))
                continue
            yield event("step.started", step)
            attempts = 1
            if run > 0 and index % 5 != 3:
                yield event("cache.hit", step, key=key)
                attempts = 0
            else:
                yield event("cache.miss", step, key=key)
                retries = 1 if index % 7 == 0 else 0
                for attempt in range(1, retries + 2):
                    common = {"provider": "openai", "model": "gpt-4o-mini", "attempt": attempt}
                    yield event(
                        "llm.request",
                        step,
                        **common,
                        prompt_sha256=_sha(f"{step} prompt {run}"),
                        prompt_chars=1200 + index % 800,
                    )
                    failed = attempt <= retries
                    yield event(
                        "llm.response",
                        step,
                        level="WARN" if failed else "INFO",
                        status=503 if failed else "ok",
                        **common,
                        latency_s=1.234567,
                        input_tokens=None if failed else 300 + index % 200,
                        output_tokens=None if failed else 500 + index % 900,
                    )
                    if failed:
                        yield event(
                            "llm.retry", step, level="WARN", attempt=attempt, delay_s=0.5,
                            reason="server_error",
                        )  # fmt: skip
                attempts = retries + 1
            for number in range(files):
                yield event(
                    "file.written",
                    step,
                    path=f"{step}/module_{number}.py",
                    sha256=_sha(f"{step} file {number}"),
                    wrote=run == 0,
                    reason="created" if run == 0 else "nochange",
                )
            yield event(
                "step.succeeded",
                step,
                duration_s=1.5,
                output_sha256=_sha(step),
                cached=attempts == 0,
                attempts=attempts,
            )
        yield event(
            "job.finished",
            status="succeeded",
            duration_s=600.0,
            steps={"succeeded": len(steps)},
        )
        run += 1


def write_job(runs_dir: Path, n_events: int, n_steps: int) -> tuple[Path, int]:
    """Write the job's log and outputs; returns the run dir and the number of events."""
    run_dir = runs_dir / JOB_ID
    (run_dir / "outputs").mkdir(parents=True)
    (run_dir / "files").mkdir()
    steps = [f"step{i:05d}" for i in range(n_steps)]
    pipeline = {
        "name": "bench",
        "version": "1",
        "inputs": {},
        "defaults": {},
        "providers": {},
        "steps": {step: {"prompt": f"do {step}"} for step in steps},
    }
    (run_dir / "pipeline.json").write_text(json.dumps(pipeline, sort_keys=True) + "\n")
    for step in steps:
        (run_dir / "outputs" / f"{step}.txt").write_text(step)
    written = 0
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as log:
        for record in _events(n_events, steps):
            log.write(encode(record) + "\n")
            written += 1
    return run_dir, written


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of `fn()` over `repeat` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def _traced_peak_mb(fn: Callable[[], object]) -> float:
    # A separate pass: tracemalloc slows down the code it watches several times over.
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def in_process(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    return (*_best(fn, repeat), _traced_peak_mb(fn))


def json_floor(events_path: Path) -> None:
    """Decode every line with json's C scanner and do nothing else: the floor for a fold."""
    decode = json.JSONDecoder().raw_decode
    with open(events_path, "rb") as log:
        for line in log:
            decode(line.decode())


def subprocess_run(args: list[str], repeat: int) -> tuple[float, float, float]:
    """Best wall time, CPU time and max RSS (MB) of `python -m runner ARGS` (output discarded)."""
    wall = cpu = rss = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN is a max over all of them).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = min(wall, time.perf_counter() - start)
        assert proc.stderr is not None
        error = proc.stderr.read().decode()
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, error
        cpu = min(cpu, usage.ru_utime + usage.ru_stime)
        rss = min(rss, usage.ru_maxrss / 1024)  # KiB on Linux
    return wall, cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=WORK, help="where the job is written")
    parser.add_argument("--keep", action="store_true", help="keep the job directory")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        start = time.perf_counter()
        run_dir, n_events = write_job(runs_dir, args.events, args.steps)
        log = run_dir / "events.jsonl"
        print(
            f"log: {n_events:,} events, {log.stat().st_size / 1e6:.0f} MB, {args.steps:,} steps "
            f"(written in {time.perf_counter() - start:.1f} s) in {run_dir}"
        )
        assert len(read_completed_steps(log)) == args.steps
        show = ["show", JOB_ID, "--runs-dir", str(runs_dir)]
        rows = [
            ("read_completed_steps", in_process(lambda: read_completed_steps(log), args.repeat)),
            ("fold_log (what show reads)", in_process(lambda: fold_log(log), args.repeat)),
            ("json-decode every line", (*_best(lambda: json_floor(log), args.repeat), None)),
            ("python -m runner --version", subprocess_run(["--version"], args.repeat)),
            ("runner show", subprocess_run(show, args.repeat)),
            ("runner show --json", subprocess_run([*show, "--json"], args.repeat)),
        ]
        print(f"goal: under {GOAL_S:g} s and {GOAL_MB:g} MB; best of {args.repeat}")
        print(f"{'':<28}{'wall s':>8}{'cpu s':>8}{'peak MB':>9}")
        for label, (wall, cpu, mb) in rows:
            peak = "-" if mb is None else f"{mb:.1f}"
            kind = (
                ""
                if mb is None
                else ("max RSS" if label.startswith(("python", "runner")) else "tracemalloc")
            )
            print(f"{label:<28}{wall:>8.2f}{cpu:>8.2f}{peak:>9}  {kind}")
    finally:
        if not args.keep:
            shutil.rmtree(runs_dir)


if __name__ == "__main__":
    main()
