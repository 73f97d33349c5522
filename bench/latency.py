"""A wide DAG against the loopback server: wall time against the critical path.

    python bench/latency.py [--repeat 3] [--width 200] [--delay 0.05] [--fsync batch]
                            [--dir DIR] [--in-process] [--floors] [--profile FILE]

`--width` independent steps on the `openai` provider (streaming off), each
answered by runner.testing's loopback server after `--delay` seconds, then one
join step that needs them all. The critical path is 2 x delay: the wide layer
in parallel, then the join. Prints each run's wall time in units of `delay`
and against the critical path (the goal is within 1.5x), and the median of
`--repeat` runs.

The server runs in its own process by default, like a real provider would
(`--in-process` shares the job's trio loop with it instead). Runs go under
`--dir` (default bench/.work, on disk; /dev/shm takes the disk out).

`--floors` also measures what bounds the result from below, each against its
own critical path: the same DAG on the `fake` provider with the same latency
(runner without HTTP), and one layer of `--width` concurrent requests to the
same server without runner, through one `httpx.AsyncClient` (runner's HTTP
client, default limits) and through raw sockets. `--profile FILE` writes a
cProfile of one extra run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from runner import Pipeline, Settings, Step, run_dag
from runner.testing import Reply, open_fake_llm_server

WORK = Path(__file__).parent / ".work"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "q"}], "stream": False}


def pipeline_of(width: int, provider: str = "openai", delay: float = 0.0) -> Pipeline:
    wide = [Step(f"w{i}", prompt=f"question {i}") for i in range(width)]
    join = Step("join", prompt="join the answers", needs=[step.name for step in wide])
    config = {"stream": False} if provider == "openai" else {"latency_s": delay}
    return Pipeline(
        name="latency",
        steps=[*wide, join],
        defaults={"provider": provider, "model": "bench"},
        providers={provider: config},
    )


async def run_once(pipeline: Pipeline, url: str | None, fsync: str, where: Path) -> float:
    settings = Settings(openai_api_key="sk-bench", provider_timeout_s=30.0, fsync=fsync)
    if url is not None:
        settings = settings.evolve(openai_base_url=url)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        start = trio.current_time()
        result = await run_dag(pipeline, runs_dir=Path(tmp), settings=settings)
        elapsed = trio.current_time() - start
    if result.status != "succeeded":
        raise SystemExit(f"the job {result.status}: see a run by hand to find out why")
    return elapsed


async def one_layer(send: Callable[[], Awaitable[None]], width: int) -> float:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(width):
            nursery.start_soon(send)
    return trio.current_time() - start


async def bare_httpx(url: str, width: int) -> float:
    async with httpx.AsyncClient(timeout=30.0) as client:

        async def send() -> None:
            response = await client.post(f"{url}/chat/completions", json=BODY)
            response.raise_for_status()

        return await one_layer(send, width)


async def raw_sockets(url: str, width: int) -> float:
    host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body

    async def send() -> None:
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(request)
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {answer[:80]!r}")

    return await one_layer(send, width)


async def serve(delay: float) -> None:
    """The server process: print the URL, answer every request after `delay`, until killed."""
    async with open_fake_llm_server() as server:
        server.script(*[Reply(delay_s=delay)] * 1_000_000)
        print(server.openai_base_url, flush=True)
        await trio.sleep_forever()


async def bench_in_process(args: argparse.Namespace, pipeline: Pipeline) -> list[float]:
    async with open_fake_llm_server() as server:
        server.script(*[Reply(delay_s=args.delay)] * ((args.width + 1) * (args.repeat + 1)))
        return [
            await run_once(pipeline, server.openai_base_url, args.fsync, args.dir)
            for _ in range(args.repeat)
        ]


def report(label: str, times: list[float], delay: float, critical_path: float) -> None:
    print(label)
    for n, elapsed in enumerate(times, 1):
        print(
            f"  run {n}: {elapsed * 1000:7.1f} ms = {elapsed / delay:5.2f} x delay"
            f" = {elapsed / critical_path:5.2f} x critical path"
        )
    median = statistics.median(times)
    print(
        f"  median: {median * 1000:7.1f} ms = {median / delay:5.2f} x delay"
        f" = {median / critical_path:5.2f} x critical path"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--fsync", choices=("batch", "always", "never"), default="batch")
    parser.add_argument("--dir", type=Path, default=WORK, help="where runs go")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--floors", action="store_true")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.delay)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline_of(args.width)
    critical_path = 2 * args.delay
    floors: dict[str, tuple[list[float], float]] = {}
    if args.in_process:
        times = trio.run(bench_in_process, args, pipeline)
        where = "in-process server"
    else:
        where = "server in its own process"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--delay", str(args.delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            times = [
                trio.run(run_once, pipeline, url, args.fsync, args.dir) for _ in range(args.repeat)
            ]
            if args.floors:
                for label, measure in (("httpx", bare_httpx), ("raw sockets", raw_sockets)):
                    layer = [trio.run(measure, url, args.width) for _ in range(args.repeat)]
                    floors[f"one layer, {label}, no runner"] = (layer, args.delay)
            if args.profile is not None:
                profiler = cProfile.Profile()
                profiler.runcall(trio.run, run_once, pipeline, url, args.fsync, args.dir)
                profiler.dump_stats(args.profile)
        finally:
            server.terminate()
            server.wait()
    if args.floors:
        fake = pipeline_of(args.width, "fake", args.delay)
        fake_times = [
            trio.run(run_once, fake, None, args.fsync, args.dir) for _ in range(args.repeat)
        ]
        floors["the same DAG on the fake provider, no HTTP"] = (fake_times, critical_path)
    report(
        f"{args.width} steps x {args.delay * 1000:g} ms, then a join; {where};"
        f" fsync={args.fsync}; runs in {args.dir}",
        times,
        args.delay,
        critical_path,
    )
    for label, (floor_times, floor_path) in floors.items():
        report(label, floor_times, args.delay, floor_path)
    verdict = "meets" if statistics.median(times) <= 1.5 * critical_path else "misses"
    print(f"the DAG {verdict} the goal of 1.5 x critical path")


if __name__ == "__main__":
    main()
