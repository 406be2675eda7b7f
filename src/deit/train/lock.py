"""One run per output folder: a lock file ``<output_dir>/.deit-run.lock``.

The lock is a POSIX record lock (``fcntl.lockf``) on that file, which also holds the owner's
pid, host and start time (JSON) so that a refused run can name it. The operating system drops
the lock when its process ends, however it ends, so a killed run never leaves it stuck: the file
then still names the dead owner, and the next run takes the lock over with a note. Record locks
belong to a process, not to the children it forks (data-loader workers), and work on NFS.
A process holds a folder's lock once: a second run in the same process is refused too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .._write import _REASONS, write_error

__all__ = ["LOCK_NAME", "OutputFolderBusyError", "OutputLock", "folder_lock"]

LOCK_NAME = ".deit-run.lock"
_HELD: set[str] = set()  # lock files this process holds (record locks do not exclude it)


class OutputFolderBusyError(ValueError):
    """Another live run holds the output folder's lock (the message names its pid and host)."""


def _owner(fd: int) -> dict:
    """The owner written in the lock file (``{}`` when empty or unreadable)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _who(owner: dict) -> str:
    if not owner:
        return "its owner is starting"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def _new_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for p in (folder, *folder.absolute().parents):
        if p.exists():
            break
        missing.append(p)
    return missing


class OutputLock:
    """The lock of one output folder, held by this process until :meth:`release`.

    Use :meth:`acquire`; ``note`` is the sentence about a stale lock taken over ('' if none).
    """

    def __init__(self, path: Path, fd: int, created: list[Path], note: str) -> None:
        self.path, self.fd, self.created, self.note = path, fd, created, note
        self.key = str(path.resolve())  # in _HELD while held

    @classmethod
    def acquire(
        cls, folder: str | Path, user: str = "run", flag: str = "--output_dir"
    ) -> OutputLock:
        """Create ``folder`` if needed and lock it for this process. ``user`` (what holds the
        lock: ``"run"``, ``"label pass"``) and ``flag`` (where the user chooses the folder) word
        the refusal.

        Raises:
            OutputFolderBusyError: another live process (or a run of this one) holds the lock;
                the sentence names its pid, host and start time and the fixes.
            WriteError: (an ``OSError``) the folder is read-only or its disk full: one sentence.
            OSError: the folder or lock file cannot be created otherwise.
        """
        folder = Path(folder)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        me["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        created = _new_dirs(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, previous = cls._lock(folder / LOCK_NAME)
        except BaseException as e:
            _remove_dirs(created)
            if isinstance(e, OutputFolderBusyError):  # e names the owner
                raise OutputFolderBusyError(
                    f"The output folder {str(folder)!r} is in use by another {user} ({e}); wait "
                    f"for it to end, or choose another {flag}."
                ) from None
            if isinstance(e, OSError) and e.errno in _REASONS:  # a read-only folder, a full disk
                raise write_error(folder / LOCK_NAME, e, len(json.dumps(me))) from None
            raise
        note = ""
        if previous.get("unlocked"):
            note = (
                f"the file system of {str(folder)!r} does not support file locks "
                f"({previous['unlocked']}); a second run into it would not be refused."
            )
        elif previous:
            note = (
                f"the output folder {str(folder)!r} was locked by {_who(previous)}, which ended "
                "without releasing it (killed or crashed); the lock is taken over."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return cls(folder / LOCK_NAME, fd, created, note)

    @staticmethod
    def _lock(path: Path) -> tuple[int, dict]:
        """Open and lock ``path``; returns the descriptor and the owner it names (a dead
        one's), or ``{"unlocked": reason}`` on a file system without locks. A file replaced
        meanwhile (its owner released it) is locked anew.

        Raises:
            OutputFolderBusyError: a live owner holds it; the message names only the owner.
        """
        import fcntl

        key = str(path.resolve())
        if key in _HELD:
            raise OutputFolderBusyError(f"pid {os.getpid()}: this process")
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _owner(fd)
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise OutputFolderBusyError(_who(owner)) from None
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
                _HELD.add(key)
                return os.open(path, os.O_RDWR), {"unlocked": e.strerror}
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                _HELD.add(key)
                return fd, _owner(fd)
            os.close(fd)  # the owner removed it on release: lock the new file
        raise OSError(f"the lock file {path} keeps changing; try again")

    def held(self) -> bool:
        """Whether the lock file is still where it was taken: ``False`` once the folder (or
        the file) was deleted, moved or replaced while the lock was held."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False

    def gone_error(
        self, when: str = "", user: str = "run", flag: str = "--output_dir"
    ) -> FileNotFoundError:
        """The one sentence for a folder found gone (:meth:`held`): nothing more is written,
        not even elsewhere; ``when`` places it (``" (found saving epoch 2)"``)."""
        folder = str(self.path.parent)
        return FileNotFoundError(
            f"The output folder {folder!r} was deleted or moved during the {user}{when}; the "
            f"{user} stopped without writing anywhere else; start it again with a {flag} that "
            "stays in place."
        )

    def release(self, remove_created: bool = False) -> None:
        """Remove the lock file and unlock. With ``remove_created`` the folders :meth:`acquire`
        created are removed again when empty (a run that failed before writing anything)."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)  # still locked: nobody can take the old file
        _HELD.discard(self.key)
        os.close(self.fd)
        self.fd = -1
        if remove_created:
            _remove_dirs(self.created)


def _remove_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # innermost first; stop at the first one holding something
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def folder_lock(folder: str | Path, user: str, flag: str) -> Iterator[OutputLock]:
    """Hold ``folder``'s lock (:meth:`OutputLock.acquire`) for a job that writes several files
    into it (``deit analyze``, ``deit benchmark``), so that a second job into it is refused
    instead of mixing its files with this one's; folders created for the lock and left empty
    are removed afterwards. A stale lock's note is printed."""
    from .._notes import print_note

    lock = OutputLock.acquire(folder, user, flag)
    if lock.note:
        print_note(lock.note)
    try:
        yield lock
    finally:
        lock.release(remove_created=True)
