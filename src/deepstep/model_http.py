"""The HTTP client of model calls: a deadline per request, a cap on reply size, and every reply
checked to be a usable chat completion before the OpenAI client parses it.

httpx's timeouts bound each network read, not a request: a server that trickles its reply (or
its headers) one byte at a time keeps a call alive for ever. Here every socket operation of a
request waits at most until the request's deadline, ``timeout`` seconds after it started, and
then fails as a timeout (``openai.APITimeoutError``), retried like any other.

A reply that is no usable chat completion (HTTP 200 carrying an error, an HTML page, an event
stream nobody asked for, no choices, content that is not text, a lone surrogate, absurd token
counts, a body over the size cap) raises ``UnusableReplyError``. The OpenAI client retries it like
a dropped connection and then raises ``openai.APIConnectionError`` caused by it; deepstep treats
that as a transient model fault (``models.is_transient``) and reports the reason in one line.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import zlib
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from deepstep import interrupts
from deepstep.call_limits import CallLimit, limit_for, retry_after_seconds

# JSON escapes a character in at most 12 bytes (an astral one as two \\uXXXX); the rest of a completion is small.
BYTES_PER_CHAR = 12
ENVELOPE_BYTES = 64 * 1024
# Token counts beyond this are no real usage (and overflow SQLite's integers): the reply is broken.
MAX_TOKEN_COUNT = 2**53

_request = threading.local()  # .deadline: time.monotonic() by which the current request must be done


class UnusableReplyError(httpx.RequestError):
    """The model server answered, but not with a usable chat completion (a transient model fault).

    An ``httpx.RequestError``, so the OpenAI client retries it and raises ``APIConnectionError`` from it."""


def _until_deadline(timeout: float | None, expired: type[Exception]) -> float | None:
    """The time one socket operation may take: its own timeout, but not past the request's deadline."""
    deadline = getattr(_request, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the model call ran past its deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wait = _until_deadline(timeout, httpcore.ReadTimeout)
        if not interrupts.watched():
            return self._stream.read(max_bytes, wait)
        # In slices, so a stopped run (Ctrl-C) abandons the call after its grace. A socket read that
        # times out has taken nothing: the next slice goes on where it left off.
        until = None if wait is None else time.monotonic() + wait
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                raise httpcore.ReadTimeout("the model server sent nothing within the read timeout")
            if left is not None and left <= interrupts.POLL_SECONDS:
                return self._stream.read(max_bytes, left)
            try:
                return self._stream.read(max_bytes, interrupts.POLL_SECONDS)
            except httpcore.ReadTimeout:
                interrupts.check_stop(sent=True)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _until_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _until_deadline(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its streams bounded by the current request's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, _until_deadline(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _until_deadline(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class ModelTransport(httpx.HTTPTransport):
    """httpx's transport with a deadline per request and replies read whole (up to a cap) and checked."""

    def __init__(
        self, *, deadline_seconds: float, max_reply_chars: int, proxy: str | None = None, limit: CallLimit | None = None, max_in_flight: int = 0
    ) -> None:
        super().__init__(proxy=proxy)
        self.limit, self.max_in_flight = limit, max_in_flight
        # httpx takes no network backend of its own: give its connection pool one bounded by the deadline.
        self._pool._network_backend = _DeadlineBackend(self._pool._network_backend)
        self.deadline_seconds = deadline_seconds
        self.max_reply_chars = max_reply_chars
        self.max_body_bytes = BYTES_PER_CHAR * max_reply_chars + ENVELOPE_BYTES

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        interrupts.check_stop(sent=False)  # also a retry: no request starts once the run is stopping
        if self.limit is None:
            return self._handle(request)
        with self.limit.slot(self.max_in_flight) as started:  # the deadline starts once the request may go
            interrupts.check_stop(sent=False)
            response = self._handle(request)
            # Told before the slot is freed: a call waiting for it must not start before the pause is known
            # (a few milliseconds when the limit is shared through the database).
            retry_after = retry_after_seconds(response.headers)
            if response.status_code == 429 or (response.status_code == 503 and retry_after is not None):
                self.limit.rate_limited(started, retry_after, self.max_in_flight)
            elif response.status_code < 400:
                self.limit.succeeded(self.max_in_flight)
        return response

    def _handle(self, request: httpx.Request) -> httpx.Response:
        _request.deadline = time.monotonic() + self.deadline_seconds
        try:
            response = super().handle_request(request)
            try:
                body = self._read_capped(response)
            finally:
                response.close()
        finally:
            _request.deadline = None

        def whole() -> httpx.Response:  # the reply from the bytes read, not read yet (httpx reads and times it)
            return httpx.Response(
                response.status_code, headers=response.headers, stream=httpx.ByteStream(body), extensions=response.extensions, request=request
            )

        content = self._inflated(body, response.headers.get("content-encoding", ""))
        if response.status_code == 200 and request.url.path.rstrip("/").endswith("/chat/completions"):
            check_chat_completion(httpx.Response(200, headers={"content-type": response.headers.get("content-type", "")}, content=content))
        return whole()

    def _inflated(self, body: bytes, encoding: str) -> bytes:
        """What the OpenAI client will parse, inflated no further than the cap: a few hundred
        kilobytes of gzip can inflate to gigabytes (httpx's own decoder inflates all at once)."""
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise UnusableReplyError(f"the model server sent its reply in an encoding deepstep does not read ({encoding[:40]})")
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # a gzip or zlib stream
        try:
            content = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error:
            raise UnusableReplyError(f"the model server sent a damaged {encoding} reply") from None
        if len(content) > self.max_body_bytes:
            raise self._too_big()
        return content

    def _too_big(self) -> UnusableReplyError:
        return UnusableReplyError(f"the model server sent a reply over {self.max_body_bytes} bytes (max_reply_chars is {self.max_reply_chars})")

    def _read_capped(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream), "HTTPTransport, a sync transport, replies with a sync stream"
        for chunk in stream:
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_big()
            chunks.append(chunk)
        return b"".join(chunks)


def check_chat_completion(response: httpx.Response) -> None:
    """Raise ``UnusableReplyError`` unless ``response`` (HTTP 200) is a chat completion deepstep can use."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        payload = json.loads(response.content)
    except (ValueError, RecursionError):
        if content_type == "text/event-stream":
            raise UnusableReplyError("the model server sent an event stream that was not asked for") from None
        if content_type == "text/html" or response.content.lstrip()[:1] == b"<":
            raise UnusableReplyError("the model server sent an HTML page instead of a chat completion") from None
        raise UnusableReplyError(f"the model server sent a reply that is not JSON ({content_type or 'no content type'})") from None
    if not isinstance(payload, dict):
        raise UnusableReplyError("the model server sent JSON that is not a chat completion")
    if payload.get("error") is not None:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise UnusableReplyError(f"the model server answered HTTP 200 with an error: {str(message)[:200]}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UnusableReplyError("the model server sent a chat completion without choices")
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
            raise UnusableReplyError("the model server sent a chat completion whose message is not text")
    if not _plausible_usage(payload.get("usage")):
        raise UnusableReplyError("the model server sent impossible token counts")
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UnusableReplyError("the model server sent text that is not valid Unicode (a lone surrogate)") from None


def _plausible_usage(usage: Any) -> bool:
    if usage is None or isinstance(usage, bool | str):
        return True
    if isinstance(usage, int | float):
        return 0 <= usage < MAX_TOKEN_COUNT
    if isinstance(usage, dict):
        return all(_plausible_usage(value) for value in usage.values())
    return isinstance(usage, list) and all(_plausible_usage(value) for value in usage)


def model_http_client(
    base_url: str, *, timeout: float, max_reply_chars: int, model: str | None = None, max_in_flight: int = 0, database_url: str | None = None
) -> httpx.Client:
    """The httpx client for calls to the model server at ``base_url``; with ``model`` and ``max_in_flight``,
    at most that many requests to that model there are in flight in this process (``call_limits``), or
    in all processes on ``database_url`` when it is given (``shared_call_limits``)."""
    # A client with its own transport ignores proxy variables: honour them as httpx would.
    scheme, host = urlsplit(base_url).scheme, urlsplit(base_url).hostname or ""
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(scheme)
    limit: CallLimit | None = None
    if model is not None and max_in_flight > 0 and database_url is not None:
        from deepstep.shared_call_limits import shared_limit_for

        limit = shared_limit_for(database_url, base_url, model, lease_seconds=timeout)
    elif model is not None and max_in_flight > 0:
        limit = limit_for(base_url, model)
    transport = ModelTransport(deadline_seconds=timeout, max_reply_chars=max_reply_chars, proxy=proxy, limit=limit, max_in_flight=max_in_flight)
    return httpx.Client(transport=transport)


__all__ = ["ModelTransport", "UnusableReplyError", "check_chat_completion", "model_http_client"]
