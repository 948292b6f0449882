"""HYBRID's keyword floor and fusion depth (issue #14): keyword hits far
weaker than the best one take no part in the fusion; each retriever fetches
FUSION_DEPTH x top_k candidates."""

from __future__ import annotations

from metadata_service.fusion import (
    FUSION_DEPTH,
    KEYWORD_FLOOR,
    above_floor,
    fusion_fetch,
    reciprocal_rank_fusion,
)


def test_hits_under_the_floor_share_of_the_best_are_left_out() -> None:
    scored = [("a", 5.2), ("b", 2.6), ("c", 2.5), ("d", 0.9)]
    assert above_floor(scored, 0.5) == ["a", "b"]  # 2.6 >= 2.6; 2.5 is under
    assert above_floor(scored, 0.0) == ["a", "b", "c", "d"]
    assert above_floor(scored, 1.0) == ["a"]
    assert above_floor([], 0.5) == []
    # Scores all alike (no strong match): none is left out.
    assert above_floor([("x", 0.8), ("y", 0.78), ("z", 0.76)], KEYWORD_FLOOR) == ["x", "y", "z"]


def test_a_lone_strong_keyword_match_leaves_dense_order_to_decide_the_rest() -> None:
    # The README's question: only the quick start's quote of it matches a rare
    # word; the chunks after it matched "vector" and "service" alone.
    dense = ["quote", "answer", "other", "noise"]
    keyword = [("quote", 5.2), ("noise", 0.97), ("other", 0.94)]
    fused = reciprocal_rank_fusion([(dense, 1.0), (above_floor(keyword, KEYWORD_FLOOR), 1.0)])
    assert [item for item, _ in fused][:2] == ["quote", "answer"]
    unfloored = reciprocal_rank_fusion([(dense, 1.0), ([k for k, _ in keyword], 1.0)])
    assert [item for item, _ in unfloored][1] != "answer"


def test_fetch_depth() -> None:
    assert fusion_fetch(10, 100) == FUSION_DEPTH * 10
    assert fusion_fetch(1, 100) == max(FUSION_DEPTH, 5)
    assert fusion_fetch(90, 100) == 100
