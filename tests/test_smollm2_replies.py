"""Real replies of SmolLM2-135M-Instruct that a strict JSON parser rejects (captured by
``python -m benchmarks.structured_output --save-fixtures``): each must either parse with
deepstep's tolerant parser, or raise ``ReplyParseError`` so that a repair request and then
the fallback take over, never any other exception. The outcome per reply is pinned, and so is
every field of what a parsed reply became (``parsed`` in the data file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepstep.parsing import (
    RefineResponse,
    ReplyParseError,
    Score,
    StepList,
    parse_reply,
)

REPLIES = json.loads((Path(__file__).parent / "data" / "smollm2_replies.json").read_text(encoding="utf-8"))
SCHEMAS = {"steps": StepList, "refine": RefineResponse, "evaluate": Score}


def test_the_corpus_covers_every_structured_task():
    assert {reply["task"] for reply in REPLIES} == set(SCHEMAS)


@pytest.mark.parametrize("reply", REPLIES, ids=[f"{r['task']}-{r['method']}-{i}" for i, r in enumerate(REPLIES)])
def test_reply_parses_or_asks_for_repair(reply):
    schema = SCHEMAS[reply["task"]]
    try:
        parsed = parse_reply(reply["reply"], schema)
    except ReplyParseError as error:
        assert str(error)  # the message is sent back to the model in the repair request
        outcome = "repair"
    else:
        assert isinstance(parsed, schema)
        outcome = "parsed"
        assert parsed.model_dump() == reply.get("parsed"), "the value this reply parses to changed (or is not pinned in the data file)"
    assert outcome == reply["tolerant"]
    assert ("parsed" in reply) == (outcome == "parsed")  # a pinned value of a reply that no longer parses is not left behind
