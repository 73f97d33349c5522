"""Provider `local` on the example pipeline: server start, first token, tokens/s, runner's share.

    python bench/local.py [--repeat 3] [--dir DIR] [--keep]

Each repeat does two things, one after the other:

1. Runs examples/app_builder.toml as it is (provider `local`, SmolLM2-135M, its
   default idea) with `run_dag(pipeline, runs_dir=..., use_cache=False)` in
   `trio.run`, in this process. Every number about the job comes from its own
   `events.jsonl` and `local-server.log`, so a `python -m runner run`
   subprocess would only add an interpreter start before `job.started`,
   which no number here includes. Settings come from the environment, as
   for `runner run`.
2. Starts a fresh server as the provider does (`LocalProvider.prepare`) and,
   with plain httpx and no runner, sends the job's three requests again, one
   at a time: the same bodies (each step's system message, its prompt rendered
   from the outputs the job just produced, its options), not streamed; then
   each again streamed, with `max_tokens` 8 and `cache_prompt` false (else
   llama.cpp would skip the prefix it has seen). Time to first token = from
   sending the streamed request to the first SSE chunk that carries content.

From the job, per step (the server log's `print_timing` lines are paired
with the successful `llm.response` events in order, by their token count):

- `start_s` of `provider.started` (the first step pays it), and the wall time
  from `job.started` to the first `llm.request`;
- generation speed: output tokens / the server's "eval time", and output
  tokens / the response's `latency_s` (prompt evaluation and HTTP included);
- runner's overhead: the step's `duration_s` less the server start it waited
  for, less the time lost to attempts that failed (first to last
  `llm.request` of the step), less the server's own time for the request
  (prompt eval + eval). It is split into "in the call" (`latency_s` less the
  server's time: HTTP, JSON, and what llama.cpp does outside its two timers)
  and "outside the call" (the rest: rendering, events, writing the output
  and files). "bare httpx: in the call" is the same difference for the same
  request sent without runner: the part of "in the call" that is not runner's.
  Plus the job's time outside its steps.

Prints the median and min-max over `--repeat` repeats. On 2 cores, the
server's two threads slow down several times over as soon as anything else
runs, so each repeat also prints how many cores other processes kept busy
meanwhile (from /proc/stat, less this process and its servers). A repeat
takes 25-30 s on a quiet 2-core machine. Runs go in a temporary directory
under `--dir` (default bench/.work), deleted unless `--keep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

import runner
from runner import Pipeline, Settings
from runner.providers.local import LOG_NAME, LocalProvider
from runner.templates import render

EXAMPLE = Path(__file__).parent.parent / "examples" / "app_builder.toml"
WORK = Path(__file__).parent / ".work"
#: What the first-token requests change: llama.cpp's prompt cache would skip the prefix
#: they share with the request before.
SHORT = {"max_tokens": 8, "cache_prompt": False}
TASK = re.compile(r"\btask (\d+) \|")
PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
EVAL = re.compile(r"(?<!prompt )eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


@dataclasses.dataclass
class ServerCall:
    """One request the server completed, from its `print_timing` lines."""

    task: int
    prompt_ms: float
    prompt_tokens: int
    eval_ms: float
    eval_tokens: int

    @property
    def server_s(self) -> float:
        return (self.prompt_ms + self.eval_ms) / 1000


@dataclasses.dataclass
class StepTimes:
    """One step of one job, in seconds unless named otherwise."""

    wall_s: float
    start_s: float  # the server start this step waited for
    retry_s: float  # first to last llm.request: attempts that failed, and backoff
    attempts: int
    latency_s: float  # the successful attempt
    input_tokens: int
    output_tokens: int
    call: ServerCall

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.start_s - self.retry_s - self.call.server_s

    @property
    def in_call_s(self) -> float:
        return self.latency_s - self.call.server_s

    @property
    def outside_call_s(self) -> float:
        return self.wall_s - self.start_s - self.retry_s - self.latency_s


@dataclasses.dataclass
class Repeat:
    """One job and the first-token requests after it."""

    start_s: float
    to_first_request_s: float
    job_s: float
    steps: dict[str, StepTimes]
    ttft_s: dict[str, float]
    ttft_prompt_ms: dict[str, float]
    bare_in_call_s: dict[str, float]  # a bare httpx call's time less the server's

    @property
    def outside_steps_s(self) -> float:
        return self.job_s - sum(step.wall_s for step in self.steps.values())


# -- reading a job -------------------------------------------------------------------------


def parse_calls(log_text: str) -> list[ServerCall]:
    """The requests the server completed, in order. A cancelled request prints no timing."""
    calls: list[ServerCall] = []
    prompts: dict[str, tuple[float, int]] = {}
    for line in log_text.splitlines():
        task = TASK.search(line)
        if task is None:
            continue
        if found := PROMPT_EVAL.search(line):
            prompts[task.group(1)] = (float(found.group(1)), int(found.group(2)))
        elif (found := EVAL.search(line)) and task.group(1) in prompts:
            prompt_ms, prompt_tokens = prompts.pop(task.group(1))
            eval_ms, eval_tokens = float(found.group(1)), int(found.group(2))
            calls.append(
                ServerCall(int(task.group(1)), prompt_ms, prompt_tokens, eval_ms, eval_tokens)
            )
    return calls


def server_calls(log: Path) -> list[ServerCall]:
    calls = parse_calls(log.read_text(errors="replace"))
    if not calls:
        raise SystemExit(f"no 'prompt eval time' / 'eval time' lines in {log}")
    return calls


def seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def step_times(events: list[dict[str, Any]], calls: list[ServerCall]) -> dict[str, StepTimes]:
    """Each step's times; its successful response paired with the next call of as many tokens."""
    remaining: Iterator[ServerCall] = iter(calls)
    requests: dict[str, list[float]] = {}
    started: dict[str, float] = {}
    answers: dict[str, dict[str, Any]] = {}
    steps: dict[str, StepTimes] = {}
    for event in events:
        step, data = event.get("step", ""), event.get("data", {})
        if event["type"] == "provider.started":
            started[data["for_step"]] = data["start_s"]
        elif event["type"] == "llm.request":
            requests.setdefault(step, []).append(seconds(event["ts"]))
        elif event["type"] == "llm.response" and data["status"] == 200:
            answers[step] = data
        elif event["type"] == "step.succeeded":
            answer = answers[step]
            call = next((c for c in remaining if c.eval_tokens == answer["output_tokens"]), None)
            if call is None:
                tokens = answer["output_tokens"]
                raise SystemExit(
                    f"step {step}: no timing lines for {tokens} tokens in {LOG_NAME}"
                    " (llama.cpp may not have written them before the server stopped)"
                )
            steps[step] = StepTimes(
                wall_s=data["duration_s"],
                start_s=started.get(step, 0.0),
                retry_s=requests[step][-1] - requests[step][0],
                attempts=len(requests[step]),
                latency_s=answer["latency_s"],
                input_tokens=answer["input_tokens"],
                output_tokens=answer["output_tokens"],
                call=call,
            )
    return steps


def first(events: list[dict[str, Any]], type: str) -> dict[str, Any]:
    return next(event for event in events if event["type"] == type)


def read_job(run_dir: Path) -> tuple[float, float, float, dict[str, StepTimes]]:
    """The server's start, job.started to the first llm.request, the job's duration, its steps."""
    events = [orjson.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    to_first_request = seconds(first(events, "llm.request")["ts"]) - seconds(
        first(events, "job.started")["ts"]
    )
    return (
        first(events, "provider.started")["data"]["start_s"],
        to_first_request,
        first(events, "job.finished")["data"]["duration_s"],
        step_times(events, server_calls(run_dir / LOG_NAME)),
    )


# -- the same requests without runner -----------------------------------------------------


def request_bodies(
    pipeline: Pipeline, inputs: Mapping[str, str], outputs: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Each step's request body as the job sent it."""
    bodies = {}
    for step in pipeline.steps:
        resolved = pipeline.resolved(step)
        assert resolved.prompt is not None
        messages = [{"role": "system", "content": resolved.system}] if resolved.system else []
        messages.append({"role": "user", "content": render(resolved.prompt, inputs, outputs)})
        body: dict[str, Any] = {"model": resolved.model, "messages": messages}
        if resolved.max_tokens is not None:
            body["max_tokens"] = resolved.max_tokens
        if resolved.seed is not None:
            body["seed"] = resolved.seed
        body.update(resolved.options or {})
        body["stream"] = False
        bodies[step.name] = body
    return bodies


async def first_token(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """Seconds from sending `body`, streamed, to the first SSE chunk with content."""
    ttft = None
    start = time.perf_counter()
    async with client.stream("POST", url, json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():  # to the end: the next request waits
            if ttft is not None or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = orjson.loads(line.removeprefix("data: ")).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                ttft = time.perf_counter() - start
    if ttft is None:
        raise SystemExit(f"no content in the stream for {body['messages'][-1]['content'][:40]!r}")
    return ttft


async def whole_call(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """Seconds from sending `body` (not streamed) to its decoded answer."""
    start = time.perf_counter()
    response = await client.post(url, json=body)
    response.raise_for_status()
    response.json()
    return time.perf_counter() - start


async def wait_for_calls(log: Path, count: int, timeout_s: float = 10.0) -> None:
    """Wait until the server's log holds `count` completed calls (or `timeout_s`).

    llama.cpp's log can be behind its answers, and the server stops without flushing it.
    """
    with trio.move_on_after(timeout_s):
        while True:
            text = await trio.Path(log).read_text(errors="replace")
            if len(parse_calls(text)) >= count:
                return
            await trio.sleep(0.05)


async def without_runner(
    model: str, bodies: dict[str, dict[str, Any]], job_dir: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Start a server as the provider does; send each body as it is, then streamed and short.

    Returns the seconds of each whole call, then the seconds to the first token of each.
    The whole calls come first so that llama.cpp's prompt cache serves them as it served
    the job's; the short ones do without it (SHORT).
    """
    provider = LocalProvider(Settings(), {"max_concurrency": 1}, job_dir=job_dir)
    try:
        await provider.prepare(model)
        server = provider._servers[model].client
        url = f"{server.base_url}/chat/completions"
        headers = {"authorization": f"Bearer {server._api_key}"}
        # A new connection per request: a request on a connection kept alive after a
        # stream was once answered by a closed socket (httpx.RemoteProtocolError).
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=600.0, headers=headers, limits=limits) as client:
            whole = {name: await whole_call(client, url, body) for name, body in bodies.items()}
            short = {name: {**body, **SHORT} for name, body in bodies.items()}
            ttft = {name: await first_token(client, url, body) for name, body in short.items()}
        await wait_for_calls(job_dir / LOG_NAME, len(bodies) + len(short))
        return whole, ttft
    finally:
        await provider.aclose()


# -- one repeat -----------------------------------------------------------------------------


def one_repeat(pipeline: Pipeline, where: Path) -> Repeat:
    inputs = {name: spec.default for name, spec in pipeline.inputs.items() if spec.default}
    result = trio.run(
        lambda: runner.run_dag(pipeline, runs_dir=where, inputs=inputs, use_cache=False)
    )
    if result.status != "succeeded":
        raise SystemExit(f"the job {result.status}: see {result.run_dir}")
    model = pipeline.resolved(pipeline.steps[0]).model
    assert model is not None
    bare_dir = where / f"bare-{result.job_id}"
    bare_dir.mkdir()
    bodies = request_bodies(pipeline, inputs, result.outputs)
    whole_s, ttft_s = trio.run(without_runner, model, bodies, bare_dir)
    calls = server_calls(bare_dir / LOG_NAME)
    whole_calls = dict(zip(bodies, calls[: len(bodies)], strict=True))
    ttft_calls = dict(zip(bodies, calls[len(bodies) :], strict=True))
    start_s, to_first_request_s, job_s, steps = read_job(result.run_dir)
    for name, call in whole_calls.items():
        job = steps[name].call
        if (call.prompt_tokens, call.eval_tokens) != (job.prompt_tokens, job.eval_tokens):
            print(f"note: {name}: the server's tokens differ without runner: {call}, {job}")
    return Repeat(
        start_s=start_s,
        to_first_request_s=to_first_request_s,
        job_s=job_s,
        steps=steps,
        ttft_s=ttft_s,
        ttft_prompt_ms={name: call.prompt_ms for name, call in ttft_calls.items()},
        bare_in_call_s={name: whole_s[name] - whole_calls[name].server_s for name in bodies},
    )


# -- the table ------------------------------------------------------------------------------

#: label -> decimals, in the order of the table.
DIGITS = {
    "attempts": 0,
    "input tokens": 0,
    "output tokens": 0,
    "step wall s": 2,
    "llm.response latency_s": 2,
    "server prompt eval ms": 0,
    "server eval ms": 0,
    "gen tok/s (server eval)": 1,
    "gen tok/s (latency_s)": 1,
    "runner overhead ms": 0,
    "  in the call ms": 0,
    "  outside the call ms": 0,
    "bare httpx: in the call ms": 0,
    "runner overhead % of job": 2,
    "time to first token ms": 0,
    "  its prompt eval ms": 0,
}


def step_measures(step: StepTimes, job_s: float) -> dict[str, float]:
    return {
        "attempts": step.attempts,
        "input tokens": step.input_tokens,
        "output tokens": step.output_tokens,
        "step wall s": step.wall_s,
        "llm.response latency_s": step.latency_s,
        "server prompt eval ms": step.call.prompt_ms,
        "server eval ms": step.call.eval_ms,
        "gen tok/s (server eval)": step.output_tokens / step.call.eval_ms * 1000,
        "gen tok/s (latency_s)": step.output_tokens / step.latency_s,
        "runner overhead ms": step.overhead_s * 1000,
        "  in the call ms": step.in_call_s * 1000,
        "  outside the call ms": step.outside_call_s * 1000,
        "runner overhead % of job": step.overhead_s / job_s * 100,
    }


def measures(repeat: Repeat) -> dict[str, dict[str, float]]:
    """column (each step, and "all") -> label -> value, for one repeat."""
    table = {
        name: {
            **step_measures(step, repeat.job_s),
            "time to first token ms": repeat.ttft_s[name] * 1000,
            "  its prompt eval ms": repeat.ttft_prompt_ms[name],
            "bare httpx: in the call ms": repeat.bare_in_call_s[name] * 1000,
        }
        for name, step in repeat.steps.items()
    }
    summed = {label: sum(column[label] for column in table.values()) for label in DIGITS}
    tokens, eval_ms = summed["output tokens"], summed["server eval ms"]
    latency_s = summed["llm.response latency_s"]
    summed["gen tok/s (server eval)"] = tokens / eval_ms * 1000
    summed["gen tok/s (latency_s)"] = tokens / latency_s
    del summed["time to first token ms"], summed["  its prompt eval ms"]
    table["all"] = summed
    return table


def spread(values: list[float], digits: int) -> str:
    """`median (min-max)`, or the value alone when all are equal."""
    median = f"{statistics.median(values):.{digits}f}"
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return median if low == high else f"{median} ({low}-{high})"


def report(repeats: list[Repeat]) -> None:
    print(f"\nmedian (min-max) over {len(repeats)} repeats")
    job = {
        "job duration s (job.finished)": [r.job_s for r in repeats],
        "server start s (provider.started start_s)": [r.start_s for r in repeats],
        "job.started -> first llm.request s": [r.to_first_request_s for r in repeats],
        "job outside its steps s": [r.outside_steps_s for r in repeats],
    }
    for label, values in job.items():
        print(f"{label:<44}{spread(values, 3)}")
    tables = [measures(r) for r in repeats]
    columns = list(tables[0])
    print(f"\n{'':<26}" + "".join(f"{column:>21}" for column in columns))
    for label, digits in DIGITS.items():
        cells = [
            spread([t[column][label] for t in tables], digits) if label in tables[0][column] else ""
            for column in columns
        ]
        print(f"{label:<26}" + "".join(f"{cell:>21}" for cell in cells))


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the machine, CPU seconds of this process).

    The machine's: all CPUs since boot, steal included. This process's include its
    reaped children: the servers, once stopped.
    """
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=WORK, help="where runs go")
    parser.add_argument("--keep", action="store_true", help="keep the runs and print where")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    pipeline = runner.load_pipeline(EXAMPLE)
    where = Path(tempfile.mkdtemp(dir=args.dir, prefix="local-"))
    try:
        repeats = []
        for n in range(1, args.repeat + 1):
            busy, own = cpu_seconds()
            start = time.perf_counter()
            repeats.append(one_repeat(pipeline, where))
            elapsed = time.perf_counter() - start
            now_busy, now_own = cpu_seconds()
            others = (now_busy - busy - (now_own - own)) / elapsed
            print(
                f"repeat {n}: {elapsed:.1f} s, the job {repeats[-1].job_s:.1f} s;"
                f" other processes kept {others:.2f} cores busy",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"runs kept in {where}")
        else:
            shutil.rmtree(where)
    report(repeats)


if __name__ == "__main__":
    main()
