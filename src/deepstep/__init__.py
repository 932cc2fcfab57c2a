"""deepstep: step-by-step research on LangGraph.

decompose a question into a tree of steps, then for each step ask, retrieve, answer and
refine with MCTSr; everything is checkpointed so a killed run resumes where it stopped.
"""

from deepstep.api import Progress, RunResult, load, resume, run
from deepstep.configuration import Settings
from deepstep.errors import (
    ConfigError,
    CorpusError,
    DeepstepError,
    InputError,
    ModelServerError,
    ThreadBusyError,
    UnknownThreadError,
)
from deepstep.graph import build_graph, graph
from deepstep.store import export_store, import_store

__all__ = [
    "ConfigError",
    "CorpusError",
    "DeepstepError",
    "InputError",
    "ModelServerError",
    "Progress",
    "RunResult",
    "Settings",
    "ThreadBusyError",
    "UnknownThreadError",
    "build_graph",
    "export_store",
    "graph",
    "import_store",
    "load",
    "resume",
    "run",
]
