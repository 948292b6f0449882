"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009): each
retriever's ranked list contributes weight / (k + rank) to every item it
holds; items are ordered by the sum. Only ranks count, so scores on unlike
scales (cosine similarity, bm25) never need to be calibrated against each
other."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# The constant of the original paper, and of Elasticsearch, OpenSearch and
# Qdrant's hybrid search: large enough that the top few ranks of one list do
# not drown out an item both lists found.
RRF_K = 60
# HYBRID: each retriever returns this many times top_k candidates to fuse (a
# chunk ranked 20th by both can fuse above one ranked 1st by one alone).
FUSION_DEPTH = 3


def fusion_fetch(top_k: int, limit: int) -> int:
    """Candidates each retriever returns for a HYBRID search of `top_k`
    (at most `limit`, MAX_SEARCH_TOP_K)."""
    return min(limit, max(FUSION_DEPTH * top_k, top_k + 4))


def reciprocal_rank_fusion(
    ranked: Sequence[tuple[Sequence[K], float]], k: int = RRF_K
) -> list[tuple[K, float]]:
    """Items of the (list, weight) pairs, each list best first and without
    repeats, ordered by fused score, best first; ties keep the order in which
    the items were first met (the earlier list's better rank first)."""
    fused: dict[K, float] = {}
    for items, weight in ranked:
        for rank, item in enumerate(items, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(fused)}
    return sorted(fused.items(), key=lambda pair: (-pair[1], order[pair[0]]))


# HYBRID: keyword hits scoring below this share of the best keyword hit are
# left out of the fusion. Chosen by the evaluation (evals/results_issue14.md):
# at 0.5 HYBRID's MRR rises on every query set (0.946 -> 0.988 on package
# README sentences), hit@5 is never lower, and the README's own question
# ("what happens when the vector service is down?") finds its answer first,
# which no RRF constant, depth or weight did; 0.6 starts losing hits.
KEYWORD_FLOOR = 0.5


def above_floor(scored: Sequence[tuple[K, float]], floor: float) -> list[K]:
    """The items of a ranked (item, score) list (higher score better) whose
    score is at least `floor` times the first's: the rest matched only
    words common enough to say next to nothing (bm25 near zero), and in a
    rank fusion their ranks would weigh as much as a strong match's."""
    if not scored or floor <= 0:
        return [item for item, _ in scored]
    bar = floor * scored[0][1]
    return [item for item, score in scored if score >= bar]
