"""Runs inside the separate dreamsboard venv (``.venv-dreamsboard``, made by scripts/setup.sh):
dreamsboard 0.4.0 pins langchain 0.1, which cannot live next to deepstep's langchain 1.x.

    python dreamsboard_check.py load DIR          -> JSON: what dreamsboard reads from DIR
    python dreamsboard_check.py make DIR SPEC     -> dreamsboard writes DIR/task_step_store.json from SPEC (JSON list of steps)
    python dreamsboard_check.py resave SRC DST    -> dreamsboard loads SRC and persists it to DST
"""

from __future__ import annotations

import json
import sys


def load(directory: str) -> None:
    from dreamsboard.document_loaders.structured_storyboard_loader import StructuredStoryboard
    from dreamsboard.dreams.task_step_md.base import TaskStepMD
    from dreamsboard.engine.storage.task_step_store.simple_task_step_store import SimpleTaskStepStore

    store = SimpleTaskStepStore.from_persist_dir(persist_dir=directory)
    steps = list(store.task_step_all.values())
    table = StructuredStoryboard(json_data=[step.__dict__ for step in steps]).parse_table()
    markdown = TaskStepMD(store).format_md().text
    print(
        json.dumps(
            {
                "ids": [step.node_id for step in steps],
                "levels": [step.task_step_level for step in steps],
                "names": [step.task_step_name for step in steps],
                "answers": [step.task_step_question_answer for step in steps],
                "contexts": [[c if isinstance(c, dict) else c.model_dump() for c in step.task_step_question_context or []] for step in steps],
                "critiques": [list(step.task_step_critiques or []) for step in steps],
                "rewards": [list(step.task_step_rewards or []) for step in steps],
                "table_columns": [str(c) for c in table.columns],
                "table_ids": [str(v) for v in table["task_step_id"]],
                "markdown": markdown,
            },
            ensure_ascii=False,
        )
    )


def make(directory: str, spec_path: str) -> None:
    from dreamsboard.engine.entity.task_step.task_step import TaskStepNode
    from dreamsboard.engine.storage.task_step_store.simple_task_step_store import SimpleTaskStepStore
    from dreamsboard.engine.storage.task_step_store.types import DEFAULT_PERSIST_FNAME
    from dreamsboard.engine.utils import concat_dirs

    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    store = SimpleTaskStepStore()
    nodes = []
    for item in spec:
        node = TaskStepNode.from_config(cfg=item)
        node.id_ = item["id"]
        nodes.append(node)
    store.add_task_step(nodes)
    store.persist(persist_path=concat_dirs(dirname=directory, basename=DEFAULT_PERSIST_FNAME))


def resave(source: str, target: str) -> None:
    from dreamsboard.engine.storage.task_step_store.simple_task_step_store import SimpleTaskStepStore
    from dreamsboard.engine.storage.task_step_store.types import DEFAULT_PERSIST_FNAME
    from dreamsboard.engine.utils import concat_dirs

    SimpleTaskStepStore.from_persist_dir(persist_dir=source).persist(persist_path=concat_dirs(dirname=target, basename=DEFAULT_PERSIST_FNAME))


if __name__ == "__main__":
    commands = {"load": load, "make": make, "resave": resave}
    commands[sys.argv[1]](*sys.argv[2:])
