"""A deterministic fake OpenAI-compatible chat server for tests and benchmarks.

Real HTTP on 127.0.0.1. Every reply is derived from a hash of the request, so the same
request always gets the same answer; latency and faults (HTTP 500/429, timeouts,
malformed JSON, ...) can be injected per task, as can a hostile server's replies (``HOSTILE_KINDS``:
an error in an HTTP 200, an HTML page, an unrequested event stream, a reply trickled one byte at a
time, headers sent slowly, a huge reply, ...). Run it alone with
``python -m deepstep.testing.fake_llm --port PORT [--latency-ms L] [--fault SPEC ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

TASKS = ("outline", "steps", "question", "search", "answer", "critique", "refine", "evaluate", "verify", "synthesize")
JSON_TASKS = ("steps", "refine", "evaluate", "verify")
# Replies of a hostile or broken server, all with HTTP 200.
HOSTILE_KINDS = (
    "error_200",  # {"error": {...}} with status 200, as some proxies send
    "html",  # an HTML error page (a captive portal or a proxy in the way)
    "sse",  # an event stream that was not asked for
    "not_json",  # a body that is no JSON, labelled application/json
    "no_choices",  # "choices": []
    "object_content",  # the message content is an object, not text
    "lone_surrogate",  # the content holds an unpaired UTF-16 surrogate (valid JSON, invalid Unicode)
    "huge_usage",  # token counts above 2**64
    "huge_json",  # a valid reply whose content is `size` characters long
    "trickle",  # a valid reply sent one byte at a time, spread over `seconds`
    "slow_headers",  # the status line and headers sent one byte at a time over `seconds`, then the reply
)
FAULT_KINDS = (
    "http500",
    "http429",
    "timeout",
    "malformed_json",
    "truncated_json",
    "empty",
    "refusal",
    "bad_score",
    "drop_connection",
    "length",
    "http401",  # rejects the key and echoes it in the error message, as some servers do
    "crash",  # the server process dies of SIGSEGV, as a llama.cpp built for another CPU does (run it as its own process)
    "huge_numbers",  # JSON content with numbers past float range and Python's 4300-digit int limit
    "deep_json",  # JSON content nested far past Python's recursion limit
    "thinking",  # a reasoning model's reply: a <think> block with a misleading score and plan, then the normal reply
    "missing",  # critiques end with a "Missing: ..." line, so the step runs a follow-up search before refining
    "fabricate",  # answers copy passage [1]'s first sentence and add an invented claim citing [1]; refinements drop it;
    # the critic scores an answer with the invented claim 60, any other 50 (so only a claim check prefers the refinement)
    "overturn",  # the verifier turns claim 1's verdict around: supported -> unsupported, anything else -> supported
    *HOSTILE_KINDS,
)


@dataclass
class Fault:
    """A fault rule: which requests it hits and how often."""

    kind: str
    task: str | None = None
    match: str | None = None  # substring of the last user message
    after: int = 0  # let the first `after` matching requests through
    times: int | None = None  # at most this many injections
    every: int = 1  # inject on every n-th matching request
    retry_after: float = 1.0
    seconds: float = 30.0
    size: int = 10_000_000  # characters of a huge_json reply

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; kinds are {', '.join(FAULT_KINDS)}")
        if self.every < 1:
            raise ValueError("every must be >= 1")


def parse_fault(spec: str) -> Fault:
    """``kind[:key=value[,key=value...]]``, e.g. ``http500:task=critique,times=2``."""
    kind, _, options = spec.partition(":")
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Fault)}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        key = key.strip()
        if key not in types or key == "kind":
            raise ValueError(f"unknown fault option {key!r} in {spec!r}")
        if key in ("after", "times", "every", "size"):
            values[key] = int(value)
        elif key in ("retry_after", "seconds"):
            values[key] = float(value)
        else:
            values[key] = value
    return Fault(kind=kind.strip(), **values)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def count_tokens(text: str) -> int:
    cjk = len(re.findall(r"[\u3400-\u9fff]", text))
    words = len(re.sub(r"[\u3400-\u9fff]", " ", text).split())
    return cjk + words


def _line_value(text: str, label: str) -> str | None:
    match = re.search(rf"^{label}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _topic(user: str) -> str:
    return _line_value(user, "Question") or user.strip()[:80] or "the topic"


def _subject(question: str) -> str:
    """``What is a loss function?`` -> ``a loss function``; ``什么是损失函数？`` -> ``损失函数``."""
    return re.sub(r"^(?:what (?:is|are)|什么是)\s*|[?？]+$", "", question.strip(), flags=re.IGNORECASE).strip() or question


def _context_count(user: str) -> int:
    return len(set(re.findall(r"^\[(\d+)\]", user, re.MULTILINE)))


def _step_levels(count: int) -> list[str]:
    """``0``, then children ``0>k``; odd children get two grandchildren, while steps remain."""
    levels = ["0"]
    child = 0
    while len(levels) < count:
        child += 1
        levels.append(f"0>{child}")
        if child % 2 == 1:
            for grandchild in (1, 2):
                if len(levels) < count:
                    levels.append(f"0>{child}>{grandchild}")
    return levels[:count]


CRITIQUES = (
    "The answer states the definition but gives no formula; it should cite the passage that defines it.",
    "It is vague about when this applies and omits a concrete example from the contexts.",
    "Some claims are not supported by the contexts; the comparison with alternatives is missing.",
    "The answer repeats itself and never explains why the quantity is minimised during training.",
)
# The label deepstep's question prompt asks for when the corpus is in another language (prompts.SEARCH_QUERY_LABEL).
SEARCH_QUERY_LABEL = "Search query:"
# What follow-up queries add to the step's subject, one per earlier query, so each query is new.
SEARCH_WORDS = ("definition", "worked example", "formula", "pitfalls")
# The fake's dictionary for cross-language queries.
TRANSLATIONS = {"损失函数": "loss function", "交叉验证": "cross-validation", "决策树": "decision tree"}
PHRASES = ("with a worked example", "with the formula spelled out", "with its limits stated", "with a comparison", "more precisely")


def user_message(messages: list[dict[str, Any]]) -> str:
    """The last user message: what the task asks (prompts put the variable parts there)."""
    return next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")


def reply_content(task: str, messages: list[dict[str, Any]], *, steps: int, json_format: bool) -> str:
    """The deterministic, plausible reply for one task."""
    user = user_message(messages)
    h = int(_digest({"messages": messages, "task": task}), 16)
    topic = _topic(user)
    if task == "outline":
        return "\n".join(
            [
                f"# {topic}",
                "- Definition and purpose",
                "- Common forms and formulas",
                "- How it is used in training",
                "- How to choose one",
                "- Pitfalls",
            ]
        )
    if task == "steps":
        limit = _line_value(user, "Maximum steps")
        count = min(steps, int(limit)) if limit and limit.isdigit() else steps
        items = [
            {"name": f"Aspect {i + 1} of {topic}", "description": f"Covers part {i + 1} of {topic}.", "level": level}
            for i, level in enumerate(_step_levels(count))
        ]
        return json.dumps({"steps": items}, ensure_ascii=False)
    if task == "question":
        # Worded like a model's research question: about the topic itself, not the plan's "Aspect 2 of ..." labels.
        research_question = f"What is {_subject(topic)}, and how is it used in practice?"
        if SEARCH_QUERY_LABEL in user:  # the corpus is in another language: the question as a query in it, too
            return f"{research_question}\n{SEARCH_QUERY_LABEL} {TRANSLATIONS.get(_subject(topic), _subject(topic))} definition"
        return research_question
    if task == "search":
        subject = _subject(re.split(r",", _line_value(user, "Research question") or topic)[0])
        tried = _line_value(user, "Queries already tried") or ""
        return f"{subject} {SEARCH_WORDS[tried.count(';') % len(SEARCH_WORDS)]}"
    if task == "answer":
        contexts = _context_count(user)
        step = _line_value(user, "Step") or "this step"
        cites = "" if contexts == 0 else " [1]" if contexts == 1 else " [1][2]"
        text = f"{step} is explained by the retrieved passages{cites}. It matters because it guides how a model is trained and judged."
        if h % 2 == 0:  # an out-of-range citation, so citation checking has work to do
            text += f" A further source is cited here [{contexts + 5}]."
        return text
    if task == "critique":
        # The note number keeps two critiques of one answer apart, as a sampled model's would be.
        return f"{CRITIQUES[h % len(CRITIQUES)]} (review note {h % 9973})"
    if task == "refine":
        cite = " [1]" if re.search(r"^\[1\]", user, re.MULTILINE) else ""
        phrase = PHRASES[h % len(PHRASES)]
        answer = f"A refined answer {phrase}: the step is defined by the sources{cite} and its role in training is explained (v{h % 997})."
        return json.dumps({"thought": f"Addressed the critique {phrase}.", "answer": answer})
    if task == "synthesize":
        cites = " [1]" if _context_count(user) else ""
        return f"{_subject(topic)} is what the steps describe{cites}. Together they answer the question."
    if task == "evaluate":
        score = (h % 121) - 20
        return json.dumps({"score": score}) if json_format else f"Score: {score}/100"
    if task == "verify":
        return json.dumps({"verdicts": [{"claim": number, "verdict": _judged(claim, user)} for number, claim in _claims_to_verify(user)]})
    return "OK"


# A claim as the verify prompt lists it (prompts.format_claims_to_verify).
_CLAIM_TO_VERIFY = re.compile(r"^Claim (\d+): (.*)\n\s*cites: ([\d, ]+|none); word-overlap check: (\w+)", re.MULTILINE)
_NUMBER_OR_NAME = re.compile(r"\d+(?:\.\d+)?|(?<=\s)[A-Z][\w-]*")


class ClaimToVerify(NamedTuple):
    text: str
    citations: list[int]
    word_check: str  # the lexical verdict the prompt shows


def _claims_to_verify(user: str) -> list[tuple[int, ClaimToVerify]]:
    return [
        (int(number), ClaimToVerify(text, [int(n) for n in re.findall(r"\d+", cites)], verdict))
        for number, text, cites, verdict in _CLAIM_TO_VERIFY.findall(user)
    ]


def _judged(claim: ClaimToVerify, user: str) -> str:
    """The fake verifier's verdict: unsupported when a number or a capitalized name (not the first word) of the claim
    is in none of the passages it cites, else the word check's verdict."""
    passages = " ".join(
        match.group(2).lower() for match in re.finditer(r"^\[(\d+)\] (.*)$", user, re.MULTILINE) if int(match.group(1)) in claim.citations
    )
    if passages and any(term.lower() not in passages for term in _NUMBER_OR_NAME.findall(claim.text)):
        return "unsupported"
    return claim.word_check


def _overturning_content(task: str, user: str) -> str | None:
    """The "overturn" fault's verifier reply (claim 1 turned around, the others judged as usual), or None for another task."""
    if task != "verify":
        return None
    claims = _claims_to_verify(user)
    verdicts = [{"claim": number, "verdict": _judged(claim, user)} for number, claim in claims]
    if verdicts:
        verdicts[0]["verdict"] = "unsupported" if claims[0][1].word_check == "supported" else "supported"
    return json.dumps({"verdicts": verdicts})


# What a reasoning model thinks before it answers: a score, a plan and an answer that must never be read.
THINKING = (
    '<think>The user wants JSON. Maybe {"score": 100}? Score: 100. Or {"steps": [{"name": "Thought step", "level": "0"}]}. '
    "Draft: a loss function is a kind of fruit [1].</think>\n"
)


# The line the "missing" fault adds to a critique.
MISSING = "\nMissing: the formula and a worked example."


# The invented claim of the "fabricate" fault: no passage of any test corpus says it.
FABRICATED = "Loss functions were invented on the Moon in 1850 by Ada Quimby [1]."


def _first_passage_sentence(user: str) -> str:
    """The first sentence of passage [1] as the prompt shows it (``[1] title: text``), its heading left out."""
    passage = re.search(r"^\[1\] ([^:\n]*): (.+)$", user, re.MULTILINE)
    if not passage:
        return "No passage was given."
    text = re.sub(rf"^#+\s*{re.escape(passage.group(1))}\s*", "", passage.group(2).strip())
    return re.split(r"(?<=[.!?。])\s+", text)[0].rstrip(".。") + "."


def _fabricating_content(task: str, user: str, *, json_format: bool) -> str | None:
    """The "fabricate" fault's reply, or None for a task it leaves alone."""
    copied = _first_passage_sentence(user)[:-1] + " [1]."
    if task == "answer":
        return f"{copied} {FABRICATED}"
    if task == "refine":
        return json.dumps({"thought": "Dropped what the passages do not say.", "answer": copied})
    if task == "evaluate":
        score = 60 if "Ada Quimby" in user else 50
        return json.dumps({"score": score}) if json_format else f"Score: {score}/100"
    return None


def _faulty_content(kind: str, task: str, seq: int) -> str:
    if kind == "malformed_json":
        return 'Sure! Here it is: {thought: "x", answer: ' if task != "evaluate" else "Score: {"
    if kind == "truncated_json":
        return '{"thought": "I fixed the' if task != "evaluate" else '{"sco'
    if kind == "empty":
        return ""
    if kind == "refusal":
        return "I'm sorry, but I can't help with that."
    if kind == "length":  # cut off by max_tokens: a valid JSON prefix, finish_reason "length"
        if task == "evaluate":
            return '{"score": 4'
        return '{"thought": "Tightened the definition.", "answer": "A loss function scores a prediction against the target [1]'
    if kind == "bad_score":
        return "Score: excellent" if seq % 2 == 0 else '{"score": 250}'
    if kind == "huge_numbers":
        if task == "evaluate":
            return '{"score": 1e999}' if seq % 2 == 0 else '{"score": ' + "9" * 5000 + "}"
        return '{"steps": [{"name": "Huge", "level": ' + "9" * 5000 + '}], "answer": ' + "9" * 5000 + "}"
    if kind == "deep_json":
        return '{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}"
    raise AssertionError(kind)


def _hostile_body(kind: str, completion: dict[str, Any]) -> tuple[str, bytes]:
    """The content type and body of a hostile reply built around a good ``completion`` (or an embeddings reply:
    trickle and slow_headers send it as it is)."""
    if kind in ("trickle", "slow_headers"):
        return "application/json", json.dumps(completion).encode()
    message = completion["choices"][0]["message"]
    if kind == "error_200":
        error = {"error": {"message": "injected error in an HTTP 200 reply", "type": "server_error", "code": None}}
        return "application/json", json.dumps(error).encode()
    if kind == "html":
        return "text/html; charset=utf-8", b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
    if kind == "sse":
        chunk = {**completion, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]}
        return "text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    if kind == "not_json":
        return "application/json", b"this is not JSON {"
    if kind == "no_choices":
        completion = {**completion, "choices": []}
    elif kind == "object_content":
        completion = {**completion, "choices": [{**completion["choices"][0], "message": {**message, "content": {"text": message["content"]}}}]}
    elif kind == "lone_surrogate":
        completion = {**completion, "choices": [{**completion["choices"][0], "message": {**message, "content": "\ud800" + message["content"]}}]}
    elif kind == "huge_usage":
        completion = {**completion, "usage": {"prompt_tokens": 2**70, "completion_tokens": 2**70, "total_tokens": 2**71}}
    return "application/json", json.dumps(completion).encode()  # ensure_ascii: a lone surrogate goes out as \ud800


class _Rules:
    """Fault rules with their per-rule counters (thread-safe)."""

    def __init__(self, faults: list[Fault]) -> None:
        self._lock = threading.Lock()
        self.replace(faults)

    def replace(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults = list(faults)
            self._seen = [0] * len(self._faults)
            self._fired = [0] * len(self._faults)

    def pick(self, task: str, user: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.task and fault.task != task:
                    continue
                if fault.match and fault.match not in user:
                    continue
                if fault.times is not None and self._fired[index] >= fault.times:
                    continue
                self._seen[index] += 1
                position = self._seen[index] - fault.after
                if position <= 0 or (position - 1) % fault.every != 0:
                    continue
                self._fired[index] += 1
                return fault
            return None


class FakeLLMServer:
    """The fake server, served from a daemon thread; use as a context manager."""

    def __init__(
        self,
        *,
        port: int = 0,
        latency_ms: float = 0,
        faults: list[Fault] | None = None,
        steps: int = 5,
        json_schema: bool = True,
        log_path: str | None = None,
        api_key: str | None = None,
        rate_limit: float = 0,
        rate_burst: int = 2,
    ) -> None:
        self.latency_ms = latency_ms
        # An API's rate limit: a token bucket of rate_limit requests per second (0: none) holding at most
        # rate_burst; a chat request finding it empty gets HTTP 429 with Retry-After (seconds to the next token).
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self._bucket = (float(rate_burst), time.monotonic())  # tokens, when counted
        self._bucket_lock = threading.Lock()
        self.api_key = api_key  # when set, every request without it gets HTTP 401 (llama.cpp's --api_key)
        self.steps = steps
        self.json_schema = json_schema
        self.log_path = log_path
        self._rules = _Rules(faults or [])
        self._log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        # Chat requests being answered now and the most ever at once (proof that calls overlap, without a clock).
        self._flight = threading.Condition()
        self._in_flight = 0
        self.max_in_flight = 0
        self._this_request = threading.local()  # .in_flight: whether this handler thread's request still counts
        self._open = threading.Event()  # cleared by hold(): requests wait, in flight, until release()
        self._open.set()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLMServer:
        # A short poll interval makes stop() take milliseconds instead of up to half a second.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.02)

    def serve_until_signalled(self, banner: str) -> None:
        """Serve in the foreground of its own process, print ``banner``, stop on SIGTERM or SIGINT."""

        def stop(*_: Any) -> None:
            # shutdown() waits for serve_forever, which runs in this very thread: ask from another.
            threading.Thread(target=self.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(banner, flush=True)
        self.serve_forever()

    def stop(self) -> None:
        self._open.set()  # requests kept by hold() finish
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> list[dict[str, Any]]:
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def reset_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    @property
    def in_flight(self) -> int:
        with self._flight:
            return self._in_flight

    def hold(self) -> None:
        """Keep every chat request that arrives waiting (and counted in flight) until ``release()``."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_in_flight(self, count: int, timeout: float = 60) -> bool:
        """Wait until ``count`` chat requests are in flight at once (use with ``hold()``); False if they
        never were within ``timeout`` seconds, e.g. because something serves them one at a time."""
        with self._flight:
            return self._flight.wait_for(lambda: self._in_flight >= count, timeout)

    @contextmanager
    def _in_flight_request(self) -> Iterator[None]:
        with self._flight:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._flight.notify_all()
        self._this_request.in_flight = True
        try:
            self._open.wait()
            yield
        finally:
            self._end_flight()

    def _end_flight(self) -> None:
        """The current request is no longer in flight: called as its reply goes out, since a client may send
        its next request as soon as it has read the reply, before this thread has left ``_in_flight_request``."""
        if getattr(self._this_request, "in_flight", False):
            self._this_request.in_flight = False
            with self._flight:
                self._in_flight -= 1

    def take_rate_token(self) -> float | None:
        """Spend one request of the rate limit: None when allowed, else the seconds until a token is there."""
        if not self.rate_limit:
            return None
        with self._bucket_lock:
            tokens, counted = self._bucket
            now = time.monotonic()
            tokens = min(float(self.rate_burst), tokens + (now - counted) * self.rate_limit)
            if tokens >= 1:
                self._bucket = (tokens - 1, now)
                return None
            self._bucket = (tokens, now)
            return (1 - tokens) / self.rate_limit

    def set_faults(self, faults: list[Fault]) -> None:
        self._rules.replace(faults)

    def set_latency(self, ms: float) -> None:
        self.latency_ms = ms

    def _update(self, entry: dict[str, Any], **changes: Any) -> None:
        with self._log_lock:
            entry.update(changes)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._log_lock:
            entry["seq"] = len(self._log)
            self._log.append(entry)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")


def _guess_task(messages: list[dict[str, Any]]) -> str:
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system").lower()
    if "search query" in system:
        return "search"
    if "fact checker" in system:  # prompts.VERIFY's system message, and no other
        return "verify"
    for task in ("outline", "critique", "refine", "evaluate", "question"):
        if task in system:
            return task
    return "steps" if "steps" in system else "answer"


def _handler_for(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # without it every reply stalls ~40 ms (Nagle + delayed ACK)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client went away (killed, or gave up on a timeout)

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
            self._send_json(status, {"error": {"message": message, "type": kind, "code": None}}, headers)

        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _refused(self) -> bool:
            """Answer 401 to a request without the server's API key, if it has one."""
            if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return False
            if self.command == "POST":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._error(401, "Invalid API key", "authentication_error")
            return True

        def do_GET(self) -> None:  # noqa: N802
            if self._refused():
                return
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "deepstep"}]})
            elif self.path == "/_log":
                self._send_json(200, server.log())
            elif self.path == "/_health":
                self._send_json(200, {"status": "ok", "in_flight": server.in_flight})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if self._refused():
                return
            if self.path in ("/_hold", "/_release"):  # hold()/release() for a server in another process
                self._read_body()
                server.hold() if self.path == "/_hold" else server.release()
                self._send_json(200, {"ok": True})
            elif self.path == "/_log/reset":
                self._read_body()
                server.reset_log()
                self._send_json(200, {"ok": True})
            elif self.path == "/_faults":
                server.set_faults([Fault(**item) for item in self._read_body()])
                self._send_json(200, {"ok": True})
            elif self.path.rstrip("/") in ("/v1/chat/completions", "/chat/completions"):
                self._chat()
            elif self.path.rstrip("/") in ("/v1/embeddings", "/embeddings"):
                self._embeddings()
            else:
                self._error(404, f"no route {self.path}")

        def _chat(self) -> None:
            started = time.time()
            try:
                body = self._read_body()
            except json.JSONDecodeError:
                self._error(400, "request body is not JSON")
                return
            messages = body.get("messages") or []
            response_format = body.get("response_format") or {}
            task = self.headers.get("X-Deepstep-Task") or _guess_task(messages)
            user = user_message(messages)
            entry: dict[str, Any] = {
                "task": task,
                "hash": _digest({"model": body.get("model"), "messages": messages, "response_format": response_format}),
                "status": None,  # set when the reply is sent
                "format": response_format.get("type"),
                # What the server would constrain the reply by (tests check what reaches llama.cpp); the fake ignores both.
                "schema": response_format.get("schema") or (response_format.get("json_schema") or {}).get("schema"),
                "grammar": body.get("grammar"),
                "fault": None,
                "started": started,
                "prompt_tokens": sum(count_tokens(str(m.get("content", ""))) for m in messages),
                "completion_tokens": 0,
            }
            with server._in_flight_request():
                self._answer(body, messages, response_format, task, user, entry)

        def _respond(self, entry: dict, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            entry["status"] = status
            entry["finished"] = time.time()
            # Logged before the bytes go out: a client holding the reply always finds it in the log.
            server._record(entry)
            server._end_flight()
            try:
                self._send_json(status, body, headers)
            except (BrokenPipeError, ConnectionResetError):
                server._update(entry, status=0)  # the client gave up (e.g. its timeout) before the reply

        def _respond_error(
            self, entry: dict, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
        ) -> None:
            self._respond(entry, status, {"error": {"message": message, "type": kind, "code": None}}, headers)

        def _answer(self, body: dict, messages: list, response_format: dict, task: str, user: str, entry: dict) -> None:
            if body.get("stream"):
                self._respond_error(entry, 400, "streaming is not supported by the fake server")
                return
            if response_format.get("type") == "json_schema" and not server.json_schema:
                self._respond_error(entry, 400, "json_schema response_format is not supported")
                return
            wait = server.take_rate_token()
            if wait is not None:
                self._respond_error(entry, 429, "rate limit reached", "rate_limit_error", {"Retry-After": f"{wait:.3f}"})
                return
            if server.latency_ms:
                time.sleep(server.latency_ms / 1000)
            fault = server._rules.pick(task, user)
            entry["fault"] = fault.kind if fault else None
            if fault and fault.kind == "http500":
                self._respond_error(entry, 500, "injected server error", "server_error")
                return
            if fault and fault.kind == "http401":
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                self._respond_error(entry, 401, f"Incorrect API key provided: {key}", "invalid_request_error")
                return
            if fault and fault.kind == "http429":
                self._respond_error(entry, 429, "injected rate limit", "rate_limit_error", {"Retry-After": f"{fault.retry_after:g}"})
                return
            if fault and fault.kind == "crash":
                entry.update(status=0, finished=time.time())
                server._record(entry)
                os.kill(os.getpid(), signal.SIGSEGV)
            if fault and fault.kind == "drop_connection":
                entry.update(status=0, finished=time.time())
                server._record(entry)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault and fault.kind == "timeout":
                time.sleep(fault.seconds)
            json_format = response_format.get("type") in ("json_object", "json_schema")
            fabricated = _fabricating_content(task, user, json_format=json_format) if fault and fault.kind == "fabricate" else None
            overturned = _overturning_content(task, user) if fault and fault.kind == "overturn" else None
            if fabricated is not None:
                content = fabricated
            elif overturned is not None:
                content = overturned
            elif fault and fault.kind == "missing" and task == "critique":
                content = reply_content(task, messages, steps=server.steps, json_format=json_format) + MISSING
            elif fault and fault.kind == "thinking":
                content = THINKING + reply_content(task, messages, steps=server.steps, json_format=json_format)
            elif fault and fault.kind not in ("timeout", "fabricate", "missing", "overturn", *HOSTILE_KINDS):
                content = _faulty_content(fault.kind, task, entry["prompt_tokens"])
            elif fault and fault.kind == "huge_json":
                content = ("A very long answer. " * (fault.size // 20 + 1))[: fault.size]
            else:
                content = reply_content(task, messages, steps=server.steps, json_format=json_format)
            entry["completion_tokens"] = count_tokens(content)
            completion = {
                "id": "chatcmpl-" + entry["hash"][:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "length" if fault and fault.kind == "length" else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": entry["prompt_tokens"],
                    "completion_tokens": entry["completion_tokens"],
                    "total_tokens": entry["prompt_tokens"] + entry["completion_tokens"],
                },
            }
            if fault and fault.kind in HOSTILE_KINDS and fault.kind != "huge_json":
                self._respond_hostile(entry, fault, completion)
                return
            self._respond(entry, 200, completion)

        def _embeddings(self) -> None:
            """Deterministic 8-dimensional vectors; faults for task ``embeddings`` (http500, timeout, trickle, slow_headers)."""
            body = self._read_body()
            texts = [body["input"]] if isinstance(body.get("input"), str) else list(body.get("input") or [])
            entry: dict[str, Any] = {"task": "embeddings", "hash": _digest(texts), "status": None, "format": None, "fault": None}
            entry.update(started=time.time(), prompt_tokens=sum(count_tokens(str(text)) for text in texts), completion_tokens=0)
            fault = server._rules.pick("embeddings", "\n".join(map(str, texts)))
            entry["fault"] = fault.kind if fault else None
            if fault and fault.kind == "http500":
                self._respond_error(entry, 500, "injected server error", "server_error")
                return
            if fault and fault.kind == "timeout":
                time.sleep(fault.seconds)
            vectors = [[int(digit, 16) / 15 for digit in _digest(str(text))[:8]] for text in texts]
            reply = {
                "object": "list",
                "data": [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)],
                "model": body.get("model", "fake"),
                "usage": {"prompt_tokens": entry["prompt_tokens"], "total_tokens": entry["prompt_tokens"]},
            }
            if fault and fault.kind in ("trickle", "slow_headers"):
                self._respond_hostile(entry, fault, reply)
            else:
                self._respond(entry, 200, reply)

        def _respond_hostile(self, entry: dict, fault: Fault, completion: dict[str, Any]) -> None:
            content_type, data = _hostile_body(fault.kind, completion)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            entry["status"] = 200
            entry["finished"] = time.time()
            server._record(entry)
            try:
                if fault.kind == "slow_headers":
                    self._trickle(head, fault.seconds)
                    self.wfile.write(data)
                elif fault.kind == "trickle":
                    self.wfile.write(head)
                    self._trickle(data, fault.seconds)
                else:
                    self.wfile.write(head + data)
            except (BrokenPipeError, ConnectionResetError):
                server._update(entry, status=0)  # the client hung up before the whole reply arrived

        def _trickle(self, data: bytes, seconds: float) -> None:
            for index in range(len(data)):
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
                time.sleep(seconds / len(data))

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deepstep.testing.fake_llm", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every reply")
    parser.add_argument("--fault", action="append", default=[], help="fault rule, e.g. http500:task=critique,times=2")
    parser.add_argument("--steps", type=int, default=5, help="steps in a decompose reply")
    parser.add_argument("--no-json-schema", action="store_true", help="reject json_schema response formats like llama.cpp")
    parser.add_argument("--log", help="append each request as a JSON line to this file")
    parser.add_argument("--rate-limit", type=float, default=0.0, help="requests per second before HTTP 429 with Retry-After (0: none)")
    parser.add_argument("--rate-burst", type=int, default=2, help="requests the rate limit lets through at once")
    args = parser.parse_args(argv)
    try:
        faults = [parse_fault(spec) for spec in args.fault]
    except ValueError as error:
        parser.error(str(error))
    server = FakeLLMServer(
        port=args.port,
        latency_ms=args.latency_ms,
        faults=faults,
        steps=args.steps,
        json_schema=not args.no_json_schema,
        log_path=args.log,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
    )
    server.serve_until_signalled(f"listening on {server.base_url}")


if __name__ == "__main__":
    main()
