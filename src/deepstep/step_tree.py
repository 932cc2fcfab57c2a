"""The step tree: a ``networkx.DiGraph`` whose nodes are steps and whose root is the question.

Node id = ``task_step_id`` (a UUID string); node attributes = the step's fields; edges run
parent -> child. Levels are path strings (``0``, ``0>1``, ``0>1>1``): the parent of a step
is the step whose level is its own minus the last ``>n``. Every function here is pure:
it returns a new graph and never changes the one it is given, so reducers and nodes can
use them on checkpointed state.

The tree's class, ``StepTree``, and how it is checkpointed are in ``deepstep.tree_encoding``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import networkx as nx

from deepstep.records import Step

# Also read as step_tree.StepTree, and the class path of trees checkpointed before it moved.
from deepstep.tree_encoding import StepTree

ROOT_ID = "root"
LEVEL_PATTERN = re.compile(r"^\d+(>\d+)*$")
# No plan has a billion siblings; a longer number is no level (and Python refuses int() of over 4300 digits).
MAX_LEVEL_DIGITS = 9

# A step with one of these is finished: its passages came from the corpus and a resume leaves it alone
# ("insufficient_evidence": the corpus does not cover it, and would not on a second try either).
FINISHED_STATUSES = ("done", "insufficient_evidence")

# Fields every step node carries; anything else (e.g. unknown dreamsboard fields) is kept as is.
STEP_DEFAULTS: dict[str, Any] = {
    "kind": "step",
    "name": "",
    "description": "",
    "level": "",
    "question": "",
    "contexts": [],
    "answer": "",
    "status": "pending",  # pending | done | failed
    "error": "",
    "mcts": {},
}


@dataclass(frozen=True)
class StepSpec:
    """A proposed step before it becomes a tree node."""

    name: str
    description: str
    level: str


@dataclass
class TreeBuild:
    """The outcome of validating proposed steps: the tree and what had to be fixed."""

    tree: nx.DiGraph
    warnings: list[str] = field(default_factory=list)


def level_parts(level: str) -> tuple[int, ...]:
    return tuple(int(part) for part in level.split(">"))


def level_depth(level: str) -> int:
    """0 for ``0``, 1 for ``0>1``, ..."""
    return level.count(">")


def parent_level(level: str) -> str | None:
    return level.rsplit(">", 1)[0] if ">" in level else None


def normalize_level(raw: Any) -> str | None:
    """``' 0 > 1 '`` -> ``'0>1'``; ``None`` when the value is not a level path."""
    text = re.sub(r">+", ">", re.sub(r"\s+", "", raw if isinstance(raw, str) else str(raw)).strip(">"))
    # "007" is 7: leading zeros go before the length check, so int() never sees an unbounded number.
    parts = [part[:-1].lstrip("0") + part[-1:] for part in text.split(">")]
    if not all(part.isdecimal() and len(part) <= MAX_LEVEL_DIGITS for part in parts):
        return None
    return ">".join(str(int(part)) for part in parts)


def new_tree(question: str, outline: str = "") -> StepTree:
    tree = StepTree()
    tree.add_node(ROOT_ID, kind="question", question=question, outline=outline)
    return tree


def build_tree(
    question: str,
    outline: str,
    steps: Sequence[StepSpec],
    *,
    max_steps: int,
    max_depth: int,
    ids: Mapping[str, str] | None = None,
) -> TreeBuild:
    """Validate proposed steps and build the tree.

    - invalid or duplicate levels are dropped (the first occurrence wins);
    - steps deeper than ``max_depth`` levels are dropped;
    - an orphan (its parent level is missing) is attached to its nearest existing ancestor
      and renumbered as that ancestor's next child, so level strings stay consistent with
      the edges (dreamsboard derives parents from levels);
    - at most ``max_steps`` steps are kept, in tree order, so parents are never cut before
      their children.
    ``ids`` maps levels to existing step ids to keep (an edited plan keeps its ids).
    Each fix is reported in ``warnings``.
    """
    warnings: list[str] = []
    accepted: dict[str, StepSpec] = {}
    for spec in steps:
        level = normalize_level(spec.level)
        name = spec.name.strip()
        if level is None:
            warnings.append(f"dropped step {name!r}: level {spec.level!r} is not like 0, 0>1, 0>1>2")
            continue
        if not name:
            warnings.append(f"dropped step at level {level}: it has no name")
            continue
        if level_depth(level) + 1 > max_depth:
            warnings.append(f"dropped step {name!r}: level {level} is deeper than max_depth={max_depth}")
            continue
        if level in accepted:
            warnings.append(f"dropped step {name!r}: level {level} is already used by {accepted[level].name!r}")
            continue
        accepted[level] = StepSpec(name=name, description=spec.description.strip(), level=level)

    # Process shallow levels first so that an orphan's ancestors are settled before it.
    placed: dict[str, StepSpec] = {}
    renamed: dict[str, str] = {}
    for original in sorted(accepted, key=lambda lv: (level_depth(lv), level_parts(lv))):
        spec = accepted[original]
        parent = parent_level(original)
        if parent is not None:
            parent = renamed.get(parent, parent)
        level = original if parent is None else f"{parent}>{original.rsplit('>', 1)[1]}"
        if parent is not None and parent not in placed:
            ancestor = _nearest_placed_ancestor(parent, placed)
            level = _next_free_child(ancestor, placed)
            warnings.append(
                f"step {spec.name!r} at level {original} had no parent step; "
                f"attached to {'the question' if ancestor is None else 'level ' + ancestor} as level {level}"
            )
        elif level in placed:
            level = _next_free_child(parent, placed)
            warnings.append(f"step {spec.name!r} renumbered from {original} to {level} to keep levels unique")
        renamed[original] = level
        placed[level] = StepSpec(name=spec.name, description=spec.description, level=level)

    ordered = sorted(placed, key=level_parts)
    if len(ordered) > max_steps:
        warnings.append(f"kept the first {max_steps} of {len(ordered)} steps (max_steps={max_steps})")
        ordered = ordered[:max_steps]

    tree = new_tree(question, outline)
    ids = dict(ids or {})
    for level in ordered:
        spec = placed[level]
        step_id = ids.get(level) or str(uuid.uuid4())
        tree.add_node(step_id, **{**STEP_DEFAULTS, "name": spec.name, "description": spec.description, "level": level})
    by_level = {tree.nodes[n]["level"]: n for n in tree.nodes if n != ROOT_ID}
    for level, step_id in by_level.items():
        parent = parent_level(level)
        tree.add_edge(by_level[parent] if parent else ROOT_ID, step_id)
    return TreeBuild(tree=tree, warnings=warnings)


def _nearest_placed_ancestor(level: str | None, placed: Mapping[str, Any]) -> str | None:
    while level is not None and level not in placed:
        level = parent_level(level)
    return level


def _next_free_child(parent: str | None, placed: Mapping[str, Any]) -> str:
    siblings = [lv for lv in placed if parent_level(lv) == parent]
    taken = [level_parts(lv)[-1] for lv in siblings]
    index = max(taken, default=-1 if parent is None else 0) + 1
    return str(index) if parent is None else f"{parent}>{index}"


_BULLET = re.compile(r"^(?P<indent>\s*)(?:[-*+]|\d+[.)]|#{1,6})\s+(?P<text>\S.*)$")


def steps_from_outline(question: str, outline: str, *, max_steps: int, max_depth: int) -> list[StepSpec]:
    """A deterministic plan when the model's step list is unusable: the outline's bullets
    (nesting by indentation) or, without bullets, one step for the whole question."""
    specs: list[StepSpec] = []
    counters: list[int] = []  # next index per depth along the current path
    indents: list[int] = []
    for line in outline.splitlines():
        match = _BULLET.match(line.expandtabs(4))
        if not match or len(specs) >= max_steps:
            continue
        name = match.group("text").strip(" *#")[:120]
        if name.casefold() == question.strip().casefold():
            continue  # a title repeating the question is not a step
        indent = len(match.group("indent"))
        while indents and indent < indents[-1]:
            indents.pop()
            counters.pop()
        if not indents or indent > indents[-1]:
            if len(indents) >= max_depth:
                continue
            indents.append(indent)
            counters.append(0 if len(indents) == 1 else 1)
        else:
            counters[-1] += 1
        level = ">".join(str(c) for c in counters)
        specs.append(StepSpec(name=name, description="", level=level))
    return specs or [StepSpec(name=question[:120], description=outline.strip().split("\n")[0][:300], level="0")]


def find_step(tree: nx.DiGraph, step: str) -> str | None:
    """The id of the step named by its id or its level (``0>1``), or None."""
    if step in tree and step != ROOT_ID:
        return step
    wanted = normalize_level(step) if isinstance(step, str) else None
    return next((n for n in step_ids(tree) if tree.nodes[n]["level"] == wanted), None)


def step_ids(tree: nx.DiGraph) -> list[str]:
    """Step ids in tree order: depth-first, siblings by level number."""
    return sorted((n for n in tree.nodes if n != ROOT_ID), key=lambda n: level_parts(tree.nodes[n]["level"]))


def steps(tree: nx.DiGraph) -> list[Step]:
    """The steps as dicts (``id`` plus attributes) in tree order."""
    # networkx keeps node attributes untyped; every step node carries STEP_DEFAULTS' fields.
    return [cast(Step, {"id": n, **tree.nodes[n]}) for n in step_ids(tree)]


def ancestors(tree: nx.DiGraph, step_id: str) -> list[Step]:
    """The step's ancestors from the top down, excluding the question root."""
    chain = []
    node = next(iter(tree.predecessors(step_id)), None)
    while node is not None and node != ROOT_ID:
        chain.append(cast(Step, {"id": node, **tree.nodes[node]}))
        node = next(iter(tree.predecessors(node)), None)
    return list(reversed(chain))


def question_of(tree: nx.DiGraph) -> str:
    return tree.nodes[ROOT_ID]["question"] if ROOT_ID in tree else ""


def outline_of(tree: nx.DiGraph) -> str:
    return tree.nodes[ROOT_ID].get("outline", "") if ROOT_ID in tree else ""


def with_root_update(tree: nx.DiGraph, **fields: Any) -> StepTree:
    """A copy of ``tree`` with ``fields`` set on the question root (e.g. the synthesized ``answer``)."""
    updated = StepTree(tree)
    updated.nodes[ROOT_ID].update(fields)
    return updated


def with_step_updates(tree: nx.DiGraph, updates: Iterable[Mapping[str, Any]]) -> StepTree:
    """A copy of ``tree`` with each ``{"id": ..., **fields}`` merged into its step node.

    Updates for ids that are not in the tree are ignored: they come from an older plan.
    """
    updated = StepTree(tree)
    for update in updates:
        step_id = update["id"]
        if step_id in updated:
            updated.nodes[step_id].update({k: v for k, v in update.items() if k != "id"})
    return updated


def trees_equal(left: nx.DiGraph, right: nx.DiGraph) -> bool:
    """Same nodes, same attributes, same edges."""
    return (
        dict(left.nodes(data=True)) == dict(right.nodes(data=True)) and set(left.edges) == set(right.edges) and dict(left.graph) == dict(right.graph)
    )


def signature(tree: nx.DiGraph, *, fields: Sequence[str] = ("name", "level", "question", "answer", "status")) -> list[tuple]:
    """Ids stripped, the content of each step in tree order: compares trees of two runs."""
    return [tuple(tree.nodes[n].get(f) for f in fields) for n in step_ids(tree)]
