"""`runner tail JOB -f --json`: latency from an event's append to its print.

    python bench/tail.py [--events 200] [--repeat 3] [--burst 50] [--bursts 10]
                          [--mode steady|burst|both] [--seed N] [--dir DIR]

Starts `python -m runner tail JOB -f --json --runs-dir DIR` as a subprocess with
its stdout piped (the CLI flushes every line), then appends events to the job's
`events.jsonl` the way the real writer does: each one complete line, written
with a single `os.write` on an `O_APPEND` fd. `time.perf_counter()` is taken
just before each write; a reader thread timestamps each line as it comes out
of the pipe. Latency = print time - write time, per event.

Two modes, each run `--repeat` times (a fresh job and tail process each run):
- steady: `--events` single events, each after a random 0-30 ms pause, so the
  writes do not line up with tail's 20 ms poll;
- burst: `--bursts` bursts of `--burst` back-to-back lines, each burst after a
  random 0-30 ms pause. "events/s" = events of a burst / (its last print - its
  first write), the poll wait included; "drain/s" = (events - 1) / (its last
  print - its first print), how fast tail empties a backlog once it wakes (as
  seen by the reader thread, which can lag tail on a short burst: use
  `--mode burst --burst 5000 --bursts 2` for tail's own rate). Medians over bursts.
Every run ends with `job.finished`, after which tail exits. Latencies of all
runs of a mode are pooled for the min / median / p95 / p99 / max; each printed
line is also compared with the stored one (`--json` re-encodes the event).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from runner.events import event_line, make_event

WORK = Path(__file__).parent / ".work"
JOB_ID = "bench-tail"
MAX_GAP_S = 0.030
TIMEOUT_S = 10.0
TAIL = (sys.executable, "-m", "runner", "tail")


@dataclasses.dataclass
class Result:
    latencies: list[float] = dataclasses.field(default_factory=list)  # s, one per event
    rates: list[float] = dataclasses.field(default_factory=list)  # events/s, one per burst
    drains: list[float] = dataclasses.field(default_factory=list)  # events/s, one per burst
    mismatches: int = 0  # printed lines that differ from the stored ones


class _Reader(threading.Thread):
    """Timestamps each line of the tail's stdout as it arrives."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[tuple[float, bytes]] = []
        self.first = threading.Event()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.append((time.perf_counter(), line))
            self.first.set()


def run_once(mode: str, args: argparse.Namespace, rng: random.Random) -> Result:
    """One job, one tail process."""
    runs = Path(tempfile.mkdtemp(prefix="tail-", dir=args.dir))
    try:
        (runs / JOB_ID).mkdir()
        fd = os.open(runs / JOB_ID / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, event_line(make_event(JOB_ID, "job.started", data={"seq": -1})))
            with open(runs / "tail.stderr", "wb") as stderr:
                proc = subprocess.Popen(
                    [*TAIL, JOB_ID, "-f", "--json", "--runs-dir", str(runs)],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                )
            reader = _Reader(proc)
            reader.start()
            try:
                # Measure from a running tail that has caught up with the log.
                if not reader.first.wait(TIMEOUT_S):
                    raise SystemExit("tail printed nothing: is the job dir right?")
                written = _write(fd, mode, args, rng)
                proc.wait(TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            reader.join(TIMEOUT_S)
        finally:
            os.close(fd)
        errors = (runs / "tail.stderr").read_bytes().strip()
        if errors:
            print(f"tail wrote on stderr: {errors[:300]!r}", file=sys.stderr)
        return _match(written, reader.lines, mode, args.burst)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _write(
    fd: int, mode: str, args: argparse.Namespace, rng: random.Random
) -> list[tuple[float, bytes]]:
    """Append the events; return (perf_counter just before the write, line) per event."""
    groups = [1] * args.events if mode == "steady" else [args.burst] * args.bursts
    written: list[tuple[float, bytes]] = []
    seq = 0
    for size in groups:
        time.sleep(rng.uniform(0.0, MAX_GAP_S))
        lines = []
        for _ in range(size):
            lines.append(make_event(JOB_ID, "llm.request", step=f"s{seq}", data={"seq": seq}))
            seq += 1
        for event in lines:
            line = event_line(event)
            start = time.perf_counter()
            os.write(fd, line)
            written.append((start, line))
    time.sleep(rng.uniform(0.0, MAX_GAP_S))
    line = event_line(make_event(JOB_ID, "job.finished", data={"seq": seq, "status": "succeeded"}))
    start = time.perf_counter()
    os.write(fd, line)
    written.append((start, line))
    return written


def _match(
    written: list[tuple[float, bytes]], printed: list[tuple[float, bytes]], mode: str, burst: int
) -> Result:
    by_seq = {orjson.loads(line)["data"]["seq"]: (t, line) for t, line in printed}
    missing = [seq for seq in range(len(written)) if seq not in by_seq]
    if missing:
        raise SystemExit(f"tail did not print {len(missing)} events, first seq {missing[0]}")
    result = Result()
    prints = []
    for seq, (t_write, line) in enumerate(written):
        t_print, out = by_seq[seq]
        result.latencies.append(t_print - t_write)
        prints.append(t_print)
        result.mismatches += out.rstrip(b"\n") != line.rstrip(b"\n")
    if mode == "burst" and burst > 1:
        for first in range(0, len(written) - 1, burst):
            last = first + burst - 1
            result.rates.append(burst / (prints[last] - written[first][0]))
            result.drains.append((burst - 1) / (prints[last] - prints[first]))
    return result


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, round(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200, help="steady mode: events per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50, help="burst mode: lines per burst")
    parser.add_argument("--bursts", type=int, default=10, help="burst mode: bursts per run")
    parser.add_argument("--mode", choices=("steady", "burst", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=WORK, help="where the job dirs go")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    modes = ("steady", "burst") if args.mode == "both" else (args.mode,)
    print(f"latency from write to print, ms, {args.repeat} runs pooled; runs in {args.dir}")
    print(
        f"{'mode':<16}{'events':>7}{'min':>7}{'median':>8}{'p95':>7}{'p99':>7}{'max':>7}"
        f"{'run medians':>20}{'events/s':>10}{'drain/s':>10}"
    )
    for mode in modes:
        total = Result()
        medians: list[float] = []
        for _ in range(args.repeat):
            result = run_once(mode, args, rng)
            total.latencies += result.latencies
            total.rates += result.rates
            total.drains += result.drains
            total.mismatches += result.mismatches
            medians.append(statistics.median(result.latencies) * 1e3)
        ms = sorted(x * 1e3 for x in total.latencies)
        label = "steady 0-30 ms" if mode == "steady" else f"burst {args.burst}"
        spread = " / ".join(f"{m:.1f}" for m in medians)
        rate = f"{statistics.median(total.rates):.0f}" if total.rates else "-"
        drain = f"{statistics.median(total.drains):.0f}" if total.drains else "-"
        print(
            f"{label:<16}{len(ms):>7}{ms[0]:>7.2f}{statistics.median(ms):>8.2f}"
            f"{pct(ms, 95):>7.2f}{pct(ms, 99):>7.2f}{ms[-1]:>7.2f}{spread:>20}"
            f"{rate:>10}{drain:>10}"
        )
        if total.mismatches:
            print(f"  {total.mismatches} printed lines differ from the stored ones")


if __name__ == "__main__":
    main()
