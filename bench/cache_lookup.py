"""What looking in earlier jobs' caches costs a miss, with many earlier jobs in the runs dir.

    python bench/cache_lookup.py [--jobs 1000] [--entries 3] [--steps 200] [--repeat 5]
                                 [--dir DIR]

Fills a runs dir with `--jobs` earlier jobs of one pipeline, each a real job run
by `run_dag` on the fake provider with `--entries` LLM steps, so each has a log
that opens with `job.started` and `--entries` cache entries. Then, alternating
(so the machine's drift falls on both), runs a job of `--steps` independent
steps whose prompts no earlier job asked (every lookup misses everywhere):

- "earlier": in that runs dir, where the first miss indexes the 1,000 jobs'
  caches and every miss also looks the key up in that index;
- "alone": the same job in an empty runs dir (no earlier job to look in).

Prints the median wall time of each, the difference per step (the cost of a
miss), and separately the time to build the index once and of one lookup.
Runs go under `--dir` (default bench/.work, on disk).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

from runner import Pipeline, Settings, Step, run_dag
from runner.cache import EarlierJobs

WORK = Path(__file__).parent / ".work"
NAME = "bench-cache"


def pipeline_of(prompts: list[str]) -> Pipeline:
    steps = [Step(f"s{i}", prompt=prompt) for i, prompt in enumerate(prompts)]
    return Pipeline(name=NAME, steps=steps)


async def fill(runs_dir: Path, jobs: int, entries: int) -> None:
    settings = Settings(fsync="never")
    for job in range(jobs):
        prompts = [f"earlier job {job} question {i}" for i in range(entries)]
        await run_dag(
            pipeline_of(prompts), runs_dir=runs_dir, job_id=f"earlier-{job}", settings=settings
        )


async def one_job(runs_dir: Path, steps: int, round_: int) -> float:
    prompts = [f"new question {round_}-{i}" for i in range(steps)]
    started = time.perf_counter()
    result = await run_dag(pipeline_of(prompts), runs_dir=runs_dir, settings=Settings())
    elapsed = time.perf_counter() - started
    assert result.status == "succeeded"
    shutil.rmtree(result.run_dir)  # the next round sees the same earlier jobs
    return elapsed


def index_cost(runs_dir: Path) -> tuple[float, float]:
    """(seconds to index the runs dir once, seconds per lookup after that)."""
    earlier = EarlierJobs(runs_dir, pipeline=NAME, job_id="none")
    started = time.perf_counter()
    earlier.find("0" * 64)  # the first lookup builds the index
    built = time.perf_counter() - started
    keys = [f"{i:064x}" for i in range(10_000)]
    started = time.perf_counter()
    for key in keys:
        earlier.find(key)
    return built, (time.perf_counter() - started) / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=WORK)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        started = time.perf_counter()
        trio.run(fill, full, args.jobs, args.entries)
        print(f"{args.jobs} earlier jobs made in {time.perf_counter() - started:.1f}s")
        times: dict[str, list[float]] = {"earlier": [], "alone": []}
        for round_ in range(args.repeat):
            times["earlier"].append(trio.run(one_job, full, args.steps, round_))
            times["alone"].append(trio.run(one_job, empty, args.steps, round_))
        built, lookup = index_cost(full)
    earlier, alone = (statistics.median(times[k]) for k in ("earlier", "alone"))
    print(f"job of {args.steps} missing steps, median of {args.repeat}:")
    print(f"  with {args.jobs} earlier jobs  {earlier * 1000:8.1f} ms")
    print(f"  alone                   {alone * 1000:8.1f} ms")
    print(f"  difference per step     {(earlier - alone) / args.steps * 1000:8.3f} ms")
    print(f"index of {args.jobs} jobs, built once: {built * 1000:.1f} ms")
    print(f"one lookup in it: {lookup * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
