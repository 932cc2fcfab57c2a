"""Corpus scale (issue 18 item 5): BM25 at 1x, 10x and 100x the scikit-learn user guide.

The larger corpora are the guide copied 10 and 100 times (hard links into ``copy_NN`` folders: the same
words, 10 and 100 times the passages). For each size one child process builds the index cache, a second
starts from it once (hashing every file, as the first start after any change does), then a fresh child
process measures what a later run pays: the cached start (stat the files, load the cache), the
BM25 query latency over the benchmark's questions (p50, p95) and its resident memory growth from before
the index is loaded to after the queries (``/proc/self/status`` VmRSS).

Run: .venv/bin/python -m benchmarks.corpus_scale [--corpus DIR] [--sizes 1 10 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTIONS_FILE = Path(__file__).parent / "data" / "sklearn_questions.json"
TARGETS_100X = {"query_p50_ms": 1.0, "cached_start_s": 0.5, "rss_growth_mib": 100.0}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(corpus: Path, cache: Path, repeat: int, database_url: str | None = None) -> dict[str, float | int | bool]:
    """Inside a fresh process: load the index from the cache (or find the corpus loaded in Postgres), then query it."""
    from deepstep.bm25_index import BM25Index

    questions = [item["question"] for item in json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))["questions"]]
    if database_url:
        from deepstep.postgres_retrieval import PostgresRetriever  # imported before the clock, as BM25Index is
    rss_before = _rss_mib()
    started = time.perf_counter()
    if database_url:
        retriever = PostgresRetriever.from_directory(database_url, corpus, k=4, cache_dir=cache)
        search = retriever.invoke
        passages, from_cache = -1, True
    else:
        index = BM25Index.from_directory(corpus, cache_dir=cache)
        search = lambda question: index.search(question, 4)  # noqa: E731
        passages, from_cache = len(index.passages), index.from_cache
    start_seconds = time.perf_counter() - started
    latencies = []
    for _ in range(repeat):
        for question in questions:
            began = time.perf_counter()
            search(question)
            latencies.append((time.perf_counter() - began) * 1000)
    latencies.sort()
    return {
        "passages": passages,
        "from_cache": from_cache,
        "cached_start_s": round(start_seconds, 3),
        "query_p50_ms": round(statistics.median(latencies), 3),
        "query_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "rss_growth_mib": round(_rss_mib() - rss_before, 1),
    }


def _copies(source: Path, target: Path, times: int) -> Path:
    """``source`` ``times`` over under ``target`` (hard links where the file system allows, else copies)."""
    if times == 1:
        return source
    for number in range(times):
        folder = target / f"copy_{number:03d}"
        shutil.copytree(source, folder, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*"))
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _in_child(*args: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.corpus_scale", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(corpus: Path, sizes: list[int], repeat: int, database_url: str | None = None) -> dict[int, dict]:
    figures: dict[int, dict] = {}
    backend = ["--database-url", database_url] if database_url else []
    with tempfile.TemporaryDirectory() as scratch:
        for times in sizes:
            folder = _copies(corpus, Path(scratch) / f"x{times}", times)
            cache = Path(scratch) / f"index-x{times}"
            started = time.perf_counter()
            _in_child("--child", str(folder), str(cache), "--repeat", "1", *backend)  # builds and saves the cache (loads the corpus)
            build = time.perf_counter() - started
            time.sleep(2.1)  # the files' digests are remembered once they are 2 s old (corpus.SETTLED_NS)
            first = _in_child("--child", str(folder), str(cache), "--repeat", "1", *backend)  # hashes every file, then saves their digests
            figures[times] = {
                **_in_child("--child", str(folder), str(cache), "--repeat", str(repeat), *backend),
                "build_s (child process)": round(build, 1),
                "start_hashing_every_file_s": first["cached_start_s"],
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="the scikit-learn guide (default: DEEPSTEP_HOME/corpora/sklearn)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="the Postgres retriever on a temporary local server instead of BM25")
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, repeat=args.repeat, database_url=args.database_url)))
        return
    if args.corpus is None:
        from deepstep.configuration import Settings
        from deepstep.corpus_fetch import sklearn_corpus_dir

        args.corpus = sklearn_corpus_dir(Settings.build().home)
    if args.postgres:
        from deepstep.testing.postgres_server import PostgresTestServer

        with PostgresTestServer() as server:
            figures = measure(args.corpus, args.sizes, args.repeat, server.url)
    else:
        figures = measure(args.corpus, args.sizes, args.repeat)
    if args.json:
        print(json.dumps(figures))
        return
    print("| corpus | passages | build | start, hashing every file | cached start | query p50 | query p95 | RSS growth |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for times, row in figures.items():
        passages = f"{row['passages']:,}" if row["passages"] >= 0 else "in Postgres"
        print(
            f"| {times}x | {passages} | {row['build_s (child process)']} s | {row['start_hashing_every_file_s']} s "
            f"| {row['cached_start_s']} s | {row['query_p50_ms']} ms "
            f"| {row['query_p95_ms']} ms | {row['rss_growth_mib']} MiB |"
        )


if __name__ == "__main__":
    main()
