"""dreamsboard task-step stores (``task_step_store.json``, see docs/store_format.md): export and import.

Export writes a thread's step tree so dreamsboard's ``SimpleTaskStepStore.from_persist_dir``
loads it; import reads such a store (also one written by dreamsboard, where some steps have
no answer yet) into a step tree, which ``deepstep.api.import_store`` runs as a new thread,
completing only the unanswered steps.
Fields deepstep does not know are kept on the step (``dreamsboard_fields``) and written
back unchanged on re-export.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import networkx as nx

from deepstep import dreamsboard_fields as dreamsboard
from deepstep import mcts, step_tree
from deepstep.atomic_files import write_json_atomically
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.parsing import load_json
from deepstep.records import Step

STORE_FILE = "task_step_store.json"
NAMESPACE = "task_step_store"
DATA_COLLECTION = f"{NAMESPACE}/data"
METADATA_COLLECTION = f"{NAMESPACE}/metadata"
REF_COLLECTION = f"{NAMESPACE}/ref_task_step_info"
NODE_TYPE = "task_step_node"
# dreamsboard stores nest a few levels (collection, step, field, list item); far deeper is not a store
# and would overflow serializers later (msgpack in the checkpoint, JSON on export).
MAX_STORE_NESTING = 64
# The largest max_steps setting allowed (its Field's le=), named in the "too many steps" message.
MAX_STEPS_LIMIT = next(bound.le for bound in Settings.model_fields["max_steps"].metadata if hasattr(bound, "le"))


def _context_to_store(context: Mapping[str, Any]) -> dict[str, Any]:
    item = {
        "ref_id": str(context.get("ref_id", "")),
        dreamsboard.CONTEXT_TITLE: str(context.get("title") or context.get(dreamsboard.CONTEXT_TITLE) or ""),
        "chunk_id": str(context.get("chunk_id", "")),
        "score": float(context.get("score") or 0.0),
        "text": str(context.get("text", "")),
    }
    if context.get("source"):
        item["source"] = str(context["source"])  # dreamsboard ignores it; deepstep's references use it on re-import
    # Where in a paged document: extra fields too, which dreamsboard ignores and deepstep reads back.
    for key in ("page", "page_end"):
        if isinstance(context.get(key), int):
            item[key] = context[key]
    if context.get("sheet"):
        item["sheet"] = str(context["sheet"])
    return item


def _context_from_store(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InputError(f"{where}: each {dreamsboard.STEP_FIELDS['contexts']} item must be an object with ref_id, chunk_id, text")
    try:
        score = float(item.get("score") or 0.0)
        if not math.isfinite(score):
            raise ValueError(score)
    except (TypeError, ValueError):
        raise InputError(f"{where}: context score {str(item.get('score'))[:40]!r} is not a finite number") from None
    context = {
        "ref_id": str(item.get("ref_id", "")),
        "chunk_id": str(item.get("chunk_id", "")),
        "title": str(item.get(dreamsboard.CONTEXT_TITLE) or ""),
        "source": str(item.get("source") or ""),
        "score": score,
        "text": str(item.get("text", "")),
    }
    located = {key: item[key] for key in ("page", "page_end") if isinstance(item.get(key), int) and not isinstance(item[key], bool) and item[key] > 0}
    if isinstance(item.get("sheet"), str) and item["sheet"]:
        located["sheet"] = item["sheet"]
    return {**context, **located}


def _search_trace(step: Step) -> dict[str, Any] | None:
    search = step.get("mcts") or {}
    if not search.get("nodes"):
        return None
    # The record types a failed step's search as {} too; one with nodes is a search as far as it got.
    return mcts.trace_summary(cast(mcts.Search, search))


def step_record(step: Step, question: str, outline: str) -> dict[str, Any]:
    """One step as a dreamsboard ``task_step_node`` ``__data__`` object."""
    extra = dict(step.get(dreamsboard.EXTRA_FIELDS) or {})
    answered = step.get("status") == "done"
    record: dict[str, Any] = {**dreamsboard.unmapped_defaults(), **extra, dreamsboard.STORE_ID: step["id"]}
    record.update(dreamsboard.renamed({"question": question, "outline": outline}, dreamsboard.RUN_FIELDS))
    step_fields = {
        "name": step.get("name", ""),
        "description": step.get("description", ""),
        "level": step["level"],
        # A failed step is written as not answered yet, so an import runs it again.
        "question": step.get("question", "") if answered else "",
        "contexts": [_context_to_store(c) for c in step.get("contexts") or []] if answered else [],
        "answer": step.get("answer", "") if answered else "",
    }
    record.update(dreamsboard.renamed(step_fields, dreamsboard.STEP_FIELDS))
    trace = _search_trace(step) if answered else None
    if trace is not None:
        record.update(dreamsboard.renamed(trace, dreamsboard.TRACE_FIELDS))
    for key in dreamsboard.TRACE_FIELDS.values():
        record.setdefault(key, [])
    return record


def store_document(tree: nx.DiGraph) -> dict[str, Any]:
    """The whole ``task_step_store.json`` object, steps in tree order."""
    question, outline = step_tree.question_of(tree), step_tree.outline_of(tree)
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for step in step_tree.steps(tree):
        record = step_record(step, question, outline)
        data[step["id"]] = {"__type__": NODE_TYPE, "__data__": record}
        metadata[step["id"]] = {dreamsboard.METADATA_HASH: record.get(dreamsboard.HASH, "")}
    graph_extra = tree.graph.get(dreamsboard.EXTRA_FIELDS) or {}
    return {
        DATA_COLLECTION: data,
        METADATA_COLLECTION: {**graph_extra.get("metadata", {}), **metadata},
        REF_COLLECTION: dict(graph_extra.get("ref_task_step_info", {})),
    }


def export_store(tree: nx.DiGraph, directory: str | Path) -> Path:
    """Write ``DIR/task_step_store.json`` (atomically) and return its path."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file: pass a directory for the dreamsboard store")
    path = folder / STORE_FILE
    write_json_atomically(path, store_document(tree))
    return path


def _load_document(directory: Path) -> dict[str, Any]:
    path = directory / STORE_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise InputError(f"no {STORE_FILE} in {directory}: pass the directory a dreamsboard store was persisted to")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}; check its permissions") from None
    try:
        # load_json: numbers too long for Python's int() and nesting too deep are bad JSON too.
        # utf-8-sig: editors on Windows save JSON with a byte-order mark.
        document = load_json(data.decode("utf-8-sig"))
    except ValueError as error:  # includes UnicodeDecodeError and json.JSONDecodeError
        raise InputError(f"{path} is not valid JSON ({error}); is it a dreamsboard task_step_store.json?") from None
    if not isinstance(document, dict) or not isinstance(document.get(DATA_COLLECTION), dict):
        raise InputError(f"{path} has no {DATA_COLLECTION!r} object: it is not a dreamsboard task-step store")
    for collection in (METADATA_COLLECTION, REF_COLLECTION):
        if not isinstance(document.get(collection) or {}, dict):
            raise InputError(f"{path}: {collection!r} must be an object (step id -> fields), not {type(document[collection]).__name__}")
    if _nesting(document) > MAX_STORE_NESTING:
        raise InputError(f"{path} nests values more than {MAX_STORE_NESTING} levels deep: it is not a dreamsboard task-step store")
    return document


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (an explicit stack: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _answer_of(entry: Any) -> str:
    data = entry.get("__data__") if isinstance(entry, dict) else None
    return str(data.get(dreamsboard.STEP_FIELDS["answer"]) or "") if isinstance(data, dict) else ""


def read_store(directory: str | Path, *, max_steps: int | None = None) -> nx.DiGraph:
    """The step tree of a dreamsboard store: answered steps are ``done``, the others ``pending``.
    A store with more than ``max_steps`` steps to answer is refused before any step is read."""
    if not isinstance(directory, (str, os.PathLike)):
        raise InputError(f"the store must be given as the path of its folder (str or Path), not {type(directory).__name__}")
    folder = Path(directory)
    document = _load_document(folder)
    entries = document[DATA_COLLECTION]
    if not entries:
        raise InputError(f"the store in {folder} has no steps")
    # Refused before any step is read: a run never plans more than MAX_STEPS_LIMIT steps, and each
    # unanswered step is a model call, capped like a plan by max_steps.
    if len(entries) > MAX_STEPS_LIMIT:
        raise InputError(f"the store in {folder} has {len(entries)} steps, more than deepstep runs ({MAX_STEPS_LIMIT}): import a smaller store")
    unanswered = sum(1 for entry in entries.values() if not _answer_of(entry).strip())
    if max_steps is not None and unanswered > max_steps:
        raise InputError(
            f"the store in {folder} has {unanswered} unanswered steps, more than max_steps={max_steps}: "
            f"raise DEEPSTEP_MAX_STEPS (at most {MAX_STEPS_LIMIT}) or import a store with fewer steps to answer"
        )
    records: list[dict[str, Any]] = []
    for key, entry in entries.items():
        data = entry.get("__data__") if isinstance(entry, dict) else None
        if not isinstance(data, dict) or entry.get("__type__", NODE_TYPE) != NODE_TYPE:
            raise InputError(f"store entry {key!r} is not a {NODE_TYPE} with a __data__ object")
        records.append({**data, dreamsboard.STORE_ID: str(data.get(dreamsboard.STORE_ID) or key)})

    first = records[0]
    run_field = dreamsboard.RUN_FIELDS
    tree = step_tree.new_tree(str(first.get(run_field["question"]) or ""), str(first.get(run_field["outline"]) or ""))
    if not step_tree.question_of(tree).strip():
        raise InputError(f"the store in {folder} has no {run_field['question']} (the question)")
    tree.graph[dreamsboard.EXTRA_FIELDS] = {
        "metadata": document.get(METADATA_COLLECTION) or {},
        "ref_task_step_info": document.get(REF_COLLECTION) or {},
    }

    by_level: dict[str, str] = {}
    field = dreamsboard.STEP_FIELDS  # deepstep's step field -> its name in the store
    for record in records:
        step_id = record[dreamsboard.STORE_ID]
        where = f"step {step_id} ({record.get(field['name'], '')!r})"
        level = step_tree.normalize_level(record.get(field["level"], ""))
        if level is None:
            raise InputError(f"{where}: {field['level']} {str(record.get(field['level']))[:40]!r} is not like 0, 0>1, 0>1>2")
        if level in by_level:
            raise InputError(f"{where}: level {level} is used twice in the store")
        if step_id in tree or step_id == step_tree.ROOT_ID:
            raise InputError(f"{where}: the id is used twice in the store")
        contexts = record.get(field["contexts"]) or []
        if not isinstance(contexts, list):
            raise InputError(f"{where}: {field['contexts']} must be a list")
        answer = str(record.get(field["answer"]) or "")
        tree.add_node(
            step_id,
            **{
                **step_tree.STEP_DEFAULTS,
                "name": str(record.get(field["name"]) or ""),
                "description": str(record.get(field["description"]) or ""),
                "level": level,
                "question": str(record.get(field["question"]) or ""),
                "contexts": [_context_from_store(item, where) for item in contexts],
                "answer": answer,
                "status": "done" if answer.strip() else "pending",
                dreamsboard.EXTRA_FIELDS: {k: v for k, v in record.items() if k not in dreamsboard.MAPPED_STORE_FIELDS},
            },
        )
        by_level[level] = step_id

    for level, step_id in by_level.items():
        # The parent is the step one level up; a missing one (dreamsboard allows gaps) means the nearest ancestor.
        parent = step_tree.parent_level(level)
        while parent is not None and parent not in by_level:
            parent = step_tree.parent_level(parent)
        tree.add_edge(by_level[parent] if parent is not None else step_tree.ROOT_ID, step_id)
    return tree


__all__ = ["STORE_FILE", "export_store", "read_store", "store_document"]
