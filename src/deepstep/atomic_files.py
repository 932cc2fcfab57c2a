"""Files written whole or not at all: readers (and a run killed mid-export) see the old
content or the new, never half of it."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _through_proc(path: Path) -> bool:
    """Whether ``path`` or a symlink on the way to its target names a process's open file
    (``/dev/stdout`` -> ``/proc/self/fd/1``)."""
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on symlink hops
        if hop.parts[1:2] == ("proc",) or hop.parts[1:3] == ("dev", "fd"):
            return True
        if not hop.is_symlink():
            return False
        hop = Path(os.path.abspath(hop.parent / os.readlink(hop)))
    return False


def _writes_in_place(path: Path) -> bool:
    """True for targets a rename would destroy: character devices (``/dev/null``, a terminal),
    FIFOs and ``/dev/stdout``-style links into ``/proc``. Those are written straight, not replaced."""
    try:
        mode = path.stat().st_mode  # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    if _through_proc(path):
        return True  # /dev/stdout redirected to a file: the shell holds that file open, replacing it loses the output
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OSError(errno.EINVAL, f"it is {kind}", str(path))
    return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A path to write ``path``'s new content to: a temporary file beside the real target (a symlink
    is followed, so the link stays and its target gets the content), flushed and renamed over it
    on success. A character device or FIFO is yielded as it is, to be written straight."""
    path = Path(path)
    if _writes_in_place(path):
        yield path
        return
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    # mkstemp creates 0600; an export is an ordinary file, so keep the target's mode or use 0644.
    os.fchmod(handle, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


__all__ = ["atomic_path", "write_bytes_atomically", "write_text_atomically"]
