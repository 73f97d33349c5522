"""The job directory: job ids, confinement of every write, and what resume cleans up."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from helpers import events, fake_pipeline, of_type

from runner import JobError, Settings, Step, run_dag
from runner.run_dir import RunDir, check_job_id

FAST = Settings(fsync="never")

BAD_JOB_IDS = [
    "x\ny",
    "evil\x7f",
    "tab\there",
    "with space",
    "café",
    ".hidden",
    "a" * 129,
    "",
    "..",
    "a/b",
]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
def test_bad_job_ids_are_refused(job_id: str) -> None:
    with pytest.raises(JobError, match=r"^invalid job id .*: use ASCII letters, digits"):
        check_job_id(job_id)


@pytest.mark.parametrize("job_id", ["a", "A-1_b.2", "x" * 128, "_lead", "-lead", "v1.0"])
def test_good_job_ids_are_accepted(job_id: str) -> None:
    check_job_id(job_id)


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
async def test_run_dag_refuses_a_bad_job_id_before_writing(runs_dir: Path, job_id: str) -> None:
    with pytest.raises(JobError, match=r"^invalid job id"):
        await run_dag(fake_pipeline([Step("a", prompt="a")]), runs_dir=runs_dir, job_id=job_id)
    assert not runs_dir.exists()


# -- confinement ---------------------------------------------------------------------

BUILDER_REPLY = "```python path=src/app.py\nprint('hi')\n```\n"


def _builder() -> object:
    return fake_pipeline(
        [Step("build", prompt="build it", files=True)], replies={"build": BUILDER_REPLY}
    )


@pytest.mark.parametrize("target", ["files", "outputs", ".cache", "files/src"])
async def test_a_symlinked_job_subdirectory_is_refused_and_nothing_lands_outside(
    runs_dir: Path, tmp_path: Path, target: str
) -> None:
    pipeline = _builder()
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    assert "succeeded" == first.status
    run_dir = first.run_dir
    # The step must run again and miss the cache: its output no longer matches the log.
    (run_dir / "outputs" / "build.txt").write_text("edited")
    for entry in (run_dir / ".cache").iterdir():
        shutil.rmtree(entry)
    # Swap the directory for a symlink to a directory outside the job.
    outside = tmp_path / "outside"
    shutil.move(run_dir / target, outside)
    before = sorted((p.relative_to(outside), p.read_bytes()) for p in _files(outside))
    (run_dir / target).symlink_to(outside, target_is_directory=True)

    again = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    assert "failed" == again.status
    assert before == sorted((p.relative_to(outside), p.read_bytes()) for p in _files(outside))
    [failed] = of_type(run_dir, "step.failed")
    assert ("ERROR", "PathEscapeError") == (failed["level"], failed["data"]["error"])
    assert f"{target!r} is a symlink" in failed["data"]["message"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_a_step_cannot_write_the_jobs_own_files(runs_dir: Path) -> None:
    reply = "```text path=../events.jsonl\nforged\n```\n"
    pipeline = fake_pipeline([Step("b", prompt="x", files=True)], replies={"b": reply})
    result = await run_dag(pipeline, runs_dir=runs_dir, settings=FAST)
    assert "failed" == result.status
    [failed] = of_type(result.run_dir, "step.failed")
    assert "PathEscapeError" == failed["data"]["error"]
    assert all(e["type"] != "file.written" for e in events(result.run_dir))


# -- temp files a killed write leaves ------------------------------------------------

KILLED_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from runner import filestore

    # Die between writing the temp file and renaming it, as a SIGKILL can.
    os.replace = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    filestore.write_atomic(sys.argv[1], "outputs/a.txt", b"half", fsync="never")
    """
)


async def test_resume_removes_the_temp_file_of_a_write_killed_mid_way(runs_dir: Path) -> None:
    pipeline = fake_pipeline([Step("a", prompt="a")])
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j", settings=FAST)
    killed = await trio.run_process(
        [sys.executable, "-c", KILLED_WRITE, str(first.run_dir)], check=False
    )
    assert -9 == killed.returncode
    [left] = list((first.run_dir / "outputs").glob(".tmp-*"))

    await run_dag(pipeline, runs_dir=runs_dir, job_id="j", resume=True, settings=FAST)

    assert not left.exists()
    assert [] == list(first.run_dir.rglob(".tmp-*"))


def test_the_job_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    run_dir = RunDir.of(tmp_path, "j")
    fd = run_dir.create(b"{}")
    try:
        with pytest.raises(JobError, match=r"^job 'j' is running in another process$"):
            RunDir.of(tmp_path, "j").open_existing()
    finally:
        os.close(fd)
    os.close(RunDir.of(tmp_path, "j").open_existing())
