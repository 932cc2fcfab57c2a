"""Confidence per step: the level rule at its edges, computed by hand."""

import pytest

from deepstep.confidence import confidence_level, step_confidence


@pytest.mark.parametrize(
    ("best_q", "supported", "cited", "retrieval", "level"),
    [
        (50, 0.8, 2, 0.5, "high"),  # every input exactly at its high bound
        (49.9, 0.8, 2, 0.5, "medium"),  # Q just short of high
        (80, 0.79, 3, 0.9, "medium"),  # claims just short of high
        (80, 1.0, 1, 0.9, "medium"),  # one passage is one point of view
        (80, 1.0, 3, 0.49, "medium"),  # retrieval just short of high
        (0, 0.5, 1, 0.25, "medium"),  # every input exactly at its low bound is not low
        (-0.1, 1.0, 3, 0.9, "low"),  # the critic found it bad
        (90, 0.49, 3, 0.9, "low"),  # under half of the claims supported
        (90, 1.0, 0, 0.9, "low"),  # cites nothing
        (90, 1.0, 3, 0.24, "low"),  # retrieval covers under a quarter of the question
        (None, 1.0, 3, 0.9, "medium"),  # no score: never high
        (90, None, 3, 0.9, "medium"),  # no claims: never high
        (None, None, 1, 0.3, "medium"),
    ],
)
def test_the_level_rule(best_q, supported, cited, retrieval, level):
    assert confidence_level(best_q, supported, cited, retrieval) == level


def test_the_record_keeps_its_inputs_rounded():
    assert step_confidence(61.23456, 2 / 3, 2, 0.123456) == {
        "level": "low",
        "best_q": 61.23,
        "supported_share": 0.667,
        "cited_passages": 2,
        "retrieval_strength": 0.123,
    }
