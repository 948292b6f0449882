"""AskmojoVectorStore's relevance scores from hits alone (no services): in
[0, 1] in every mode, each hit's own."""

from __future__ import annotations

import pytest

from askmojo.client import SearchHit, SearchMode, SearchResults
from askmojo.integrations.langchain import _relevances


def _hits(*scores: float, degraded: bool = False) -> SearchResults:
    return SearchResults(
        (SearchHit(f"d{i}", f"c{i}", score, "text", {}) for i, score in enumerate(scores)),
        degraded=degraded,
    )


def test_hybrid_is_the_fused_score_over_the_highest_possible() -> None:
    # 2/61: first by both retrievers; 1/61: first by one alone; 1/70: 10th by one.
    relevance = _relevances(_hits(2 / 61, 1 / 61, 1 / 70), SearchMode.HYBRID)
    assert relevance == pytest.approx([1.0, 0.5, 61 / 140])


def test_degraded_hybrid_is_over_the_keyword_index_alone() -> None:
    relevance = _relevances(_hits(1 / 61, 1 / 62, degraded=True), SearchMode.HYBRID)
    assert relevance == pytest.approx([1.0, 61 / 62])


def test_dense_is_the_similarity_and_keyword_is_relative_to_the_first() -> None:
    assert _relevances(_hits(0.8, 0.1, -0.3), SearchMode.DENSE) == [0.8, 0.1, 0.0]
    assert _relevances(_hits(6.0, 3.0, 1.5), SearchMode.KEYWORD) == [1.0, 0.5, 0.25]
    assert _relevances(_hits(0.0, 0.0), SearchMode.KEYWORD) == [0.0, 0.0]
    assert _relevances(_hits(), SearchMode.KEYWORD) == []
