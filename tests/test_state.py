"""Reducers build new values and never change their inputs."""

import copy

from deepstep.state import merge_by_step_id
from deepstep.usage import add_usage


def test_add_usage_sums_per_role_without_mutating():
    left = {"answer": {"calls": 1, "prompt_tokens": 10}}
    right = {"answer": {"calls": 2, "completion_tokens": 5}, "evaluate": {"calls": 1}}
    before = copy.deepcopy((left, right))
    total = add_usage(left, right)
    assert total == {"answer": {"calls": 3, "prompt_tokens": 10, "completion_tokens": 5}, "evaluate": {"calls": 1}}
    assert (left, right) == before
    assert add_usage(None, None) == {}


def test_step_results_merge_by_id_later_wins():
    left = {"a": {"status": "failed"}, "b": {"status": "done"}}
    merged = merge_by_step_id(left, {"a": {"status": "done"}})
    assert merged == {"a": {"status": "done"}, "b": {"status": "done"}}
    assert left["a"]["status"] == "failed"
