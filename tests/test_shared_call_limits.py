"""The calls-in-flight limit of a model server shared by worker processes through Postgres: the pure
AIMD steps by hand, then against a real Postgres with worker processes and one fake model server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import psycopg
import pytest
from conftest import POSTGRES_TEST_PASSWORD, TEST_CORPUS

import deepstep
from deepstep import call_limits, step_tree
from deepstep.configuration import Settings
from deepstep.shared_call_limits import LimitState, SharedInFlightLimit, after_rate_limit, after_success, server_key, shared_limit_for
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_command, cli_env

INCREASE = call_limits.INCREASE_AFTER


def test_the_server_key_keeps_no_credentials():
    key = server_key("https://me:sk-Secret@API.Example.com:8443/v1/?api_key=sk-Other", "gpt-x")
    assert key == "https://api.example.com:8443/v1 gpt-x"
    assert server_key("http://10.0.0.7:9/v1/", "m") == server_key("http://10.0.0.7:9/v1", "m") == "http://10.0.0.7:9/v1 m"
    # Each machine's own local server (e.g. the embedded model) is a server of its own.
    here = socket.gethostname()
    assert server_key("http://127.0.0.1:8080/v1", "m") == f"http://127.0.0.1:8080/v1 m on {here}"
    assert server_key("http://localhost:8080/v1", "m").endswith(f" on {here}")
    assert server_key("http://[::1]:8080/v1", "m") == f"http://[::1]:8080/v1 m on {here}"


def test_a_rate_limit_halves_the_shared_allowed_count_once_per_event_and_successes_add_back():
    state = after_rate_limit(LimitState(), now=100.0, started=99.0, retry_after=0.5, bound=8)
    assert state == LimitState(allowed=4, paused_until=100.5, last_decrease=100.0)
    # A call started before that decrease: the same event, only the pause moves.
    state = after_rate_limit(state, now=100.2, started=99.5, retry_after=0.5, bound=8)
    assert state == LimitState(allowed=4, paused_until=100.7, last_decrease=100.0)
    state = after_rate_limit(state, now=101.0, started=100.8, retry_after=None, bound=8)  # a new event
    assert state == LimitState(allowed=2, paused_until=100.7, last_decrease=101.0)
    for _ in range(INCREASE * 2 - 1):
        state = after_success(state, bound=8)
    assert (state.allowed, state.successes) == (2, 31)
    state = after_success(state, bound=8)
    assert (state.allowed, state.successes) == (3, 0)
    assert after_success(LimitState(allowed=3, successes=3 * INCREASE - 1), bound=4).allowed is None  # back at the bound


def test_below_one_call_in_flight_the_shared_limit_paces_from_the_retry_after():
    state = after_rate_limit(LimitState(), now=10.0, started=9.9, retry_after=0.2, bound=1)
    assert (state.allowed, state.interval, state.paused_until) == (1, 0.2, 10.2)
    state = after_success(state, bound=1)
    assert state.interval == 0.2 * (1 - 1 / (2 * INCREASE))
    assert after_success(LimitState(allowed=1, interval=0.0101), bound=1).interval == 0.0  # below MIN_INTERVAL: pacing ends


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url.replace(f":{POSTGRES_TEST_PASSWORD}@", "@")) as connection:
        return connection.execute(sql).fetchall()


def test_two_limits_on_one_database_share_the_bound_and_the_back_off(postgres_url):
    """Two limit objects with their own connections (as two processes have): the bound is shared, a 429
    seen by one halves the other's allowed count, and its Retry-After pauses the other too."""
    first = SharedInFlightLimit(postgres_url, "http://x/v1 m", lease_seconds=60)
    second = SharedInFlightLimit(postgres_url, "http://x/v1 m", lease_seconds=60)
    with first.slot(2), first.slot(2):
        held = [second.slot(2)]  # kept, so its lease is not released when the thread ends
        waiter = threading.Thread(target=held[0].__enter__)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # two in flight in the other "process": it waits
    waiter.join(5)
    assert not waiter.is_alive()  # woken by the release
    assert rows(postgres_url, "SELECT count(*) FROM deepstep_model_calls") == [(1,)]
    held[0].__exit__(None, None, None)
    with first.slot(4) as started:
        pass
    first.rate_limited(started, 0.5, 4)
    assert rows(postgres_url, "SELECT allowed FROM deepstep_model_limits") == [(2,)]
    begun = time.monotonic()
    with second.slot(4):
        assert time.monotonic() - begun > 0.3  # the Retry-After one worker got holds for the other
    assert rows(postgres_url, "SELECT server_key FROM deepstep_model_limits") == [("http://x/v1 m",)]


def test_a_lost_database_session_does_not_fail_an_answered_call(postgres_url):
    """The database drops the worker's sessions while its call is in flight: leaving the slot does not
    raise (the answer counts), and the next slot reconnects and reclaims the dead session's lease."""
    limit = SharedInFlightLimit(postgres_url, "http://y/v1 m", lease_seconds=60)
    with limit.slot(1):
        rows(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'deepstep-call-limits' AND datname = current_database()",
        )
    with limit.slot(1):  # bound 1: only free once the lease of the ended session is reclaimed
        assert rows(postgres_url, "SELECT count(*) FROM deepstep_model_calls") == [(1,)]
    assert rows(postgres_url, "SELECT count(*) FROM deepstep_model_calls") == [(0,)]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from deepstep.shared_call_limits import shared_limit_for
    limit = shared_limit_for(sys.argv[1], "http://127.0.0.1:9/v1", "m", lease_seconds=float(sys.argv[2]))
    with limit.slot(2), limit.slot(2):
        print("holding", flush=True)
        time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("end", ["SIGKILL", "SIGSTOP"])
def test_a_dead_or_stuck_worker_blocks_the_others_no_longer_than_its_leases(postgres_url, end):
    """A worker holding both slots of the bound is SIGKILLed (its session ends: its leases are reclaimed
    at once) or stopped (its session lives: its leases expire after the request deadline + margin)."""
    lease = 600.0 if end == "SIGKILL" else 1.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, postgres_url, str(lease)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        other = shared_limit_for(postgres_url, "http://127.0.0.1:9/v1/", "m", lease_seconds=600)
        held = other.slot(2)
        blocked = threading.Thread(target=held.__enter__)
        blocked.start()
        blocked.join(1.0)
        assert blocked.is_alive()  # both slots are the holder's
        holder.send_signal(getattr(signal, end))
        begun = time.monotonic()
        blocked.join(30)
        assert not blocked.is_alive()
        waited = time.monotonic() - begun
        assert waited < (2.0 if end == "SIGKILL" else 1.0 + 5.0 + 2.0)  # the lease: deadline + LEASE_MARGIN_SECONDS
    finally:
        holder.kill()
        holder.wait()


FIRER = textwrap.dedent(
    """
    import sys, threading
    from deepstep.model_http import model_http_client
    url, base_url = sys.argv[1], sys.argv[2]
    client = model_http_client(base_url, timeout=60, max_reply_chars=10_000, model="shared", max_in_flight=2, database_url=url)
    body = {"model": "shared", "messages": [{"role": "user", "content": "Question: what is a loss function?"}]}
    def fire():
        for _ in range(2):
            assert client.post(base_url + "/chat/completions", json=body).status_code == 200
    threads = [threading.Thread(target=fire) for _ in range(4)]
    print("firing", flush=True)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    """
)


@pytest.mark.slow
def test_two_worker_processes_keep_the_shared_bound_at_one_model_server(postgres_url):
    """Two processes with max_in_flight 2 each, four threads each: the server, holding every request,
    sees 2 in flight, not 4; once released, all 16 requests are answered and never more than 2 at once."""
    with FakeLLMServer(latency_ms=50) as server:
        server.hold()
        workers = [
            subprocess.Popen([sys.executable, "-c", FIRER, postgres_url, server.base_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None and worker.stdout.readline().strip() == "firing", worker.communicate()[1]
            assert server.wait_in_flight(2, timeout=30)
            time.sleep(1.5)  # every thread of both workers has had time to send (without sharing: 4 in flight)
            assert server.in_flight == 2
        finally:
            server.release()
        for worker in workers:
            _, stderr = worker.communicate(timeout=120)
            assert worker.returncode == 0, stderr
        assert Counter(entry["status"] for entry in server.log()) == {200: 16}
        assert server.max_in_flight == 2
    assert rows(postgres_url, "SELECT count(*) FROM deepstep_model_calls") == [(0,)]  # every lease released


@pytest.mark.slow
def test_two_workers_against_a_rate_limited_server_adapt_together(postgres_url, tmp_path):
    """Two `deepstep run` workers (10 steps each at R = 1, up to 8 calls in flight) against one server at
    200 ms that allows 5 requests/s (burst 2, 429 with Retry-After): the shared limit keeps rejections under
    10% of the requests (9-12 of ~135 measured; each process adapting alone: 28 of 152, and 2.6x the wall)
    and no step fails."""
    with FakeLLMServer(steps=10, latency_ms=200, rate_limit=5, rate_burst=2) as server:
        workers = []
        for name in ("a", "b"):
            env = cli_env(
                server.base_url,
                tmp_path / name,
                database_url=postgres_url,
                retriever="bm25",
                corpus=TEST_CORPUS,
                rollouts=1,
                max_steps=10,
                max_concurrency=8,
                report_layout="seed",
            )
            command = cli_command("run", "What is a loss function?", "--thread-id", f"worker-{name}")
            workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [worker.communicate(timeout=180) for worker in workers]
        for worker, (_, stderr) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, stderr
        statuses = Counter(entry["status"] for entry in server.log())
    assert set(statuses) <= {200, 429}
    # Planning (2 calls), then 3 + 3R calls per step at R = 1: at least that many answered, and every step done.
    assert statuses[200] >= 2 * (2 + 10 * 6), statuses
    assert statuses[429] < 0.1 * (statuses[200] + statuses[429]), statuses
    for name in ("a", "b"):
        stored = deepstep.load(f"worker-{name}", settings=Settings.build(home=tmp_path / "any", database_url=postgres_url, retriever="bm25"))
        assert [step["status"] for step in step_tree.steps(stored.tree)] == ["done"] * 10
    # Both workers' limits lived on the one shared row.
    assert rows(postgres_url, "SELECT count(*) FROM deepstep_model_limits") == [(1,)]
