"""Chat models per role, structured output with fallbacks, and usage accounting.

Every call goes through ``ChatOpenAI`` against an OpenAI-compatible server. Each request
carries an ``X-Deepstep-Task`` header so server logs (and the fake test server) can tell
the tasks apart.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, SecretStr

from deepstep.configuration import ResolvedModel, Role, Settings, StructuredMethod
from deepstep.errors import StructuredOutputError
from deepstep.interrupts import unless_stopped
from deepstep.parsing import ReplyParseError, parse_reply, schema_instructions, without_thinking
from deepstep.usage import USAGE_FIELDS, Usage, add_usage

# The OpenAI client and ChatOpenAI (about a second of imports) are imported where a call is made or
# its error is classified: building the graph to draw it or to read a stored thread never loads them.
if TYPE_CHECKING:
    import openai
    from langchain_openai import ChatOpenAI

T = TypeVar("T", bound=BaseModel)

TASK_ROLES: dict[str, Role] = {
    "outline": "decompose",
    "steps": "decompose",
    "question": "question",
    "search": "search",
    "answer": "answer",
    "critique": "critique",
    "refine": "refine",
    "evaluate": "evaluate",
    "verify": "verify",
    "synthesize": "answer",  # the report's opening answer is written like the step answers
}


def is_transient(error: BaseException) -> bool:
    """Worth another attempt of a node: the server or network failed, or a reply stayed
    unparsable after its repairs. Client errors (bad request, auth, unknown model) and
    bugs in our own code are not retried."""
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    if isinstance(error, openai.APIConnectionError) and _dead_embedded_server(error):
        return False  # nothing will answer another attempt
    # An unusable reply (HTTP 200 with an error, HTML, no choices, ...) arrives as an APIConnectionError
    # caused by UnusableReplyError: a model fault like a dropped connection, worth another attempt.
    return isinstance(error, openai.APIConnectionError | httpx.TransportError | StructuredOutputError)


def _dead_embedded_server(error: openai.APIConnectionError) -> str | None:
    """Why the embedded model server behind a failed request died, if it did."""
    from deepstep.llm_server import gone_reason

    return gone_reason(str(error.request.url)) if getattr(error, "request", None) is not None else None


def describe_error(error: BaseException) -> str:
    """One readable line for a failed model call."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "the model server timed out"
    if isinstance(error, openai.APIConnectionError):
        return _dead_embedded_server(error) or unusable_reply(error) or "cannot reach the model server"
    if isinstance(error, openai.APIStatusError):
        body = error.body.get("error", error.body) if isinstance(error.body, dict) else None
        detail = body.get("message") if isinstance(body, dict) else None
        return f"the model server answered HTTP {error.status_code}: {detail or error.message}"[:300]
    return f"{type(error).__name__}: {error}"[:300]


def unusable_reply(error: BaseException) -> str | None:
    """Why the model server's reply was unusable, when that (not the network) failed a call."""
    from deepstep.model_http import UnusableReplyError

    cause = error.__cause__
    while cause is not None and not isinstance(cause, UnusableReplyError):
        cause = cause.__cause__  # langchain-openai wraps the OpenAI client's error in one of its own
    return str(cause) if cause is not None else None


# The best structured-output method each server accepted, so a server that rejects
# json_schema (e.g. llama.cpp) costs one rejected request per process, not one per call.
_methods_by_base_url: dict[str, StructuredMethod] = {}
_methods_lock = threading.Lock()
_DOWNGRADE: dict[StructuredMethod, StructuredMethod] = {"json_schema": "json_object", "json_object": "prompt"}


def chat_model(settings: Settings, task: str) -> ChatOpenAI:
    from deepstep.llm_server import api_key_for

    resolved = settings.resolve_model(TASK_ROLES[task])
    # The embedded server gets its own key, never the user's: that would go to whatever holds its port.
    api_key = api_key_for(resolved.base_url, settings.home) or os.environ.get(resolved.api_key_env) or "not-needed"
    # The database shares the calls-in-flight limit between processes; a SecretStr keys the caches without showing it.
    return _chat_model(resolved, api_key, task, settings.max_reply_chars, settings.database_url)


# Building a ChatOpenAI validates a large pydantic model; calls with the same role settings share one.
@functools.lru_cache(maxsize=64)
def _chat_model(resolved: ResolvedModel, api_key: str, task: str, max_reply_chars: int, database_url: SecretStr | None = None) -> ChatOpenAI:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=resolved.base_url,
        model=resolved.model,
        api_key=SecretStr(api_key),
        temperature=resolved.temperature,
        # llama.cpp ignores max_completion_tokens, which is what ChatOpenAI sends for max_tokens.
        max_tokens=None if resolved.llama_cpp else resolved.max_tokens,
        extra_body={"max_tokens": resolved.max_tokens} if resolved.llama_cpp else None,
        timeout=resolved.timeout,
        # A deadline per request (not per read), and replies checked and capped before they are parsed.
        http_client=_shared_http_client(resolved.base_url, resolved.model, resolved.timeout, max_reply_chars, resolved.max_concurrency, database_url),
        max_retries=resolved.max_retries,
        default_headers={"X-Deepstep-Task": task},
        # LangGraph Studio always streams "messages", which would switch every call to a
        # streamed request (no token usage, unparsed JSON chunks); whole replies keep usage exact.
        disable_streaming=True,
    )


@functools.lru_cache(maxsize=16)
def _shared_http_client(
    base_url: str, model: str, timeout: float, max_reply_chars: int, max_in_flight: int, database_url: SecretStr | None
) -> httpx.Client:
    """One HTTP client (connection pool, TLS context) for every task of a model server: the chat models differ
    only in their task header. httpx clients are safe to share between threads."""
    from deepstep.model_http import model_http_client

    url = database_url.get_secret_value() if database_url is not None else None
    return model_http_client(base_url, model=model, timeout=timeout, max_reply_chars=max_reply_chars, max_in_flight=max_in_flight, database_url=url)


@functools.cache
def _json_schema(schema: type[BaseModel]) -> dict:
    return schema.model_json_schema()


def _usage_of(task: str, reply: AIMessage, seconds: float) -> Usage:
    metadata = reply.usage_metadata
    fields: dict[str, float] = {name: 0 for name in USAGE_FIELDS}
    fields.update(
        calls=1,
        prompt_tokens=metadata.get("input_tokens", 0) if metadata else 0,
        completion_tokens=metadata.get("output_tokens", 0) if metadata else 0,
        seconds=round(seconds, 4),
    )
    return {TASK_ROLES[task]: fields}


def _text(reply: BaseMessage, max_chars: int) -> str:
    """The reply's text without a reasoning model's thinking, cut to ``max_chars``: a runaway reply
    would be copied into every later checkpoint."""
    content = reply.content
    if not isinstance(content, str):
        content = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return without_thinking(content[:max_chars])


def call_text(settings: Settings, task: str, messages: Sequence[BaseMessage], *, grammar: str | None = None) -> tuple[str, Usage]:
    """One free-text call; returns the reply text and its usage. ``grammar`` (GBNF) constrains the reply on a
    llama.cpp server; other servers know no grammar and never get one."""
    started = time.perf_counter()
    model = chat_model(settings, task)
    options = {}
    if grammar is not None and settings.resolve_model(TASK_ROLES[task]).llama_cpp:
        options["extra_body"] = {**(model.extra_body or {}), "grammar": grammar}  # replaces the model's extra_body: keep max_tokens
    reply = unless_stopped(model.invoke, list(messages), **options)  # no new call after Ctrl-C
    return _text(reply, settings.max_reply_chars).strip(), _usage_of(task, reply, time.perf_counter() - started)


def _response_format(method: str, schema: type[BaseModel], *, llama_cpp: bool, generation_schema: dict | None = None) -> dict | None:
    """The request's ``response_format``: ``generation_schema`` (default: ``schema``'s own) is what the server
    constrains the reply by; the pydantic ``schema`` validates the reply whatever the server."""
    sent = generation_schema if generation_schema is not None else _json_schema(schema)
    if method == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": sent, "strict": False}}
    if method == "json_object":
        # llama.cpp turns a schema given with json_object into a grammar that forces valid output.
        return {"type": "json_object", "schema": sent} if llama_cpp else {"type": "json_object"}
    return None


def call_structured(
    settings: Settings,
    task: str,
    messages: Sequence[BaseMessage],
    schema: type[T],
    *,
    fallback: Callable[[str], T] | None = None,
    generation_schema: dict | None = None,
) -> tuple[T, Usage]:
    """A call whose reply must parse into ``schema``.

    Uses the best method the server supports (json_schema, then json_object, then plain
    prompt), always with the schema spelled out in the prompt, parses tolerantly, and sends
    up to ``max_repairs`` repair requests. When the reply still does not parse, returns
    ``fallback(last_reply)`` if given, else raises ``StructuredOutputError``. ``generation_schema`` (a JSON
    schema of the same shape with tighter limits) is sent to the server instead of ``schema``'s own.
    """
    import openai

    model = chat_model(settings, task)
    resolved = settings.resolve_model(TASK_ROLES[task])
    base_url = resolved.base_url
    method = settings.structured_output
    if method == "auto":
        # llama.cpp mishandles json_schema but enforces a schema given with json_object.
        with _methods_lock:
            method = _methods_by_base_url.get(base_url, "json_object" if resolved.llama_cpp else "json_schema")
    conversation = _with_schema_instructions(messages, schema)
    totals: Usage = {}
    repairs = 0
    last_text = ""
    started = time.perf_counter()
    while True:
        response_format = _response_format(method, schema, llama_cpp=resolved.llama_cpp, generation_schema=generation_schema)
        try:
            # In the body as it is: as ``response_format``, the OpenAI client would walk the whole schema against
            # its typed parameters on every call (a millisecond of CPU) and switch to its parsing path; deepstep
            # parses the reply itself. Merged with the model's own extra_body (max_tokens on llama.cpp).
            options = {"extra_body": {**(model.extra_body or {}), "response_format": response_format}} if response_format else {}
            reply = unless_stopped(model.invoke, conversation, **options)  # no new call (or repair) after Ctrl-C
            totals = add_usage(totals, _usage_of(task, reply, 0.0))
            last_text = _text(reply, settings.max_reply_chars)
        except openai.BadRequestError:
            if settings.structured_output != "auto" or method not in _DOWNGRADE:
                raise
            method = _DOWNGRADE[method]
            with _methods_lock:
                _methods_by_base_url[base_url] = method
            continue
        try:
            value = parse_reply(last_text, schema)
            return value, _finish(totals, task, started, repairs=repairs)
        except ReplyParseError as error:
            if repairs >= settings.max_repairs:
                if fallback is not None:
                    return fallback(last_text), _finish(totals, task, started, repairs=repairs, fallbacks=1)
                raise StructuredOutputError(f"{task}: {error} after {repairs} repair(s)") from None
            repairs += 1
            conversation = [
                *conversation,
                AIMessage(content=last_text),
                HumanMessage(content=f"That reply could not be used: {error}. {schema_instructions(schema)}"),
            ]


def _with_schema_instructions(messages: Sequence[BaseMessage], schema: type[BaseModel]) -> list[BaseMessage]:
    instructions = schema_instructions(schema)
    if messages and isinstance(messages[0], SystemMessage):
        return [SystemMessage(content=f"{messages[0].content}\n\n{instructions}"), *messages[1:]]
    return [SystemMessage(content=instructions), *messages]


def _finish(totals: Usage, task: str, started: float, **counters: int) -> Usage:
    role = TASK_ROLES[task]
    fields = dict(totals.get(role, {}))
    fields["seconds"] = round(time.perf_counter() - started, 4)
    for name, value in counters.items():
        fields[name] = fields.get(name, 0) + value
    return {role: fields}
