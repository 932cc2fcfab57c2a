"""A stand-in for the embedded model server (``python -m llama_cpp.server``), for tests.

It takes llama-cpp-python's server options (``--model``, ``--port``, ...; only ``--host`` and
``--port`` matter) and serves the fake model's deterministic replies over real HTTP, rejecting
``json_schema`` like llama.cpp. Faults come from the environment, because deepstep starts the
server itself: ``FAKE_LLM_FAULTS="crash:after=0"`` (fault specs as for ``fake_llm --fault``,
separated by ``;``) makes it die of SIGSEGV on its first chat request, as a llama.cpp built for
another CPU does. Like llama-cpp-python's server it requires the API key in ``API_KEY``, if set.
Point deepstep at it with ``DEEPSTEP_LLAMA_SERVER_MODULE=deepstep.testing.stand_in_llama``.
"""

from __future__ import annotations

import argparse
import os

from deepstep.testing.fake_llm import FakeLLMServer, parse_fault

FAULTS_VARIABLE = "FAKE_LLM_FAULTS"
LOG_VARIABLE = "FAKE_LLM_LOG"
API_KEY_VARIABLE = "API_KEY"  # read by llama-cpp-python's server settings too


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deepstep.testing.stand_in_llama", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    # Accepted and ignored, as llama-cpp-python's server takes them.
    for option in ("--model", "--model_alias", "--n_ctx", "--n_threads"):
        parser.add_argument(option)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the stand-in binds 127.0.0.1 only")
    faults = [parse_fault(spec) for spec in os.environ.get(FAULTS_VARIABLE, "").split(";") if spec.strip()]
    server = FakeLLMServer(
        port=args.port, faults=faults, json_schema=False, log_path=os.environ.get(LOG_VARIABLE), api_key=os.environ.get(API_KEY_VARIABLE) or None
    )
    server.serve_until_signalled(f"stand-in llama server on {server.base_url}")


if __name__ == "__main__":
    main()
