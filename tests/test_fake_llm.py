"""The fake OpenAI-compatible server: shapes, determinism, faults, concurrency, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from deepstep import prompts
from deepstep.models import _with_schema_instructions
from deepstep.parsing import ClaimVerdicts
from deepstep.testing import FakeLLMServer, Fault, parse_fault
from deepstep.testing.fake_llm import _guess_task


def chat(server, task, user, *, response_format=None, client_timeout=10.0):
    body = {"model": "fake", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": user}]}
    if response_format:
        body["response_format"] = response_format
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers={"X-Deepstep-Task": task}, timeout=client_timeout)


def content(response):
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


def test_each_task_has_the_documented_shape(server):
    steps = json.loads(content(chat(server, "steps", "Question: What is X?\nMaximum steps: 4")))["steps"]
    assert [s["level"] for s in steps] == ["0", "0>1", "0>1>1", "0>1>2"]
    assert content(chat(server, "question", "Question: What is X?\nStep: Aspect 1")) == "What is X, and how is it used in practice?"
    assert content(chat(server, "question", "Question: 什么是损失函数？\nStep: Aspect 1")) == "What is 损失函数, and how is it used in practice?"
    answer = content(chat(server, "answer", "Step: S\nContexts:\n[1] a: x\n[2] b: y\n"))
    assert "[1]" in answer and "[2]" in answer
    refined = json.loads(content(chat(server, "refine", "Contexts:\n[1] a: x\nAnswer:\nold")))
    assert set(refined) == {"thought", "answer"} and "[1]" in refined["answer"]
    score = json.loads(content(chat(server, "evaluate", "Answer: a", response_format={"type": "json_object"})))["score"]
    assert -20 <= score <= 100
    assert content(chat(server, "evaluate", "Answer: a")).startswith("Score: ")
    usage = chat(server, "outline", "Question: X").json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def verify_prompt() -> str:
    contexts = [
        {"ref_id": "r", "chunk_id": "r:0", "score": 1.0, "text": "Ridge regression adds an L2 penalty of 0.5.", "title": "Ridge", "source": "r.md"}
    ]
    claims = [
        {"text": "Ridge regression adds a penalty.", "citations": [1], "verdict": "partial", "support": 0.5},
        {"text": "The penalty is 0.7 in Lasso.", "citations": [1], "verdict": "supported", "support": 0.8},
        {"text": "Nothing backs this.", "citations": [], "verdict": "unsupported", "support": 0.0},
    ]
    messages = prompts.VERIFY.format_messages(
        research_question="Q", contexts=prompts.format_contexts(contexts), claims=prompts.format_claims_to_verify(claims)
    )
    return str(messages[-1].content)


def test_the_verifier_judges_every_listed_claim(server):
    # Claim 2 names a figure (0.7) and a name (Lasso) its passage lacks; the others keep the word check's verdict.
    expected = ["partial", "unsupported", "unsupported"]
    assert json.loads(content(chat(server, "verify", verify_prompt()))) == {
        "verdicts": [{"claim": n, "verdict": v} for n, v in enumerate(expected, 1)]
    }
    server.set_faults([Fault("overturn")])  # claim 1 turned around: partial -> supported
    assert [v["verdict"] for v in json.loads(content(chat(server, "verify", verify_prompt())))["verdicts"]] == ["supported", *expected[1:]]


def test_only_the_verify_prompt_is_taken_for_the_verifier():
    """A request without the task header is told apart by its system message, schema instructions included."""
    templates = {name: value for name, value in vars(prompts).items() if isinstance(value, prompts.ChatPromptTemplate)}
    for name, template in templates.items():
        messages = _with_schema_instructions(template.format_messages(**dict.fromkeys(template.input_variables, "x")), ClaimVerdicts)
        sent = [{"role": "system" if m.type == "system" else "user", "content": m.content} for m in messages]
        assert (_guess_task(sent) == "verify") == (name == "VERIFY"), name


def test_replies_are_deterministic(server):
    assert content(chat(server, "critique", "Answer: a")) == content(chat(server, "critique", "Answer: a"))
    assert content(chat(server, "critique", "Answer: a")) != content(chat(server, "critique", "Answer: b"))
    log = server.log()
    assert log[0]["hash"] == log[1]["hash"] != log[3]["hash"]
    assert [e["seq"] for e in log] == list(range(len(log)))


def test_openai_client_and_json_schema_rejection():
    with FakeLLMServer(json_schema=False) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "Question: Q"}], extra_headers={"X-Deepstep-Task": "outline"}
        )
        assert reply.choices[0].message.content and reply.usage.prompt_tokens > 0
        schema = {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object"}}}
        with pytest.raises(openai.BadRequestError, match="json_schema"):
            client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], response_format=schema)
        assert [e["status"] for e in fake.log()] == [200, 400]


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("http500", lambda r: r.status_code == 500 and "error" in r.json()),
        ("http429", lambda r: r.status_code == 429 and r.headers["Retry-After"] == "2"),
        ("malformed_json", lambda r: _not_json(content(r))),
        ("truncated_json", lambda r: _not_json(content(r))),
        ("empty", lambda r: content(r) == ""),
        ("refusal", lambda r: "can't help" in content(r)),
    ],
)
def test_fault_kinds(server, kind, check):
    server.set_faults([Fault(kind=kind, task="refine", retry_after=2)])
    assert check(chat(server, "refine", "Answer: a"))
    assert server.log()[-1]["fault"] == kind
    assert chat(server, "critique", "Answer: a").status_code == 200  # other tasks untouched


def _not_json(text):
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    return False


def test_bad_score_and_drop_connection(server):
    server.set_faults([Fault(kind="bad_score", task="evaluate")])
    replies = {content(chat(server, "evaluate", f"Answer: {i}")) for i in range(4)}
    assert replies <= {"Score: excellent", '{"score": 250}'}
    server.set_faults([Fault(kind="drop_connection")])
    with pytest.raises(httpx.HTTPError):
        chat(server, "answer", "x")
    assert server.log()[-1]["status"] == 0


def test_timeout_fault_sleeps_past_the_client_timeout(server):
    server.set_faults([Fault(kind="timeout", seconds=2, times=1)])
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    assert client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}]).choices


def test_after_times_every_and_match(server):
    server.set_faults([Fault(kind="http500", match="boom", after=1, every=2, times=2)])
    statuses = [chat(server, "answer", "boom").status_code for _ in range(7)]
    assert statuses == [200, 500, 200, 500, 200, 200, 200]
    assert chat(server, "answer", "quiet").status_code == 200


def test_parse_fault_strings():
    fault = parse_fault("http500:task=critique,times=2,every=3")
    assert (fault.kind, fault.task, fault.times, fault.every) == ("http500", "critique", 2, 3)
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault("explode")
    with pytest.raises(ValueError, match="unknown fault option"):
        parse_fault("http500:color=red")


def test_calls_are_served_concurrently():
    """All 8 requests are inside the server at once: held there, a server answering one at a time
    would never get past the first (no clock involved)."""
    statuses: list[int] = []
    with FakeLLMServer() as fake:
        fake.hold()
        threads = [
            threading.Thread(target=lambda i=i: statuses.append(chat(fake, "answer", f"q{i}", client_timeout=120).status_code)) for i in range(8)
        ]
        try:
            for thread in threads:
                thread.start()
            all_in_flight = fake.wait_in_flight(8)
        finally:
            fake.release()
        for thread in threads:
            thread.join()
    assert all_in_flight, f"at most {fake.max_in_flight} of 8 requests were in flight at once"
    assert fake.max_in_flight == 8 and fake.in_flight == 0
    assert statuses == [200] * 8


def test_control_endpoints(server):
    chat(server, "answer", "x")
    assert len(httpx.get(f"http://127.0.0.1:{server.port}/_log").json()) == 1
    httpx.post(f"http://127.0.0.1:{server.port}/_faults", json=[{"kind": "http500"}])
    assert chat(server, "answer", "x").status_code == 500
    httpx.post(f"http://127.0.0.1:{server.port}/_log/reset")
    assert server.log() == []


def test_module_cli_serves_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "deepstep.testing.fake_llm", "--port", "0", "--fault", "http429:times=1"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        assert httpx.post(f"{base_url}/chat/completions", json={"messages": []}).status_code == 429
        assert httpx.post(f"{base_url}/chat/completions", json={"messages": []}).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
