"""Writing files whole or not at all, and one sentence when the disk or the folder refuses.

Every file deit writes (run checkpoints, weights, the teacher-label store, exports, the demo's
and the analysis' results, ``config.yaml``, ``log.txt``) goes through :func:`atomic_write`: the
data goes to a temporary file in the destination folder, is flushed and fsynced, then renamed
over the destination (``os.replace``, atomic on POSIX), so a crash, a full disk or a read-only
folder never leaves a half-written file and the previous file stays as it was.

When the write fails because the disk is full (``ENOSPC``, ``EDQUOT``) or the folder cannot be
written (``EROFS``, ``EACCES``, ``EPERM``), the error is a :class:`WriteError`: one sentence naming
the file, its folder, the bytes needed and free (:func:`shutil.disk_usage`) and that the
previous file is intact. ``torch.save`` turns a failed ``write`` into ``RuntimeError: [enforce
fail at inline_container.cc] unexpected pos``; the file object given to the writer records the
``OSError`` underneath, so the cause is still found. Imports no torch.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DISK_ERRNOS",
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "reserve",
    "too_long_message",
    "write_error",
]

#: errno -> (what went wrong, the fix), for the failures that are the disk's or the folder's.
_REASONS = {
    errno.ENOSPC: ("the disk is full", "free some space or write to another folder"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or write to another folder"),
    errno.EROFS: (
        "the folder is on a read-only file system",
        "write to another folder",
    ),
    errno.EACCES: (
        "the folder is not writable (permission denied)",
        "make it writable or write to another folder",
    ),
    errno.EPERM: (
        "the folder is not writable (operation not permitted)",
        "make it writable or write to another folder",
    ),
}

#: The error numbers that are the disk's or the folder's (one sentence, :func:`write_error`).
DISK_ERRNOS = frozenset(_REASONS)


class WriteError(OSError):
    """A file could not be written because of its disk or folder; the message is one sentence
    (see :func:`write_error`). ``errno`` is the underlying error number."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


def _free_bytes(folder: Path) -> int | None:
    for f in (folder, *folder.parents):  # the folder itself may not exist yet
        try:
            return shutil.disk_usage(f).free
        except OSError:
            continue
    return None


def write_error(path: str | os.PathLike, error: OSError, needed: int | None) -> WriteError:
    """The one sentence for ``path`` not written because of ``error`` (an errno of
    :data:`_REASONS`): file, folder, ``needed`` bytes (when known) and free, the previous file."""
    path = Path(path)
    what, fix = _REASONS[error.errno]
    free = _free_bytes(path.parent)
    sizes = [f"{needed:,} bytes needed"] if needed is not None else []
    sizes += [f"{free:,} free"] if free is not None else []
    size = f" ({', '.join(sizes)})" if sizes else ""
    before = (
        f"the previous {path.name!r} is intact"
        if path.exists()
        else "no partial file was left in its place"
    )
    return WriteError(
        f"Could not write {path.name!r} in {str(path.parent)!r}: {what}{size}; {before}; {fix}.",
        error.errno,
    )


class _Recording:
    """A binary file that remembers the ``OSError`` its ``write`` raised (writers such as
    ``torch.save`` replace it by their own error)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _Counting:
    """A sink that only counts the bytes written to it (the size of what failed to fit)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.n += n
        return n

    def flush(self) -> None:
        pass


def _size_of(write: Callable[[Any], None]) -> int | None:
    sink = _Counting()
    try:
        write(sink)
    except Exception:  # noqa: BLE001 - a writer that needs a real file: size unknown
        return None
    return sink.n


def umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file next to the destination: ``(fd, path)``, with the permissions a
    plain ``open`` would give it (``0o666`` less the umask), not mkstemp's private ``0o600``:
    the file it becomes is the user's to share like any other."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def _open(fd: int) -> IO[bytes]:
    return os.fdopen(fd, "wb")


def _disk_cause(e: BaseException, recorded: OSError | None) -> OSError | None:
    """The ``OSError`` of the disk or folder behind ``e``, if that is what failed."""
    for cause in (recorded, e, e.__cause__, e.__context__):
        if isinstance(cause, OSError) and cause.errno in _REASONS:
            return cause
    return None


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Any], None],
    shown: str | os.PathLike | None = None,
) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` writes the content to a binary file
    object ``f`` (a temporary file in the same folder, renamed over ``path`` once flushed and
    fsynced). The folder is created when missing. ``shown``: the file an error names, when
    ``path`` is a staged file that becomes it (default ``path``).

    Raises:
        WriteError: the disk is full or the folder cannot be written (one sentence with the
            bytes needed and free); ``path`` is unchanged and no temporary file is left.
        Exception: whatever ``write`` raises otherwise (``path`` unchanged, too).
    """
    path = Path(path)
    tmp: str | None = None
    recorded: _Recording | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _make_temp(path.parent, path.name)
        with _open(fd) as f:
            recorded = _Recording(f)
            write(recorded)
            recorded.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _disk_cause(e, recorded.error if recorded is not None else None)
        if cause is None:
            raise
        raise write_error(shown or path, cause, _size_of(write)) from None
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(
    path: str | os.PathLike, text: str, shown: str | os.PathLike | None = None
) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), shown)


def _allocate(fd: int, size: int) -> None:
    os.posix_fallocate(fd, 0, size)


def reserve(path: str | os.PathLike, final: str | os.PathLike, needed: int) -> None:
    """Allocate the disk blocks of the file ``path`` (its current length) now, so that writing
    it through a memory map cannot fail later (a full disk under a memory map is a SIGBUS, not
    an error). File systems without ``fallocate`` are left as they are.

    Raises:
        WriteError: the disk cannot hold it, naming ``final`` (the file ``path`` becomes) and
            ``needed`` bytes (what the whole write needs).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        _allocate(fd, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in _REASONS:
            raise write_error(final, e, needed) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _short(text: str, keep: int = 24) -> str:
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


def too_long_message(error: OSError) -> str | None:
    """The sentence for a path the file system refuses as too long (``ENAMETOOLONG``): which
    name in it is longer than the file system allows, or the whole path; ``None`` for any
    other error."""
    if error.errno != errno.ENAMETOOLONG or error.filename is None:
        return None
    path = os.fsdecode(error.filename)
    name_max = 255
    for folder in Path(path).absolute().parents:  # the nearest that exists: its file system's
        try:
            name_max = os.pathconf(folder, "PC_NAME_MAX")
            break
        except (OSError, ValueError):
            continue
    long = [n for n in Path(path).parts if len(os.fsencode(n)) > name_max]
    what = (
        f"the name {_short(long[0])!r} has {len(os.fsencode(long[0]))} bytes, more than the "
        f"{name_max} a name may have there"
        if long
        else f"the whole path has {len(os.fsencode(path))} bytes, more than the file system takes"
    )
    return f"The path {_short(path)!r} is too long: {what}; choose a shorter path."
