"""VectorService over a real socket (embedded Chroma, the real model), the
persist-directory lock between real processes, and grpcurl."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from askmojo.common.filters import metadata_to_proto
from askmojo.common.v1 import common_pb2 as common
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.conftest import RunningServer, vector_settings
from tests.vector_service.conftest import CHROMA, free_port, wait_for_port
from tests.waiting import wait_until
from vector_service.server import VectorServer, create_server
from vector_service.store import VectorStore

GRPCURL = Path(sys.executable).parent / "grpcurl"


@pytest.fixture(scope="module")
def stub(vector_channel: grpc.Channel) -> vpb_grpc.VectorServiceStub:
    return vpb_grpc.VectorServiceStub(vector_channel)


@pytest.fixture
def collection(stub: vpb_grpc.VectorServiceStub) -> str:
    name = f"docs-{uuid.uuid4().hex[:8]}"
    created = stub.EnsureCollection(vpb.EnsureCollectionRequest(name=name))
    assert (created.dimension, created.model, created.created) == (384, "all-MiniLM-L6-v2", True)
    return name


def record(record_id: str, text: str, **metadata: object) -> vpb.VectorRecord:
    values = metadata_to_proto(metadata)  # type: ignore[arg-type]
    return vpb.VectorRecord(id=record_id, text=text, metadata=values)


def rpc_error(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def test_text_records_are_embedded_and_found(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    records = [
        record("cats", "Cats are small furry animals that purr.", topic="pets", year=2020),
        record("sql", "SQLite stores a whole database in one file.", topic="db", year=2024),
        record("grpc", "gRPC is a remote procedure call framework.", topic="net", year=2019),
    ]
    results = stub.Upsert(vpb.UpsertRequest(collection=collection, records=records)).results
    assert [(r.id, r.status.code) for r in results] == [("cats", 0), ("sql", 0), ("grpc", 0)]
    assert stub.Count(vpb.CountRequest(collection=collection)).count == 3

    matches = stub.Query(
        vpb.QueryRequest(collection=collection, query_text="a database file", top_k=3)
    ).matches
    assert matches[0].id == "sql"
    assert matches[0].score > matches[1].score
    assert matches[0].metadata["topic"].string_value == "db"

    newer = common.Filter(
        condition=common.Condition(
            key="year", op=common.OPERATOR_LT, value=common.MetadataValue(int_value=2020)
        )
    )
    filtered = stub.Query(
        vpb.QueryRequest(collection=collection, query_text="a database file", top_k=3, filter=newer)
    ).matches
    assert [m.id for m in filtered] == ["grpc"]

    got = stub.Get(vpb.GetRequest(collection=collection, ids=["cats"], include_vectors=True))
    assert len(got.records[0].vector.values) == 384
    page = stub.ListIds(vpb.ListIdsRequest(collection=collection, page_size=2))
    rest = stub.ListIds(
        vpb.ListIdsRequest(collection=collection, page_size=2, page_token=page.next_page_token)
    )
    assert sorted([*page.ids, *rest.ids]) == ["cats", "grpc", "sql"] and not rest.next_page_token
    assert stub.Delete(vpb.DeleteRequest(collection=collection, ids=["cats"])).deleted_count == 1
    assert stub.DropCollection(vpb.DropCollectionRequest(name=collection)).dropped


def test_vectors_and_text_mix_and_bad_records_fail_alone(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(id="vec", vector=vpb.Vector(values=[0.1] * 384)),
                vpb.VectorRecord(id="short", vector=vpb.Vector(values=[0.1] * 3)),
                vpb.VectorRecord(id="", text="no id"),
                vpb.VectorRecord(id="neither"),
                record("ok", "fine text", flag=True),
                vpb.VectorRecord(id="nan", vector=vpb.Vector(values=[float("nan")] * 384)),
                record("huge", "x" * 40000),
            ],
        )
    ).results
    assert [(r.id, r.status.code) for r in results] == [
        ("vec", code_pb2.OK),
        ("short", code_pb2.FAILED_PRECONDITION),
        ("", code_pb2.INVALID_ARGUMENT),
        ("neither", code_pb2.INVALID_ARGUMENT),
        ("ok", code_pb2.OK),
        ("nan", code_pb2.INVALID_ARGUMENT),
        ("huge", code_pb2.INVALID_ARGUMENT),
    ]
    assert "records[6].text" in results[6].status.message
    assert "dimension 384" in results[1].status.message
    assert stub.Count(vpb.CountRequest(collection=collection)).count == 2


def test_upsert_takes_more_text_records_than_one_embed_call(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    """600 records > MAX_TEXTS_PER_CALL (512): embedded in slices, all stored."""
    records = [record(f"r{i}", f"record number {i} about topic {i % 7}") for i in range(600)]
    results = stub.Upsert(vpb.UpsertRequest(collection=collection, records=records), timeout=120)
    assert [r.status.code for r in results.results] == [code_pb2.OK] * 600
    assert stub.Count(vpb.CountRequest(collection=collection)).count == 600
    best = stub.Query(
        vpb.QueryRequest(
            collection=collection, query_text="record number 599 about topic 4", top_k=1
        )
    )
    assert best.matches[0].id == "r599"


def test_text_is_refused_where_the_collection_holds_another_models_vectors(
    stub: vpb_grpc.VectorServiceStub,
) -> None:
    """Vectors of two models in one collection would make scores meaningless."""
    name = f"other-{uuid.uuid4().hex[:8]}"
    stub.EnsureCollection(vpb.EnsureCollectionRequest(name=name, dimension=384, model="e5-small"))
    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=name,
            records=[
                record("text", "this would be embedded by the wrong model"),
                vpb.VectorRecord(id="vec", vector=vpb.Vector(values=[0.5] * 384)),
            ],
        )
    ).results
    assert [(r.id, r.status.code) for r in results] == [
        ("text", code_pb2.FAILED_PRECONDITION),
        ("vec", code_pb2.OK),
    ]
    assert "e5-small" in results[0].status.message and "send vectors" in results[0].status.message
    code, message = rpc_error(
        lambda: stub.Query(vpb.QueryRequest(collection=name, query_text="q", top_k=1))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "query_vector" in message
    found = stub.Query(
        vpb.QueryRequest(collection=name, query_vector=vpb.Vector(values=[0.5] * 384), top_k=1)
    )
    assert [m.id for m in found.matches] == ["vec"]
    assert stub.Count(vpb.CountRequest(collection=name)).count == 1


def test_bad_requests(stub: vpb_grpc.VectorServiceStub, collection: str) -> None:
    code, message = rpc_error(
        lambda: stub.Query(vpb.QueryRequest(collection="nope-nope", query_text="q", top_k=1))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nope-nope" in message
    code, message = rpc_error(lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name="x")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "3 to 63 characters" in message
    code, message = rpc_error(
        lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name="10.0.0.1"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "IPv4" in message
    for top_k in (0, -1, 1001):
        code, message = rpc_error(
            lambda k=top_k: stub.Query(
                vpb.QueryRequest(collection=collection, query_text="q", top_k=k)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in message
    code, message = rpc_error(
        lambda: stub.Query(
            vpb.QueryRequest(
                collection=collection, query_vector=vpb.Vector(values=[1.0] * 10), top_k=1
            )
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "384" in message
    bad_filter = common.Filter(
        condition=common.Condition(
            key="topic", op=common.OPERATOR_GTE, value=common.MetadataValue(string_value="a")
        )
    )
    code, message = rpc_error(
        lambda: stub.Query(
            vpb.QueryRequest(collection=collection, query_text="q", top_k=1, filter=bad_filter)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "numbers only" in message
    code, _ = rpc_error(
        lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name=collection, dimension=768))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, message = rpc_error(lambda: stub.Delete(vpb.DeleteRequest(collection=collection)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exactly one" in message
    code, message = rpc_error(
        lambda: stub.ListIds(vpb.ListIdsRequest(collection=collection, page_token="x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page token" in message


def test_upsert_stream_survives_bad_batches(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    requests = [
        vpb.UpsertStreamRequest(collection=collection, records=[record("s1", "one")]),
        vpb.UpsertStreamRequest(collection="missing-one", records=[record("s2", "two")]),
        vpb.UpsertStreamRequest(collection=collection, records=[]),
        vpb.UpsertStreamRequest(collection=collection, records=[record("s3", "three")]),
    ]
    responses = list(stub.UpsertStream(iter(requests), timeout=60))
    assert [[(r.id, r.status.code) for r in resp.results] for resp in responses] == [
        [("s1", code_pb2.OK)],
        [("s2", code_pb2.NOT_FOUND)],
        [],
        [("s3", code_pb2.OK)],
    ]
    assert [resp.status.code for resp in responses] == [
        code_pb2.OK,
        code_pb2.NOT_FOUND,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    assert "at least one record" in responses[2].status.message


def rpc_failure(call: Any) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """Code, message and field violations of a failed call."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    status = rpc_status.from_call(error)
    fields: list[tuple[str, str]] = []
    for detail in status.details if status is not None else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [(v.field, v.description) for v in bad_request.field_violations]
    return error.code(), error.details(), fields


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("q" * 32769, "MAX_TEXT_LENGTH")])
def test_a_refused_query_text_is_named_query_text(
    stub: vpb_grpc.VectorServiceStub, collection: str, text: str, words: str
) -> None:
    """Query's text is `query_text` to its caller, not the embedding
    fields' `texts[0]`."""
    code, message, fields = rpc_failure(
        lambda: stub.Query(vpb.QueryRequest(collection=collection, query_text=text, top_k=1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in fields] == ["query_text"]
    assert message.startswith("query_text: ") and words in message


def unit_vector(index: int) -> vpb.Vector:
    values = [0.0] * 384
    values[index % 384] = 1.0
    return vpb.Vector(values=values)


def test_list_ids_keeps_every_survivor_when_records_go_between_pages(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    """Keyset paging: records deleted between pages (listed or not yet) never
    make a surviving one skipped or listed twice (offsets did both)."""
    ids = [f"doc-{i:02d}#0" for i in range(30)]
    stored = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[vpb.VectorRecord(id=i, vector=unit_vector(n)) for n, i in enumerate(ids)],
        )
    )
    assert {r.status.code for r in stored.results} == {code_pb2.OK}
    listed: list[str] = []
    deleted: set[str] = set()
    token = ""
    while True:
        page = stub.ListIds(
            vpb.ListIdsRequest(collection=collection, page_size=4, page_token=token)
        )
        listed += page.ids
        unseen = [i for i in ids if i not in deleted and i not in listed]
        gone = [*page.ids[:3], *unseen[-1:]]
        if gone:
            stub.Delete(vpb.DeleteRequest(collection=collection, ids=gone))
        deleted.update(gone)
        token = page.next_page_token
        if not token:
            break
    assert len(listed) == len(set(listed))
    assert [i for i in listed if i not in deleted] == [i for i in ids if i not in deleted]
    assert listed == sorted(listed)


def test_list_ids_refuses_tokens_it_did_not_make(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[vpb.VectorRecord(id=f"t{i}", vector=unit_vector(i)) for i in range(3)],
        )
    )
    first = stub.ListIds(vpb.ListIdsRequest(collection=collection, page_size=1))
    assert first.ids == ["t0"] and first.next_page_token
    other = f"other-{uuid.uuid4().hex[:8]}"
    stub.EnsureCollection(vpb.EnsureCollectionRequest(name=other))
    forged = base64.urlsafe_b64encode(b'{"v":1,"k":"t0","q":"0000"}').decode()
    for token, collection_name, words in [
        (str(2**32), collection, "malformed page token"),  # an old offset token, too big
        (str(2**64), collection, "malformed page token"),
        ("-1", collection, "malformed page token"),
        ("x", collection, "malformed page token"),
        ("%%%", collection, "malformed page token"),
        (base64.urlsafe_b64encode(b"[1,2]").decode(), collection, "malformed page token"),
        ("A" * 100_000, collection, "malformed page token"),
        (forged, collection, "different query"),
        (first.next_page_token, other, "different query"),
    ]:
        code, message, fields = rpc_failure(
            lambda t=token, c=collection_name: stub.ListIds(
                vpb.ListIdsRequest(collection=c, page_token=t)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (token[:20], message)
        assert words in message and fields[0][0] == "page_token"
    rest = stub.ListIds(vpb.ListIdsRequest(collection=collection, page_token=first.next_page_token))
    assert list(rest.ids) == ["t1", "t2"] and not rest.next_page_token


def test_get_and_delete_take_a_bounded_number_of_ids(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    many = [f"id-{i}" for i in range(1001)]
    for call in (
        lambda: stub.Get(vpb.GetRequest(collection=collection, ids=many)),
        lambda: stub.Delete(vpb.DeleteRequest(collection=collection, ids=many)),
    ):
        code, message, fields = rpc_failure(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "1001 ids" in message and "1000" in message and "MAX_IDS_PER_CALL" in message
        assert [f for f, _ in fields] == ["ids"]
    assert not stub.Get(vpb.GetRequest(collection=collection, ids=many[:1000])).records
    assert stub.Delete(vpb.DeleteRequest(collection=collection, ids=many[:1000])).deleted_count == 0


def test_record_ids_follow_the_metadata_services_rule(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    longest_document_id = "é" * 256  # 512 bytes: MAX_DOCUMENT_ID_BYTES
    accepted = f"{longest_document_id}#1234567"
    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(id=accepted, vector=unit_vector(0)),
                vpb.VectorRecord(id="nul\x00id", vector=unit_vector(1)),
                vpb.VectorRecord(id="tab\tid", vector=unit_vector(2)),
                vpb.VectorRecord(id="m" * 1_000_000, vector=unit_vector(3)),
                vpb.VectorRecord(id="x" * 545, vector=unit_vector(4)),
            ],
        )
    ).results
    assert [r.status.code for r in results] == [code_pb2.OK] + [code_pb2.INVALID_ARGUMENT] * 4
    assert "control characters" in results[1].status.message
    assert "1000000 bytes" in results[3].status.message
    assert "MAX_RECORD_ID_BYTES" in results[4].status.message
    assert all(len(r.status.message) < 1100 for r in results)
    assert stub.Count(vpb.CountRequest(collection=collection)).count == 1
    got = stub.Get(vpb.GetRequest(collection=collection, ids=[accepted]))
    assert [r.id for r in got.records] == [accepted]
    code, _, fields = rpc_failure(
        lambda: stub.Get(vpb.GetRequest(collection=collection, ids=["ok", "bad\x00"]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in fields] == ["ids[1]"]


def test_echoed_input_never_overflows_the_trailers(
    stub: vpb_grpc.VectorServiceStub, collection: str
) -> None:
    """A 20,000-character name, key or id comes back INVALID_ARGUMENT with a
    short message, not RESOURCE_EXHAUSTED "Stream removed"."""
    huge = "a" * 20_000
    wide = "é" * 20_000  # 2 bytes each, percent-encoded in grpc-message
    long_key = common.Filter(
        condition=common.Condition(
            key="k" * 20_000, op=common.OPERATOR_EQ, value=common.MetadataValue(int_value=1)
        )
    )
    calls = [
        lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name=huge)),
        lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name=wide)),
        lambda: stub.DropCollection(vpb.DropCollectionRequest(name=huge)),
        lambda: stub.Query(vpb.QueryRequest(collection=huge, query_text="q", top_k=1)),
        lambda: stub.Get(vpb.GetRequest(collection=huge, ids=["x"])),
        lambda: stub.Count(vpb.CountRequest(collection=huge)),
        lambda: stub.ListIds(vpb.ListIdsRequest(collection=huge)),
        lambda: stub.Query(
            vpb.QueryRequest(collection=collection, query_text="q", top_k=1, filter=long_key)
        ),
        lambda: stub.Delete(vpb.DeleteRequest(collection=collection, filter=long_key)),
        lambda: stub.ListIds(vpb.ListIdsRequest(collection=collection, filter=long_key)),
    ]
    for call in calls:
        code, message, fields = rpc_failure(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message[:200]
        assert len(message.encode()) <= 1024 and fields
        assert all(len(f.encode()) <= 256 and len(d.encode()) <= 1024 for f, d in fields)
    code, message, _ = rpc_failure(
        lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name=huge))
    )
    assert "(20000 chars)" in message and "3 to 63 characters" in message
    results = stub.Upsert(
        vpb.UpsertRequest(
            collection=collection,
            records=[
                vpb.VectorRecord(
                    id="meta",
                    vector=unit_vector(0),
                    metadata={"k" * 20_000: common.MetadataValue(int_value=1)},
                )
            ],
        )
    ).results
    assert results[0].status.code == code_pb2.INVALID_ARGUMENT
    assert len(results[0].status.message.encode()) <= 1024


class GrpcOnly:
    """A vector server on the session's pool and store: starting and stopping
    it leaves those to their owner (the session's server)."""

    def __init__(self, server: VectorServer) -> None:
        self.inner = server

    async def start(self) -> None:
        self.inner.batcher.start()
        await self.inner.grpc_server.start()

    async def stop(self, grace: float | None) -> None:
        await self.inner.grpc_server.stop(grace)
        await self.inner.batcher.stop()


def test_calls_beyond_max_concurrent_rpcs_are_refused(vector_server: RunningServer) -> None:
    """MAX_CONCURRENT_RPCS=1: while a stream holds the one slot, gRPC refuses
    another call itself (RESOURCE_EXHAUSTED); once it ends, calls go through."""
    session: VectorServer = vector_server.server
    settings = vector_server.settings.model_copy(update={"max_concurrent_rpcs": 1})

    def create() -> tuple[GrpcOnly, int]:
        server, port = create_server(settings, (session.pool, session.store), port=0)
        return GrpcOnly(server), port

    release = threading.Event()

    def requests() -> Iterator[epb.EmbedStreamRequest]:
        yield epb.EmbedStreamRequest(batch_id="hold")  # no texts: answered without the model
        release.wait(60)

    with RunningServer(create, settings) as limited, grpc.insecure_channel(limited.address) as ch:
        embed = epb_grpc.EmbeddingServiceStub(ch)
        vectors = vpb_grpc.VectorServiceStub(ch)
        stream = embed.EmbedStream(requests(), timeout=60)
        try:
            # Answered: the stream's handler runs and holds the slot.
            assert next(stream).status.code == code_pb2.INVALID_ARGUMENT
            code, message = rpc_error(lambda: vectors.Count(vpb.CountRequest(collection="abc")))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        finally:
            release.set()
        assert list(stream) == []

        def goes_through() -> bool:
            try:
                vectors.Count(vpb.CountRequest(collection="abc"), timeout=10)
            except grpc.RpcError as exc:
                return exc.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            return True

        wait_until(goes_through, what="a call after the stream ended to go through")


def test_second_service_on_the_same_directory_exits(
    vector_server: RunningServer, vector_channel: grpc.Channel
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "vector_service"],
        env={
            **os.environ,
            "CHROMADB_PERSIST_DIRECTORY": vector_server.settings.chromadb_persist_directory,
            "VECTOR_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Refused before the model loads, in one line that names the owner and
    # the directory and says what replicas use instead; exit 2, as every
    # other start-up refusal.
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    directory = os.path.abspath(vector_server.settings.chromadb_persist_directory)
    assert f"another vector service (pid {os.getpid()}) owns {directory}" in lines[0]
    assert "Chroma server (CHROMA_HOST)" in lines[0]
    # The owner is unharmed.
    embed = epb_grpc.EmbeddingServiceStub(vector_channel)
    assert len(embed.Embed(epb.EmbedRequest(texts=["still here"])).embeddings) == 1


def test_grpcurl_embed_from_json(vector_server: RunningServer) -> None:
    result = subprocess.run(
        [
            str(GRPCURL),
            "-plaintext",
            "-d",
            '{"texts": ["hello from grpcurl"]}',
            vector_server.address,
            "askmojo.vector.v1.EmbeddingService/Embed",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert len(reply["embeddings"][0]["values"]) == 384
    assert reply["dimension"] == 384


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_child_process_outlives_the_service(tmp_path: Path, how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vector_service"],
        env={
            **os.environ,
            "CHROMADB_PERSIST_DIRECTORY": str(tmp_path / "chroma"),
            "VECTOR_PORT": "0",
            "LOG_FORMAT": "json",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line)["message"] == "vector service listening":
                break
        children = _children(proc.pid)
        assert children, "the embedding pool should have worker processes"
        proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=30)
        assert code == (0 if how == "SIGTERM" else -signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)], "orphaned child processes"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_readme_vector_walkthrough_runs_verbatim(vector_server: RunningServer) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(
        r"<!-- vector-walkthrough:start -->(.*?)<!-- vector-walkthrough:end -->", readme, re.S
    )
    assert block, "README.md lost its vector walk-through markers"
    outputs = []
    for line in block.group(1).splitlines():
        if not line.startswith(".venv/bin/grpcurl "):
            continue
        args = [vector_server.address if a == "localhost:50052" else a for a in shlex.split(line)]
        result = subprocess.run(
            [str(GRPCURL), *args[1:]], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        outputs.append(json.loads(result.stdout))
    assert len(outputs) == 5
    assert len(outputs[0]["embeddings"][0]["values"]) == 384
    assert [m["id"] for m in outputs[4]["matches"]] == ["b", "a"]


class _BorrowedPool:
    """A second VectorServer on the session's warm pool; stopping it leaves
    the pool (owned by the session server) running."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        await self.server.grpc_server.stop(grace)
        await self.server.batcher.stop()
        self.server.store.close()


@pytest.mark.slow
def test_health_follows_a_chroma_server(vector_server: RunningServer, tmp_path: Path) -> None:
    """Started before its Chroma server (as an orchestrator may do): NOT_SERVING
    and UNAVAILABLE until the server is up; then SERVING, NOT_SERVING while it
    is down again, SERVING once it is back."""
    port = free_port()
    command = [str(CHROMA), "run", "--path", str(tmp_path), "--port", str(port)]

    def start_chroma() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return proc

    settings = vector_settings(
        tmp_path / "unused", chroma_host="127.0.0.1", chroma_port=port, reflection=False
    )
    pool = vector_server.server.pool
    chroma: subprocess.Popen[bytes] | None = None
    try:

        def create() -> tuple[Any, int]:
            store = VectorStore(settings)
            store.open()  # nothing listens yet: must not raise
            server, bound = create_server(settings, (pool, store))
            return _BorrowedPool(server), bound

        with RunningServer(create) as borrowed, grpc.insecure_channel(borrowed.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            service = health_pb2.HealthCheckRequest(service="askmojo.vector.v1.VectorService")

            def status_becomes(expected: int) -> bool:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if health.Check(service).status == expected:
                        return True
                    time.sleep(0.2)
                return False

            def embedding_serving() -> bool:
                embedding = health.Check(
                    health_pb2.HealthCheckRequest(service="askmojo.vector.v1.EmbeddingService")
                )
                return embedding.status == health_pb2.HealthCheckResponse.SERVING

            stub = vpb_grpc.VectorServiceStub(channel)
            assert status_becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
            assert embedding_serving()  # the model does not need Chroma
            code, details = rpc_error(
                lambda: stub.EnsureCollection(vpb.EnsureCollectionRequest(name="late"))
            )
            assert code == grpc.StatusCode.UNAVAILABLE and f"127.0.0.1:{port}" in details
            chroma = start_chroma()
            assert status_becomes(health_pb2.HealthCheckResponse.SERVING)
            assert stub.EnsureCollection(vpb.EnsureCollectionRequest(name="late")).created
            chroma.terminate()
            chroma.wait(30)
            assert status_becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
            assert embedding_serving()
            chroma = start_chroma()
            assert status_becomes(health_pb2.HealthCheckResponse.SERVING)
            assert stub.Count(vpb.CountRequest(collection="late")).count == 0
    finally:
        if chroma is not None:
            chroma.terminate()
            chroma.wait(30)
