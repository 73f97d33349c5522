"""The jobs of a runs directory and job references: `runner/job_index.py`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runner.errors import JobError
from runner.events import event_line, make_event
from runner.job_index import (
    job_states,
    newest_first,
    newest_unfinished,
    resolve_job,
    select_jobs,
)


def write_job(
    runs_dir: Path,
    job_id: str,
    *,
    started: str = "2026-11-01T10:00:00.000000+00:00",
    status: str | None = "succeeded",
    pipeline: str = "p",
) -> Path:
    """A job's log as runner writes it: one step `a`, and an end unless `status` is None."""
    run_dir = runs_dir / job_id
    run_dir.mkdir(parents=True)
    lines = [
        make_event(job_id, "job.started", ts=started, data={"pipeline": pipeline, "steps": ["a"]}),
        make_event(job_id, "step.started", step="a", ts=started),
    ]
    if status is not None:
        ended = "succeeded" if status == "succeeded" else "failed"
        lines.append(make_event(job_id, f"step.{ended}", step="a", ts=started, data={}))
        lines.append(make_event(job_id, "job.finished", ts=started, data={"status": status}))
    (run_dir / "events.jsonl").write_bytes(b"".join(event_line(e) for e in lines))
    return run_dir


def at(hour: int) -> str:
    return f"2026-11-01T{hour:02d}:00:00.000000+00:00"


def test_job_states_leave_out_what_no_job_can_be(runs_dir: Path) -> None:
    write_job(runs_dir, "good")
    shutil.copytree(runs_dir / "good", runs_dir / ".hidden")
    shutil.copytree(runs_dir / "good", runs_dir / "sp ace")
    (runs_dir / ".model-sha256.json").write_text("{}")
    (runs_dir / "no-log").mkdir()
    assert ["good"] == [state.job_id for state in job_states(runs_dir)]
    assert [] == list(job_states(runs_dir / "missing"))


def test_a_job_is_named_by_its_directory_even_when_its_log_says_otherwise(
    runs_dir: Path,
) -> None:
    write_job(runs_dir, "original")
    shutil.copytree(runs_dir / "original", runs_dir / "copy")
    assert ["copy", "original"] == sorted(state.job_id for state in job_states(runs_dir))


def test_job_states_fold_step_events_only_when_asked(runs_dir: Path) -> None:
    write_job(runs_dir, "j")
    (plain,) = job_states(runs_dir)
    assert "pending" == plain.steps["a"].status  # step.* lines passed over
    (full,) = job_states(runs_dir, families=("job", "step"))
    assert "succeeded" == full.steps["a"].status


def test_newest_first_and_select_jobs(runs_dir: Path) -> None:
    write_job(runs_dir, "old", started=at(8), status="failed")
    write_job(runs_dir, "mid", started=at(9), pipeline="q")
    write_job(runs_dir, "new", started=at(10), status="cancelled")
    states = newest_first(job_states(runs_dir))
    assert ["new", "mid", "old"] == [s.job_id for s in states]
    assert ["new", "old"] == [
        s.job_id for s in select_jobs(states, statuses=("failed", "cancelled"))
    ]
    assert ["mid"] == [s.job_id for s in select_jobs(states, pipeline="q")]
    assert [] == select_jobs(states, statuses=("failed",), pipeline="q")
    assert states == select_jobs(states)


def test_latest_is_the_job_that_started_last(runs_dir: Path) -> None:
    write_job(runs_dir, "b-job", started=at(8))
    write_job(runs_dir, "a-job", started=at(10), pipeline="other")
    assert "a-job" == resolve_job(runs_dir, "latest")
    assert "b-job" == resolve_job(runs_dir, "latest", pipeline="p")
    with pytest.raises(JobError, match=r"^no job of pipeline 'zzz' in "):
        resolve_job(runs_dir, "latest", pipeline="zzz")


def test_latest_in_an_empty_runs_dir_is_an_error(runs_dir: Path) -> None:
    with pytest.raises(JobError, match=r"^no job in "):
        resolve_job(runs_dir, "latest")


def test_a_unique_prefix_names_its_job_and_an_exact_id_wins(runs_dir: Path) -> None:
    write_job(runs_dir, "demo-20261101T100000-aaaa")
    write_job(runs_dir, "demo")
    assert "demo-20261101T100000-aaaa" == resolve_job(runs_dir, "demo-2026")
    assert "demo" == resolve_job(runs_dir, "demo")  # also a prefix of the other


def test_an_ambiguous_prefix_lists_the_candidates(runs_dir: Path) -> None:
    for n in range(7):
        write_job(runs_dir, f"job-{n}")
    with pytest.raises(JobError) as caught:
        resolve_job(runs_dir, "job-")
    assert (
        f"job 'job-' is ambiguous in {runs_dir}: job-0, job-1, job-2, job-3, job-4, ..."
    ) == str(caught.value)


def test_a_prefix_never_matches_a_directory_no_job_can_have(runs_dir: Path) -> None:
    write_job(runs_dir, "x1")
    shutil.copytree(runs_dir / "x1", runs_dir / "x y")
    assert "x1" == resolve_job(runs_dir, "x")


def test_an_unknown_or_invalid_reference_comes_back_for_the_caller(runs_dir: Path) -> None:
    write_job(runs_dir, "j")
    assert "ghost" == resolve_job(runs_dir, "ghost")
    assert "../j" == resolve_job(runs_dir, "../j")


def test_newest_unfinished_skips_succeeded_jobs(runs_dir: Path) -> None:
    write_job(runs_dir, "failed-one", started=at(8), status="failed")
    write_job(runs_dir, "done", started=at(9))
    assert "failed-one" == newest_unfinished(runs_dir, "p")
    with pytest.raises(JobError, match="no unfinished job of pipeline 'q'"):
        newest_unfinished(runs_dir, "q")
