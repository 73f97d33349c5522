"""Jobs run before 2.0: their events have no `ts` and no `level`, their manifest is older.

`tests/data/v1_job/` holds such a job as a user of the old tool has it: a two-step
pipeline that succeeded, its outputs, its `pipeline.json` and an old `manifest.json`.
Every test works on a copy, through the real CLI or the public API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke

from runner import load_pipeline, read_completed_steps, read_events
from runner.events import TornLineWarning, as_event, parse_line
from runner.job_state import fold_events, fold_log

JOB = "notes-20240312-101500"
V1_JOB = Path(__file__).parent / "data" / "v1_job" / JOB
STEPS = ["outline", "summary"]
V1_TYPES = [
    ("job.started", None),
    ("step.started", "outline"),
    ("llm.request", "outline"),
    ("llm.response", "outline"),
    ("step.succeeded", "outline"),
    ("step.started", "summary"),
    ("llm.request", "summary"),
    ("llm.response", "summary"),
    ("step.succeeded", "summary"),
    ("job.finished", None),
]

# The pipeline the old job ran; its `pipeline.json` is this file as 2.x stores it.
NOTES_TOML = """\
name = "notes"

[inputs]
topic = { default = "tea" }

[defaults]
provider = "fake"
model = "echo"

[steps.outline]
prompt = "Outline a short note about {{ inputs.topic }}."

[steps.summary]
needs = ["outline"]
prompt = "Summarize this outline in one line:\\n{{ steps.outline.output }}"

[providers.fake.replies]
outline = "1. Origins\\n2. Brewing\\n3. Serving\\n"
summary = "Tea: where it comes from, how to brew it, how to serve it.\\n"
"""


@pytest.fixture
def v1_runs(runs_dir: Path) -> Path:
    """A runs dir holding a copy of the old job."""
    shutil.copytree(V1_JOB, runs_dir / JOB)
    return runs_dir


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_committed_job_is_an_old_one(tmp_path: Path) -> None:
    # What the other tests rely on: no ts or level anywhere, outputs matching the log,
    # a manifest without the 2.x fields, and the pipeline as 2.x stores it.
    records = _records(V1_JOB / "events.jsonl")
    assert V1_TYPES == [(r["type"], r.get("step")) for r in records]
    assert [] == [r for r in records if "ts" in r or "level" in r or r["job_id"] != JOB]
    logged = {
        r["step"]: r["data"]["output_sha256"] for r in records if r["type"] == "step.succeeded"
    }
    on_disk = {
        step: hashlib.sha256((V1_JOB / "outputs" / f"{step}.txt").read_bytes()).hexdigest()
        for step in STEPS
    }
    assert logged == on_disk
    manifest = json.loads((V1_JOB / "manifest.json").read_text())
    assert {"completed_steps", "pending_steps", "format_version"}.isdisjoint(manifest)
    (tmp_path / "notes.toml").write_text(NOTES_TOML)
    pipeline = load_pipeline(tmp_path / "notes.toml")
    stored = json.loads((V1_JOB / "pipeline.json").read_bytes())
    assert json.loads(pipeline.to_json_bytes()) == stored


def test_read_events_gives_old_records_level_info_and_an_empty_ts() -> None:
    events = list(read_events(V1_JOB / "events.jsonl"))
    assert V1_TYPES == [(e["type"], e.get("step")) for e in events]
    assert [("", "INFO", JOB)] * len(V1_TYPES) == [
        (e["ts"], e["level"], e["job_id"]) for e in events
    ]
    assert {"ts": "", "level": "INFO", "job_id": "j", "type": "step.started", "step": "a"} == (
        as_event({"job_id": "j", "type": "step.started", "step": "a"})
    )


@pytest.mark.parametrize(
    ("kind", "level"),
    [("step.failed", "ERROR"), ("llm.retry", "WARN"), ("step.started", "INFO"), ("x.y", "INFO")],
)
def test_an_old_record_takes_its_types_usual_level(kind: str, level: str) -> None:
    # So that `tail --level ERROR` still finds an old failure.
    assert level == as_event({"job_id": "j", "type": kind})["level"]


@pytest.mark.parametrize(
    "line",
    [
        b'[{"job_id": "j", "type": "job.started"}]\n',
        b'"job.started"\n',
        b"7\n",
        b"null\n",
        b'{"job_id": "j", "step": "a"}\n',
        b'{"type": "job.started"}\n',
    ],
)
def test_a_line_that_is_not_an_object_or_lacks_type_or_job_id_stays_unreadable(
    line: bytes,
) -> None:
    with pytest.warns(TornLineWarning, match=r"^skipped an unreadable events line: "):
        assert parse_line(line) is None


def test_fold_log_reads_an_old_log_as_read_events_does() -> None:
    # fold_log decodes lines itself: an old line must take the same path as in read_events.
    path = V1_JOB / "events.jsonl"
    assert fold_events(read_events(path)) == fold_log(path)


def test_show_reports_the_old_steps(v1_runs: Path) -> None:
    code, out, err = invoke("show", JOB, "--runs-dir", str(v1_runs))
    expected = [
        f"job {JOB}  pipeline notes  status succeeded",
        "STEP     STATUS     ATTEMPTS  DURATION  TOKENS IN/OUT  NOTE",
        "outline  succeeded  1         1.42s     8/9",
        "summary  succeeded  1         0.97s     18/15",
    ]
    assert (0, expected, "") == (code, out.splitlines(), err)


def test_show_json_reports_the_old_steps_with_empty_times(v1_runs: Path) -> None:
    code, out, err = invoke("show", JOB, "--runs-dir", str(v1_runs), "--json")
    document = json.loads(out)
    assert (0, "") == (code, err)
    assert (JOB, "notes", "succeeded", "", "", 2.51) == (
        document["job_id"],
        document["pipeline"],
        document["status"],
        document["started"],
        document["finished"],
        document["duration_s"],
    )
    steps = {name: (s["status"], s["attempts"]) for name, s in document["steps"].items()}
    assert {"outline": ("succeeded", 1), "summary": ("succeeded", 1)} == steps


def test_tail_prints_every_old_event_at_level_info(v1_runs: Path) -> None:
    code, out, err = invoke("tail", JOB, "--runs-dir", str(v1_runs))
    assert (0, "") == (code, err)
    # No ts to show: each line starts with its level, then its type.
    assert [("INFO", kind) for kind, _ in V1_TYPES] == [
        tuple(line.split()[:2]) for line in out.splitlines()
    ]


def test_tail_json_prints_old_events_with_the_defaults(v1_runs: Path) -> None:
    code, out, _ = invoke("tail", JOB, "--runs-dir", str(v1_runs), "--json", "--level", "INFO")
    records = [json.loads(line) for line in out.splitlines()]
    assert (0, len(V1_TYPES)) == (code, len(records))
    assert [("", "INFO")] * len(V1_TYPES) == [(r["ts"], r["level"]) for r in records]


def test_list_shows_the_old_job_with_its_status_and_no_age(v1_runs: Path) -> None:
    code, out, err = invoke("list", "--runs-dir", str(v1_runs))
    rows = [line.split() for line in out.splitlines()]
    header = ["JOB", "STATUS", "STEPS", "AGE", "PIPELINE"]
    assert (0, "", [header, [JOB, "succeeded", "2/2", "-", "notes"]]) == (code, err, rows)


def test_read_completed_steps_of_an_old_log(v1_runs: Path) -> None:
    assert set(STEPS) == read_completed_steps(v1_runs / JOB / "events.jsonl")


def test_resume_of_an_old_job_skips_both_steps_and_appends_typed_events(
    v1_runs: Path, tmp_path: Path
) -> None:
    log = v1_runs / JOB / "events.jsonl"
    old_log = log.read_bytes()
    pipeline = tmp_path / "notes.toml"
    pipeline.write_text(NOTES_TOML)

    code, _, err = invoke(
        "run", str(pipeline), "--runs-dir", str(v1_runs), "--resume", "--job-id", JOB
    )

    assert (0, "") == (code, err)
    assert log.read_bytes().startswith(old_log)  # the old lines are kept as they were
    new = [json.loads(line) for line in log.read_bytes()[len(old_log) :].splitlines()]
    expected = [
        ("job.started", None, None),
        ("step.skipped", "outline", "resumed"),
        ("step.skipped", "summary", "resumed"),
        ("job.finished", None, None),
    ]
    assert expected == [
        (r["type"], r.get("step"), r["data"].get("reason") if r["type"] == "step.skipped" else None)
        for r in new
    ]
    for record in new:
        assert ["ts", "level", "job_id", "type"] == list(record)[:4]
        assert (JOB, "INFO") == (record["job_id"], record["level"])
        assert dt.UTC == dt.datetime.fromisoformat(record["ts"]).tzinfo
    manifest = json.loads((v1_runs / JOB / "manifest.json").read_text())
    assert (STEPS, [], 1) == (
        manifest["completed_steps"],
        manifest["pending_steps"],
        manifest["format_version"],
    )
    _, out, _ = invoke("show", JOB, "--runs-dir", str(v1_runs))
    assert ["succeeded (resumed)"] * 2 == [
        " ".join(line.split()[1:3]) for line in out.splitlines()[2:]
    ]
