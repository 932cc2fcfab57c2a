"""deepstep: step-by-step research on LangGraph.

decompose a question into a tree of steps, then for each step ask, retrieve, answer and
refine with MCTSr; everything is checkpointed so a killed run resumes where it stopped.

The public names load on first use (PEP 562): ``import deepstep`` alone, and so every
``deepstep`` command, does not pay for LangGraph, the OpenAI client and pandas until a
command needs them (``deepstep --help`` and ``deepstep corpus search`` never do).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from deepstep.errors import (
    ConfigError,
    CorpusError,
    DeepstepError,
    InputError,
    MissingDependencyError,
    ModelServerError,
    ThreadBusyError,
    UnknownThreadError,
)

if TYPE_CHECKING:
    from deepstep.api import Progress, Refresh, import_store, refresh, rerun_step, resume, revise, run
    from deepstep.configuration import Settings
    from deepstep.graph import build_graph, graph
    from deepstep.history import diff, versions
    from deepstep.store import export_store
    from deepstep.threads import RunResult, load

# Public name -> the module that defines it.
_LAZY_NAMES = {
    "Progress": "deepstep.api",
    "RunResult": "deepstep.threads",
    "load": "deepstep.threads",
    "resume": "deepstep.api",
    "rerun_step": "deepstep.api",
    "revise": "deepstep.api",
    "refresh": "deepstep.api",
    "Refresh": "deepstep.api",
    "run": "deepstep.api",
    "Settings": "deepstep.configuration",
    "build_graph": "deepstep.graph",
    "export_store": "deepstep.store",
    "import_store": "deepstep.api",
    "versions": "deepstep.history",
    "diff": "deepstep.history",
}

__all__ = [
    "ConfigError",
    "CorpusError",
    "DeepstepError",
    "InputError",
    "MissingDependencyError",
    "ModelServerError",
    "Progress",
    "Refresh",
    "RunResult",
    "Settings",
    "ThreadBusyError",
    "UnknownThreadError",
    "build_graph",
    "diff",
    "export_store",
    "graph",
    "import_store",
    "load",
    "refresh",
    "rerun_step",
    "resume",
    "revise",
    "run",
    "versions",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``deepstep.graph`` is the compiled graph, and also the name of the module that builds it: the
    import system sets the package attribute ``graph`` to that module when it is first imported (by
    ``deepstep.api``, say). Eagerly imported, the graph simply overwrote it; loaded lazily, this
    property keeps the name bound to the graph whichever import comes first."""

    @property
    def graph(self) -> Any:
        from deepstep.graph import graph

        return graph

    @graph.setter
    def graph(self, module: Any) -> None:
        pass  # the import system registering the deepstep.graph module (it stays in sys.modules)


sys.modules[__name__].__class__ = _Package
