"""Checkpoint storage per step (issue 18 item 3): runs of N steps at R = 2 over the scikit-learn guide
(4 passages of 180 words per step), on SQLite and on Postgres, bytes stored against N.

Each run is a new thread in a fresh database (a SQLite file; a Postgres database of a temporary local
server); bytes are the SQLite file after a WAL checkpoint, or the total size of the Postgres checkpoint
tables with their indexes and TOAST after a VACUUM FULL (the live rows). Bytes per step is the least-squares slope over the sizes.

Run: .venv/bin/python -m benchmarks.checkpoint_size [--corpus DIR] [--sizes 5 20 50] [--backends sqlite postgres] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import tempfile
from pathlib import Path

import deepstep
from benchmarks.harness import QUESTION
from deepstep.configuration import Settings
from deepstep.testing.fake_llm import FakeLLMServer

TARGET_BYTES_PER_STEP = 50_000
POSTGRES_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations")


def _sqlite_bytes(settings: Settings) -> int:
    with contextlib.closing(sqlite3.connect(settings.checkpoint_file)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return settings.checkpoint_file.stat().st_size


def _postgres_bytes(url: str) -> int:
    """The live rows' storage: VACUUM FULL first, since the pending writes deepstep deletes leave dead rows that
    autovacuum makes reusable for later runs (they are not growth) but that no relation size leaves out."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM FULL")
        sizes = [connection.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone() for table in POSTGRES_TABLES]
    return sum(size[0] for size in sizes if size and size[0])


def _fresh_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def measure(corpus: Path, sizes: list[int], backends: list[str]) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    with contextlib.ExitStack() as cleanup:
        server_url = None
        if "postgres" in backends:
            from deepstep.testing.postgres_server import PostgresTestServer

            server_url = cleanup.enter_context(PostgresTestServer()).url
        for backend in backends:
            rows = []
            for steps in sizes:
                with tempfile.TemporaryDirectory() as home, FakeLLMServer() as fake:
                    fake.steps = steps
                    database = _fresh_database(server_url, f"size{steps}") if backend == "postgres" and server_url else None
                    settings = Settings.build(
                        base_url=fake.base_url, home=Path(home), corpus=corpus, max_steps=steps, rollouts=2, max_concurrency=4,
                        report_layout="seed", database_url=database,
                    )  # fmt: skip
                    result = deepstep.run(QUESTION, thread_id="size", settings=settings)
                    stored = _postgres_bytes(database) if database else _sqlite_bytes(settings)
                    passages = sum(len(step["contexts"]) for step in deepstep.step_tree.steps(result.tree))
                    rows.append({"steps": steps, "bytes": stored, "passages_per_step": round(passages / steps, 2)})
            slope, intercept = _fit([row["steps"] for row in rows], [row["bytes"] for row in rows])
            figures[backend] = {"runs": rows, "bytes_per_step": round(slope), "fixed_bytes": round(intercept), "met": slope <= TARGET_BYTES_PER_STEP}
    return figures


def _fit(xs: list[int], ys: list[int]) -> tuple[float, float]:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="the scikit-learn guide (default: DEEPSTEP_HOME/corpora/sklearn)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.corpus is None:
        from deepstep.corpus_fetch import sklearn_corpus_dir

        args.corpus = sklearn_corpus_dir(Settings.build().home)
    figures = measure(args.corpus, args.sizes, args.backends)
    if args.json:
        print(json.dumps(figures))
        return
    for backend, found in figures.items():
        runs = ", ".join(f"N = {row['steps']}: {row['bytes']:,} B ({row['bytes'] / row['steps']:,.0f} per step)" for row in found["runs"])
        verdict = "met" if found["met"] else "not met"
        print(f"{backend}: {runs}; slope {found['bytes_per_step']:,} bytes per step + {found['fixed_bytes']:,} (target <= 50,000: {verdict})")


if __name__ == "__main__":
    main()
