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
