"""Orchestration overhead per step, with every event, output and manifest written.

    python bench/overhead.py [--repeat 3] [--dir DIR]
    python bench/overhead.py --sizes [--repeat 3] [--dir DIR] [--kind KIND] [--dag DAG]
    python bench/overhead.py --row DAG SIZE KIND [--repeat 3] [--dir DIR] [--json]

Default: two DAGs on the instant fake provider, a 1,000-step chain and a
2,000-wide fan-out/fan-in. Prints µs per step, events per second, and the ratio
to the hand-written trio baseline (bench/baseline_trio.py), measured alternately
with runner so that both see the same machine. Median of --repeat runs. Each DAG
runs with the response cache (the default: a cache entry per step too) and
without it (`use_cache=False`, what the issue's target and the peers count),
under RUNNER_FSYNC=batch (the default) and never.

`--sizes`: whether the cost of a step stays flat as the DAG grows. A chain of
250 / 1,000 / 4,000 steps and a fan-out/in of 500 / 2,000 / 8,000, for each
KIND of step: `fake-off` (a prompt on the fake provider, cache off), `fake-on`
(the same, cache on) and `fn` (`Step(fn=...)`, an `async def` that returns "x"),
under RUNNER_FSYNC=batch, on each --dir (default: bench/.work and /dev/shm).
Each repeat runs every size once, in a rotated order, so that the machine's
drift falls on all sizes alike. Just before each run, a "file floor" creates as
many small files as the run will (temp file, write, rename; two per step with
the cache on) in the same directory, with no runner: on this machine's disk
that alone swings from ~50 µs to ~1 ms per file between minutes. Prints the
median µs per step of each size with its floor, and the median over repeats of
largest/smallest, raw and "net" (less the floor).

`--row`: one DAG of one size and kind, --repeat times after a warm-up run; with
--json, one JSON line (what bench/ab.py reads to compare two checkouts).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from baseline_trio import run_baseline

import runner
from runner import Pipeline, Settings, Step, run_dag
from runner.events import read_events

WORK = Path(__file__).parent / ".work"
WIDTHS = (18, 10, 7, 7, -9, -10, -9, -7)  # negative: right-aligned
SIZES = {"chain": (250, 1000, 4000), "fan": (500, 2000, 8000)}
KINDS = ("fake-off", "fake-on", "fn")


def chain(n: int) -> dict[str, list[str]]:
    return {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}


def fan(width: int) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {"root": []}
    needs.update({f"w{i}": ["root"] for i in range(width)})
    needs["join"] = [f"w{i}" for i in range(width)]
    return needs


def needs_of(dag: str, size: int) -> dict[str, list[str]]:
    return chain(size) if dag == "chain" else fan(size)


async def answer(ctx: object) -> str:
    """The Python step of `--kind fn`: as cheap as a step's work can be."""
    return "x"


def pipeline_of(name: str, needs: dict[str, list[str]], kind: str = "fake") -> Pipeline:
    if kind == "fn":
        steps = [Step(step, fn=answer, needs=deps) for step, deps in needs.items()]
    else:
        steps = [Step(step, prompt=f"step {step}", needs=deps) for step, deps in needs.items()]
    return Pipeline(name=name, steps=steps)


def time_run(dag: str, size: int, kind: str, where: Path) -> float:
    """Seconds per step of one run under RUNNER_FSYNC=batch.

    Before the clock starts: `os.sync()`, so that the disk is not still writing back
    the files of the run before (deleted just now), and a full garbage collection.
    """
    needs = needs_of(dag, size)
    pipeline = pipeline_of(dag, needs, "fn" if kind == "fn" else "fake")
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        os.sync()
        gc.collect()
        start = time.perf_counter()
        result = trio.run(
            lambda: run_dag(
                pipeline,
                runs_dir=Path(tmp),
                settings=Settings(fsync="batch"),
                use_cache=kind == "fake-on",
            )
        )
        elapsed = time.perf_counter() - start
        assert result.status == "succeeded", result.status
    return elapsed / len(needs)


def place_name(where: Path) -> str:
    return "disk" if where.resolve() == WORK.resolve() else str(where)


def one_row(dag: str, size: int, kind: str, where: Path, repeat: int, as_json: bool) -> None:
    where.mkdir(parents=True, exist_ok=True)
    time_run(dag, size, kind, where)  # warm-up: imports, first files
    us = [time_run(dag, size, kind, where) * 1e6 for _ in range(repeat)]
    if as_json:
        row = {"dag": dag, "size": size, "kind": kind, "dir": place_name(where), "us": us}
        print(json.dumps({**row, "runner": runner.__file__}), flush=True)
    else:
        print(f"{dag} {size} {kind} {place_name(where)}: {statistics.median(us):.0f} µs/step")


def file_floor(files: int, where: Path) -> float:
    """Seconds to create `files` small files as runner does (temp file, write, rename).

    What the disk alone charges for a step's output (and cache entry): `--sizes`
    measures it just before each run, because this machine's disk changes its
    file-creation time by 10-20x from one minute to the next.
    """
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        os.sync()
        start = time.perf_counter()
        for i in range(files):
            temp, final = f"{tmp}/.tmp-{i}", f"{tmp}/s{i}.txt"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"step s%d" % i)
            os.close(fd)
            os.rename(temp, final)
        return time.perf_counter() - start


def sizes(
    dags: list[str], kinds: list[str], places: list[Path], repeat: int, as_json: bool
) -> None:
    print(f"runner from {Path(runner.__file__).parent}")
    print("µs per step (in brackets: the paired file floor's µs per step); max/min of µs per")
    print("step, and 'net' of µs per step less the floor, each the median over repeats")
    cell = "{:>6}{:>6}{:>8}"
    print(
        f"{'dag':<7}{'kind':<10}{'dir':<10}"
        + "".join(cell.format("size", "µs", "(floor)") for _ in range(3))
        + f"{'max/min':>9}{'net':>6}"
    )
    for dag in dags:
        for kind in kinds:
            files_per_step = 2 if kind == "fake-on" else 1
            for where in places:
                where.mkdir(parents=True, exist_ok=True)
                ns = SIZES[dag]
                time_run(dag, ns[0], kind, where)  # warm-up
                us: dict[int, list[float]] = {n: [] for n in ns}
                floor: dict[int, list[float]] = {n: [] for n in ns}
                for r in range(repeat):
                    for n in ns[r % len(ns) :] + ns[: r % len(ns)]:
                        steps = len(needs_of(dag, n))
                        floor[n].append(file_floor(steps * files_per_step, where) / steps * 1e6)
                        us[n].append(time_run(dag, n, kind, where) * 1e6)
                big, small = ns[-1], ns[0]
                ratio = statistics.median(b / s for b, s in zip(us[big], us[small], strict=True))
                net = statistics.median(
                    (b - fb) / (s - fs)
                    for b, fb, s, fs in zip(
                        us[big], floor[big], us[small], floor[small], strict=True
                    )
                )
                cells = "".join(
                    cell.format(
                        n, f"{statistics.median(us[n]):.0f}", f"({statistics.median(floor[n]):.0f})"
                    )
                    for n in ns
                )
                place = place_name(where)
                print(f"{dag:<7}{kind:<10}{place:<10}{cells}{ratio:>9.2f}{net:>6.2f}", flush=True)
                if as_json:
                    row = {"dag": dag, "kind": kind, "dir": place, "ratio": ratio, "net": net}
                    runs = {str(n): {"us": us[n], "floor_us": floor[n]} for n in ns}
                    print(json.dumps({**row, "runs": runs}), flush=True)


def measure(
    name: str, needs: dict[str, list[str]], fsync: str, cache: bool, where: Path
) -> tuple[float, int]:
    pipeline = pipeline_of(name, needs)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        start = time.perf_counter()
        result = trio.run(
            lambda: run_dag(
                pipeline, runs_dir=Path(tmp), settings=Settings(fsync=fsync), use_cache=cache
            )
        )
        elapsed = time.perf_counter() - start
        assert result.status == "succeeded", result.status
        events = sum(1 for _ in read_events(result.run_dir / "events.jsonl"))
    return elapsed, events


def measure_baseline(needs: dict[str, list[str]], where: Path) -> float:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        return trio.run(run_baseline, needs, Path(tmp) / "log.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, action="append", help="where runs go (repeatable)")
    parser.add_argument("--sizes", action="store_true", help="per-step cost over DAG sizes")
    parser.add_argument("--dag", action="append", choices=sorted(SIZES), help="with --sizes")
    parser.add_argument("--kind", action="append", choices=KINDS, help="with --sizes")
    parser.add_argument("--row", nargs=3, metavar=("DAG", "SIZE", "KIND"), help="one DAG")
    parser.add_argument("--json", action="store_true", help="with --row or --sizes")
    args = parser.parse_args()
    places = args.dir or [WORK] + ([Path("/dev/shm")] if Path("/dev/shm").is_dir() else [])
    if args.row:
        dag, size, kind = args.row
        if dag not in SIZES or kind not in KINDS:
            parser.error(f"--row DAG SIZE KIND: DAG in {sorted(SIZES)}, KIND in {KINDS}")
        for where in places:
            one_row(dag, int(size), kind, where, args.repeat, args.json)
        return
    if args.sizes:
        sizes(args.dag or list(SIZES), args.kind or list(KINDS), places, args.repeat, args.json)
        return
    header = ("dag", "dir", "fsync", "cache", "µs/step", "events/s", "base µs", "ratio")
    print(
        "".join(f"{h:<{w}}" if w > 0 else f"{h:>{-w}}" for h, w in zip(header, WIDTHS, strict=True))
    )
    for label, needs in (("chain 1000", chain(1000)), ("fan-out/in 2000", fan(2000))):
        for where in places:
            where.mkdir(parents=True, exist_ok=True)
            for fsync, cache in (("batch", True), ("batch", False), ("never", True)):
                name = label.split()[0].replace("/", "")
                measure(name, needs, fsync, cache, where)  # warm-up: imports, first files
                runs, bases = [], []
                for _ in range(args.repeat):
                    bases.append(measure_baseline(needs, where))
                    runs.append(measure(name, needs, fsync, cache, where))
                elapsed = statistics.median(r[0] for r in runs)
                ratio = statistics.median(r[0] / b for r, b in zip(runs, bases, strict=True))
                base_us = statistics.median(bases) / len(needs) * 1e6
                per_step = elapsed / len(needs) * 1e6
                place = "disk" if where == WORK else str(where)
                print(
                    f"{label:<18}{place:<10}{fsync:<7}{'on' if cache else 'off':<7}"
                    f"{per_step:>9.0f}{runs[0][1] / elapsed:>10.0f}{base_us:>9.1f}{ratio:>7.1f}"
                )


if __name__ == "__main__":
    main()
