"""How often structured calls parse on the embedded model (SmolLM2-135M-Instruct).

Run: .venv/bin/python -m benchmarks.structured_output [--runs 20] [--save-fixtures]

For each structured task (steps, refine, evaluate) and each method deepstep can use with
llama.cpp (json_object constrained by the schema, and a plain prompt), makes ``runs``
calls through ``models.call_structured`` and prints the share parsed on the first try,
after repair requests, and by the deterministic fallback (or not at all). With
``--save-fixtures`` every reply that a strict ``json.loads`` + schema check rejects is
saved to ``tests/data/smollm2_replies.json`` with what deepstep's tolerant parser made
of it, for the regression test ``tests/test_smollm2_replies.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from langchain_core.tracers.context import collect_runs
from pydantic import BaseModel, ValidationError

from deepstep import prompts
from deepstep.configuration import Settings
from deepstep.errors import StructuredOutputError
from deepstep.llm_server import MODEL_ALIAS, embedded_server
from deepstep.models import call_structured
from deepstep.parsing import (
    RefineResponse,
    ReplyParseError,
    Score,
    StepItem,
    StepList,
    parse_reply,
)
from deepstep.step_tree import steps_from_outline

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "smollm2_replies.json"
QUESTIONS = [
    "What is a loss function?",
    "How does gradient descent work?",
    "What is cross-entropy?",
    "Why regularize a model?",
    "What is overfitting?",
    "什么是损失函数？",
    "What is the Huber loss?",
    "How is a learning rate chosen?",
]
CONTEXTS = [
    {"title": "Loss functions", "text": "A loss function measures how far a prediction is from the target; training minimises its average."},
    {"title": "Mean squared error", "text": "MSE averages the squared differences between predictions and targets."},
]

OUTLINE = "- definition\n- examples\n- use in training"


def messages_for(task: str, index: int) -> list:
    question = QUESTIONS[index % len(QUESTIONS)]
    contexts = prompts.format_contexts(CONTEXTS)
    answer = f"A loss function for '{question}' scores predictions [1]; lower is better (draft {index})."
    if task == "steps":
        return prompts.STEPS.format_messages(
            question=question,
            outline=OUTLINE,
            max_steps=5,
            max_depth=3,
            language_rule=prompts.language_rule(None),
        )
    if task == "refine":
        return prompts.REFINE.format_messages(
            name="Definition",
            research_question=question,
            contexts=contexts,
            answer=answer,
            critique="It gives no formula and does not cite the MSE passage.",
            language_rule=prompts.language_rule(None),
        )
    return prompts.EVALUATE.format_messages(research_question=question, contexts=contexts, answer=answer)


SCHEMAS: dict[str, type[BaseModel]] = {"steps": StepList, "refine": RefineResponse, "evaluate": Score}
FALLBACKS = {
    # As the decompose node does: a plan from the outline's bullets.
    "steps": lambda reply: StepList(
        steps=[StepItem(name=s.name, description=s.description, level=s.level) for s in steps_from_outline("Q", OUTLINE, max_steps=5, max_depth=3)]
    ),
    "refine": lambda reply: RefineResponse(thought="(unparsed reply)", answer=reply.strip() or "(empty)"),
    "evaluate": lambda reply: Score(score=0),
}


def strictly_valid(text: str, schema: type[BaseModel]) -> bool:
    try:
        schema.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError, TypeError):
        return False
    return True


def tolerant_outcome(text: str, schema: type[BaseModel]) -> str:
    try:
        parse_reply(text, schema)
    except ReplyParseError:
        return "repair"
    return "parsed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--save-fixtures", action="store_true")
    args = parser.parse_args()
    fixtures: list[dict] = []
    with tempfile.TemporaryDirectory() as home, embedded_server(Path(home)) as server:
        for method in ("json_object", "prompt"):
            settings = Settings.build(
                base_url=server.base_url, model=MODEL_ALIAS, llama_cpp=True, structured_output=method, max_tokens=256, home=Path(home)
            )
            print(f"\nmethod={method} (runs per task: {args.runs})")
            print("| task | first try | after repair | fallback | failed | calls | seconds |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for task, schema in SCHEMAS.items():
                outcomes: Counter[str] = Counter()
                calls = 0
                started = time.perf_counter()
                for index in range(args.runs):
                    with collect_runs() as collected:
                        try:
                            _, usage = call_structured(settings, task, messages_for(task, index), schema, fallback=FALLBACKS[task])
                            role_usage = next(iter(usage.values()))
                            outcome = "fallback" if role_usage["fallbacks"] else "after repair" if role_usage["repairs"] else "first try"
                        except StructuredOutputError:
                            outcome = "failed"
                    outcomes[outcome] += 1
                    for run in collected.traced_runs:
                        calls += 1
                        text = run.outputs["generations"][0][0]["text"] if run.outputs else ""
                        if not strictly_valid(text, schema):
                            fixtures.append({"task": task, "method": method, "reply": text, "tolerant": tolerant_outcome(text, schema)})
                share = {k: f"{100 * outcomes[k] / args.runs:.0f}%" for k in ("first try", "after repair", "fallback", "failed")}
                print(
                    f"| {task} | {share['first try']} | {share['after repair']} | {share['fallback']} | {share['failed']} "
                    f"| {calls} | {time.perf_counter() - started:.0f} |"
                )
    print(
        f"\nreplies a strict JSON parser rejects: {len(fixtures)} "
        f"(deepstep's tolerant parser recovers {sum(f['tolerant'] == 'parsed' for f in fixtures)})"
    )
    if args.save_fixtures:
        FIXTURES.write_text(json.dumps(fixtures, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"saved {FIXTURES}")


if __name__ == "__main__":
    main()
