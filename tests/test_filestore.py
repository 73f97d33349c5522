from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from runner import (
    Event,
    EventEmitter,
    PathEscapeError,
    StorageError,
    filestore,
    run_dag,
    safe_write,
)
from runner.filestore import DirtyDirs, leftover_temp_files, sha256_bytes
from runner.pipeline_files import load_pipeline

EXAMPLE = Path(__file__).parent.parent / "examples" / "app_builder.toml"


async def test_safe_write_creates_then_reports_nochange(tmp_path: Path) -> None:
    first = await safe_write(tmp_path, "src/app.py", "print(1)\n")
    assert {
        "path": "src/app.py",
        "sha256": sha256_bytes(b"print(1)\n"),
        "wrote": True,
        "reason": "created",
    } == first
    assert b"print(1)\n" == (tmp_path / "src" / "app.py").read_bytes()


async def test_safe_write_nochange_reason(tmp_path: Path) -> None:
    await safe_write(tmp_path, "a.txt", b"same")
    target = tmp_path / "a.txt"
    os.utime(target, (1_000_000, 1_000_000))
    before = target.stat()
    result = await safe_write(tmp_path, "a.txt", b"same")
    after = target.stat()
    assert (False, "nochange") == (result["wrote"], result["reason"])
    # Not touched at all: same inode, same mtime.
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


async def test_safe_write_rewrites_a_file_edited_by_hand_as_updated(tmp_path: Path) -> None:
    await safe_write(tmp_path, "a.txt", b"v1")
    (tmp_path / "a.txt").write_bytes(b"edited")
    result = await safe_write(tmp_path, "a.txt", b"v1")
    assert (True, "updated") == (result["wrote"], result["reason"])
    assert b"v1" == (tmp_path / "a.txt").read_bytes()


@pytest.mark.parametrize(
    ("relpath", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../outside.txt", r"'\.\.'"),
        ("a/../../outside.txt", r"'\.\.'"),
        ("a\0b", "NUL"),
        ("C:/windows/x", "absolute"),
        ("..\\outside.txt", r"'\.\.'"),
        ("", "empty"),
        (".", "names no file"),
    ],
)
async def test_safe_write_refuses_paths_that_escape(tmp_path: Path, relpath: str, why: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(PathEscapeError, match=rf"^refused path .*{why}"):
        await safe_write(root, relpath, b"x")
    assert [] == [p for p in tmp_path.rglob("*") if p != root]


@pytest.mark.parametrize("link", ["dir", "file"])
async def test_safe_write_refuses_symlinks_leading_out(tmp_path: Path, link: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    if link == "dir":
        (root / "sub").symlink_to(outside, target_is_directory=True)
        relpath = "sub/x.txt"
    else:
        (outside / "x.txt").write_text("keep")
        (root / "x.txt").symlink_to(outside / "x.txt")
        relpath = "x.txt"
    with pytest.raises(PathEscapeError, match=r"^refused path .*symlink"):
        await safe_write(root, relpath, b"evil")
    assert [] == [p.name for p in outside.iterdir() if p.read_text() != "keep"]


async def test_safe_write_leaves_no_temp_file_when_the_write_fails(tmp_path: Path) -> None:
    (tmp_path / "a.txt").mkdir()  # a directory where the file should go
    with pytest.raises(StorageError, match=r"^cannot write 'a.txt'"):
        await safe_write(tmp_path, "a.txt", b"x")
    assert [] == leftover_temp_files([tmp_path])


async def test_a_temp_name_left_by_another_process_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Temp names are a per-process token and a counter: a crashed process with the
    # same token (or a forked child) may have left one behind. It is never touched.
    monkeypatch.setattr(filestore, "_temp_token", "same")
    monkeypatch.setattr(filestore, "_temp_counter", itertools.count())
    left = tmp_path / ".tmp-a.txt.same0"
    left.write_bytes(b"someone else's")
    result = await safe_write(tmp_path, "a.txt", b"mine")
    assert (b"mine", "created") == ((tmp_path / "a.txt").read_bytes(), result["reason"])
    assert b"someone else's" == left.read_bytes()
    assert [left] == list(tmp_path.glob(".tmp-*"))


def test_temp_names_differ_between_writes_and_processes() -> None:
    names = {filestore._temp_name("a") for _ in range(1000)}
    assert 1000 == len(names)
    assert all(filestore.is_temp_name(name) for name in names)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: after fork its names must not repeat the parent's
        os.write(write, filestore._temp_name("a").encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as child:
        child_name = child.read().decode()
    assert filestore.is_temp_name(child_name)
    assert child_name not in names | {filestore._temp_name("a")}


@pytest.mark.parametrize(
    ("name", "is_temp"),
    [
        (".tmp-a.txt.4b07a4c3305240", True),  # token and counter
        (".tmp-a.txt.0123abcd", True),  # 2.0's 8 hex
        (".tmp-a.txt.0123456789abcdef", True),  # a fresh random name
        (".tmp-notes.md", False),  # a step's own file
        ("a.txt", False),
    ],
)
def test_is_temp_name(name: str, is_temp: bool) -> None:
    assert is_temp == filestore.is_temp_name(name)


@pytest.mark.parametrize("where", ["sub", "sub/deeper"])
async def test_safe_write_refuses_a_symlink_even_one_pointing_inside(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(
        PathEscapeError, match=rf"^refused path '{where}/x': '{where}' is a symlink"
    ):
        await safe_write(tmp_path, f"{where}/x", b"x")
    assert [] == list((tmp_path / "real").iterdir())


async def test_safe_write_emits_file_written(tmp_path: Path) -> None:
    send_channel, receive_channel = trio.open_memory_channel[Event](10)
    emitter = EventEmitter("job-1", send_channel)
    result = await safe_write(tmp_path, "x.txt", b"x", emitter=emitter, step="builder")
    event = receive_channel.receive_nowait()
    assert ("file.written", "builder", dict(result)) == (
        event["type"],
        event.get("step"),
        dict(event.get("data") or {}),
    )


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
async def test_every_fsync_policy_writes_the_same_bytes(tmp_path: Path, policy: str) -> None:
    dirty = DirtyDirs()
    result = await safe_write(tmp_path, "d/x.txt", b"data", fsync=policy, dirty=dirty)
    assert b"data" == (tmp_path / "d" / "x.txt").read_bytes()
    assert "created" == result["reason"]
    # batch defers the directory fsync to the writer; the others leave nothing pending.
    assert (policy == "batch") == bool(dirty._dirs)
    dirty.sync()
    assert not dirty._dirs


async def test_idempotency_preserves_manifest_hash(runs_dir: Path) -> None:
    pipeline = load_pipeline(EXAMPLE).with_overrides(provider="fake")
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j1")
    manifest = first.run_dir / "manifest.json"
    before = manifest.read_bytes()
    files_before = {
        p: p.stat().st_mtime_ns for p in (first.run_dir / "files").rglob("*") if p.is_file()
    }
    again = await run_dag(pipeline, runs_dir=runs_dir, job_id="j1", resume=True)
    assert "succeeded" == again.status
    assert before == manifest.read_bytes()
    files_after = {
        p: p.stat().st_mtime_ns for p in (first.run_dir / "files").rglob("*") if p.is_file()
    }
    assert files_before == files_after


async def test_rerunning_a_step_rewrites_nothing_and_keeps_the_manifest(runs_dir: Path) -> None:
    pipeline = load_pipeline(EXAMPLE).with_overrides(provider="fake")
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="j1")
    before = (first.run_dir / "manifest.json").read_bytes()
    (first.run_dir / "outputs" / "builder.txt").unlink()  # builder must run again
    # No cache: the provider really answers again, with the same bytes.
    again = await run_dag(pipeline, runs_dir=runs_dir, job_id="j1", resume=True, use_cache=False)
    assert "succeeded" == again.status
    last_run = [e for e in _events(first.run_dir)][-9:]
    reasons = {
        e["data"]["path"]: e["data"]["reason"] for e in last_run if e["type"] == "file.written"
    }
    assert {"nochange"} == set(reasons.values())
    assert before == (first.run_dir / "manifest.json").read_bytes()


def _events(run_dir: Path) -> list[Event]:
    from runner import read_events

    return list(read_events(run_dir / "events.jsonl"))


def test_sha256_file_reads_in_chunks_a_file_bigger_than_the_memory(tmp_path: Path) -> None:
    # A model file can be bigger than the memory: hash a 1 GiB file (sparse, so it
    # costs no disk) in a process that may not hold 600 MB at once.
    big = tmp_path / "model.gguf"
    with open(big, "wb") as file:
        file.truncate(1 << 30)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))\n"
        "from runner.filestore import sha256_file\n"
        "print(sha256_file(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(big)], capture_output=True, text=True, check=False
    )
    expected = hashlib.sha256()
    chunk = bytes(1 << 20)
    for _ in range(1 << 10):
        expected.update(chunk)
    assert (0, expected.hexdigest()) == (done.returncode, done.stdout.strip()), done.stderr
