"""Orchestration overhead per step, with every event, output and manifest written.

    python bench/overhead.py [--repeat 3] [--dir DIR]

Two DAGs on the instant fake provider: a 1,000-step chain and a 2,000-wide
fan-out/fan-in. Prints µs per step, events per second, and the ratio to the
hand-written trio baseline (bench/baseline_trio.py), measured alternately with
runner so that both see the same machine. Median of --repeat runs. Each DAG runs
with the response cache (the default: a cache entry per step too) and without it
(`use_cache=False`, what the issue's target and the peers count), under
RUNNER_FSYNC=batch (the default) and never.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from baseline_trio import run_baseline

from runner import Pipeline, Settings, Step, run_dag
from runner.events import read_events

WORK = Path(__file__).parent / ".work"
WIDTHS = (18, 10, 7, 7, -9, -10, -9, -7)  # negative: right-aligned


def chain(n: int) -> dict[str, list[str]]:
    return {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}


def fan(width: int) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {"root": []}
    needs.update({f"w{i}": ["root"] for i in range(width)})
    needs["join"] = [f"w{i}" for i in range(width)]
    return needs


def pipeline_of(name: str, needs: dict[str, list[str]]) -> Pipeline:
    steps = [Step(step, prompt=f"step {step}", needs=deps) for step, deps in needs.items()]
    return Pipeline(name=name, steps=steps)


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
    args = parser.parse_args()
    places = args.dir or [WORK] + ([Path("/dev/shm")] if Path("/dev/shm").is_dir() else [])
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
