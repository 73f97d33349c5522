"""`safe_write()`: the only way anything under a job directory is written.

Atomic (temp file in the same directory, then `os.replace`), idempotent (same
bytes: the file is not touched), and confined: the path is walked from `root`
down, one directory at a time, each opened with `O_NOFOLLOW` relative to the
one before, so a symlink anywhere on the way (or as the target) is refused
and nothing can be written outside `root`, even if a directory is swapped for
a link meanwhile. A job passes its own directory as `root`: `files/`,
`outputs/` and `.cache/` are checked like any other component.

Durability against power loss follows the fsync policy: `always` fsyncs the
file and its directory before returning; `batch` records the directory in a
`DirtyDirs` set that the event writer fsyncs off the steps' path; `never`
leaves it to the OS.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import trio

from .config import FsyncPolicy
from .errors import PathEscapeError, StorageError

if TYPE_CHECKING:
    from .event_writer import EventEmitter

__all__ = [
    "DirtyDirs",
    "FsyncPolicy",
    "WriteResult",
    "check_relpath",
    "is_temp_name",
    "safe_write",
    "sha256_file",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class WriteResult(TypedDict):
    path: str
    sha256: str
    wrote: bool
    reason: str  # created / updated / nochange


class DirtyDirs:
    """Directories written since the last fsync batch (`RUNNER_FSYNC=batch`).

    Thread-safe: a write on a worker thread adds to it while the event writer syncs it.
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


# -- temp files ---------------------------------------------------------------
# The one definition of a temp file's name: `.tmp-<name>.<hex>`, where the hex is a
# random per-process token and a counter (a random 16-hex name if that one is taken).
# Resume removes whatever matches `is_temp_name`: what a killed write left behind.

_TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"\.tmp-.+\.[0-9a-f]{8,}\Z")


def _new_temp_token() -> None:
    global _temp_token, _temp_counter
    _temp_token, _temp_counter = os.urandom(6).hex(), itertools.count()


_temp_token = ""
_temp_counter = itertools.count()
_new_temp_token()
os.register_at_fork(after_in_child=_new_temp_token)


def _temp_name(name: str, *, fresh: bool = False) -> str:
    suffix = os.urandom(8).hex() if fresh else f"{_temp_token}{next(_temp_counter):x}"
    return f"{_TEMP_PREFIX}{name}.{suffix}"


def is_temp_name(filename: str) -> bool:
    """True for the name of a temp file `safe_write` makes (and a killed write leaves)."""
    return _TEMP_NAME.match(filename) is not None


def leftover_temp_files(directories: Iterable[Path]) -> list[Path]:
    """Temp files a killed write left behind under `directories` (resume removes them)."""
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found.extend(p for p in directory.rglob(f"{_TEMP_PREFIX}*") if is_temp_name(p.name))
    return found


# -- paths ----------------------------------------------------------------------


def _parts(relpath: str) -> list[str]:
    """The components of `relpath`, or `PathEscapeError` for what could never stay inside."""
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
    return parts


def _symlink_refused(relpath: str, where: list[str]) -> PathEscapeError:
    return PathEscapeError(f"refused path {relpath!r}: {'/'.join(where)!r} is a symlink")


def check_relpath(root: str | os.PathLike[str], relpath: str, *, under: str = "") -> None:
    """Raise `PathEscapeError` if writing `relpath` under `root/under` would be refused.

    Checks the path's text and every component that exists, from `root` down
    (`under` included), without writing: a `files = true` step checks all of its
    paths before it writes any.
    """
    parts = _parts(relpath)
    walk = [*_parts(under), *parts] if under else parts
    current = os.fspath(root)
    for index, part in enumerate(walk):
        current = os.path.join(current, part)
        try:
            found = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(found.st_mode):
            raise _symlink_refused(relpath, walk[: index + 1])


def _open_parent(root: str, relpath: str, parts: list[str]) -> int:
    """A descriptor of the target's directory, reached from `root` with no symlink.

    `root` (the job directory) is trusted, so its first subdirectory is opened by
    its full path; every directory under `root` is opened with `O_NOFOLLOW`, each
    from its parent's descriptor, so no component can lead out of the job.
    """
    dirs = parts[:-1]
    fd = _open_first(root, dirs[0]) if dirs else None
    start = 1
    if fd is None:
        fd, start = _open_root(root), 0
    try:
        for index in range(start, len(dirs)):
            next_fd = _open_or_make(dirs[index], fd, relpath, parts[: index + 1])
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_first(root: str, name: str) -> int | None:
    """`root/name` opened in one step, or None when that needs the careful way."""
    try:
        return os.open(os.path.join(root, name), _DIR_FLAGS)
    except OSError:  # absent, or a symlink: `_open_or_make` says which
        return None


def _open_root(root: str) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # the root is trusted: make it
        os.makedirs(root, exist_ok=True)
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def _open_or_make(name: str, dir_fd: int, relpath: str, walked: list[str]) -> int:
    """The directory `name` in `dir_fd`, made when absent, refused when a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # made meanwhile by another step
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, dir_fd):
            raise _symlink_refused(relpath, walked) from None
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


# -- writing ----------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str | None:
    """The file's SHA-256, or None when it does not exist. Read in chunks: a model file
    (provider `local`) can be bigger than the memory."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def write_atomic(
    root: str | os.PathLike[str],
    relpath: str,
    data: bytes,
    *,
    fsync: FsyncPolicy = "batch",
    dirty: DirtyDirs | None = None,
) -> WriteResult:
    """The synchronous core of `safe_write` (no events, no threads)."""
    parts = _parts(relpath)
    root_text = os.fspath(root)
    new_hash = sha256_bytes(data)
    try:
        dir_fd = _open_parent(root_text, relpath, parts)
    except PathEscapeError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write {relpath!r} under {root}: {exc.strerror or exc}") from exc
    try:
        existed = _write_in(dir_fd, relpath, parts, data, new_hash, fsync)
    finally:
        os.close(dir_fd)
    if existed is None:
        return WriteResult(path=relpath, sha256=new_hash, wrote=False, reason="nochange")
    if fsync == "batch" and dirty is not None:
        dirty.add(os.path.join(root_text, *parts[:-1]))
    reason = "updated" if existed else "created"
    return WriteResult(path=relpath, sha256=new_hash, wrote=True, reason=reason)


def _write_in(
    dir_fd: int, relpath: str, parts: list[str], data: bytes, new_hash: str, fsync: str
) -> bool | None:
    """Write `data` as the last part in `dir_fd`: None when the same bytes are there already,
    else whether a file was replaced."""
    name = parts[-1]
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        raise _symlink_refused(relpath, parts)
    if existing is not None and existing.st_size == len(data) and stat.S_ISREG(existing.st_mode):
        if _sha256_at(name, dir_fd) == new_hash:
            return None
    tmp = _temp_name(name)
    try:
        try:
            fd = os.open(tmp, _CREATE, 0o644, dir_fd=dir_fd)
        except FileExistsError:  # another process's name, left by a crash: take a fresh one
            tmp = _temp_name(name, fresh=True)
            fd = os.open(tmp, _CREATE, 0o644, dir_fd=dir_fd)
        try:
            try:
                _write_all(fd, data)
                if fsync == "always":
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if fsync == "always":
            os.fsync(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot write {relpath!r}: {exc.strerror or exc}") from exc
    return existing is not None


def _write_all(fd: int, data: bytes) -> None:
    # `os.write` rather than a file object: a buffered file adds three system calls
    # (fstat, ioctl, lseek) to every output and cache entry (docs/PERFORMANCE.md).
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sha256_at(name: str, dir_fd: int) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    with open(fd, "rb") as file:
        return sha256_bytes(file.read())


async def safe_write(
    root: str | os.PathLike[str],
    relpath: str,
    data: bytes | str,
    *,
    fsync: FsyncPolicy = "batch",
    dirty: DirtyDirs | None = None,
    emitter: EventEmitter | None = None,
    step: str | None = None,
) -> WriteResult:
    """Write `data` to `root/relpath` atomically and idempotently, confined to `root`.

    Returns `{path, sha256, wrote, reason}` where reason is `created`,
    `updated` or `nochange` (same bytes already there: the file is not
    touched). Raises `PathEscapeError` for absolute paths, `..`, NUL, drive
    letters and a symlink anywhere below `root`. With `RUNNER_FSYNC=always`
    the write (which waits for the disk) runs on a worker thread. With an
    `emitter`, a `file.written` event is emitted. Example::

        result = await safe_write(run_dir / "files", "src/app.py", code)
        assert result["reason"] in ("created", "updated", "nochange")
    """
    payload = data.encode() if isinstance(data, str) else data
    if fsync == "always":
        result = await trio.to_thread.run_sync(
            lambda: write_atomic(root, relpath, payload, fsync=fsync, dirty=dirty)
        )
    else:
        result = write_atomic(root, relpath, payload, fsync=fsync, dirty=dirty)
    if emitter is not None:
        await emitter.file_written(step, **result)
    return result


def _fsync_dir(directory: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
