"""Local files published atomically, safe under concurrency and interruption.

A file is written to a temporary sibling and renamed into place, so readers see it whole
or not at all. The temporary sibling is named ``.{name}~{host}~{pid}~{token}.tmp``:

- it is created with mode ``0666 & ~umask`` (as ``open`` would; ``mkstemp`` forces 0600,
  which made a shared bucket folder unreadable to the group), so published files honour
  the umask;
- a rerun removes the temporary files a killed writer left (`remove_stale`), but only
  **stale** ones: from this host when their process is gone, from another host (a shared
  filesystem) when they were not written to for `STALE_AFTER` seconds. Two jobs on
  the same item at once (a retried array job overlapping a slow one) therefore never delete
  each other's files in flight; both publish the same bytes and the last rename wins.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

# a writer on another host that has not written for this long is taken as dead (a live
# writer touches its file at least every few seconds while it copies or encodes)
STALE_AFTER = 3600.0

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)~(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~[0-9a-f]+\.tmp$")


def temp_sibling(target: str | Path) -> Path:
    """A new, empty temporary file beside ``target`` (created exclusively, umask honoured).

    Args:
        target: The file the temporary file will replace.

    Returns:
        The temporary file's path, in ``target``'s folder.
    """
    target = Path(target)
    while True:
        tmp = target.with_name(f".{target.name}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def publishing(target: str | Path) -> Iterator[Path]:
    """``with publishing(target) as tmp:`` write ``tmp``; on success it becomes ``target``
    (an atomic rename), on any error it is removed.

    Args:
        target: The file to write; its parent folders are created.

    Yields:
        The temporary file to write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


def is_stale(path: Path) -> bool:
    """Whether a temporary file was left by a writer that is gone (see the module doc).
    Temporary files of other naming schemes (stacchip before 0.2's host/pid names) are
    stale: no current writer makes them.

    Args:
        path: A temporary file.

    Returns:
        True if no live writer owns the file.
    """
    found = _TEMP.match(path.name)
    if found is None:
        return True
    return _stale_owner(found["host"], int(found["pid"]), path)


def is_temp(path: Path) -> bool:
    """Whether ``path`` is named like a temporary file (``.name...tmp``).

    Args:
        path: Any file.

    Returns:
        True if the name starts with ``.`` and ends with ``.tmp``.
    """
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale(folder: str | Path, recursive: bool = True) -> int:
    """Delete the stale temporary files under ``folder``; returns how many.

    Args:
        folder: The folder to clean; a missing folder has none.
        recursive: Also clean its subfolders.

    Returns:
        The number of files deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = 0
    for path in found:
        if path.is_file() and is_stale(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def scratch_dir(what: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A private scratch folder ``{parent}/stacchip-{what}~{host}~{pid}~{token}`` (parent:
    the system's temporary folder), removed on exit. Entering one first removes the scratch
    folders of ``what`` that killed processes left (same rules as `is_stale`), so a
    rerun cleans up after a ``kill -9``.

    Args:
        what: A name for the folder's use, part of its name.
        parent: The folder to create it in; default: the system's temporary folder.

    Yields:
        The new, empty folder (mode 0700).
    """
    import shutil
    import tempfile

    parent = Path(parent or tempfile.gettempdir())
    for old in parent.glob(f"stacchip-{what}~*"):
        found = re.match(r"^stacchip-.+~(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~[0-9a-f]+$", old.name)
        if found and old.is_dir() and _stale_owner(found["host"], int(found["pid"]), old):
            shutil.rmtree(old, ignore_errors=True)
    path = parent / f"stacchip-{what}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stale_owner(host: str, pid: int, path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if host == _HOST:
        return not _alive(pid) or age > STALE_AFTER
    return age > STALE_AFTER
