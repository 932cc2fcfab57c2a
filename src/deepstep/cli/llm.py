"""``deepstep llm serve``: the embedded local model in the foreground, for other tools to share."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from deepstep.cli.common import app, fail, load_settings, stderr, user_errors

llm_app = typer.Typer(no_args_is_help=True, help="The embedded local model (SmolLM2-135M-Instruct via llama.cpp).")
app.add_typer(llm_app, name="llm")


@llm_app.command("serve")
def llm_serve(port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None) -> None:
    """Serve the embedded model in the foreground until Ctrl-C; deepstep runs reuse it."""
    from deepstep.llm_server import LOG_FILE, STATE_FILE, embedded_server, gone_reason

    with user_errors():
        settings = load_settings()
        stderr.print(f"starting the embedded model (SmolLM2-135M via llama.cpp); its log is {settings.home / LOG_FILE}")
        try:
            with embedded_server(settings.home, port=port, module=settings.llama_server_module) as server:
                stderr.print(f"embedded model ready at {server.base_url} (model {server.model_path})")
                stderr.print(f"use it from other tools with: export OPENAI_BASE_URL={server.base_url} DEEPSTEP_LLAMA_CPP=1")
                stderr.print(f"it takes only its own API key, kept in {settings.home / STATE_FILE} (readable by you only); deepstep runs use it")
                # Serve while the server lives: a crashed server must not leave a command that looks alive.
                while (reason := gone_reason(server.base_url, when="while serving")) is None:
                    time.sleep(1)
                fail(reason)
        except KeyboardInterrupt:
            stderr.print("embedded model stopped")
