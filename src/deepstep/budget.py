"""The budget: what the rest of a run needs at most, and how many of its steps still fit under the caps.

Pure (no I/O): the graph's fan-out asks it which pending steps to send (``steps_that_fit``), the review pause and
the CLI show its ``estimate``, and the budget pause says what the rest needs.

Calls are an upper bound from the settings, one request per call (a repair after an unparsable reply, or a node
retried after an error, is one more and is not in it). Per step, with R = rollouts, S = reward_samples:
question 1 + answer 1 + evaluate S(1+R) + critique R + refine R, + max_searches follow-up queries, + (1+R)
verify calls when verify = model; 3 + 3R at the defaults without follow-up searches. The run adds 2 planning
calls (outline, steps) and, in the answer_first layout, 1 synthesis call.

Tokens are estimated high from the settings, not from the run so far: each reply at its role's ``max_tokens`` (a
real bound), and each prompt as ``PROMPT_INSTRUCTIONS_TOKENS`` plus the parts the settings bound: the passages
(``context_tokens``), the outline (``outline_tokens``), the answers and critiques it shows (``max_tokens`` each).
Dollars are those tokens at ``prices`` (``Settings.estimate_cost``).
"""

from __future__ import annotations

import math

from deepstep.configuration import Settings
from deepstep.errors import ConfigError
from deepstep.models import TASK_ROLES
from deepstep.records import BudgetCaps, BudgetPause, Estimate, Spending
from deepstep.usage import Usage, add_usage

# A prompt's fixed part, in tokens: the template's instructions, the question, the step's name and description.
PROMPT_INSTRUCTIONS_TOKENS = 300


def step_calls(settings: Settings) -> dict[str, int]:
    """The most model calls one step makes, by task (one request per call)."""
    rollouts, samples = settings.rollouts, settings.reward_samples
    calls = {"question": 1, "answer": 1, "evaluate": samples * (1 + rollouts), "critique": rollouts, "refine": rollouts}
    if settings.max_searches:
        calls["search"] = settings.max_searches
    if settings.verify == "model":
        calls["verify"] = 1 + rollouts
    return {task: count for task, count in calls.items() if count}


def _reply_tokens(settings: Settings, task: str) -> int:
    override = settings.roles.get(TASK_ROLES[task])
    return (override.max_tokens if override else None) or settings.max_tokens


def _prompt_tokens(settings: Settings, task: str, steps: int) -> int:
    """A high estimate of one call's prompt: its instructions plus the bounded parts it shows."""
    shown = settings.max_tokens  # an answer, critique or claim list shown in the prompt, at most one reply long
    variable = {
        "outline": 0,
        "steps": settings.outline_tokens,
        "question": settings.outline_tokens,
        "search": shown,
        "answer": settings.context_tokens,
        "evaluate": settings.context_tokens + 2 * shown,  # the answer and its claim check
        "critique": settings.context_tokens + (1 + settings.max_children) * shown,  # the answer and earlier critiques
        "refine": settings.context_tokens + 2 * shown,  # the answer and its critique
        "verify": settings.context_tokens + shown,
        "synthesize": steps * (shown + settings.context_tokens),  # every step's answer and cited passages
    }
    return PROMPT_INSTRUCTIONS_TOKENS + variable[task]


def need(settings: Settings, calls: dict[str, int], *, steps: int = 0) -> Usage:
    """``calls`` by task (``question``, ``synthesize``, ...) as usage by role, as a run records it: calls, prompt
    tokens and completion tokens at their high estimates."""
    total: Usage = {}
    for task, count in calls.items():
        prompt, reply = _prompt_tokens(settings, task, steps), _reply_tokens(settings, task)
        total = add_usage(total, {TASK_ROLES[task]: {"calls": count, "prompt_tokens": count * prompt, "completion_tokens": count * reply}})
    return total


def synthesis_calls(settings: Settings) -> dict[str, int]:
    """The report's opening answer: one call in the answer_first layout, none in the seed layout."""
    return {"synthesize": 1} if settings.report_layout == "answer_first" else {}


def spending(settings: Settings, usage: Usage) -> Spending:
    """The calls, tokens and dollars of ``usage``."""
    totals = {field: sum(fields.get(field, 0) for fields in usage.values()) for field in ("calls", "prompt_tokens", "completion_tokens")}
    return {
        "calls": int(totals["calls"]),
        "tokens": int(totals["prompt_tokens"] + totals["completion_tokens"]),
        "cost": settings.estimate_cost(usage),
    }


def estimate(settings: Settings, steps: int, *, planned: int | None = None) -> Estimate:
    """What the rest of a run needs: ``steps`` steps still to research, then the synthesis (answer_first layout)
    over the ``planned`` steps of the plan (default: ``steps``)."""
    research = need(settings, {task: steps * count for task, count in step_calls(settings).items()})
    rest = add_usage(research, need(settings, synthesis_calls(settings), steps=steps if planned is None else planned))
    return {"steps": steps, **spending(settings, rest)}


def planning_estimate(settings: Settings) -> Spending:
    """What planning needs: the outline and the steps, one call each."""
    return spending(settings, need(settings, {"outline": 1, "steps": 1}))


def caps(settings: Settings) -> BudgetCaps:
    """The caps that are set."""
    given: BudgetCaps = {}
    if settings.max_calls is not None:
        given["max_calls"] = settings.max_calls
    if settings.max_run_tokens is not None:
        given["max_run_tokens"] = settings.max_run_tokens
    if settings.max_cost is not None:
        given["max_cost"] = settings.max_cost
    return given


def _times_it_fits(left: float, each: float) -> float:
    if each <= 0:
        return math.inf
    return max(0.0, left) // each


def how_many_fit(settings: Settings, used: Spending, each: Spending) -> float:
    """How many times ``each`` fits in what the caps leave after ``used`` (``math.inf`` without caps)."""
    fits = math.inf
    if settings.max_calls is not None:
        fits = min(fits, _times_it_fits(settings.max_calls - used["calls"], each["calls"]))
    if settings.max_run_tokens is not None:
        fits = min(fits, _times_it_fits(settings.max_run_tokens - used["tokens"], each["tokens"]))
    if settings.max_cost is not None:
        if used["cost"] is None or each["cost"] is None:
            raise ConfigError(_missing_price(settings))
        fits = min(fits, _times_it_fits(settings.max_cost - used["cost"], each["cost"]))
    return fits


def steps_that_fit(settings: Settings, usage: Usage, pending: int) -> int:
    """How many of ``pending`` steps the caps still allow, each at its worst case, after ``usage``."""
    each = spending(settings, need(settings, step_calls(settings)))
    return int(min(pending, how_many_fit(settings, spending(settings, usage), each)))


def synthesis_fits(settings: Settings, usage: Usage, planned: int) -> bool:
    """Whether the synthesis call (if the layout has one) over ``planned`` steps still fits under the caps after ``usage``."""
    calls = synthesis_calls(settings)
    return not calls or how_many_fit(settings, spending(settings, usage), spending(settings, need(settings, calls, steps=planned))) >= 1


def pause_request(settings: Settings, usage: Usage, steps_left: int, *, planned: int) -> BudgetPause:
    """What a run paused by its budget says: its caps, what it used, and what the rest needs."""
    return {"paused": "budget", "caps": caps(settings), "used": spending(settings, usage), "rest": estimate(settings, steps_left, planned=planned)}


def check_caps(settings: Settings, *, planning: bool = True) -> None:
    """A ``ConfigError`` for caps a run can never keep: a cost cap without prices, or (``planning``: a new
    run) caps below what planning needs."""
    if settings.max_cost is not None and _unpriced_models(settings):
        raise ConfigError(_missing_price(settings))
    if not planning:
        return
    planning_need = planning_estimate(settings)
    if how_many_fit(settings, {"calls": 0, "tokens": 0, "cost": 0.0}, planning_need) < 1:
        raise ConfigError(f"the budget does not cover planning ({describe(planning_need)}): raise --max-calls, --max-tokens or --max-cost")


def _unpriced_models(settings: Settings) -> list[str]:
    tasks = ("outline", "steps", *step_calls(settings), *synthesis_calls(settings))
    return sorted({settings.model_for(TASK_ROLES[task]) for task in tasks} - set(settings.prices))


def _missing_price(settings: Settings) -> str:
    model = (_unpriced_models(settings) or [settings.model])[0]
    return (
        f"max_cost needs a price for every model the run uses, and model {model!r} has none: set prices, "
        f'e.g. DEEPSTEP_PRICES=\'{{"{model}": {{"prompt": 0.15, "completion": 0.6}}}}\''
    )


def _dollars(cost: float | None) -> str:
    return f", ~${cost:.4f}" if cost is not None else ""


def describe(spent: Spending) -> str:
    """``N model calls, ~T tokens, ~$C`` (no dollars without prices)."""
    return f"{spent['calls']} model call{'s' if spent['calls'] != 1 else ''}, ~{spent['tokens']} tokens{_dollars(spent['cost'])}"


__all__ = [
    "caps",
    "check_caps",
    "describe",
    "estimate",
    "how_many_fit",
    "need",
    "pause_request",
    "planning_estimate",
    "spending",
    "step_calls",
    "steps_that_fit",
    "synthesis_fits",
]
