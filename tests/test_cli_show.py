"""`runner show`: notes never cut, and `--step S`, which answers "why did it fail?".

Jobs are real: run with the CLI on the `fake` provider, or with `run_dag` against
runner.testing's loopback server (a retried attempt) and with Python steps (a
traceback, files). `show` then reads what they left in the runs directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import invoke, of_type

from runner import InputSpec, Pipeline, Settings, Step, StepContext, run_dag
from runner.testing import Fail, Reply, open_fake_llm_server

# 300 characters of words, so wrapping has places to break.
LONG_MESSAGE = " ".join(f"reason{i:03d}" for i in range(30))[:300]

TWO_STEPS = """
name = "two"
[inputs]
topic = "owls"
[providers.fake.replies]
a = "an outline about owls"
[steps.a]
prompt = "Outline {{{{ inputs.topic }}}}."
[steps.b]
needs = ["a"]
prompt = "Write from: {{{{ steps.a.output }}}}"
{extra}
"""


def run_two_steps(runs_dir: Path, tmp_path: Path, job_id: str, extra: str = "") -> Path:
    pipeline = tmp_path / f"{job_id}.toml"
    pipeline.write_text(TWO_STEPS.format(extra=extra))
    code, _, err = invoke(
        "run", str(pipeline), "--provider", "fake", "--runs-dir", str(runs_dir), "--job-id", job_id
    )
    assert (code, err) in ((0, ""), (1, "")), err
    return runs_dir / job_id


def show(runs_dir: Path, *args: str, columns: int = 100) -> tuple[int, str, str]:
    return invoke("show", *args, "--runs-dir", str(runs_dir), env={"COLUMNS": str(columns)})


def failing_job(runs_dir: Path, tmp_path: Path) -> str:
    """A job whose step b fails with a 300-character message; returns the message."""
    run_dir = run_two_steps(
        runs_dir, tmp_path, "long", extra=f'[providers.fake.errors]\nb = "{LONG_MESSAGE}"\n'
    )
    [failed] = of_type(run_dir, "step.failed")
    message: str = failed["data"]["message"]
    assert LONG_MESSAGE in message
    return message


# -- the table: notes are never cut -----------------------------------------------------


def test_a_long_note_wraps_under_the_note_column_within_the_terminal(
    runs_dir: Path, tmp_path: Path
) -> None:
    message = failing_job(runs_dir, tmp_path)
    code, out, _ = show(runs_dir, "long", columns=100)
    assert 0 == code
    lines = out.splitlines()
    assert "job long  pipeline two  status failed" == lines[0]
    assert ["STEP", "STATUS"] == lines[1].split()[:2]
    assert all(len(line) <= 100 for line in lines), out
    note_at = lines[1].index("NOTE")
    b = next(i for i, line in enumerate(lines) if line.startswith("b "))
    continued = lines[b + 1 :]
    assert len(continued) >= 2  # 300 characters do not fit in one line of 100
    assert all(line[:note_at].isspace() and line[note_at] != " " for line in continued)
    wrapped = [lines[b][note_at:], *(line[note_at:] for line in continued)]
    assert message.split() == " ".join(wrapped).split()


def test_wide_prints_a_long_note_in_full_on_one_line(runs_dir: Path, tmp_path: Path) -> None:
    message = failing_job(runs_dir, tmp_path)
    code, out, _ = show(runs_dir, "long", "--wide", columns=100)
    lines = out.splitlines()
    assert (0, 4) == (code, len(lines))  # the header, the column names, one line per step
    assert lines[3].startswith("b ")
    assert lines[3].endswith(message)


# -- one step: --step -------------------------------------------------------------------


def retry_settings(server) -> Settings:
    return Settings(
        openai_base_url=server.openai_base_url,
        openai_api_key="sk-test",
        retry_base_s=0.01,
        retry_cap_s=0.05,
        fsync="never",
    )


def retried_pipeline() -> Pipeline:
    # The system prompt comes from [defaults]: show renders it as the step did.
    return Pipeline(
        name="retried",
        inputs={"who": InputSpec(default="Ada")},
        defaults={"provider": "openai", "model": "gpt-test", "system": "Greet {{ inputs.who }}."},
        steps=[
            Step("name", prompt="{{ inputs.who }} Lovelace", provider="fake", model="echo"),
            Step("greet", needs=["name"], prompt="Say hello to {{ steps.name.output }}."),
        ],
    )


async def test_step_shows_each_attempt_the_retry_the_prompts_as_sent_and_the_output(
    runs_dir: Path,
) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(503, "overloaded, try later"), Reply("Hello, Ada Lovelace!"))
        result = await run_dag(
            retried_pipeline(), runs_dir=runs_dir, job_id="r", settings=retry_settings(server)
        )
    assert "succeeded" == result.status

    code, out, err = show(runs_dir, "r", "--step", "greet")
    assert (0, "") == (code, err)
    lines = out.splitlines()
    assert "job r  pipeline retried  status succeeded" == lines[0]
    assert lines[1].startswith("step greet  status succeeded  attempts 2  duration ")
    header = lines.index("attempts:") + 1
    assert ["ATTEMPT", "STATUS", "LATENCY"] == lines[header].split()[:3]
    first, error, second = (line.split() for line in lines[header + 1 : header + 4])
    assert "error:" == error[0]
    assert ["1", "503"] == first[:2]
    assert "(http_503, backoff)" in lines[header + 1]
    # The attempt's error, on the line below its row, under the STATUS column.
    assert lines[header + 2].startswith(" " * lines[header].index("STATUS") + "error: openai: 503")
    assert "overloaded, try later" in lines[header + 2]
    [response] = [e for e in of_type(result.run_dir, "llm.response") if e["step"] == "greet"][1:]
    tokens = f"{response['data']['input_tokens']}/{response['data']['output_tokens']}"
    assert ["2", "200"] == second[:2]
    assert tokens in second
    requests = [e for e in of_type(result.run_dir, "llm.request") if e["step"] == "greet"]
    sent = requests[-1]["data"]["prompt_sha256"]
    assert f"prompt sha256 {sent[:12]} (as sent)" in lines
    assert sent not in out  # human output shortens hashes
    assert ["system prompt:", "  Greet Ada."] == lines[lines.index("system prompt:") :][:2]
    at = lines.index("user prompt:")
    assert "  Say hello to Ada Lovelace." == lines[at + 1]
    at = lines.index("output (outputs/greet.txt):")
    assert "  Hello, Ada Lovelace!" == lines[at + 1]


def test_step_says_when_an_upstream_output_changed_since_the_prompt_was_sent(
    runs_dir: Path, tmp_path: Path
) -> None:
    run_dir = run_two_steps(runs_dir, tmp_path, "j")
    code, out, _ = show(runs_dir, "j", "--step", "b")
    assert 0 == code
    assert re.search(r"^prompt sha256 [0-9a-f]{12} \(as sent\)$", out, re.M)

    (run_dir / "outputs" / "a.txt").write_text("an outline about cats")
    _, out, _ = show(runs_dir, "j", "--step", "b")
    lines = out.splitlines()
    assert any(
        line.endswith(
            "(re-rendered now: differs from what was sent, an upstream output changed since;"
            f" sent {of_type(run_dir, 'llm.request')[1]['data']['prompt_sha256'][:12]})"
        )
        for line in lines
    ), out
    assert "  Write from: an outline about cats" in lines
    _, out, _ = show(runs_dir, "j", "--step", "a")
    assert "output (outputs/a.txt, changed since the step wrote it):" in out.splitlines()


async def raise_long(ctx: StepContext) -> str:
    raise ValueError("bad value " + "x" * 1000)


async def test_a_python_step_failure_keeps_its_traceback_and_show_prints_it(
    runs_dir: Path,
) -> None:
    pipeline = Pipeline(name="py", steps=[Step("parse", fn=raise_long)])
    result = await run_dag(pipeline, runs_dir=runs_dir, job_id="py", settings=Settings())
    assert "failed" == result.status
    [failed] = of_type(result.run_dir, "step.failed")
    data = failed["data"]
    # error and message as before; the traceback is a list of lines, the last 10 at most.
    assert ("ValueError", "bad value " + "x" * 1000) == (data["error"], data["message"])
    tail = data["traceback"]
    assert isinstance(tail, list)
    assert 1 <= len(tail) <= 10
    assert all(isinstance(line, str) and "\n" not in line and len(line) <= 300 for line in tail)
    assert 'raise ValueError("bad value " + "x" * 1000)' in [line.strip() for line in tail]
    assert tail[-1].startswith("ValueError: bad value xxx")
    assert 300 == len(tail[-1])

    code, out, _ = show(runs_dir, "py", "--step", "parse")
    lines = out.splitlines()
    assert 0 == code
    assert f"failed: ValueError: bad value {'x' * 1000}" in lines
    at = lines.index("traceback (last lines):")
    assert [f"  {line}" if line else "" for line in tail] == lines[at + 1 : at + 1 + len(tail)]
    assert "prompt: none (a Python step: test_cli_show:raise_long)" in lines
    assert "attempts: none (a Python step calls no model)" in lines


async def write_three_times(ctx: StepContext) -> str:
    await ctx.write_file("notes/a.txt", "one")
    await ctx.write_file("notes/a.txt", "one")
    await ctx.write_file("notes/a.txt", "two")
    return "wrote"


async def test_step_lists_the_files_it_wrote(runs_dir: Path) -> None:
    pipeline = Pipeline(name="files", steps=[Step("write", fn=write_three_times)])
    result = await run_dag(pipeline, runs_dir=runs_dir, job_id="f", settings=Settings())
    written = of_type(result.run_dir, "file.written")
    assert ["created", "nochange", "updated"] == [e["data"]["reason"] for e in written]

    code, out, _ = show(runs_dir, "f", "--step", "write")
    lines = out.splitlines()
    assert 0 == code
    at = lines.index("files written:")
    assert ["PATH", "SHA256", "WRITE"] == lines[at + 1].split()
    rows = [line.split() for line in lines[at + 2 : at + 5]]
    assert [["notes/a.txt", e["data"]["sha256"][:12], e["data"]["reason"]] for e in written] == rows


async def test_step_json_is_one_document_with_full_hashes(runs_dir: Path) -> None:
    async with open_fake_llm_server() as server:
        server.script(Fail(503, "overloaded"), Reply("Hello!"))
        result = await run_dag(
            retried_pipeline(), runs_dir=runs_dir, job_id="r", settings=retry_settings(server)
        )
    code, out, _ = show(runs_dir, "r", "--step", "greet", "--json")
    assert 0 == code
    document = json.loads(out)
    assert ("r", "greet", "succeeded") == (
        document["job_id"],
        document["step"],
        document["status"],
    )
    assert [(1, 503, "http_503"), (2, 200, None)] == [
        (a["number"], a["status"], a["retry"] and a["retry"]["reason"])
        for a in document["attempts"]
    ]
    sent = of_type(result.run_dir, "llm.request")[-1]["data"]["prompt_sha256"]
    prompt = document["prompt"]
    assert (sent, sent, True) == (prompt["sha256"], prompt["sent_sha256"], prompt["as_sent"])
    assert ("Greet Ada.", "Say hello to Ada Lovelace.") == (prompt["system"], prompt["user"])
    [succeeded] = of_type(result.run_dir, "step.succeeded")[-1:]
    assert ("Hello!", succeeded["data"]["output_sha256"], True) == (
        document["output"],
        document["output_sha256"],
        document["output_intact"],
    )
    assert (None, [], None) == (document["failure"], document["files"], document["fn"])


def test_an_unknown_step_exits_2_naming_the_steps(runs_dir: Path, tmp_path: Path) -> None:
    run_two_steps(runs_dir, tmp_path, "j")
    code, out, err = show(runs_dir, "j", "--step", "ghost")
    assert (2, "", "runner: job 'j' has no step 'ghost' (steps: a, b)\n") == (code, out, err)


def test_step_takes_latest_and_a_unique_prefix(runs_dir: Path, tmp_path: Path) -> None:
    run_two_steps(runs_dir, tmp_path, "first-job")
    run_two_steps(runs_dir, tmp_path, "second-job")
    for reference in ("latest", "sec"):
        code, out, _ = show(runs_dir, reference, "--step", "a")
        assert 0 == code
        assert "job second-job  pipeline two  status succeeded" == out.splitlines()[0]
        assert "  an outline about owls" in out.splitlines()
    code, out, _ = show(runs_dir, "fir", "--step", "b")
    assert (0, "job first-job") == (code, out.splitlines()[0][:13])
