"""One step of a job, in detail: what `runner show JOB --step S` tells.

Everything comes from the job's directory, read-only:

- the step's status, attempts, retries, failure and files: from `events.jsonl`, the
  events of the step's last execution (since its last `step.started`, so a resumed
  step keeps the attempts of the run that produced its output);
- its rendered prompts: never stored, so rendered again the way `step._call_llm` does,
  from `pipeline.json`, the inputs of the run the step last ran in and the upstream
  outputs in `outputs/`. Their hash is compared with the `prompt_sha256` of the step's
  last `llm.request`, which says whether they are what was sent;
- its output: `outputs/<step>.txt`.

Library code: no printing; `runner/cli/show.py` turns a `StepReport` into lines or JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ._json import loads
from .errors import JobError, PipelineError
from .events import read_events
from .filestore import sha256_bytes
from .job_state import JobState
from .pipeline import Pipeline
from .pipeline_files import pipeline_from_dict
from .provider_lane import prompt_sha256_of
from .providers.base import LLMRequest
from .run_dir import RunDir
from .templates import render_prompts

__all__ = [
    "Attempt",
    "FileWrite",
    "Prompt",
    "Retry",
    "StepFailure",
    "StepReport",
    "UnknownStepError",
    "step_report",
]


class UnknownStepError(JobError):
    """The job has no step of that name; the message lists the steps it has."""


@attrs.frozen
class Retry:
    """The wait after a failed attempt (`llm.retry`)."""

    delay_s: float
    reason: str
    delay_from: str


@attrs.define
class Attempt:
    """One attempt of an LLM step: its `llm.request` / `llm.response` pair and the wait after.

    An attempt the open circuit breaker refused was never sent: it has only a `retry`,
    and `sent` is false.
    """

    number: int
    sent: bool = False
    provider: str | None = None
    model: str | None = None
    prompt_sha256: str | None = None
    #: The HTTP status, `"ok"`, or the failure's reason; None while no answer was logged.
    status: int | str | None = None
    latency_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    retry: Retry | None = None


@attrs.frozen
class StepFailure:
    """The step's `step.failed`: the error's class, its message, a Python step's traceback tail."""

    error: str
    message: str
    traceback: tuple[str, ...] = ()


@attrs.frozen
class FileWrite:
    """One `file.written` of the step: `reason` is `created`, `updated` or `nochange`."""

    path: str
    sha256: str
    reason: str


@attrs.frozen
class Prompt:
    """The step's prompts, rendered again now, and whether they are what was sent."""

    system: str | None
    user: str
    #: What `llm.request`'s `prompt_sha256` would be for these prompts.
    sha256: str
    #: The `prompt_sha256` of the step's last `llm.request`; None when it sent none.
    sent_sha256: str | None

    @property
    def as_sent(self) -> bool | None:
        """True when these are the prompts sent; None when nothing was sent to compare."""
        return None if self.sent_sha256 is None else self.sha256 == self.sent_sha256


@attrs.frozen
class StepReport:
    """Everything known about one step of a job (see the module docstring)."""

    job_id: str
    pipeline: str
    job_status: str
    step: str
    status: str
    resumed: bool
    cached: bool
    duration_s: float | None
    input_tokens: int | None
    output_tokens: int | None
    attempts_made: int
    attempts: tuple[Attempt, ...]
    failure: StepFailure | None
    #: Why the step was skipped (`upstream_failed`), with the upstream steps to blame.
    skipped: str | None
    skipped_upstream: tuple[str, ...]
    #: `module:qualname` of a Python step's function; None for an LLM step.
    fn: str | None
    prompt: Prompt | None
    #: Why the prompts could not be rendered again, when they could not.
    prompt_problem: str | None
    output: str | None
    output_path: str
    #: The SHA-256 the log records for the output (`step.succeeded`, `step.skipped`).
    output_sha256: str | None
    files: tuple[FileWrite, ...]

    @property
    def output_intact(self) -> bool | None:
        """Whether `outputs/<step>.txt` still holds what the step wrote (None: nothing recorded)."""
        if self.output is None or self.output_sha256 is None:
            return None
        return sha256_bytes(self.output.encode()) == self.output_sha256

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data, hashes in full."""
        document = attrs.asdict(self, recurse=True)
        document["output_intact"] = self.output_intact
        if self.prompt is not None:
            document["prompt"]["as_sent"] = self.prompt.as_sent
        return document


@attrs.define
class _Execution:
    """The events of the step's last execution, gathered from the log."""

    #: The inputs of the run it started in; None when it never started.
    inputs: dict[str, str] | None = None
    attempts: dict[int, Attempt] = attrs.Factory(dict)
    failure: StepFailure | None = None
    upstream: tuple[str, ...] = ()
    files: list[FileWrite] = attrs.Factory(list)

    def attempt(self, number: int) -> Attempt:
        if number not in self.attempts:
            self.attempts[number] = Attempt(number)
        return self.attempts[number]


def step_report(run_dir: RunDir, step: str) -> StepReport:
    """Read one step of the job in `run_dir`; `UnknownStepError` when the job has no such step."""
    state, execution = _read_log(run_dir, step)
    if step not in state.steps:
        steps = ", ".join(state.steps) or "none"
        raise UnknownStepError(f"job {state.job_id!r} has no step {step!r} (steps: {steps})")
    step_state = state.steps[step]
    fn, prompt, problem = _prompts(run_dir, step, execution)
    return StepReport(
        job_id=state.job_id,
        pipeline=state.pipeline,
        job_status=state.display_status(),
        step=step,
        status=state.display_step_status(step_state, state.display_status()),
        resumed=step_state.resumed,
        cached=step_state.cached,
        duration_s=step_state.duration_s,
        input_tokens=step_state.input_tokens,
        output_tokens=step_state.output_tokens,
        attempts_made=step_state.attempts,
        attempts=tuple(execution.attempts[n] for n in sorted(execution.attempts)),
        failure=execution.failure if step_state.status == "failed" else None,
        skipped=step_state.reason if step_state.status == "skipped" else None,
        skipped_upstream=execution.upstream if step_state.status == "skipped" else (),
        fn=fn,
        prompt=prompt,
        prompt_problem=problem,
        output=run_dir.read_output(step),
        output_path=f"outputs/{step}.txt",
        output_sha256=step_state.output_sha256,
        files=tuple(execution.files),
    )


def _read_log(run_dir: RunDir, step: str) -> tuple[JobState, _Execution]:
    """One pass over the log: the job's fold, and the step's last execution."""
    state = JobState()
    execution = _Execution()
    run_inputs: dict[str, str] = {}
    for event in read_events(run_dir.events_path):
        state.apply(event)
        kind, data = event["type"], event.get("data") or {}
        if kind == "job.started":
            run_inputs = dict(data.get("inputs") or {})
        if event.get("step") != step:
            continue
        if kind == "step.started":
            execution = _Execution(inputs=run_inputs)
        elif kind == "llm.request":
            attempt = execution.attempt(int(data.get("attempt", 0)))
            attempt.sent = True
            attempt.provider, attempt.model = data.get("provider"), data.get("model")
            attempt.prompt_sha256 = data.get("prompt_sha256")
        elif kind == "llm.response":
            attempt = execution.attempt(int(data.get("attempt", 0)))
            attempt.status, attempt.latency_s = data.get("status"), data.get("latency_s")
            attempt.input_tokens = data.get("input_tokens")
            attempt.output_tokens = data.get("output_tokens")
            attempt.error = data.get("error")
        elif kind == "llm.retry":
            execution.attempt(int(data.get("attempt", 0))).retry = Retry(
                delay_s=data.get("delay_s", 0.0),
                reason=data.get("reason", ""),
                delay_from=data.get("delay_from", ""),
            )
        elif kind == "step.failed":
            execution.failure = StepFailure(
                error=data.get("error", ""),
                message=data.get("message", ""),
                traceback=_lines(data.get("traceback")),
            )
        elif kind == "step.skipped":
            execution.upstream = tuple(data.get("upstream") or ())
        elif kind == "file.written":
            execution.files.append(
                FileWrite(path=data["path"], sha256=data["sha256"], reason=data.get("reason", ""))
            )
    if execution.inputs is None:
        execution.inputs = run_inputs  # never started: it would run with the latest inputs
    return state, execution


def _lines(value: Any) -> tuple[str, ...]:
    # `traceback` is a list of lines; a string is taken too, for a hand-written log.
    if isinstance(value, str):
        return tuple(value.splitlines())
    if isinstance(value, list):
        return tuple(str(line) for line in value)
    return ()


def _prompts(
    run_dir: RunDir, name: str, execution: _Execution
) -> tuple[str | None, Prompt | None, str | None]:
    """(a Python step's `fn`, the re-rendered prompts, why they could not be rendered)."""
    try:
        data = loads(run_dir.pipeline_path.read_bytes())
        record = data["steps"][name]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, None, f"cannot read the step from pipeline.json ({_why(exc)})"
    if isinstance(record, Mapping) and "fn" in record:
        return str(record["fn"]), None, None
    try:
        pipeline = _pipeline_without_code(data, source=str(run_dir.pipeline_path))
    except PipelineError as exc:
        return None, None, str(exc)
    step = pipeline.resolved(pipeline.step(name))
    assert step.prompt is not None
    outputs = _StoredOutputs(run_dir, pipeline.step_names)
    inputs = execution.inputs or {}
    try:
        user, system = render_prompts(step, inputs, outputs)
    except _MissingOutputError as exc:
        return None, None, f"cannot render the prompt: {exc.args[0]}"
    except KeyError as exc:
        return None, None, f"cannot render the prompt: input {exc.args[0]!r} is not recorded"
    # Hashed exactly as the provider lane hashes what it sends.
    sha256 = prompt_sha256_of(LLMRequest(model=step.model or "", prompt=user, system=system))
    sent = [a.prompt_sha256 for _, a in sorted(execution.attempts.items()) if a.prompt_sha256]
    prompt = Prompt(system=system, user=user, sha256=sha256, sent_sha256=sent[-1] if sent else None)
    return None, prompt, None


def _pipeline_without_code(data: Mapping[str, Any], *, source: str) -> Pipeline:
    """The pipeline of `pipeline.json`, without importing its Python steps' modules.

    Reading a job must not run the job's code (an import can do anything), and the
    prompts of LLM steps do not depend on it: each `fn` is replaced by `_not_run`.
    """
    steps = {
        name: (
            {**record, "fn": f"{__name__}:{_not_run.__name__}"}
            if isinstance(record, Mapping) and "fn" in record
            else record
        )
        for name, record in dict(data.get("steps") or {}).items()
    }
    return pipeline_from_dict({**data, "steps": steps}, source=source)


async def _not_run(context: Any) -> str:
    """Stands for a Python step's function in a pipeline that is read, never run."""
    raise NotImplementedError("a pipeline read by step_report is never run")


class _MissingOutputError(KeyError):
    """An upstream step's output is not in `outputs/`."""


class _StoredOutputs(Mapping[str, str]):
    """The outputs in `outputs/`, read when a template asks for one."""

    def __init__(self, run_dir: RunDir, steps: list[str]) -> None:
        self._run_dir, self._steps = run_dir, steps

    def __getitem__(self, name: str) -> str:
        text = self._run_dir.read_output(name)
        if text is None:
            missing = f"the output of step {name!r} (outputs/{name}.txt) is missing"
            raise _MissingOutputError(missing)
        return text

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    return str(exc) or type(exc).__name__
