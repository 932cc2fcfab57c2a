"""``deepstep studio``: the graph in LangGraph Studio, served offline by ``langgraph dev`` on 127.0.0.1.

``langgraph dev`` (the in-memory LangGraph API server) loads the graph named in
``langgraph.json``; Studio is a web page that talks to that server from the browser. With
no model server configured, the embedded model is started (or reused) first and handed to
the server through ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from deepstep.child_processes import start_server, stop
from deepstep.cli.common import app, fail, load_settings, stderr, stdout, user_errors
from deepstep.configuration import Settings
from deepstep.errors import ConfigError

HOST = "127.0.0.1"
GRAPH_SPEC = "deepstep.graph:graph"
# The guard langgraph dev mounts in front of its API: loopback Host names and Studio's Origin only.
HTTP_APP = "deepstep.studio_http:app"
# No tracing, analytics or version checks: the server must work without a network.
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}
# Like the repository's langgraph.json: the server never falls back to pickle for state it cannot encode,
# and `langgraph dev` refuses a config without dependencies (deepstep itself is installed, "." is a formality).
GENERATED_CONFIG = {
    "dependencies": ["."],
    "graphs": {"deepstep": GRAPH_SPEC},
    "env": ".env",
    "checkpointer": {"serde": {"pickle_fallback": False}},
}
INSTALL_HINT = "install the studio extra: pip install -e '.[studio]'"


def studio_url(api_url: str) -> str:
    # Here, not at the top: deepstep.studio_http loads Starlette, which only `deepstep studio` needs.
    from deepstep.studio_http import STUDIO_ORIGINS

    return f"{STUDIO_ORIGINS[0]}/studio/?baseUrl={api_url}"


def find_config(config: Path | None, home: Path) -> Path:
    """The ``langgraph.json`` to serve: the given one, else ``./langgraph.json``, else one written under HOME
    (so ``deepstep studio`` also works outside a checkout, with the installed package)."""
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"no LangGraph config at {config}: pass the path of a langgraph.json")
        return config.resolve()
    local = Path("langgraph.json")
    if local.is_file():
        return local.resolve()
    generated = home / "studio" / "langgraph.json"
    try:
        generated.parent.mkdir(parents=True, exist_ok=True)
        generated.write_text(json.dumps(GENERATED_CONFIG, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {generated}: {error}; set DEEPSTEP_HOME to a writable folder") from None
    return generated.resolve()


def private_server_folder(home: Path) -> Path:
    """The dev server's working folder, HOME/studio/server, mode 0700. ``langgraph dev`` keeps its threads
    there as pickles (``.langgraph_api/*.pckl``) and unpickles whatever it finds at start-up, so the
    folder must be one nobody else can write to: never the config's folder (a cloned repository may ship
    such files)."""
    folder = home / "studio" / "server"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as error:
        raise ConfigError(f"cannot create {folder}: {error}; set DEEPSTEP_HOME to a writable folder") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"{folder} is not a private folder of yours (mode {stat.filemode(info.st_mode)}): "
            "remove it and deepstep studio creates it again with mode 0700"
        )
    return folder


def watch_for_reload(folder: Path, source: Path) -> None:
    """``--reload``: uvicorn's reloader watches the server's working folder, so a link there to the
    config's folder restarts the server on code changes there, as when it ran in that folder."""
    link = folder / "watched"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
    except OSError as error:
        raise ConfigError(f"cannot link {link} to {source} for --reload: {error}; run without --reload") from None


def served_config(config: Path, folder: Path) -> Path:
    """The config ``langgraph dev`` runs, written to its working ``folder``: ``config`` with its local paths
    made absolute, plus deepstep's HTTP guard and Studio-only CORS unless it brings its own."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {config}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), dict):
        raise ConfigError(f"{config} has no graphs: pass the path of a langgraph.json")
    base = config.parent
    if isinstance(data.get("env"), str):
        data["env"] = str(base / data["env"])
    local = (".", "/")  # langgraph.json's local dependencies are paths; others are package names
    data["dependencies"] = [str(base / dep) if str(dep).startswith(local) else dep for dep in data.get("dependencies") or ["."]]
    data["graphs"] = {name: _absolute_graph_spec(spec, base) for name, spec in data["graphs"].items()}
    from deepstep.studio_http import STUDIO_CORS

    http = {**(data.get("http") or {})}
    if http.setdefault("app", HTTP_APP) != HTTP_APP:
        stderr.print(f"warning: {config} mounts its own http.app, so deepstep's Host and Origin checks are off")
    http.setdefault("cors", STUDIO_CORS)
    served = folder / "langgraph.json"
    try:
        served.write_text(json.dumps({**data, "http": http}, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {served}: {error}; set DEEPSTEP_HOME to a writable folder") from None
    return served


def _absolute_graph_spec(spec: Any, base: Path) -> Any:
    """``./agent.py:graph`` relative to the config's folder; module specs (``deepstep.graph:graph``) as they are."""
    if isinstance(spec, str) and spec.rsplit(":", 1)[0].endswith(".py"):
        return str(base / spec)
    return spec


def dotenv_values_of(config: Path) -> dict[str, str]:
    """The variables of the config's ``env`` (a .env file or a mapping): ``langgraph dev`` applies them too."""
    try:
        env = json.loads(config.read_text(encoding="utf-8")).get("env")
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"cannot read {config}: {error}") from None
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, str) and (config.parent / env).is_file():
        from dotenv import dotenv_values

        return {k: v for k, v in dotenv_values(config.parent / env).items() if v is not None}
    return {}


def model_server_configured(settings: Settings, dotenv: Mapping[str, str]) -> bool:
    return not settings.needs_embedded_model or any(dotenv.get(name) for name in ("OPENAI_BASE_URL", "DEEPSTEP_BASE_URL"))


def check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ConfigError(f"port {port} on {HOST} is in use: pass another one with --port") from None


def server_command(config: Path, port: int, *, reload: bool) -> list[str]:
    command = [sys.executable, "-m", "langgraph_cli", "dev", "--config", str(config), "--host", HOST, "--port", str(port), "--no-browser"]
    return command if reload else [*command, "--no-reload"]


def server_environment(settings: Settings, model_env: Mapping[str, str], *, allow_remote_paths: bool = False) -> dict[str, str]:
    return {
        **os.environ,
        **OFFLINE_ENV,
        **model_env,
        **({"DEEPSTEP_ALLOW_REMOTE_PATHS": "true"} if allow_remote_paths else {}),
        # The server runs in its own private folder: keep HOME (indexes, embedded model state) where this command sees it.
        "DEEPSTEP_HOME": str(settings.home.resolve()),
        # The server logs every request at INFO; warnings and run errors are what a Studio user needs.
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def model_environment(settings: Settings, dotenv: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Variables that point the server at a model: none when one is configured, else the embedded model's."""
    if model_server_configured(settings, dotenv):
        yield {}
        return
    from deepstep.llm_server import CAPACITY as EMBEDDED_CAPACITY
    from deepstep.llm_server import EMBEDDED_KEY_ENV, EMBEDDED_MAX_TOKENS, MODEL_ALIAS, embedded_server

    stderr.print("no model server configured: starting the embedded model (SmolLM2-135M via llama.cpp)")
    with embedded_server(settings.home, module=settings.llama_server_module) as server:
        stderr.print(f"embedded model ready at {server.base_url}")
        yield {
            "OPENAI_BASE_URL": server.base_url,
            "DEEPSTEP_MODEL": MODEL_ALIAS,
            "DEEPSTEP_LLAMA_CPP": "true",
            "DEEPSTEP_CITED_SENTENCES": str(settings.cited_sentences is not False).lower(),
            "DEEPSTEP_MAX_TOKENS": str(min(settings.max_tokens, EMBEDDED_MAX_TOKENS)),
            # llama.cpp computes one request at a time: deepstep's per-server limit keeps Studio's fan-out to it.
            "DEEPSTEP_MAX_CONCURRENCY": str(min(settings.max_concurrency, EMBEDDED_CAPACITY)),
            # The embedded server's own key, never the user's OpenAI key.
            "DEEPSTEP_API_KEY_ENV": EMBEDDED_KEY_ENV,
            EMBEDDED_KEY_ENV: server.api_key,
        }


def wait_until_ready(process: subprocess.Popen[Any], api_url: str, timeout: float) -> None:
    import httpx  # here, not at the top: `deepstep --help` and the other commands do not need it

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ConfigError(f"langgraph dev exited with code {process.returncode} before it was ready; see its output above")
        try:
            if httpx.get(f"{api_url}/ok", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"langgraph dev did not answer at {api_url} within {timeout:.0f} s; see its output above or raise --ready-timeout")
        time.sleep(0.2)


def interrupt_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill` stops the server and the embedded model as Ctrl-C does


@app.command()
def studio(
    port: Annotated[int, typer.Option(min=1, max=65535, help=f"Port of the LangGraph API server on {HOST}.")] = 2024,
    config: Annotated[Path | None, typer.Option(help="langgraph.json to serve (default: ./langgraph.json, else one under HOME).")] = None,
    reload: Annotated[bool, typer.Option("--reload", help="Restart the server when source files change.")] = False,
    ready_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the server to answer.")] = 180,
    allow_remote_paths: Annotated[
        bool, typer.Option("--allow-remote-paths", help="Let Studio set a run's corpus folder (off: DEEPSTEP_CORPUS only).")
    ] = False,
) -> None:
    """Serve the graph to LangGraph Studio with `langgraph dev` (offline, 127.0.0.1) until Ctrl-C."""
    with user_errors():
        if importlib.util.find_spec("langgraph_cli") is None or importlib.util.find_spec("langgraph_api") is None:
            fail(f"langgraph-cli[inmem] is not installed: {INSTALL_HINT}")
        settings = load_settings()
        config_path = find_config(config, settings.home)
        folder = private_server_folder(settings.home)
        check_port_free(port)
        signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        api_url = f"http://{HOST}:{port}"
        started = time.monotonic()
        with model_environment(settings, dotenv_values_of(config_path)) as model_env:
            # The server runs in the private folder, where it keeps its .langgraph_api store.
            if reload:
                watch_for_reload(folder, config_path.parent)
            process = start_server(
                server_command(served_config(config_path, folder), port, reload=reload),
                cwd=folder,
                env=server_environment(settings, model_env, allow_remote_paths=allow_remote_paths),
            )
            try:
                wait_until_ready(process, api_url, ready_timeout)
                stderr.print(f"langgraph dev ready in {time.monotonic() - started:.1f} s (config {config_path})")
                stdout.print(f"API: {api_url}", highlight=False, soft_wrap=True)
                stdout.print(f"Studio: {studio_url(api_url)}", highlight=False, soft_wrap=True)
                stderr.print("open the Studio URL in a browser; stop with Ctrl-C")
                code = process.wait()
                if code != 0:
                    fail(f"langgraph dev stopped with exit code {code}; see its output above")
            except KeyboardInterrupt:
                stderr.print("studio stopped")
            finally:
                stop(process, grace_seconds=15)
