"""The pair with keys: a metadata service with keys of its own calling a
vector service with different ones. Indexing works with the right
VECTOR_SERVICE_API_KEY; with a refused one the documents stay PENDING (never
FAILED), the log says why, and they are indexed once the keys agree. A caller
without the vector service's key can neither read, forge nor drop vectors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr

from askmojo.common.channels import ClientSecurity, open_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.auth.conftest import (
    METADATA_KEY,
    METADATA_READ_KEY,
    VECTOR_KEY,
    VECTOR_READ_KEY,
    WRONG_KEY,
    bearer,
    keyed_metadata_settings,
    running_metadata,
)
from tests.conftest import RunningServer
from tests.waiting import wait_until

Stub = pb_grpc.MetadataServiceStub

TEXTS = {
    "wal": "SQLite in write-ahead-log mode lets readers keep reading while one writer commits.",
    "cats": "Cats sleep for most of the day and hunt small animals at dawn and dusk.",
}


@contextlib.contextmanager
def keyed_pair(
    database: Path, vector: RunningServer, vector_key: str, key: str = METADATA_KEY
) -> Iterator[Stub]:
    """A keyed metadata service calling `vector` with `vector_key`, and a stub
    to it sending `key` (through the CLI's channel: its interceptor)."""
    settings = keyed_metadata_settings(
        database,
        vector_service_address=vector.address,
        vector_service_api_key=vector_key,
        index_poll_seconds=0.2,
        index_max_backoff=0.5,
    )
    with (
        running_metadata(settings) as running,
        open_channel(running.address, ClientSecurity(api_key=SecretStr(key))) as channel,
    ):
        yield Stub(channel)


def upsert(stub: Stub, collection: str) -> list[int]:
    response = stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[pb.Document(id=doc_id, text=text) for doc_id, text in TEXTS.items()],
        ),
        timeout=120,
    )
    return [r.state for r in response.results]


def states(stub: Stub, collection: str) -> set[int]:
    listed = stub.ListDocuments(pb.ListDocumentsRequest(collection=collection), timeout=30)
    assert len(listed.documents) == len(TEXTS)
    return {d.state for d in listed.documents}


def best_hit(stub: Stub, collection: str, query: str) -> str:
    hits = stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=3), timeout=60)
    return hits.hits[0].document_id


def test_the_pair_indexes_and_searches_with_its_own_keys(
    keyed_vector: RunningServer, tmp_path: Path
) -> None:
    with keyed_pair(tmp_path / "metadata.db", keyed_vector, VECTOR_KEY) as stub:
        stub.CreateCollection(pb.CreateCollectionRequest(name="keyed"), timeout=30)
        assert upsert(stub, "keyed") == [pb.UPSERT_STATE_INDEXED] * len(TEXTS)
    # Readers search with the read-only key.
    with keyed_pair(tmp_path / "metadata.db", keyed_vector, VECTOR_KEY, METADATA_READ_KEY) as stub:
        assert best_hit(stub, "keyed", "cats hunting at dawn") == "cats"
        assert states(stub, "keyed") == {pb.DOCUMENT_STATE_INDEXED}


def test_a_refused_vector_service_key_leaves_documents_pending_until_the_keys_agree(
    keyed_vector: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    database = tmp_path / "metadata.db"
    refusals = (
        (WRONG_KEY, "UNAUTHENTICATED"),
        (METADATA_KEY, "UNAUTHENTICATED"),  # the metadata service's own key
        (VECTOR_READ_KEY, "PERMISSION_DENIED"),  # the read key cannot index
    )
    for attempt, (vector_key, code) in enumerate(refusals):
        caplog.clear()
        with keyed_pair(database, keyed_vector, vector_key) as stub:
            if attempt == 0:
                stub.CreateCollection(pb.CreateCollectionRequest(name="waiting"), timeout=30)
                assert upsert(stub, "waiting") == [pb.UPSERT_STATE_PENDING] * len(TEXTS)

            def refusals_logged(code: str = code) -> int:
                return sum(
                    f"refused this service's key ({code}" in r.getMessage()
                    and "VECTOR_SERVICE_API_KEY" in r.getMessage()
                    for r in caplog.records
                )

            # Two refused passes: the indexer kept retrying instead of giving up.
            wait_until(
                lambda: refusals_logged() >= 2,
                timeout=30,
                what=f"two logged {code} refusals",
                describe=lambda: [r.getMessage() for r in caplog.records][-3:],
            )
            assert states(stub, "waiting") == {pb.DOCUMENT_STATE_PENDING}
            if code == "UNAUTHENTICATED":  # the read key may search (nothing is indexed)
                with pytest.raises(grpc.RpcError) as searched:
                    stub.Search(
                        pb.SearchRequest(
                            collection="waiting", query="cats", mode=pb.SEARCH_MODE_DENSE
                        ),
                        timeout=30,
                    )
                assert searched.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert vector_key not in caplog.text
    with keyed_pair(database, keyed_vector, VECTOR_KEY) as stub:
        wait_until(
            lambda: states(stub, "waiting") == {pb.DOCUMENT_STATE_INDEXED},
            timeout=60,
            what="the stored documents indexed once the key is right",
        )
        assert best_hit(stub, "waiting", "readers keep reading during a commit") == "wal"
    assert VECTOR_KEY not in caplog.text and METADATA_KEY not in caplog.text


def test_without_the_vector_service_key_vectors_cannot_be_read_forged_or_dropped(
    keyed_vector: RunningServer, tmp_path: Path
) -> None:
    """The issue's probe, with keys on: reading a collection's vectors,
    upserting a forged vector that would rank first, dropping the collection."""
    with keyed_pair(tmp_path / "metadata.db", keyed_vector, VECTOR_KEY) as stub:
        stub.CreateCollection(pb.CreateCollectionRequest(name="probed"), timeout=30)
        assert upsert(stub, "probed") == [pb.UPSERT_STATE_INDEXED] * len(TEXTS)
        name = stub.GetCollection(pb.GetCollectionRequest(name="probed")).vector_collection
        with grpc.insecure_channel(keyed_vector.address) as channel:
            vectors = vpb_grpc.VectorServiceStub(channel)
            count = vectors.Count(vpb.CountRequest(collection=name), metadata=bearer(VECTOR_KEY))
            forged = vpb.UpsertRequest(
                collection=name,
                records=[vpb.VectorRecord(id="forged", text="cats hunting at dawn")],
            )
            outsiders = ((), bearer(WRONG_KEY), bearer(METADATA_KEY))
            for metadata in (*outsiders, bearer(VECTOR_READ_KEY)):
                for write, request in (
                    (vectors.Upsert, forged),
                    (vectors.DropCollection, vpb.DropCollectionRequest(name=name)),
                    (vectors.Delete, vpb.DeleteRequest(collection=name, ids=["x"])),
                ):
                    with pytest.raises(grpc.RpcError) as refused:
                        write(request, metadata=metadata, timeout=30)
                    assert refused.value.code() in {  # type: ignore[attr-defined]
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    }
            for metadata in outsiders:
                for read, request in (
                    (vectors.Get, vpb.GetRequest(collection=name, ids=["x"])),
                    (vectors.ListIds, vpb.ListIdsRequest(collection=name)),
                    (vectors.Query, vpb.QueryRequest(collection=name, query_text="cats")),
                ):
                    with pytest.raises(grpc.RpcError) as refused:
                        read(request, metadata=metadata, timeout=30)
                    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            after = vectors.Count(vpb.CountRequest(collection=name), metadata=bearer(VECTOR_KEY))
            assert after.count == count.count
        assert best_hit(stub, "probed", "cats hunting at dawn") == "cats"
        reconciled = stub.Reconcile(pb.ReconcileRequest(collection="probed", dry_run=True))
        assert (reconciled.missing_vectors, reconciled.orphan_vectors) == (0, 0)
