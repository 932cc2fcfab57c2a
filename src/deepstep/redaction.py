"""Keeping secrets out of messages, logs and stored state: URLs without their credentials, texts without
the API keys (pure: no graph, no I/O but reading the environment variables that hold the keys)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepstep.configuration import Settings

# Query parameters that carry credentials: ?password= (libpq), ?api-key= / ?key= (Azure and others),
# ?token=, ?sig= (SAS), ?secret=, ?auth=...
_SECRET_PARAMETER = re.compile(r"(?i)pass|pwd|secret|token|key|sig|auth|credential")


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """``url`` without credentials, for messages and stored state: its password, the values of
    query parameters named like credentials and any fragment become ``***``; with ``keep_user=False``
    the whole user info does (a model server has no use for a user name but as a token).
    Works on the text: a multi-host Postgres URL or a port out of range (which make
    ``urlsplit(...).port`` raise) are redacted too."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "***" if "@" in url or "?" in url else url
    rest, hash_mark, _fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    user_info, at, hosts = authority.rpartition("@")
    if at:
        user, colon, _password = user_info.partition(":")
        authority = f"{user}:***@{hosts}" if keep_user and colon else (f"{user}@{hosts}" if keep_user else f"***@{hosts}")
    if question_mark:
        query = "&".join(_redact_parameter(part) for part in query.split("&"))
    return f"{scheme}://{authority}{slash}{path}{question_mark}{query}{hash_mark}{'***' if hash_mark else ''}"


def _redact_parameter(part: str) -> str:
    name, equals, _value = part.partition("=")
    if not equals:
        return "***"  # a bare value: nothing says it is harmless
    return f"{name}=***" if _SECRET_PARAMETER.search(name) else part


MIN_KEY_CHARS = 12  # shorter values (placeholders like "x") would blank out ordinary words


def without_api_keys(text: str, settings: Settings) -> str:
    """``text`` with the API keys of every role replaced by ``***``: some servers echo a rejected key
    in their error message, and step errors are stored in checkpoints and shown in reports."""
    names = {settings.api_key_env, *(role.api_key_env for role in settings.roles.values() if role.api_key_env)}
    for key in filter(lambda value: len(value) >= MIN_KEY_CHARS, (os.environ.get(name, "") for name in names)):
        text = text.replace(key, "***")
        # A long message is cut to one line, which may cut a key too: its start is still the key.
        for cut in range(len(key) - 1, MIN_KEY_CHARS - 1, -1):
            if key[:cut] in text:
                text = text.replace(key[:cut], "***")
                break
    return text


__all__ = ["MIN_KEY_CHARS", "redact_url", "without_api_keys"]
