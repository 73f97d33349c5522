"""`safe_write()`: the only way anything under a job directory is written.

Atomic (temp file in the same directory, then `os.replace`), idempotent (same
bytes: the file is not touched), and confined (nothing escapes `root`).
Durability against power loss follows the fsync policy: `always` fsyncs the
file and its directory before returning; `batch` records the directory in a
`DirtyDirs` set that the event writer fsyncs off the steps' path; `never`
leaves it to the OS.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import trio

from .errors import PathEscapeError, StorageError

if TYPE_CHECKING:
    from .events import EventEmitter

__all__ = ["DirtyDirs", "WriteResult", "check_relpath", "safe_write", "sha256_file"]

_TMP_PREFIX = ".tmp-"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class WriteResult(TypedDict):
    path: str
    sha256: str
    wrote: bool
    reason: str  # created / updated / nochange


class DirtyDirs:
    """Directories written since the last fsync batch (`RUNNER_FSYNC=batch`).

    Thread-safe: the background writes add to it while the event writer syncs it.
    """

    def __init__(self) -> None:
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def add(self, directory: str | os.PathLike[str]) -> None:
        with self._lock:
            self._dirs.add(os.fspath(directory))

    def sync(self) -> None:
        """fsync every recorded directory; call it from a worker thread."""
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for directory in dirs:
            _fsync_dir(directory)


def check_relpath(root: Path, relpath: str) -> Path:
    """Return the absolute target for `relpath` under `root`, or raise `PathEscapeError`."""
    return Path(_locate(os.fspath(root), relpath)[0])


def _locate(root: str, relpath: str) -> tuple[str, os.stat_result | None]:
    """The absolute target for `relpath` under `root`, and its `lstat` (None: absent).

    Raises `PathEscapeError` when the path would leave `root`.
    """
    if not relpath or "\0" in relpath:
        raise PathEscapeError(f"refused path {relpath!r}: empty or contains NUL")
    posix = relpath.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise PathEscapeError(f"refused path {relpath!r}: absolute paths are not allowed")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathEscapeError(f"refused path {relpath!r}: '..' is not allowed")
    if not parts:
        raise PathEscapeError(f"refused path {relpath!r}: names no file")
    real_root = _real_root(root)
    # Only a symlink under root can lead out: lstat each existing component (cheaper than
    # resolving from /), and resolve fully only when one is a link.
    current = real_root
    last = len(parts) - 1
    for index, part in enumerate(parts):
        current = f"{current}{os.sep}{part}"
        # Most targets do not exist yet: ask without the cost of raising an exception.
        if index == last and not os.access(current, os.F_OK, follow_symlinks=False):
            return current, None
        try:
            found = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return os.path.join(real_root, *parts), None
        if stat.S_ISLNK(found.st_mode):
            target = os.path.join(real_root, *parts)
            resolved = os.path.realpath(target)
            if os.path.commonpath([resolved, real_root]) != real_root:
                raise PathEscapeError(
                    f"refused path {relpath!r}: it leads outside {root} (symlink)"
                )
            return target, found if current == target else _lstat(target)
    return current, found


def _new_tmp_names() -> None:
    global _tmp_token, _tmp_counter
    _tmp_token, _tmp_counter = os.urandom(6).hex(), itertools.count()


_tmp_token = ""
_tmp_counter = itertools.count()
_new_tmp_names()
os.register_at_fork(after_in_child=_new_tmp_names)


def _tmp_suffix() -> str:
    # Unique without a getrandom() per write: a random token per process, and a counter.
    return f"{_tmp_token}{next(_tmp_counter):x}"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


@functools.lru_cache(maxsize=256)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str | None:
    """The file's SHA-256, or None when it does not exist."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


def write_atomic(
    root: str | os.PathLike[str],
    relpath: str,
    data: bytes,
    *,
    fsync: str = "batch",
    dirty: DirtyDirs | None = None,
    sha256: str | None = None,
) -> WriteResult:
    """The synchronous core of `safe_write` (no events, no threads).

    `sha256`, when the caller already hashed `data`, saves hashing it again.
    """
    target, existing = _locate(os.fspath(root), relpath)
    new_hash = sha256 or sha256_bytes(data)
    # Same bytes already there: leave the file alone. Only a same-sized file can be.
    if (
        existing is not None
        and (existing.st_size == len(data) or stat.S_ISLNK(existing.st_mode))
        and sha256_file(target) == new_hash
    ):
        return WriteResult(path=relpath, sha256=new_hash, wrote=False, reason="nochange")
    directory, name = os.path.split(target)
    tmp = f"{directory}{os.sep}{_TMP_PREFIX}{name}.{_tmp_suffix()}"
    try:
        try:
            fd = os.open(tmp, _CREATE, 0o644)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, _CREATE, 0o644)
        except FileExistsError:  # another process's name, left by a crash: take a fresh one
            tmp = f"{directory}{os.sep}{_TMP_PREFIX}{name}.{os.urandom(8).hex()}"
            fd = os.open(tmp, _CREATE, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if fsync == "always":
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {relpath!r} under {root}: {exc.strerror or exc}") from exc
    if fsync == "always":
        _fsync_dir(directory)
    elif fsync == "batch" and dirty is not None:
        dirty.add(directory)
    reason = "created" if existing is None else "updated"
    return WriteResult(path=relpath, sha256=new_hash, wrote=True, reason=reason)


async def safe_write(
    root: str | os.PathLike[str],
    relpath: str,
    data: bytes | str,
    *,
    fsync: str = "batch",
    dirty: DirtyDirs | None = None,
    emitter: EventEmitter | None = None,
    step: str | None = None,
) -> WriteResult:
    """Write `data` to `root/relpath` atomically and idempotently, confined to `root`.

    Returns `{path, sha256, wrote, reason}` where reason is `created`,
    `updated` or `nochange` (same bytes already there: the file is not
    touched). Raises `PathEscapeError` for absolute paths, `..`, NUL, drive
    letters and symlinks leading out of `root`. With an `emitter`, a
    `file.written` event is emitted. Example::

        result = await safe_write(run_dir / "files", "src/app.py", code)
        assert result["reason"] in ("created", "updated", "nochange")
    """
    payload = data.encode() if isinstance(data, str) else data
    root_path = Path(root)
    if fsync == "always":
        result = await trio.to_thread.run_sync(
            lambda: write_atomic(root_path, relpath, payload, fsync=fsync, dirty=dirty)
        )
    else:
        result = write_atomic(root_path, relpath, payload, fsync=fsync, dirty=dirty)
    if emitter is not None:
        await emitter.file_written(step, **result)
    return result


def leftover_temp_files(directories: Iterable[Path]) -> list[Path]:
    """Temp files a killed process left behind (tests and resume use this)."""
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found.extend(p for p in directory.rglob(f"{_TMP_PREFIX}*") if p.is_file())
    return found


def _fsync_dir(directory: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
