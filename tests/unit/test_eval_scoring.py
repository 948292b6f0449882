"""The evaluation's scoring (evals/hybrid.py) on hand-made rankings: what the
README's search table and the oracle ceiling are computed by."""

from __future__ import annotations

from evals import hybrid
from evals.known_item import KnownItem


def _rankings() -> hybrid.Rankings:
    # Six one-chunk documents a..f. Query 0 wants "a": dense ranks it 6th
    # (past the first five documents), keyword 1st. Query 1 wants "b": dense
    # 1st, keyword never. Query 2 wants "f": neither retriever in its first five.
    owners = ["a", "b", "c", "d", "e", "f"]
    return hybrid.Rankings(
        items=[KnownItem("a", "q0"), KnownItem("b", "q1"), KnownItem("f", "q2")],
        owners=owners,
        dense=[[1, 2, 3, 4, 5, 0], [1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 5]],
        keyword=[[0], [2], [1, 2, 3, 4, 0, 5]],
        keyword_scores=[[5.0], [5.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]],
    )


def test_each_mode_scores_hits_over_the_first_five_documents() -> None:
    scores = hybrid.score(_rankings(), hybrid.Fusion())
    assert scores["DENSE"].hit5 == 1 / 3  # only "b"
    assert scores["KEYWORD"].hit5 == 1 / 3  # only "a"
    assert scores["DENSE"].hit1 == scores["KEYWORD"].hit1 == 1 / 3
    # Fused: "a" first (keyword 1st + dense 6th), "b" second behind "c"
    # (dense 2nd + keyword 1st), "f" sixth (6th in both).
    assert scores["HYBRID"].hit5 == 2 / 3
    assert scores["HYBRID"].hit1 == 1 / 3
    assert scores["HYBRID"].mrr == (1 + 1 / 2) / 3


def test_the_ceiling_counts_a_query_any_mode_answers() -> None:
    rankings = _rankings()
    fusion = hybrid.Fusion()
    scores = hybrid.score(rankings, fusion)
    ceiling = hybrid.mode_ceiling(rankings, fusion)
    assert ceiling == 2 / 3  # "a" by keyword, "b" by dense; "f" by none
    assert all(ceiling >= scores[mode].hit5 for mode in ("DENSE", "KEYWORD", "HYBRID"))


def test_a_summary_is_the_first_sentence_and_abbreviations_end_none() -> None:
    first = hybrid.first_sentence
    assert first("Utilities for with-statement contexts.  See PEP 343.") == (
        "Utilities for with-statement contexts."
    )
    assert first("Heap queue algorithm (a.k.a. priority queue).  Heaps are") == (
        "Heap queue algorithm (a.k.a. priority queue)."
    )
    assert first("Support for e.g. sockets. More") == "Support for e.g. sockets."
    assert first("Version 3.11 changes. More") == "Version 3.11 changes."
    assert first("No sentence end") == "No sentence end"
