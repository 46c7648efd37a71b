"""Files written whole or not at all: a temporary file in the target's folder, then a rename.

Every file densenn writes (models, plots, the CLI's predictions) goes through
:func:`atomic_write`, so a crash, a SIGKILL or a Ctrl-C never leaves a
half-written file under the final name, and a reader in another process sees
either the old file or the new one, never a mix.

* The temporary file is named ``.{name}.{pid}.{k}.densenn-tmp`` next to the target
  (``k`` counts this process's writes, so two threads saving one path do not collide).
  A save killed before its rename leaves one behind; the next save into that
  folder removes those whose process is gone (never a live writer's).
* The new file gets the permissions any newly created file gets (``0o666``
  less the umask), not ``mkstemp``'s private ``0o600``; a file that is being
  replaced keeps its mode.
* The data is fsynced before the rename and the folder after it, so the rename
  itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import stat

from densenn.errors import DensennError

TMP_SUFFIX = ".densenn-tmp"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.\d+" + re.escape(TMP_SUFFIX) + r"$")
_writes = itertools.count()     # next() on it is atomic under the GIL


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete temporary files of atomic writes into ``folder`` whose writing process is gone.

    Returns the paths removed. A temporary file of a process that still runs is kept:
    it may be a save in progress.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TMP_NAME.match(name)
        if match is None:
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or _process_exists(pid):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):    # another cleaner was first
            os.unlink(path)
            removed.append(path)
    return removed


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:         # a folder that cannot be opened (not on POSIX): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                # some file systems refuse fsync on a folder; the rename is done anyway
    finally:
        os.close(fd)


def _target_folder(path: str, what: str) -> str:
    """The absolute folder a file at ``path`` goes into; DensennError unless it exists and
    ``path`` is not itself a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DensennError(f"{what} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise DensennError(f"{what} {path!r} is a folder; expected a file name")
    return folder


def _temporary(path: str, folder: str, what: str) -> str:
    """Create the (empty, private) temporary file of one write of ``path``; returns its path.

    Creating a file is the only true test of a folder: ``os.access`` says yes to root, and
    knows nothing of read-only or special file systems."""
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{next(_writes)}{TMP_SUFFIX}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise DensennError(f"{what} {path!r}: cannot create files in folder {folder!r} "
                           f"({exc.strerror or exc})") from None
    return tmp


def check_writable_folder(path, what: str = "path") -> str:
    """The absolute folder a file at ``path`` would go into; DensennError unless it exists
    and a file can be created there (one is, and removed again)."""
    path = os.fspath(path)
    folder = _target_folder(path, what)
    os.unlink(_temporary(path, folder, what))
    return folder


@contextlib.contextmanager
def atomic_write(path, what: str = "path"):
    """``with atomic_write(path) as tmp:`` write the whole file at ``tmp`` (a path); on a
    normal exit it becomes ``path``, on any exception (Ctrl-C included) it is removed.

    DensennError (naming ``what``) when the folder is missing or no file can be created there.
    """
    path = os.fspath(path)
    folder = _target_folder(path, what)
    remove_stale_temporaries(folder)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)      # a replaced file keeps its mode
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = _temporary(path, folder, what)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def write_bytes(path, data: bytes, what: str = "path") -> str:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, what) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return os.fspath(path)
