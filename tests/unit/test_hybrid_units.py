"""Reciprocal rank fusion and the Search proto mapping (mode, weights, the
per-hit ranks and scores, the degraded flag), as pure functions."""

from __future__ import annotations

import math

import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from metadata_service import convert
from metadata_service.domain import SearchHit, SearchMode, SearchOptions, SearchResult
from metadata_service.errors import InvalidArgument
from metadata_service.fusion import RRF_K, reciprocal_rank_fusion


def test_fusion_sums_weighted_reciprocal_ranks() -> None:
    fused = dict(reciprocal_rank_fusion([(["a", "b", "c"], 1.0), (["c", "d"], 1.0)]))
    assert fused["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert fused["a"] == pytest.approx(1 / (RRF_K + 1))
    order = [
        item for item, _ in reciprocal_rank_fusion([(["a", "b", "c"], 1.0), (["c", "d"], 1.0)])
    ]
    assert order == ["c", "a", "b", "d"]  # found by both first; a tie keeps the first list's
    weighted = reciprocal_rank_fusion([(["a"], 0.5), (["b"], 2.0)])
    assert [item for item, _ in weighted] == ["b", "a"]
    assert reciprocal_rank_fusion([]) == []


def test_search_options_from_proto() -> None:
    assert convert.from_proto_search_options(pb.SearchRequest()) == SearchOptions()
    assert convert.from_proto_search_options(
        pb.SearchRequest(mode=pb.SEARCH_MODE_KEYWORD, dense_weight=0.5)
    ) == SearchOptions(SearchMode.KEYWORD, 0.5, 1.0)
    for mode in (SearchMode.DENSE, SearchMode.KEYWORD, SearchMode.HYBRID):
        request = pb.SearchRequest(mode=convert.to_proto_search_mode(mode))
        assert convert.from_proto_search_options(request).mode is mode
    for request, field in [
        (pb.SearchRequest(mode=99), "mode"),  # type: ignore[arg-type]
        (pb.SearchRequest(dense_weight=-1), "dense_weight"),
        (pb.SearchRequest(keyword_weight=math.nan), "keyword_weight"),
        (pb.SearchRequest(dense_weight=0, keyword_weight=0), "dense_weight"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            convert.from_proto_search_options(request)
        assert info.value.violations[0][0] == field


def test_search_result_round_trips() -> None:
    result = SearchResult(
        [
            SearchHit("a", "a#0", 0.03125, "text", {"k": "v", "n": 3}, 1, 0.5, 2, 7.25),
            SearchHit("b", "b#1", 0.015625, "more", {}, 0, 0.0, 1, 3.5),
        ],
        degraded=True,
        degraded_reason="keyword results only: the vector service is unavailable",
    )
    assert convert.from_proto_search(convert.to_proto_search(result)) == result
    assert convert.from_proto_search(convert.to_proto_search(SearchResult([]))) == SearchResult([])
