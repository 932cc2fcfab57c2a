"""All settings in one pydantic-settings object, and the one way a run resolves them.

Precedence, lowest first: defaults < environment (``DEEPSTEP_<FIELD>``, plus the standard
``OPENAI_BASE_URL``) < CLI options < ``RunnableConfig["configurable"]`` < LangGraph's runtime
context (``graph.invoke(..., context={...})``). ``Settings.for_run`` applies that order; the
Python API resolves a run's settings once and hands the result to the graph as its context.
API keys are never settings: a role names the environment variable that holds its key
(``api_key_env``), so keys stay out of checkpoints, logs and exports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError
from typing_extensions import TypedDict

from deepstep.errors import ConfigError
from deepstep.mcts import MCTSParams
from deepstep.redaction import redact_url

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig


UnsupportedClaims = Literal["mark", "drop"]
ReportLayout = Literal["answer_first", "seed"]
Verification = Literal["off", "model"]


class RunSettings(TypedDict, total=False):
    """The settings that shape a thread's result, as JSON values: kept in the thread's state so a
    resumed thread goes on as it started. Everything else (model server, home, timeouts) comes
    from the resuming environment."""

    corpus: str | None
    rollouts: int
    exploration_c: float
    max_children: int
    reward_samples: int
    early_stop_q: float | None
    top_k: int
    max_searches: int
    search_language: str | None
    context_tokens: int
    chunk_tokens: int
    chunk_overlap: int
    outline_tokens: int
    max_steps: int
    max_depth: int
    review: bool
    language: str | None
    structured_output: str
    max_repairs: int
    unsupported_claims: UnsupportedClaims
    report_layout: ReportLayout
    verify: Verification


RUN_SHAPING_FIELDS = tuple(RunSettings.__annotations__)
Role = Literal["decompose", "question", "search", "answer", "critique", "refine", "evaluate", "verify"]
ROLES: tuple[Role, ...] = get_args(Role)
StructuredMethod = Literal["auto", "json_schema", "json_object", "prompt"]


# Upper bounds that only catch nonsense: values past them validated before, then failed deep in a
# run (an int over 2^64 in the HTTP client, an infinite timeout in a timer).
MOST_TOKENS = 10_000_000  # more than any model's context window
LONGEST_TIMEOUT = 86_400.0  # a day, in seconds


class RoleModel(BaseModel):
    """Per-role overrides; unset fields fall back to the global settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=MOST_TOKENS)
    timeout: float | None = Field(default=None, gt=0, le=LONGEST_TIMEOUT)


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


class ResolvedModel(BaseModel):
    """What one role's ``ChatOpenAI`` is built from."""

    model_config = ConfigDict(frozen=True)  # hashable: equal settings share one cached client

    role: Role
    base_url: str
    model: str
    api_key_env: str
    temperature: float
    max_tokens: int
    timeout: float
    max_retries: int
    llama_cpp: bool
    max_concurrency: int  # calls in flight to this base URL and model, at most


class Settings(BaseSettings):
    """deepstep settings. Every field is also ``DEEPSTEP_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DEEPSTEP_", extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # Where things live.
    home: Path = Field(default=Path(".deepstep"), description="Folder for the checkpoint database and indexes.")
    checkpoint_path: Path | None = Field(default=None, description="SQLite checkpoint file (default: HOME/checkpoints.sqlite).")
    corpus: Path | None = Field(
        default=None,
        description="Folder of Markdown/text/reST/HTML files to retrieve from (default: HOME/corpora/sklearn once "
        "`deepstep corpus fetch sklearn` ran, else the bundled demo corpus).",
    )
    allow_remote_paths: bool = Field(
        default=False,
        description="Let callers of a LangGraph API server (Studio, `deepstep studio`) set `corpus` per run; "
        "off: the server's own DEEPSTEP_CORPUS is used and a run that names a corpus fails.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="Postgres URL (postgresql://user:password@host:5432/db) for scale-out: checkpoints go to Postgres instead of "
        "SQLite, threads are locked there, and retrieval uses Postgres full-text search (see retriever). Never stored or logged.",
    )
    queue_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Job queue (`deepstep worker`): times a question's job may fail (an error, failed steps, or its worker "
        "dying mid-job) before it is marked failed with its reason. A worker stopped by SIGTERM releases its job without a failure.",
    )
    queue_stall_seconds: float = Field(
        default=30.0,
        ge=2,
        le=3600,
        description="Job queue: a worker that sent no heartbeat for this long counts as dead, and its job is taken again "
        "(workers send one every third of it and look for such jobs as often).",
    )
    retriever: Literal["auto", "bm25", "postgres"] = Field(
        default="auto",
        description="bm25 (in-process index), postgres (full-text search in database_url), or auto: postgres when database_url is set.",
    )
    embedding_model: str | None = Field(
        default=None,
        description="Embedding model on the model server (OpenAI-compatible /embeddings): the postgres retriever then also ranks "
        "passages by pgvector similarity and fuses both rankings. Needs the postgres retriever.",
    )

    # Models.
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL for every role (default: $OPENAI_BASE_URL).")
    model: str = Field(default="gpt-4o-mini", description="Model name for every role unless a role overrides it.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    temperature: float = Field(default=0.7, ge=0, le=2)
    evaluate_temperature: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Temperature of the roles that judge rather than write: the strict critic that scores answers "
        "and the claim verifier (verify = model).",
    )
    max_tokens: int = Field(default=1024, ge=1, le=MOST_TOKENS)
    timeout: float = Field(
        default=120.0,
        gt=0,
        le=LONGEST_TIMEOUT,
        description="Seconds one model request may take in all (a deadline, not a limit per network read); then it times out.",
    )
    max_retries: int = Field(default=2, ge=0, le=100, description="HTTP-level retries per call (429/5xx/timeouts, Retry-After respected).")
    step_attempts: int = Field(default=3, ge=1, le=10, description="Attempts per graph node before a step is marked failed.")
    llama_cpp: bool = Field(
        default=False,
        description="The server is llama.cpp (set automatically for the embedded model): max_tokens is sent in the "
        "request body and json_object replies are constrained by the JSON schema.",
    )
    cited_sentences: bool | None = Field(
        default=None,
        description="llama.cpp servers only: a grammar makes every sentence of a step's first answer and of the report's "
        "opening answer end with a citation [n] of one of its passages (the claim check still judges each). Default: on for "
        "the embedded model, whose 135M model cites nothing unless made to; off for other servers.",
    )
    llama_server_module: str = Field(
        default="llama_cpp.server",
        description="Python module run (with llama-cpp-python's server options) as the embedded model server; "
        "tests use deepstep.testing.stand_in_llama, which can crash on demand.",
    )
    structured_output: StructuredMethod = Field(default="auto", description="json_schema, json_object, prompt, or auto (best the server supports).")
    max_repairs: int = Field(default=2, ge=0, le=100, description="Repair requests after an unparsable structured reply.")
    max_reply_chars: int = Field(
        default=50_000,
        ge=100,
        le=10_000_000,
        description="Longest model reply kept, in characters: a longer one is cut to this length, and a reply body far "
        "beyond it (over 12 bytes per character) is rejected as a model fault and retried.",
    )
    roles: dict[Role, RoleModel] = Field(default_factory=dict, description="Per-role model overrides.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description='Optional price table by model name, e.g. {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}.'
    )

    # MCTSr.
    rollouts: int = Field(default=2, ge=0, le=1000, description="MCTSr rollouts per step (critique, refine, evaluate); 0 keeps the first answer.")
    exploration_c: float = Field(default=1.4, ge=0, description="UCT exploration constant: higher tries weaker answers more often.")
    max_children: int = Field(default=2, ge=1, le=100, description="Refinements of one answer before it counts as fully expanded.")
    reward_samples: int = Field(default=1, ge=1, le=100, description="Scores the critic gives each answer (their mean and minimum make Q).")
    early_stop_q: float | None = Field(default=None, ge=-100, le=100, description="Stop refining a step once an answer reaches this Q (-100..100).")

    # Plan and retrieval.
    top_k: int = Field(default=4, ge=1, le=50, description="Passages retrieved per step.")
    max_searches: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Follow-up retrievals a step may run, each with a query the model writes, when the evidence gate or "
        "the critique finds something missing (0: one retrieval only).",
    )
    search_language: str | None = Field(
        default=None,
        description="Language of the corpus, in which research questions and follow-up queries are also written "
        "(default: detected from the corpus index when its script differs from the question's; off: never).",
    )
    context_tokens: int = Field(default=1200, ge=64, le=MOST_TOKENS, description="Token budget of the retrieved passages in one prompt.")
    chunk_tokens: int = Field(
        default=180, ge=16, le=4096, description="Passage size when indexing a corpus, in words (a CJK character counts as one)."
    )
    chunk_overlap: int = Field(default=30, ge=0, le=4096, description="Words shared by consecutive passages of a document (less than chunk_tokens).")
    outline_tokens: int = Field(default=400, ge=32, le=MOST_TOKENS, description="Token budget of the outline kept for later prompts.")
    max_steps: int = Field(default=8, ge=1, le=500, description="At most this many steps in the plan.")
    max_depth: int = Field(default=3, ge=1, le=6, description="Deepest step level (1: only top-level steps).")
    max_concurrency: int = Field(
        default=4, ge=1, le=64, description="Steps run at once, and model calls in flight per model server (base URL + model) in this process."
    )
    review: bool = Field(default=False, description="Pause after decompose so the plan can be approved or edited.")
    language: str | None = Field(default=None, description="Language of questions and answers (default: the question's).")

    # Budget: caps on the thread's whole spending (every run, resume and rerun of it counted), checked after
    # planning and between batches of steps; not run-shaping, so a resume goes on under the cap it is given.
    max_calls: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Cap on the thread's model calls: steps whose worst-case calls no longer fit are not started and the run pauses "
        "(exit code 3); `deepstep resume THREAD --max-calls N` goes on. Default: no cap.",
    )
    max_run_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="Cap on the thread's tokens (prompt + completion, all calls), checked like max_calls against each step's "
        "estimate (max_tokens per reply, prompts estimated high). Not the per-call max_tokens. Default: no cap.",
    )
    max_cost: float | None = Field(
        default=None,
        ge=0,
        description="Cap on the thread's estimated cost in US dollars (needs a price in prices for every model used), checked "
        "like max_calls. Default: no cap.",
    )

    # Trust.
    unsupported_claims: UnsupportedClaims = Field(
        default="mark",
        description="What the report does with a claim its cited passages do not back: mark it ([unsupported] after the "
        "sentence), or drop the sentence from the step's answer (and count it).",
    )
    report_layout: ReportLayout = Field(
        default="answer_first",
        description="answer_first: a synthesized answer (one more model call), then the steps with their confidence and one "
        "reference list; seed: the seed notebook's layout byte for byte.",
    )
    verify: Verification = Field(
        default="off",
        description="off: claims get the model-free lexical verdicts only; model: after every answer and refinement the "
        "verify role judges all its claims in one structured call (one more call per answer), refining those verdicts.",
    )

    @field_validator("home", "checkpoint_path", "corpus", mode="before")
    @classmethod
    def _path_not_empty(cls, value: Any) -> Any:
        # Path("") is the current directory: an empty DEEPSTEP_HOME= must not quietly mean "here".
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: unset the variable for the default, or give a path")
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _known_roles(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(ROLES))
            if unknown:
                raise ValueError(f"unknown model role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a URL like postgresql://user:password@127.0.0.1:5432/dbname")
        return value

    @model_validator(mode="after")
    def _postgres_retriever_needs_database(self) -> Settings:
        if self.retriever == "postgres" and self.database_url is None:
            raise ValueError("retriever 'postgres' needs database_url (DEEPSTEP_DATABASE_URL)")
        if self.embedding_model is not None and not self.uses_postgres_retriever:
            raise ValueError("embedding_model needs the postgres retriever (pgvector): set database_url (DEEPSTEP_DATABASE_URL) or unset it")
        return self

    @property
    def uses_postgres_retriever(self) -> bool:
        return self.retriever == "postgres" or (self.retriever == "auto" and self.database_url is not None)

    @model_validator(mode="after")
    def _default_base_url(self) -> Settings:
        if self.base_url is None and os.environ.get("OPENAI_BASE_URL"):
            object.__setattr__(self, "base_url", os.environ["OPENAI_BASE_URL"])
        return self

    @property
    def needs_embedded_model(self) -> bool:
        """No server is configured for at least one role."""
        return self.base_url is None and any(not (self.roles.get(r) and self.roles[r].base_url) for r in ROLES)

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoint_path or self.home / "checkpoints.sqlite"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    def resolve_model(self, role: Role) -> ResolvedModel:
        override = self.roles.get(role, RoleModel())
        base_url = override.base_url or self.base_url
        if not base_url:
            raise ConfigError(
                "no model server configured: set OPENAI_BASE_URL (and OPENAI_API_KEY), or start the embedded model "
                "with `deepstep llm serve` and set OPENAI_BASE_URL to the URL it prints"
            )
        if not _is_http_url(base_url):
            raise ConfigError(
                f"the model server URL {redact_url(base_url, keep_user=False)!r} is not an http(s) URL: "
                "set OPENAI_BASE_URL (or `deepstep run --base-url`) to one like http://127.0.0.1:8080/v1"
            )
        # A judgement should not change from one call to the next; writing may vary.
        default_temperature = self.evaluate_temperature if role in ("evaluate", "verify") else self.temperature
        return ResolvedModel(
            role=role,
            base_url=base_url,
            model=override.model or self.model,
            api_key_env=override.api_key_env or self.api_key_env,
            temperature=default_temperature if override.temperature is None else override.temperature,
            max_tokens=override.max_tokens or self.max_tokens,
            timeout=override.timeout or self.timeout,
            max_retries=self.max_retries,
            llama_cpp=self.llama_cpp,
            max_concurrency=self.max_concurrency,
        )

    def model_for(self, role: Role) -> str:
        override = self.roles.get(role)
        return (override.model if override else None) or self.model

    def estimate_cost(self, usage: dict[str, dict[str, float]]) -> float | None:
        """Dollars for ``usage`` by the price table, or ``None`` when a used model has no price."""
        total = 0.0
        for role, fields in usage.items():
            if not fields.get("calls"):
                continue
            price = self.prices.get(self.model_for(role))  # type: ignore[arg-type]
            if price is None:
                return None
            total += (fields.get("prompt_tokens", 0) * price.prompt + fields.get("completion_tokens", 0) * price.completion) / 1e6
        return total

    def mcts_params(self) -> MCTSParams:
        return MCTSParams(
            rollouts=self.rollouts,
            exploration_c=self.exploration_c,
            max_children=self.max_children,
            reward_samples=self.reward_samples,
            early_stop_q=self.early_stop_q,
        )

    def run_settings(self) -> RunSettings:
        """The run-shaping settings as JSON values, for the thread's state (never a credential)."""
        return self.model_dump(mode="json", include=set(RUN_SHAPING_FIELDS))  # type: ignore[return-value]

    @classmethod
    def build(cls, **overrides: Any) -> Settings:
        """Settings from the environment plus overrides; errors become one readable ``ConfigError``."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        except SettingsError as exc:  # e.g. DEEPSTEP_ROLES that is not JSON
            raise ConfigError(f"invalid settings: {exc}; DEEPSTEP_* variables holding a dict or list must be JSON") from None
        except RecursionError:  # JSON nested past Python's recursion limit, e.g. in DEEPSTEP_ROLES
            raise ConfigError("invalid settings: a DEEPSTEP_* JSON value is nested too deeply; roles and prices are flat objects") from None

    @classmethod
    def for_run(cls, config: RunnableConfig | None, context: Any = None) -> Settings:
        """A graph run's settings: environment < known ``configurable`` keys < the runtime context.

        The Python API resolves a run's settings once and passes that ``Settings`` object as the
        context, so nodes get it as is. Anyone else (``graph.invoke``, Studio) passes plain values
        in ``configurable`` and/or a ``RunContext``, merged here on every call: validation is
        cheap next to a model call, and no cache keeps credentials around.
        """
        if isinstance(context, Settings):
            return context
        configurable = (config or {}).get("configurable", {})
        requested = {k: v for k, v in configurable.items() if k in cls.model_fields}
        if isinstance(context, BaseModel):
            requested.update(context.model_dump(exclude_none=True))
        elif isinstance(context, Mapping):
            requested.update({k: v for k, v in context.items() if v is not None})
        elif context is not None:
            raise ConfigError(f"the run context must be a deepstep RunContext or a dict of its fields, not {type(context).__name__}")
        if serves_remote_callers():
            _refuse_remote_settings(requested, allow_paths=cls.build().allow_remote_paths)
        return cls.build(**requested)


# Run-shaping settings that name files on the server's machine: a remote caller may set them only
# when the server's user opted in (allow_remote_paths).
REMOTE_PATH_FIELDS = ("corpus",)


def serves_remote_callers() -> bool:
    """Whether this process is a LangGraph API server (``langgraph dev``, ``deepstep studio``), whose run
    settings come from whoever reaches its HTTP API; the server names its graphs in LANGSERVE_GRAPHS."""
    return "LANGSERVE_GRAPHS" in os.environ


def _refuse_remote_settings(requested: dict[str, Any], *, allow_paths: bool) -> None:
    """A remote caller may shape a run (the RunContext fields), never point it at other files, model
    servers, API key variables or modules to start: those come from the server's environment."""
    settable = [name for name in RUN_SHAPING_FIELDS if allow_paths or name not in REMOTE_PATH_FIELDS]
    refused = sorted(name for name, value in requested.items() if value is not None and name not in settable)
    if refused:
        hint = " (or start it with `deepstep studio --allow-remote-paths`)" if set(refused) <= set(REMOTE_PATH_FIELDS) else ""
        raise ConfigError(
            f"a run through the LangGraph server cannot set {', '.join(refused)}: set DEEPSTEP_"
            f"{refused[0].upper()} in the server's environment or .env{hint}"
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _run_context_schema() -> type[BaseModel]:
    """The graph's context schema (what LangGraph Studio lets you set per run or assistant, and what
    ``graph.invoke(..., context={...})`` takes): the settings that shape a result, with Settings'
    limits and descriptions. Every field defaults to unset (None), which leaves the value from
    ``configurable``, the environment or the default in place; an unknown field is an error."""
    fields: dict[str, Any] = {}
    for name in RUN_SHAPING_FIELDS:
        field = Settings.model_fields[name]
        # A copy with Settings' limits (ge, le) but no default: a default shown in Studio's form would be
        # sent back with every run and override the server's DEEPSTEP_* values.
        unset = FieldInfo.merge_field_infos(field, default=None)
        default = field.get_default(call_default_factory=True)
        unset.description = f"{field.description or ''} Unset: DEEPSTEP_{name.upper()}, else {default!r}.".strip()
        annotation = field.annotation
        assert annotation is not None, name  # every Settings field is annotated: pydantic needs it
        fields[name] = (annotation | None, unset)
    return create_model(
        "RunContext",
        __doc__="Settings of one deepstep run; unset ones come from configurable, DEEPSTEP_* variables or the defaults.",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        **fields,
    )


RunContext = _run_context_schema()


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {message}")
    return "invalid settings: " + "; ".join(problems) + " (see the command's --help, or the DEEPSTEP_<NAME> variables)"
