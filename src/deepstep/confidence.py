"""Confidence per step (pure): one level, high, medium or low, from what a run already knows.

The inputs, each a different way an answer goes wrong:
- ``best_q``: the MCTSr critic's Q of the kept answer (-100..100): how good the critic found it;
- ``supported_share``: the share of its claims its cited passages support (the claim check);
- ``cited_passages``: how many distinct passages it cites: one passage is one point of view;
- ``retrieval_strength``: how much of the research question the best passage covers (the evidence
  gate's overlap, 0..1): a strong answer from weak retrieval leans on the model's own knowledge.

The rule (docs/claims.md): **low** when any input says the answer is weak (Q below 0, under half of
the claims supported, no passage cited, or retrieval covering under a quarter of the question);
**high** when every input is strong (Q at least 50, at least 80% of the claims supported, two or more
passages cited, retrieval covering at least half of the question); **medium** otherwise. An input
that is unknown (no score, no claims) can make a step low or keep it from high, never make it high.
"""

from __future__ import annotations

from deepstep.records import Confidence, ConfidenceLevel

LOW_Q, HIGH_Q = 0.0, 50.0
LOW_SUPPORT, HIGH_SUPPORT = 0.5, 0.8
HIGH_CITED = 2
LOW_RETRIEVAL, HIGH_RETRIEVAL = 0.25, 0.5


def confidence_level(best_q: float | None, supported_share: float | None, cited_passages: int, retrieval_strength: float) -> ConfidenceLevel:
    if (
        (best_q is not None and best_q < LOW_Q)
        or (supported_share is not None and supported_share < LOW_SUPPORT)
        or cited_passages == 0
        or retrieval_strength < LOW_RETRIEVAL
    ):
        return "low"
    if (
        best_q is not None
        and best_q >= HIGH_Q
        and supported_share is not None
        and supported_share >= HIGH_SUPPORT
        and cited_passages >= HIGH_CITED
        and retrieval_strength >= HIGH_RETRIEVAL
    ):
        return "high"
    return "medium"


def step_confidence(best_q: float | None, supported_share: float | None, cited_passages: int, retrieval_strength: float) -> Confidence:
    """The step's confidence level with its inputs (rounded for display)."""
    return {
        "level": confidence_level(best_q, supported_share, cited_passages, retrieval_strength),
        "best_q": None if best_q is None else round(best_q, 2),
        "supported_share": None if supported_share is None else round(supported_share, 3),
        "cited_passages": cited_passages,
        "retrieval_strength": round(retrieval_strength, 3),
    }
