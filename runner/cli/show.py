"""`runner show JOB`: a job's steps from its events, as a table or one JSON document;
`--step S`: one step in detail (attempts, failure, prompts, output, files)."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..event_format import short_hash
from ..job_state import JobState, fold_log
from ..run_dir import RunDir
from ..step_report import Prompt, StepReport, UnknownStepError, step_report
from . import cli
from ._common import events_path, fail, job_id_of, run_dir_of, runs_dir_option, runs_dir_or_default

#: The last column never gets narrower than this, however narrow the terminal.
_MIN_LAST_COLUMN = 20
#: Human output shortens hashes to this many hex digits (`--json` keeps them whole).


@cli.command()
@click.argument("job_id", metavar="JOB")
@runs_dir_option
@click.option(
    "--step",
    "step_name",
    default=None,
    metavar="STEP",
    help="One step in detail: attempts, failure, prompts, output, files.",
)
@click.option("--wide", is_flag=True, help="Long notes and errors on one line, never wrapped.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def show(
    job_id: str, runs_dir: Path | None, step_name: str | None, wide: bool, as_json: bool
) -> None:
    """Show JOB's steps: status, attempts, duration, tokens (from its events).

    JOB is a job id, `latest`, or a unique prefix of a job id. Long notes wrap
    under the NOTE column to fit the terminal; --wide prints them on one line.
    """
    runs = runs_dir_or_default(runs_dir)
    job_id = job_id_of(runs, job_id)
    path = events_path(runs, job_id)
    if step_name is not None:
        _show_step(run_dir_of(runs, job_id), step_name, wide=wide, as_json=as_json)
        return
    state = fold_log(path)
    if as_json:
        click.echo(json.dumps(_show_document(state), indent=2, sort_keys=True))
        return
    job_status = state.display_status()
    click.echo(f"job {state.job_id}  pipeline {state.pipeline}  status {job_status}")
    rows = [("STEP", "STATUS", "ATTEMPTS", "DURATION", "TOKENS IN/OUT", "NOTE")]
    for name, step in state.steps.items():
        status = (
            state.display_step_status(step, job_status)
            + (" (resumed)" if step.resumed else "")
            + (" (cached)" if step.cached else "")
        )
        rows.append(
            (
                name,
                status,
                str(step.attempts),
                _duration(step.duration_s),
                f"{_num(step.input_tokens)}/{_num(step.output_tokens)}",
                step.reason or "",
            )
        )
    for line in _table(rows, wide=wide):
        click.echo(line)


def _table(rows: Sequence[tuple[str, ...]], *, wide: bool, indent: str = "") -> list[str]:
    """Rows as aligned columns. The last column (a note, an error) is never cut: it wraps
    under its own column within the terminal's width, or with `wide` stays on one line."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    start = len(indent) + sum(width + 2 for width in widths)
    room = None if wide else max(_MIN_LAST_COLUMN, shutil.get_terminal_size().columns - start)
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        first, *rest = _wrap(row[-1], room)
        lines.append((indent + "  ".join([*cells, first])).rstrip())
        lines.extend((" " * start + more).rstrip() for more in rest)
    return lines


def _wrap(text: str, width: int | None) -> list[str]:
    """`text` in lines of at most `width` characters, nothing left out; None: one line,
    its line breaks written as `\\n`."""
    if width is None:
        return ["\\n".join(text.splitlines())]
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, width) or [""])
    return lines


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def _show_document(state: JobState) -> dict[str, Any]:
    job_status = state.display_status()
    return {
        "job_id": state.job_id,
        "pipeline": state.pipeline,
        "status": job_status,
        "started": state.started,
        "finished": state.finished,
        "duration_s": state.duration_s,
        "runs": state.runs,
        "steps": {
            name: {
                "status": state.display_step_status(step, job_status),
                "attempts": step.attempts,
                "duration_s": step.duration_s,
                "input_tokens": step.input_tokens,
                "output_tokens": step.output_tokens,
                "cached": step.cached,
                "resumed": step.resumed,
                "reason": step.reason,
                "output_sha256": step.output_sha256,
            }
            for name, step in state.steps.items()
        },
        "files": state.files,
    }


# -- one step: --step S ---------------------------------------------------------------


def _show_step(run_dir: RunDir, name: str, *, wide: bool, as_json: bool) -> None:
    try:
        report = step_report(run_dir, name)
    except UnknownStepError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    for line in _step_lines(report, wide=wide):
        click.echo(line)


def _step_lines(report: StepReport, *, wide: bool) -> list[str]:
    """The human form of a `StepReport`: a header, then one section per topic."""
    marks = (" (resumed)" if report.resumed else "") + (" (cached)" if report.cached else "")
    lines = [
        f"job {report.job_id}  pipeline {report.pipeline}  status {report.job_status}",
        f"step {report.step}  status {report.status}{marks}  attempts {report.attempts_made}"
        f"  duration {_duration(report.duration_s)}"
        f"  tokens {_num(report.input_tokens)}/{_num(report.output_tokens)}",
    ]
    for section in (
        _attempt_lines(report, wide=wide),
        _failure_lines(report),
        _prompt_lines(report),
        _output_lines(report),
        _file_lines(report),
    ):
        if section:
            lines += ["", *section]
    return lines


def _attempt_lines(report: StepReport, *, wide: bool) -> list[str]:
    """A row per attempt; a failed attempt's error on the lines below its row, wrapped
    to the terminal unless `wide`."""
    if not report.attempts:
        if report.fn is not None:
            return ["attempts: none (a Python step calls no model)"]
        return ["attempts: none" + (" (answered from the cache)" if report.cached else "")]
    rows = [("ATTEMPT", "STATUS", "LATENCY", "TOKENS IN/OUT", "THEN WAITED")]
    for attempt in report.attempts:
        waited = "-"
        if attempt.retry is not None:
            retry = attempt.retry
            waited = f"{retry.delay_s:.3f}s ({retry.reason}, {retry.delay_from})"
        rows.append(
            (
                str(attempt.number),
                str(attempt.status or "-") if attempt.sent else "not sent",
                "-" if attempt.latency_s is None else f"{attempt.latency_s:.3f}s",
                f"{_num(attempt.input_tokens)}/{_num(attempt.output_tokens)}",
                waited,
            )
        )
    header, *lines = _table(rows, wide=True, indent="  ")
    # The errors start under the STATUS column.
    under = 2 + max(len(row[0]) for row in rows) + 2
    room = None if wide else max(_MIN_LAST_COLUMN, shutil.get_terminal_size().columns - under)
    out = ["attempts:", header]
    for attempt, line in zip(report.attempts, lines, strict=True):
        out.append(line)
        if attempt.error:
            out += [" " * under + part for part in _wrap(f"error: {attempt.error}", room)]
    return out


def _failure_lines(report: StepReport) -> list[str]:
    if report.skipped is not None:
        upstream = ", ".join(report.skipped_upstream)
        return [f"skipped: {report.skipped}" + (f" ({upstream})" if upstream else "")]
    failure = report.failure
    if failure is None:
        return []
    lines = [f"failed: {failure.error}: {failure.message}"]
    if failure.traceback:
        lines += ["traceback (last lines):", *_block("\n".join(failure.traceback))]
    return lines


def _prompt_lines(report: StepReport) -> list[str]:
    if report.fn is not None:
        return [f"prompt: none (a Python step: {report.fn})"]
    if report.prompt is None:
        return [f"prompt: {report.prompt_problem or 'unknown'}"]
    prompt = report.prompt
    return [
        f"prompt sha256 {short_hash(prompt.sha256)} {_sent_note(report, prompt)}",
        "system prompt:",
        *(_block(prompt.system) if prompt.system is not None else ["  (none)"]),
        "user prompt:",
        *_block(prompt.user),
    ]


def _sent_note(report: StepReport, prompt: Prompt) -> str:
    if prompt.as_sent:
        return "(as sent)"
    if prompt.as_sent is False:
        return (
            "(re-rendered now: differs from what was sent, an upstream output changed since;"
            f" sent {short_hash(prompt.sent_sha256)})"
        )
    if report.cached:
        return "(re-rendered now; not sent: answered from the cache)"
    return "(re-rendered now; never sent)"


def _output_lines(report: StepReport) -> list[str]:
    if report.output is None:
        return [f"output: none ({report.output_path} is missing or not UTF-8 text)"]
    where = report.output_path
    if report.status != "succeeded":
        where += ", from an earlier run"
    elif report.output_intact is False:
        where += ", changed since the step wrote it"
    return [f"output ({where}):", *_block(report.output)]


def _file_lines(report: StepReport) -> list[str]:
    if not report.files:
        return ["files written: none"]
    rows = [("PATH", "SHA256", "WRITE")]
    rows += [(f.path, short_hash(f.sha256), f.reason) for f in report.files]
    return ["files written:", *_table(rows, wide=True, indent="  ")]


def _block(text: str) -> list[str]:
    """A text in full, indented under its heading."""
    if not text:
        return ["  (empty)"]
    return ["  " + line if line else "" for line in text.splitlines()]
