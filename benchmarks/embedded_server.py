"""Start time and memory of the embedded model server.

Run: .venv/bin/python -m benchmarks.embedded_server
Prints the seconds from launch to a ready /v1/models, the server's resident memory, and
the time of one short chat completion.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from deepstep.llm_server import MODEL_ALIAS, embedded_server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        with embedded_server(Path(home)) as server:
            ready = time.perf_counter() - started
            idle = rss_mib(server.pid)
            call_started = time.perf_counter()
            reply = httpx.post(
                f"{server.base_url}/chat/completions",
                json={"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "What is a loss function?"}], "max_tokens": 64},
                timeout=120,
            ).json()
            call = time.perf_counter() - call_started
            busy = rss_mib(server.pid)
    print(f"ready after {ready:.1f} s; RSS {idle:.0f} MiB idle, {busy:.0f} MiB after a call")
    print(f"one call (64 tokens max): {call:.1f} s, {reply['usage']['completion_tokens']} completion tokens")


if __name__ == "__main__":
    main()
