"""Files written whole or not at all: readers (and a run killed mid-export) see the old
content or the new, never half of it.

Temporary files and staging folders carry their writer's process id in their name
(``PREFIX<pid>-<random>``), so what a killed process left behind is recognised and removed
by the next writer in the same folder, while a live writer's work is left alone."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepstep import json_text

TEMP_SUFFIX = ".tmp"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def owned_prefix(prefix: str) -> str:
    """``prefix`` followed by this process's id: the name prefix for its temporary files and folders."""
    return f"{prefix}{os.getpid()}-"


def remove_stale(folder: Path, prefix: str, suffix: str = "") -> int:
    """Delete the entries of ``folder`` named ``owned_prefix(prefix)...suffix`` by a process that no
    longer runs (killed mid-write); return how many were removed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        owner = entry.name[len(prefix) :].split("-", 1)[0]
        if not owner.isdigit() or _process_alive(int(owner)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` to build something in before it is renamed into place; the stale
    staging folders of killed processes with the same ``prefix`` are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=owned_prefix(prefix), dir=parent))


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
    remove_stale(path.parent, f".{path.name}.", TEMP_SUFFIX)
    handle, temp_name = tempfile.mkstemp(prefix=owned_prefix(f".{path.name}."), suffix=TEMP_SUFFIX, dir=path.parent)
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


def write_json_atomically(path: Path, document: Any) -> None:
    """``document`` as indented UTF-8 JSON (non-finite numbers as ``null``, see ``json_text``), written atomically."""
    write_text_atomically(path, json_text.dumps(document, ensure_ascii=False, indent=2))


__all__ = [
    "atomic_path",
    "owned_prefix",
    "remove_stale",
    "staging_folder",
    "write_bytes_atomically",
    "write_json_atomically",
    "write_text_atomically",
]
