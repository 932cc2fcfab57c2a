"""deepstep's step fields under their dreamsboard names: the one map the store and the storyboard table share.

dreamsboard (the library deepstep grew from) calls a step's fields ``task_step_*`` and repeats
the run's question and outline on every step. ``store.py`` writes and reads them in
``task_step_store.json``, ``render.py`` makes them the storyboard table's columns. Field by
field in docs/store_format.md. Pure: no imports from deepstep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# The run's fields (on the step tree's root), repeated on every dreamsboard step.
RUN_FIELDS: Final = {
    "question": "start_task_context",
    "outline": "aemo_representation_context",
}
# A step's own fields, in dreamsboard's order.
STEP_FIELDS: Final = {
    "name": "task_step_name",
    "description": "task_step_description",
    "level": "task_step_level",
    "question": "task_step_question",
    "contexts": "task_step_question_context",
    "answer": "task_step_question_answer",
}
# The step's MCTSr trace, as ``mcts.trace_summary`` names it.
TRACE_FIELDS: Final = {
    "critiques": "task_step_critiques",
    "refinements": "task_step_refinements",
    "rewards": "task_step_rewards",
}
STORE_ID: Final = "id_"  # the step id in a store; dreamsboard's table renames it:
TABLE_ID: Final = "task_step_id"
CONTEXT_TITLE: Final = "paper_title"  # a passage's document title (deepstep: ``title``); its other fields keep their names
REF_STEP_ID: Final = "ref_task_step_id"
HASH: Final = "hash"
METADATA_HASH: Final = "task_step_hash"  # a step's entry in the store's metadata collection
SHOT_NUMBER: Final = "shot_number"  # the table's 1-based row number
SCENE_NUMBER: Final = "scene_number"  # the table's "story_board{i}", i 0-based

# The storyboard table's columns, in the seed notebook's order.
TABLE_COLUMNS: Final = [TABLE_ID, SHOT_NUMBER, SCENE_NUMBER, *RUN_FIELDS.values(), *STEP_FIELDS.values(), REF_STEP_ID]
# The store fields deepstep maps to its own; an imported step keeps all others as they are.
MAPPED_STORE_FIELDS: Final = frozenset({STORE_ID, *RUN_FIELDS.values(), *STEP_FIELDS.values()})
# The step attribute holding an imported step's store fields deepstep does not map.
EXTRA_FIELDS: Final = "dreamsboard_fields"


def unmapped_defaults() -> dict[str, Any]:
    """A store step's fields that deepstep leaves empty (new objects on every call)."""
    return {"metadata": {}, "relationships": {}, HASH: "", REF_STEP_ID: ""}


def renamed(values: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``values`` under the dreamsboard ``names`` of their keys, in the order of ``values``."""
    return {names[field]: value for field, value in values.items()}
