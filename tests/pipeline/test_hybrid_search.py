"""Search's modes with the real pair (real model, real Chroma) on both
databases: the keyword index finds what dense vectors miss, the filter holds
for both retrievers, writes show at once, and HYBRID survives the vector
service's absence (degraded) while DENSE does not."""

from __future__ import annotations

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from metadata_service.config import MetadataSettings
from metadata_service.fusion import KEYWORD_FLOOR, RRF_K
from tests.pipeline.conftest import metadata_stub
from tests.pipeline.test_pipeline import Stub, doc, equals, upsert

HYBRID, DENSE, KEYWORD = pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD

# Near-miss identifiers: dense vectors of all-MiniLM-L6-v2 rank two of them
# above the one the query names; only the keyword index tells them apart.
CORPUS = {
    "pager": (
        "The night shift restarted the ingest worker after the pager fired for incident "
        "ZQX7731; the queue drained within the hour."
    ),
    "i2": "Incident ZQX7713 was a false alarm raised by the pager during the night shift.",
    "i3": "The pager fired for incident ZQK7731 when the ingest queue backed up overnight.",
    "i4": "Incident QZX1773: the night shift drained the ingest queue by hand.",
    "i5": "Incident ZQX7371 paged the night shift; the worker was restarted.",
    "parts": "Part number AB-1234X ships in boxes of ten from the northern warehouse.",
    "cats": "Cats sleep for most of the day and hunt small animals at dawn and dusk.",
}


def search(
    stub: Stub, collection: str, query: str, mode: int = 0, **kwargs: object
) -> pb.SearchResponse:
    return stub.Search(
        pb.SearchRequest(collection=collection, query=query, mode=mode, **kwargs),  # type: ignore[arg-type]
        timeout=60,
    )


def ids(response: pb.SearchResponse) -> list[str]:
    return [h.document_id for h in response.hits]


def test_a_rare_identifier_is_found_by_keyword_and_hybrid_where_dense_misses_it(
    stub: Stub, collection: str
) -> None:
    upsert(stub, collection, *(doc(k, v, kind=k) for k, v in CORPUS.items()))
    dense = search(stub, collection, "ZQX7731", DENSE, top_k=3)
    assert ids(dense)[:1] != ["pager"], "dense alone should not find a bare identifier first"
    keyword = search(stub, collection, "ZQX7731", KEYWORD, top_k=3)
    assert ids(keyword) == ["pager"]
    hit = keyword.hits[0]
    assert hit.keyword_rank == 1 and hit.keyword_score > 0 and hit.score == hit.keyword_score
    assert (hit.dense_rank, hit.dense_score) == (0, 0)  # DENSE did not run
    assert hit.text == CORPUS["pager"] and hit.chunk_id == "pager#0"
    assert dict(hit.metadata)["kind"].string_value == "pager"
    hybrid = search(stub, collection, "ZQX7731", top_k=3)  # unset mode: HYBRID
    assert not hybrid.degraded
    assert ids(hybrid)[0] == "pager"
    # Every hit carries both retrievers' ranks and scores; the fused score is
    # the sum of 1 / (60 + rank) over the retrievers that found it, a keyword
    # hit counting only if it scores at least KEYWORD_FLOOR of the best one.
    query = "ZQX7731 incident night shift"
    hybrid = search(stub, collection, query, top_k=7)
    best = search(stub, collection, query, KEYWORD, top_k=1).hits[0].keyword_score
    found_by_both = [h for h in hybrid.hits if h.dense_rank and h.keyword_rank]
    assert found_by_both
    assert all(h.dense_score > 0 and h.keyword_score > 0 for h in found_by_both)
    for h in hybrid.hits:
        counted = h.keyword_rank and h.keyword_score >= KEYWORD_FLOOR * best
        expected = sum(
            1 / (RRF_K + r) for r in (h.dense_rank, h.keyword_rank if counted else 0) if r
        )
        assert h.score == pytest.approx(expected, rel=1e-6)
    # DENSE keeps its old meaning: score is the similarity.
    for h in dense.hits:
        assert h.score == h.dense_score and h.dense_rank >= 1 and h.keyword_rank == 0
    # Weights: keyword alone decides when the dense weight is 0.
    only_keyword = search(stub, collection, "ZQX7731", HYBRID, top_k=3, dense_weight=0.0)
    assert ids(only_keyword) == ["pager"]


def test_the_filter_holds_for_both_retrievers(stub: Stub, collection: str) -> None:
    upsert(
        stub,
        collection,
        doc("a", "The warranty covers the Fennimore valve for two years.", team="red"),
        doc("b", "Replace the Fennimore valve gasket every spring.", team="blue"),
        doc("c", "Valves and gaskets wear out; inspect them yearly.", team="blue"),
    )
    for mode in (HYBRID, DENSE, KEYWORD):
        response = search(stub, collection, "Fennimore valve", mode, filter=equals("team", "blue"))
        assert ids(response) and set(ids(response)) <= {"b", "c"}, mode
    keyword = search(stub, collection, "Fennimore", KEYWORD, filter=equals("team", "red"))
    assert ids(keyword) == ["a"]


def test_writes_and_deletes_show_in_keyword_results_at_once(stub: Stub, collection: str) -> None:
    upsert(stub, collection, doc("d", "Notes on the Quillfeather protocol."))
    assert ids(search(stub, collection, "Quillfeather", KEYWORD)) == ["d"]
    upsert(stub, collection, doc("d", "Notes on the Brambleway protocol instead."))
    assert ids(search(stub, collection, "Quillfeather", KEYWORD)) == []
    # HYBRID may still find the document by its vector, but only its new text.
    for hit in search(stub, collection, "Quillfeather").hits:
        assert "Quillfeather" not in hit.text
    assert ids(search(stub, collection, "Brambleway", KEYWORD)) == ["d"]
    stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=["d"]))
    for mode in (HYBRID, DENSE, KEYWORD):
        assert ids(search(stub, collection, "Brambleway protocol", mode)) == []


def test_hostile_queries_get_results_not_errors(stub: Stub, collection: str) -> None:
    upsert(stub, collection, doc("k", "The kettle boils water."))
    for query in ['"', "NEAR(kettle", "kettle*)(", "'; DROP TABLE chunks; --", "kettle " * 1000]:
        for mode in (HYBRID, KEYWORD):
            response = search(stub, collection, query, mode)
            if "kettle" in query:
                assert "k" in ids(response), (query, mode)


def test_hybrid_answers_degraded_without_the_vector_service(
    paired_settings: MetadataSettings,
) -> None:
    # None configured: KEYWORD needs none, HYBRID says it is degraded, DENSE refuses.
    alone = paired_settings.model_copy(update={"vector_service_address": ""})
    with metadata_stub(alone) as stub:
        stub.CreateCollection(pb.CreateCollectionRequest(name="alone"))
        upsert(stub, "alone", doc("x", "Zephyrine lamps light the harbour."), doc("y", "Oars."))
        keyword = search(stub, "alone", "zephyrine", KEYWORD)
        assert ids(keyword) == ["x"] and not keyword.degraded
        hybrid = search(stub, "alone", "zephyrine lamps")
        assert ids(hybrid) == ["x"]
        assert hybrid.degraded and "no vector service" in hybrid.degraded_reason
        assert hybrid.hits[0].keyword_rank == 1 and hybrid.hits[0].dense_rank == 0
        with pytest.raises(grpc.RpcError) as info:
            search(stub, "alone", "zephyrine", DENSE)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    # Configured but unreachable: HYBRID degraded, DENSE UNAVAILABLE.
    away = paired_settings.model_copy(update={"vector_service_address": "127.0.0.1:1"})
    with metadata_stub(away) as stub:
        hybrid = search(stub, "alone", "zephyrine lamps")
        assert ids(hybrid) == ["x"]
        assert hybrid.degraded and "unavailable" in hybrid.degraded_reason
        with pytest.raises(grpc.RpcError) as info:
            search(stub, "alone", "zephyrine", DENSE)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
