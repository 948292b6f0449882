"""AskmojoVectorStore beyond the standard suite, against the real services:
filters in Chroma's spelling, scores, MMR, construction, refusals, and the
wait for INDEXED that makes a search right after an add find it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from askmojo.client import InvalidArgument
from askmojo.integrations.langchain import (
    AskmojoEmbeddings,
    AskmojoVectorStore,
    IndexingTimeout,
)
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings

pytestmark = pytest.mark.slow

DOCS = [
    Document(
        id="wal",
        page_content="SQLite in WAL mode lets readers work during a write.",
        metadata={"topic": "db", "year": 2024},
    ),
    Document(
        id="wal-2",
        page_content="In WAL mode SQLite readers keep working while one writer writes.",
        metadata={"topic": "db", "year": 2021},
    ),
    Document(
        id="mvcc",
        page_content="PostgreSQL uses MVCC so readers never block writers.",
        metadata={"topic": "db", "year": 2019},
    ),
    Document(
        id="cats",
        page_content="Cats purr when they are content.",
        metadata={"topic": "pets", "year": 2024},
    ),
]


@pytest.fixture
def store(
    metadata_server: RunningServer, vector_server: RunningServer
) -> Iterator[AskmojoVectorStore]:
    made = AskmojoVectorStore(
        f"lc-{uuid.uuid4().hex[:12]}",
        address=metadata_server.address,
        vector_address=vector_server.address,
    )
    try:
        yield made
    finally:
        made.delete_collection()
        made.close()


def test_filter_in_chromas_spelling_scores_and_retriever(store: AskmojoVectorStore) -> None:
    assert store.add_documents(DOCS) == ["wal", "wal-2", "mvcc", "cats"]
    where = {"topic": "db", "year": {"$gte": 2020}}
    found = store.similarity_search_with_score("readers during writes", k=4, filter=where)
    assert [d.id for d, _ in found] == ["wal", "wal-2"] or [d.id for d, _ in found] == [
        "wal-2",
        "wal",
    ]
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert found[0][0].metadata["topic"] == "db"

    relevant = store.similarity_search_with_relevance_scores("purring cats", k=4)
    assert relevant[0][0].id == "cats"
    assert all(0 <= r <= 1 for _, r in relevant)

    retriever = store.as_retriever(
        search_kwargs={"k": 2, "filter": {"$or": [{"year": 2019}, {"topic": "pets"}]}}
    )
    assert {d.id for d in retriever.invoke("readers")} == {"mvcc", "cats"}
    assert store.similarity_search("readers", k=4, filter={"topic": "birds"}) == []


def test_mmr_prefers_diverse_chunks_sync_and_async(store: AskmojoVectorStore) -> None:
    store.add_documents(DOCS)
    query = "SQLite WAL readers"
    plain = [d.id for d in store.similarity_search(query, k=2)]
    assert set(plain) == {"wal", "wal-2"}  # the two near-duplicates
    diverse = store.max_marginal_relevance_search(query, k=2, fetch_k=4, lambda_mult=0.3)
    assert diverse[0].id in {"wal", "wal-2"} and diverse[1].id not in {"wal", "wal-2"}
    assert [d.id for d in store.max_marginal_relevance_search(query, k=2, lambda_mult=1.0)] == plain

    # Two event loops, one store: each loop gets a channel of its own.
    async def in_a_loop() -> list[str | None]:
        try:
            found = await store.amax_marginal_relevance_search(
                query, k=2, fetch_k=4, lambda_mult=0.3
            )
            return [d.id for d in found]
        finally:
            await store.aclose()

    for _ in range(2):
        assert asyncio.run(in_a_loop()) == [d.id for d in diverse]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "filter": {"topic": "db"}})
    assert len(mmr.invoke(query)) == 2
    assert store.max_marginal_relevance_search(query, filter={"topic": "birds"}) == []


def test_from_texts_afrom_texts_and_foreign_embeddings(
    metadata_server: RunningServer, vector_server: RunningServer
) -> None:
    name = f"lc-{uuid.uuid4().hex[:12]}"
    options = {"address": metadata_server.address, "vector_address": vector_server.address}
    store = AskmojoVectorStore.from_texts(
        ["alpha", "beta"],
        metadatas=[{"n": 1}, {"n": 2}],
        ids=["a", "b"],
        collection_name=name,
        **options,
    )
    try:
        assert [d.id for d in store.get_by_ids(["b", "a", "zzz", "a"])] == ["b", "a"]
        again = asyncio.run(
            AskmojoVectorStore.afrom_texts(["gamma"], ids=["c"], collection_name=name, **options)
        )
        assert {d.page_content for d in store.get_by_ids(["a", "b", "c"])} == {
            "alpha",
            "beta",
            "gamma",
        }
        again.close()
        embeddings = store.embeddings
        assert isinstance(embeddings, AskmojoEmbeddings)
        assert len(embeddings.embed_query("x")) == store.client.collection(name).dimension
        with pytest.raises(ValueError, match="DeterministicFakeEmbedding"):
            AskmojoVectorStore.from_texts(
                ["x"], DeterministicFakeEmbedding(size=4), collection_name=name, **options
            )
    finally:
        store.delete_collection()
        store.close()


def test_refused_metadata_raises_with_violations_and_keeps_the_others(
    store: AskmojoVectorStore,
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        store.add_texts(["good", "nested"], [{"ok": True}, {"tags": ["a", "b"]}], ids=["g", "n"])
    assert "1 of 2 documents not added" in str(refused.value)
    assert refused.value.violations and "tags" in refused.value.violations[0].field
    assert [d.id for d in store.get_by_ids(["g", "n"])] == ["g"]
    assert store.similarity_search("good", k=1)[0].id == "g"  # stored and indexed


def test_delete_by_filter_and_no_delete_all_by_accident(store: AskmojoVectorStore) -> None:
    store.add_documents(DOCS)
    assert store.delete(filter={"topic": "pets"}) is True
    assert {d.id for d in store.similarity_search("cats", k=10)} == {"wal", "wal-2", "mvcc"}
    assert asyncio.run(store.adelete(filter={"year": {"$lt": 2020}})) is True
    assert store.get_by_ids(["mvcc"]) == []
    with pytest.raises(ValueError, match="give ids or filter"):
        store.delete()


def test_add_returns_once_indexed(tmp_path: Path, vector_server: RunningServer) -> None:
    """Without a vector service the documents stay PENDING: add times out
    naming them (or, with wait_indexed=False, returns at once). The same
    database then served with a vector service: adding them again (UNCHANGED)
    returns once they are INDEXED, and a search finds them."""
    name = "lc-pending"
    alone = metadata_settings(tmp_path / "metadata.db")
    prepare_database(alone)
    with RunningServer.metadata(alone) as server:
        store = AskmojoVectorStore(name, address=server.address, index_timeout=0.5)
        with pytest.raises(IndexingTimeout) as timed_out:
            store.add_texts(["one", "two"], ids=["1", "2"])
        assert timed_out.value.pending == ["1", "2"]
        store.wait_indexed = False
        assert store.add_texts(["three"], ids=["3"]) == ["3"]
        assert [d.id for d in store.get_by_ids(["1", "2", "3"])] == ["1", "2", "3"]
        store.close()
    paired = alone.model_copy(
        update={
            "vector_service_address": vector_server.address,
            "index_poll_seconds": 0.2,
            "index_max_backoff": 0.5,
        }
    )
    with RunningServer.metadata(paired) as server:
        store = AskmojoVectorStore(
            name, address=server.address, vector_address=vector_server.address
        )
        assert store.add_texts(["one", "two", "three"], ids=["1", "2", "3"]) == ["1", "2", "3"]
        assert {d.id for d in store.similarity_search("one two three", k=3)} == {"1", "2", "3"}
        store.delete_collection()
        store.close()


def test_hybrid_by_default_with_relevance_in_every_mode(store: AskmojoVectorStore) -> None:
    """Search is HYBRID unless told (#14): scores are the service's fused
    ones, and relevance is 1 for a chunk both retrievers rank first, so a
    score_threshold keeps it (it used to read the fused score, at most 2/61,
    as a cosine similarity, and kept nothing). DENSE scores are cosine
    similarities; KEYWORD finds exact words, its first hit relevance 1."""
    store.add_documents(DOCS)
    query = "cats purr"
    hybrid = store.similarity_search_with_score(query, k=4)
    served = store.client.search(store.collection_name, query, top_k=4)
    assert [(d.id, s) for d, s in hybrid] == [(h.document_id, h.score) for h in served]
    assert served[0].document_id == "cats" and served[0].dense_rank == served[0].keyword_rank == 1

    kept = store.similarity_search_with_relevance_scores(query, k=4, score_threshold=0.9)
    assert [(d.id, r) for d, r in kept] == [("cats", pytest.approx(1.0))]
    relevant = store.similarity_search_with_relevance_scores(query, k=4)
    assert [r for _, r in relevant] == sorted((r for _, r in relevant), reverse=True)
    assert all(0 <= r <= 0.5 for _, r in relevant[1:])  # found by dense alone
    retriever = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9}
    )
    assert [d.id for d in retriever.invoke(query)] == ["cats"]
    kept_async = asyncio.run(
        store.asimilarity_search_with_relevance_scores(query, k=4, score_threshold=0.9)
    )
    assert [d.id for d, _ in kept_async] == ["cats"]

    dense = store.similarity_search_with_score(query, k=4, search_mode="dense")
    cosine = store.client.search(store.collection_name, query, top_k=4, mode="dense")
    assert [s for _, s in dense] == [h.score for h in cosine]
    assert dense[0][1] > 0.2  # a similarity: no fused score exceeds 2/61
    dense_relevance = store.similarity_search_with_relevance_scores(query, k=4, search_mode="dense")
    assert [r for _, r in dense_relevance] == [max(0.0, min(1.0, s)) for _, s in dense]

    by_word = store.as_retriever(search_kwargs={"k": 4, "search_mode": "keyword"})
    assert [d.id for d in by_word.invoke("MVCC")] == ["mvcc"]
    keyword = store.similarity_search_with_relevance_scores(
        "WAL readers", k=4, search_mode="keyword"
    )
    assert {d.id for d, _ in keyword} == {"wal", "wal-2", "mvcc"}
    assert keyword[0][1] == 1.0 and all(0 < r <= 1 for _, r in keyword)

    keyword_store = AskmojoVectorStore(
        store.collection_name, client=store.client, search_mode="keyword", create_collection=False
    )
    assert [d.id for d in keyword_store.similarity_search("MVCC", k=4)] == ["mvcc"]
    with pytest.raises(ValueError, match="search_mode must be one of 'hybrid'"):
        store.similarity_search(query, search_mode="fuzzy")
    with pytest.raises(ValueError, match="search_mode must be one of"):
        AskmojoVectorStore(store.collection_name, client=store.client, search_mode="semantic")
