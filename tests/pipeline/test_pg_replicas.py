"""Metadata replicas on one PostgreSQL database (issue #13, DESIGN.md §7):
two real `python -m metadata_service` processes, each with WORKERS=2 (four
indexers claiming from one outbox), started at the same moment on an empty
database, and one vector service (the session's).

Both migrate at once (the advisory lock lets one run the scripts; the other
finds the schema done): both serve. Then, through both replicas at once:
ingest, update (changed text, metadata only, unchanged, and the same
documents through both at the same time), delete documents, and delete a
whole collection while the other replica still ingests into it. In the end
every live document is INDEXED, exactly its chunks have vectors, each made
from its chunk's very text (the vector service's text hash), Reconcile's
dry run finds nothing, no chunk or deletion waits on a lease, and nothing
is left of the deleted collection in the vector service.

Skipped, with the reason, when PostgreSQL is unreachable."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from askmojo.common.text_hash import TEXT_HASH_KEY, text_hash
from askmojo.common.v1 import common_pb2 as common
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from bench.services import free_port
from metadata_service.migrations import head_revision
from tests.conftest import RunningServer, postgres_database
from tests.pipeline.conftest import eventually

pytestmark = pytest.mark.postgres

SEED = 13
KEPT = 48  # documents of the collection that stays
DROPPED = 16  # documents of the collection deleted meanwhile
BATCH = 4
# How long the replicas may take to settle everything: an upper bound only
# (the waits return as soon as it holds), sized for a VM at a quarter of its
# usual speed.
SETTLE_SECONDS = 120
WORDS = (
    "amber",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "obsidian",
    "prairie",
    "quartz",
    "river",
    "sierra",
    "tundra",
    "umber",
    "valley",
    "willow",
    "xenon",
)


def text_of(i: int, version: int) -> str:
    rng = random.Random(i * 1000 + version)
    words = " ".join(rng.choice(WORDS) for _ in range(10 + (i % 3) * 40))
    return f"Note {i}, version {version}: {words}."


def doc(i: int, version: int, **metadata: str) -> pb.Document:
    values = (
        {k: common.MetadataValue(string_value=v) for k, v in metadata.items()} if metadata else {}
    )
    return pb.Document(id=f"d{i}", text=text_of(i, version), metadata=values)


class Replica:
    """One `python -m metadata_service` with WORKERS=2, its JSON log in a file."""

    def __init__(self, name: str, database_url: str, vector_address: str, log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "METADATA_HOST": "127.0.0.1",
            "METADATA_PORT": str(self.port),
            "WORKERS": "2",
            "VECTOR_SERVICE_ADDRESS": vector_address,
            "INDEX_LEASE_SECONDS": "10",
            "INDEX_POLL_SECONDS": "0.2",
            "INDEX_MAX_BACKOFF": "0.5",
            "LOG_FORMAT": "json",
        }
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metadata_service"], env=env, stdout=out, stderr=out
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.MetadataServiceStub(self.channel)

    def serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log_text()}")
        try:
            status = (
                health_pb2_grpc.HealthStub(self.channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=1)
                .status
            )
        except grpc.RpcError:
            return False
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, message: str) -> list[dict[str, object]]:
        entries = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("message") == message:
                    entries.append(entry)
        return entries

    def stop(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def replicas(
    database_url: str, vector_server: RunningServer, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    # Both at once, on an empty database: both migrate at start-up.
    started = [
        Replica(name, database_url, vector_server.address, tmp_path / f"{name}.log")
        for name in ("replica-a", "replica-b")
    ]
    try:
        for replica in started:
            eventually(replica.serving, 60, f"{replica.name} SERVING", replica.log_text)
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()


def ingest(
    stub: pb_grpc.MetadataServiceStub, collection: str, docs: list[pb.Document]
) -> list[int]:
    """Streams `docs` in batches; returns the results' states (a refused
    batch, e.g. of a collection deleted meanwhile, adds none)."""

    def requests() -> Iterator[pb.IngestDocumentsRequest]:
        for start in range(0, len(docs), BATCH):
            yield pb.IngestDocumentsRequest(
                collection=collection, documents=docs[start : start + BATCH]
            )

    states: list[int] = []
    for response in stub.IngestDocuments(requests(), timeout=120):
        states.extend(r.state for r in response.results)
    return states


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def all_ids(vectors: vpb_grpc.VectorServiceStub, collection: str) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = vectors.ListIds(
            vpb.ListIdsRequest(collection=collection, page_size=500, page_token=token)
        )
        ids.extend(page.ids)
        token = page.next_page_token
        if not token:
            return ids


@dataclass
class Plan:
    """What phase 2 does to "kept", and so what must be stored in the end."""

    deleted: set[int]
    contested: list[int]
    metadata_only: list[int]
    expected_text: dict[int, str]


def phase_one(a: Replica, b: Replica) -> None:
    """Concurrently: each replica ingests half of "kept" and of "dropped"."""
    first = [doc(i, 0, part="one") for i in range(KEPT)]
    gone = [doc(1000 + i, 0) for i in range(DROPPED)]
    with ThreadPoolExecutor(4) as pool:
        jobs = [
            pool.submit(ingest, a.stub, "kept", first[0::2]),
            pool.submit(ingest, b.stub, "kept", first[1::2]),
            pool.submit(ingest, a.stub, "dropped", gone[0::2]),
            pool.submit(ingest, b.stub, "dropped", gone[1::2]),
        ]
        assert all(len(job.result()) for job in jobs)


def phase_two(a: Replica, b: Replica, rng: random.Random) -> Plan:
    """Concurrently: updates through the replica that did not write the
    document (changed text, metadata only, unchanged), the same documents
    rewritten through both at once, deletions through both, and "dropped"
    deleted through one while the other still ingests into it."""
    ids = list(range(KEPT))
    rng.shuffle(ids)
    deleted = set(ids[:12])
    contested = ids[12:20]
    changed, metadata_only, unchanged = ids[20:30], ids[30:38], ids[38:44]
    expected_text = {i: text_of(i, 0) for i in ids if i not in deleted}
    for i in changed:
        expected_text[i] = text_of(i, 1)
    updates: dict[str, list[pb.Document]] = {a.name: [], b.name: []}
    for group, version, part in (
        (changed, 1, "one"),
        (metadata_only, 0, "two"),
        (unchanged, 0, "one"),
    ):
        for i in group:
            updates[(b if i % 2 == 0 else a).name].append(doc(i, version, part=part))
    gone = [f"d{i}" for i in sorted(deleted)]
    late = [doc(2000 + i, 0) for i in range(DROPPED)]
    with ThreadPoolExecutor(8) as pool:
        jobs = [
            pool.submit(ingest, a.stub, "kept", updates[a.name]),
            pool.submit(ingest, b.stub, "kept", updates[b.name]),
            pool.submit(ingest, a.stub, "kept", [doc(i, 2) for i in contested]),
            pool.submit(ingest, b.stub, "kept", [doc(i, 3) for i in contested]),
            pool.submit(
                a.stub.DeleteDocuments, pb.DeleteDocumentsRequest(collection="kept", ids=gone[:6])
            ),
            pool.submit(
                b.stub.DeleteDocuments, pb.DeleteDocumentsRequest(collection="kept", ids=gone[6:])
            ),
            pool.submit(ingest, b.stub, "dropped", late),
            pool.submit(a.stub.DeleteCollection, pb.DeleteCollectionRequest(name="dropped")),
        ]
        for job in jobs:
            job.result()
    return Plan(deleted, contested, metadata_only, expected_text)


def check_documents(a: Replica, b: Replica, plan: Plan) -> None:
    """Every live document INDEXED (asked through either replica), with the
    text last acknowledged (a contested one: either writer's)."""

    def states() -> dict[int, int]:
        stats = a.stub.GetStats(pb.GetStatsRequest(collection="kept"))
        return {s.state: s.count for s in stats.documents_by_state if s.count}

    live = KEPT - len(plan.deleted)
    eventually(
        lambda: states() == {pb.DOCUMENT_STATE_INDEXED: live},
        SETTLE_SECONDS,
        "every live document INDEXED",
        states,
    )
    listed = a.stub.ListDocuments(pb.ListDocumentsRequest(collection="kept", page_size=1000))
    assert sorted(d.id for d in listed.documents) == sorted(f"d{i}" for i in plan.expected_text)
    for i, expected in plan.expected_text.items():
        got = b.stub.GetDocument(pb.GetDocumentRequest(collection="kept", id=f"d{i}"))
        if i in plan.contested:  # whichever of the two writes came last
            assert got.text in (text_of(i, 2), text_of(i, 3)), got.text
        else:
            assert got.text == expected
        if i in plan.metadata_only:
            assert got.metadata["part"].string_value == "two"


def check_vectors(database_url: str, vector_address: str, kept: str, dropped: str) -> None:
    """Exactly the live chunks have vectors, each made from its chunk's
    text; nothing is left of the deleted collection."""
    chunks = {
        f"{external_id}#{ordinal}": str(body)
        for external_id, ordinal, body in sql(
            database_url,
            "SELECT d.external_id, c.ordinal, c.text FROM chunks c "
            "JOIN documents d ON d.id = c.document_id JOIN collections k ON k.id = d.collection_id "
            "WHERE k.name = 'kept'",
        )
    }
    with grpc.insecure_channel(vector_address) as channel:
        vectors = vpb_grpc.VectorServiceStub(channel)
        assert sorted(all_ids(vectors, kept)) == sorted(chunks)
        got = vectors.Get(vpb.GetRequest(collection=kept, ids=sorted(chunks)))
        made_from = {r.id: r.metadata[TEXT_HASH_KEY].string_value for r in got.records}
        assert made_from == {vid: text_hash(body) for vid, body in chunks.items()}
        with pytest.raises(grpc.RpcError) as info:
            vectors.Count(vpb.CountRequest(collection=dropped))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND, info.value  # type: ignore[attr-defined]


def test_two_replicas_on_one_postgres_database(
    replicas: tuple[Replica, Replica], vector_server: RunningServer, database_url: str
) -> None:
    a, b = replicas
    # Migrations: both replicas are serving, so neither failed on a schema
    # the other was creating; the scripts ran once (one version row, at head).
    assert sql(database_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    migrated = [r.name for r in (a, b) if r.logged("migrating schema")]
    assert migrated, "neither replica found the database empty"

    a.stub.CreateCollection(pb.CreateCollectionRequest(name="kept"))
    b.stub.CreateCollection(pb.CreateCollectionRequest(name="dropped"))
    dropped = a.stub.GetCollection(pb.GetCollectionRequest(name="dropped")).vector_collection
    phase_one(a, b)
    plan = phase_two(a, b, random.Random(SEED))
    check_documents(a, b, plan)

    # No chunk nor deletion waits on a lease; nothing is left to delete.
    eventually(
        lambda: sql(database_url, "SELECT count(*) FROM vector_deletions") == [(0,)],
        SETTLE_SECONDS,
        "the deletion outbox empty",
    )
    waiting = "SELECT count(*) FROM chunks WHERE state != 'INDEXED' OR lease_until IS NOT NULL"
    assert sql(database_url, waiting) == [(0,)]
    kept = a.stub.GetCollection(pb.GetCollectionRequest(name="kept")).vector_collection
    check_vectors(database_url, vector_server.address, kept, dropped)
    for replica in (a, b):
        check = replica.stub.Reconcile(
            pb.ReconcileRequest(collection="kept", dry_run=True), timeout=60
        )
        assert (check.missing_vectors, check.orphan_vectors, check.stale_vectors) == (0, 0, 0)
        assert check.pending_resumed == 0
    assert a.stop() == 0 and b.stop() == 0
