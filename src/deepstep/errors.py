"""Typed errors of the public API.

Every error a user can cause (bad input, bad settings, missing corpus, unreachable
model server, unknown thread, thread already running) is a ``DeepstepError`` whose message says what to do.
The CLI prints the message on one line and exits with code 2; Python callers can
catch the specific subclass.
"""

from __future__ import annotations


class DeepstepError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class InputError(DeepstepError):
    """The question or another direct input is unusable."""


class ConfigError(DeepstepError):
    """A setting is invalid."""


class CorpusError(DeepstepError):
    """The corpus folder is missing, empty or unreadable."""


class ModelServerError(DeepstepError):
    """The model server cannot be reached or keeps failing."""


class UnknownThreadError(DeepstepError):
    """No checkpoint exists for the given thread id."""


class StructuredOutputError(Exception):
    """A model reply could not be parsed into the expected schema, even after repairs.

    Not a ``DeepstepError``: it is a model fault, retried by the graph's retry policy.
    """


class ThreadBusyError(DeepstepError):
    """Another process is running the same thread right now."""


class MissingDependencyError(DeepstepError):
    """A feature needs a library or system package that is not installed; the message names it."""
