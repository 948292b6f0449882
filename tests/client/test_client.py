"""Every SDK method, blocking and asyncio, against the real pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from askmojo.client import (
    AlreadyExists,
    AsyncClient,
    AsyncVectorClient,
    Client,
    Document,
    DocumentState,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpsertState,
    VectorClient,
    VectorRecord,
)
from askmojo.client import filters as f
from tests.client.conftest import DOCS
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow


def test_every_method_blocking(client: Client, name: str) -> None:
    created = client.create_collection(name, description="notes", chunk_size=300)
    assert (created.name, created.dimension, created.chunk_size) == (name, 384, 300)
    with pytest.raises(AlreadyExists):
        client.create_collection(name)
    assert client.get_or_create_collection(name).name == name
    assert name in [c.name for c in client.collections()]

    results = client.upsert(
        name, [*DOCS[:2], Document("grpc", DOCS[2]["text"], DOCS[2]["metadata"])]
    )
    assert [(r.id, r.state) for r in results] == [
        ("wal", UpsertState.INDEXED),
        ("cats", UpsertState.INDEXED),
        ("grpc", UpsertState.INDEXED),
    ]
    assert all(r.ok and r.code == grpc.StatusCode.OK for r in results)
    assert client.upsert(name, DOCS[:1])[0].state is UpsertState.UNCHANGED

    hits = client.search(name, "readers and a writer in a database", top_k=3)
    assert hits[0].document_id == "wal"
    assert hits[0].metadata == DOCS[0]["metadata"]
    assert hits[0].score > hits[-1].score
    # Filters compile and match: the same dictionary on search and list.
    where = {"year": {"$gte": 2020}, "$or": [{"lang": "fr"}, {"draft": False}]}
    assert {h.document_id for h in client.search(name, "anything", where=where)} == {"wal", "grpc"}
    assert [d.id for d in client.list(name, where=where)] == ["grpc", "wal"]
    assert [d.id for d in client.list(name, where=f.not_(f.in_("lang", ["en"])))] == ["grpc"]

    stored = client.get(name, "cats")
    assert stored.text == DOCS[1]["text"] and stored.state is DocumentState.INDEXED
    assert stored.metadata == DOCS[1]["metadata"] and stored.create_time is not None
    listed = list(client.list(name, include_text=True, states=["indexed"]))
    assert [d.id for d in listed] == ["cats", "grpc", "wal"] and listed[0].text == stored.text
    assert next(iter(client.list(name))).text is None

    stats = client.stats(name)
    assert stats.documents_by_state["indexed"] == 3 and stats.document_count == 3
    assert client.stats().chunk_count >= 3
    report = client.reconcile(name, dry_run=True)
    assert report.dry_run and report.missing_vectors == report.orphan_vectors == 0
    assert not client.reconcile(name).dry_run

    assert client.delete(name, ["cats", "nope"]).not_found_ids == ["nope"]
    assert client.delete(name, where={"lang": "fr"}).deleted_count == 1
    assert [d.id for d in client.list(name)] == ["wal"]
    deleted = client.delete_collection(name)
    assert deleted.deleted_documents == 1
    with pytest.raises(NotFound):
        client.collection(name)


def test_list_pages_through_everything(client: Client, name: str) -> None:
    client.create_collection(name)
    documents = [{"id": f"d{i:03}", "text": f"document number {i}"} for i in range(25)]
    assert all(r.ok for r in client.upsert(name, documents, batch_size=10))
    assert [d.id for d in client.list(name, page_size=7)] == [d["id"] for d in documents]


def test_ingest_yields_each_result_in_order(client: Client, name: str) -> None:
    client.create_collection(name)
    documents = [Document(f"d{i}", f"text {i}", {"n": i}) for i in range(9)]
    documents.insert(4, {"id": "bad", "text": "x", "metadata": {"n": [1]}})  # type: ignore[arg-type]
    documents.append(Document("blank", "   "))
    results = list(client.ingest(name, iter(documents), batch_size=2, max_in_flight=1))
    assert [r.id for r in results] == [
        d.id if isinstance(d, Document) else "bad" for d in documents
    ]
    assert results[4].state is UpsertState.FAILED
    assert results[4].violations[0].field == "documents[4].metadata['n']"
    assert results[-1].state is UpsertState.FAILED and results[-1].code.name == "INVALID_ARGUMENT"
    assert results[-1].violations and "text" in results[-1].violations[0].field
    assert all(r.ok for r in results[:4] + results[5:-1])


def test_ingest_into_a_missing_collection_fails_each_document(client: Client) -> None:
    results = list(client.ingest("no-such-collection", [{"id": "a", "text": "x"}]))
    assert [(r.id, r.code) for r in results] == [("a", grpc.StatusCode.NOT_FOUND)]


def test_a_failing_document_source_is_raised(client: Client, name: str) -> None:
    client.create_collection(name)

    def documents() -> object:
        yield {"id": "a", "text": "fine"}
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(client.ingest(name, documents()))  # type: ignore[arg-type]


def test_errors_carry_code_and_violations(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_collection("x")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["name"]
    assert "3 to 63 characters" in error.violations[0].description
    assert str(error).startswith("INVALID_ARGUMENT: ")
    with pytest.raises(NotFound) as missing:
        client.search("no-such-collection", "q")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.violations == ()
    with pytest.raises(InvalidArgument, match="exactly one of ids and where"):
        client.delete("whatever", ["a"], where={"a": 1})


def test_every_method_asyncio(paired: RunningServer, name: str) -> None:
    async def documents() -> AsyncIterator[Document]:
        # An async source, as a crawler feeding a queue would be.
        queue: asyncio.Queue[Document | None] = asyncio.Queue()
        for doc in DOCS:
            queue.put_nowait(Document(doc["id"], doc["text"], doc["metadata"]))
        queue.put_nowait(None)
        while (item := await queue.get()) is not None:
            yield item

    async def main() -> None:
        async with AsyncClient(paired.address) as client:
            assert (await client.create_collection(name)).name == name
            assert (await client.get_or_create_collection(name)).name == name
            assert (await client.collection(name)).document_count == 0
            results = [r async for r in client.ingest(name, documents(), batch_size=2)]
            assert [(r.id, r.state) for r in results] == [
                ("wal", UpsertState.INDEXED),
                ("cats", UpsertState.INDEXED),
                ("grpc", UpsertState.INDEXED),
            ]
            assert (await client.upsert(name, DOCS[1:2]))[0].state is UpsertState.UNCHANGED
            hits = await client.search(name, "purring pets", top_k=1, where={"draft": True})
            assert [h.document_id for h in hits] == ["cats"]
            assert [d.id async for d in client.list(name, page_size=2)] == ["cats", "grpc", "wal"]
            assert (await client.get(name, "grpc")).metadata["lang"] == "fr"
            assert (await client.stats(name)).documents_by_state["indexed"] == 3
            assert (await client.reconcile(name, dry_run=True)).dry_run
            assert [c.name for c in await client.collections()] == [name]
            assert (await client.delete(name, where={"year": {"$lt": 2020}})).deleted_count == 1
            with pytest.raises(NotFound):
                await client.get(name, "cats")
            assert (await client.delete_collection(name)).deleted_documents == 2

    asyncio.run(main())


def test_vector_client_blocking(vector_client: VectorClient, name: str) -> None:
    info = vector_client.model_info()
    assert info.dimension == 384 and info.max_texts_per_call > 0
    vectors = vector_client.embed(["a cat", "a kitten", "a database"], batch_size=2)
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert vector_client.ensure_collection(name).created
    assert not vector_client.ensure_collection(name).created
    results = vector_client.upsert(
        name,
        [
            VectorRecord("t1", text="cats purr", metadata={"kind": "text"}),
            {"id": "v1", "vector": vectors[2], "metadata": {"kind": "vector"}},
            VectorRecord("bad", vector=[1.0, 2.0]),
        ],
    )
    assert [r.ok for r in results] == [True, True, False]
    assert vector_client.count(name) == 2
    assert vector_client.query(name, "a purring cat", top_k=1)[0].id == "t1"
    assert vector_client.query(name, vector=vectors[2], top_k=2)[0].id == "v1"
    assert [m.id for m in vector_client.query(name, "x", where={"kind": "vector"})] == ["v1"]
    [record] = vector_client.get(name, ["v1", "nope"], include_vectors=True)
    assert record.vector is not None and len(record.vector) == 384
    assert record.metadata == {"kind": "vector"}
    assert list(vector_client.list_ids(name, page_size=1)) == ["t1", "v1"]
    assert vector_client.delete(name, where={"kind": "text"}) == 1
    assert vector_client.delete(name, ["v1"]) == 1
    with pytest.raises(FailedPrecondition):
        vector_client.ensure_collection(name, dimension=8)
    assert vector_client.drop_collection(name)


def test_vector_client_asyncio(vector_server: RunningServer, name: str) -> None:
    async def main() -> None:
        async with AsyncVectorClient(vector_server.address) as vectors:
            assert (await vectors.model_info()).dimension == 384
            [embedding] = await vectors.embed(["hello"])
            assert len(embedding) == 384
            await vectors.ensure_collection(name)
            results = await vectors.upsert(name, [{"id": "a", "text": "hello world"}])
            assert results[0].ok
            assert (await vectors.count(name)) == 1
            assert [m.id for m in await vectors.query(name, vector=embedding)] == ["a"]
            assert [r.id for r in await vectors.get(name, ["a"])] == ["a"]
            assert [i async for i in vectors.list_ids(name)] == ["a"]
            assert await vectors.delete(name, ["a"]) == 1
            assert await vectors.drop_collection(name)

    asyncio.run(main())
