"""Fuzzing both live services (issue #11, acceptance): every method of
MetadataService, EmbeddingService and VectorService, found through the proto
descriptors, gets generated requests, mutated valid requests and raw corrupt
bytes, over real sockets to real processes (real SQLite file, real Chroma,
real model).

The oracle: no INTERNAL or UNKNOWN (nor in per-item statuses), no deadline
missed (but by a method that may wait), no UNAVAILABLE while both are up,
status messages under 1 KB with no Python class names, tracebacks or SQL,
field violations that name the caller's own fields; no process dies (one
that does is restarted, so the run goes on and reports it); afterwards both
are SERVING and every document stored before the run is still there, with
its text and metadata, and found by Search.

Bounded: FUZZ_EXAMPLES examples per method and kind (default 20) within
FUZZ_SECONDS of fuzzing (default 50) shared by all; `make fuzz` runs many
more. FUZZ_RANDOM=1 draws new examples each run (derandomized otherwise);
FUZZ_REPORT=<path> writes every distinct finding as JSON lines. A failure
lists each distinct problem once, with the smallest request that showed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from askmojo.common.v1 import common_pb2 as cpb
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from bench.services import ServiceProcess, free_port
from metadata_service.config import MetadataSettings
from tests.fuzz import strategies
from tests.fuzz.harness import (
    CHANNEL_OPTIONS,
    Budget,
    Findings,
    Outcome,
    env_int,
    invoke,
)
from tests.fuzz.strategies import Method, all_methods
from tests.waiting import wait_until
from vector_service.config import VectorSettings

pytestmark = pytest.mark.slow

METHODS = all_methods()
KINDS = ("generated", "mutated", "raw")
EXAMPLES = env_int("FUZZ_EXAMPLES", 20)
BUDGET = Budget(float(env_int("FUZZ_SECONDS", 50)), len(METHODS) * len(KINDS))
FINDINGS = Findings()

# Names the fuzzer is steered to (so calls get past NOT_FOUND): it may delete,
# drop or overwrite all of them.
FUZZ = "fuzz"
FUZZ2 = "fuzz-2"
FUZZ_VEC = "fuzz-vec"
FUZZ_VEC2 = "fuzz-vec-2"
FUZZ_IDS = ["fz-1", "fz-2", "fz-3"]
# The seeded collection: 32 random characters the fuzzer never generates.
SEED = "s" + secrets.token_hex(16)[:31]
SEED_TAG = secrets.token_hex(8)


def _env(settings_class: type[Any], **values: object) -> dict[str, str]:
    """Environment for a service process, by field name (a renamed setting
    fails here, loudly, instead of being silently ignored)."""
    for name in values:
        assert name in settings_class.model_fields, f"{settings_class.__name__} has no {name}"
    return {name.upper(): str(value) for name, value in values.items()}


@dataclass(repr=False)
class Pair:
    vector: ServiceProcess
    metadata: ServiceProcess
    crashes: list[str] = field(default_factory=list)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def process(self, method: Method) -> ServiceProcess:
        return self.metadata if "MetadataService" in method.service else self.vector

    def channel(self, process: ServiceProcess) -> grpc.Channel:
        if process.address not in self._channels:
            self._channels[process.address] = grpc.insecure_channel(
                process.address, options=CHANNEL_OPTIONS
            )
        return self._channels[process.address]

    def dead(self, wait: float = 0.0) -> list[str]:
        """Processes that exited (restarted, so the run goes on), described."""

        def exited() -> list[ServiceProcess]:
            return [p for p in (self.vector, self.metadata) if p.proc and p.proc.poll() is not None]

        if wait:
            with contextlib.suppress(AssertionError):  # none died: the usual answer
                wait_until(exited, wait, interval=0.1)
        gone = exited()
        found = []
        for proc in gone:
            assert proc.proc is not None
            rc = proc.proc.returncode
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            found.append(f"CRASH: {proc.module} died ({how})")
            self.crashes.append(found[-1])
            proc.start()
        return found

    def cause(self, process: ServiceProcess, problem: str) -> str:
        """For an INTERNAL answer's "(ref …)": the exception the server
        logged under that reference, so the finding names its cause."""
        ref = re.search(r"ref ([0-9a-f]{6,})", problem)
        if not ref:
            return problem
        for line in reversed(process.log.read_text(errors="replace").splitlines()):
            if ref.group(1) in line:
                try:
                    trace = json.loads(line).get("exception", "")
                except ValueError:
                    trace = line
                errors = re.findall(r"^[\w.]+(?:Error|Exception|Exit)\b.*$", trace, re.M)
                if errors:
                    return f"{problem} [server log: {errors[0][:160]}]"
        return problem

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Both services as real processes, started once for the module."""
    root = tmp_path_factory.mktemp("fuzz")
    vport, mport = free_port(), free_port()
    vector = ServiceProcess(
        "vector_service",
        vport,
        _env(
            VectorSettings,
            chromadb_persist_directory=root / "chroma",
            vector_host="127.0.0.1",
            vector_port=vport,
            max_workers=1,
            # Full priority: on a shared machine a niced worker can starve.
            bulk_nice=0,
        ),
        root / "vector.log",
    )
    metadata = ServiceProcess(
        "metadata_service",
        mport,
        _env(
            MetadataSettings,
            database_url=f"sqlite:///{root / 'metadata.db'}",
            metadata_host="127.0.0.1",
            metadata_port=mport,
            vector_service_address=f"127.0.0.1:{vport}",
            workers=1,
            index_poll_seconds=0.2,
            index_max_backoff=1.0,
            # Upserts wait this long for their vectors, then answer PENDING:
            # bounds the fuzz run (the default, 120 s, is capped by the
            # caller's deadline, which is what CALL_TIMEOUT tests).
            index_on_write_timeout=10,
            health_probe_interval=0.5,
        ),
        root / "metadata.log",
    )
    try:
        # Inside: a start that times out must not leave a process behind.
        vector.start()
        metadata.start()
        running = Pair(vector, metadata)
        try:
            yield running
        finally:
            running.close()
            if os.environ.get("FUZZ_REPORT"):
                FINDINGS.dump(os.environ["FUZZ_REPORT"])
    finally:
        metadata.stop()
        vector.stop()


def _value(v: object) -> cpb.MetadataValue:
    if isinstance(v, bool):
        return cpb.MetadataValue(bool_value=v)
    if isinstance(v, int):
        return cpb.MetadataValue(int_value=v)
    if isinstance(v, float):
        return cpb.MetadataValue(double_value=v)
    return cpb.MetadataValue(string_value=str(v))


def _cond(
    key: str, op: int, value: object = None, values: list[object] | None = None
) -> cpb.Filter:
    return cpb.Filter(
        condition=cpb.Condition(
            key=key,
            op=op,  # type: ignore[arg-type]
            value=_value(value) if value is not None else None,
            values=[_value(v) for v in values or []],
        )
    )


SEED_DOCS = [
    (
        f"seed-{i}-{secrets.token_hex(4)}",
        text,
        {"seed_tag": SEED_TAG, "n": i, "w": i + 0.5, "even": i % 2 == 0},
    )
    for i, text in enumerate(
        [
            "Glaciers carve deep valleys as they slowly move down the mountain.",
            "The violin concerto opened with a soft and mournful melody.",
            "Compilers translate source code into machine instructions.",
            "The harbor lighthouse guided fishing boats home through the fog.",
        ]
    )
]


@dataclass
class World:
    """What exists before fuzzing: the seeded collection (guarded) and the
    fuzz targets, plus one valid request per kind for each method."""

    pair: Pair
    model: str
    dimension: int
    fuzz_docs: list[pb.Document] = field(repr=False)
    records: list[vpb.VectorRecord] = field(repr=False)
    valid: dict[str, list[list[Any]]] = field(repr=False)


def _restore(world: World, strict: bool = False) -> None:
    """The fuzz targets as they were (the fuzzer may have deleted, dropped or
    recreated them differently), so each method's test reaches past
    NOT_FOUND. Re-sent documents are unchanged: nothing is re-embedded."""
    pair = world.pair
    meta = pb_grpc.MetadataServiceStub(pair.channel(pair.metadata))
    vec = vpb_grpc.VectorServiceStub(pair.channel(pair.vector))
    create = pb.CreateCollectionRequest(
        name=FUZZ, description="fuzz", chunking=pb.ChunkingConfig(chunk_size=200, chunk_overlap=20)
    )
    try:
        try:
            got = meta.GetCollection(pb.GetCollectionRequest(name=FUZZ), timeout=30)
            # Recreated unlike ours, or grown by the fuzzer: start again (a
            # delete also ends the indexing of a thousand fuzzed documents).
            if (got.model, got.dimension, got.chunking) != (
                world.model,
                world.dimension,
                create.chunking,
            ) or got.document_count > len(world.fuzz_docs):
                meta.DeleteCollection(pb.DeleteCollectionRequest(name=FUZZ), timeout=60)
                meta.CreateCollection(create, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            meta.CreateCollection(create, timeout=30)
        meta.UpsertDocuments(
            pb.UpsertDocumentsRequest(collection=FUZZ, documents=world.fuzz_docs), timeout=60
        )
        ensure = vpb.EnsureCollectionRequest(
            name=FUZZ_VEC, dimension=world.dimension, model=world.model
        )
        try:
            vec.EnsureCollection(ensure, timeout=30)
            grown = vec.Count(vpb.CountRequest(collection=FUZZ_VEC), timeout=30).count > len(
                world.records
            )
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            grown = True
        if grown:
            vec.DropCollection(vpb.DropCollectionRequest(name=FUZZ_VEC), timeout=30)
            vec.EnsureCollection(ensure, timeout=30)
        vec.Upsert(vpb.UpsertRequest(collection=FUZZ_VEC, records=world.records), timeout=60)
    except grpc.RpcError:
        if strict:
            raise
        # Best effort between tests: what failed here, the fuzzer reports.


def _wait_indexed(stub: pb_grpc.MetadataServiceStub, collection: str, ids: list[str]) -> None:
    def states() -> list[int]:
        return [
            stub.GetDocument(pb.GetDocumentRequest(collection=collection, id=i), timeout=10).state
            for i in ids
        ]

    wait_until(
        lambda: all(s == pb.DOCUMENT_STATE_INDEXED for s in states()),
        180,
        f"{collection}: every document INDEXED",
        states,
        interval=0.3,
    )


def _token(page: Callable[[], Any]) -> str:
    try:
        return str(page().next_page_token)
    except grpc.RpcError:
        return ""


@pytest.fixture(scope="module")
def world(pair: Pair) -> World:
    meta = pb_grpc.MetadataServiceStub(pair.channel(pair.metadata))
    vec = vpb_grpc.VectorServiceStub(pair.channel(pair.vector))
    emb = epb_grpc.EmbeddingServiceStub(pair.channel(pair.vector))
    info = emb.GetModelInfo(epb.GetModelInfoRequest(), timeout=30)

    # The guarded collection, seeded and indexed before any fuzzing.
    meta.CreateCollection(pb.CreateCollectionRequest(name=SEED), timeout=30)
    docs = [
        pb.Document(id=i, text=t, metadata={k: _value(v) for k, v in md.items()})
        for i, t, md in SEED_DOCS
    ]
    meta.UpsertDocuments(pb.UpsertDocumentsRequest(collection=SEED, documents=docs), timeout=60)
    _wait_indexed(meta, SEED, [d.id for d in docs])

    # The fuzz targets.
    fuzz_docs = [
        pb.Document(
            id=i,
            text=f"{i}: red apples and green pears",
            metadata={
                "color": _value("red" if n % 2 else "blue"),
                "n": _value(n),
                "w": _value(n / 3),
            },
        )
        for n, i in enumerate(FUZZ_IDS)
    ]
    records = [
        vpb.VectorRecord(id="v1", text="hello world", metadata={"color": _value("red")}),
        vpb.VectorRecord(
            id="v2", vector=vpb.Vector(values=[0.05] * info.dimension), metadata={"n": _value(2)}
        ),
        vpb.VectorRecord(id="v3", text="third", metadata={"w": _value(0.5)}),
    ]
    world = World(pair, info.model, info.dimension, fuzz_docs, records, {})
    _restore(world, strict=True)
    fuzz_vectors = meta.GetCollection(
        pb.GetCollectionRequest(name=FUZZ), timeout=30
    ).vector_collection
    # Real page tokens, for mutation (best effort: a failing call here is
    # the fuzzer's to report, not the set-up's).
    tokens = [
        _token(lambda: meta.ListCollections(pb.ListCollectionsRequest(page_size=1), timeout=30)),
        _token(
            lambda: meta.ListDocuments(
                pb.ListDocumentsRequest(collection=FUZZ, page_size=1), timeout=30
            )
        ),
        _token(
            lambda: vec.ListIds(vpb.ListIdsRequest(collection=FUZZ_VEC, page_size=1), timeout=30)
        ),
    ]
    strategies.KNOWN_STRINGS[:] = [
        FUZZ,
        FUZZ2,
        FUZZ_VEC,
        FUZZ_VEC2,
        fuzz_vectors,
        *FUZZ_IDS,
        "v1",
        "v2",
        "color",
        "n",
        "w",
        "red",
        info.model,
        *[t for t in tokens if t],
    ]
    strategies.KNOWN_WIDTHS[:] = [info.dimension - 1, info.dimension, info.dimension + 1]

    red = _cond("color", cpb.OPERATOR_EQ, "red")
    some = cpb.Filter(
        any=cpb.FilterList(
            filters=[
                _cond("color", cpb.OPERATOR_IN, values=["red", "blue"]),
                _cond("n", cpb.OPERATOR_GT, 1),
            ]
        )
    )
    query_vector = vpb.Vector(values=[0.1] * info.dimension)
    valid: dict[str, list[list[Any]]] = {
        "MetadataService.CreateCollection": [
            [
                pb.CreateCollectionRequest(
                    name=FUZZ2,
                    description="second",
                    model=info.model,
                    dimension=info.dimension,
                    chunking=pb.ChunkingConfig(chunk_size=100, chunk_overlap=10),
                )
            ],
            [pb.CreateCollectionRequest(name=FUZZ)],
        ],
        "MetadataService.GetCollection": [[pb.GetCollectionRequest(name=FUZZ)]],
        "MetadataService.ListCollections": [
            [pb.ListCollectionsRequest(page_size=1, page_token=tokens[0])]
        ],
        "MetadataService.DeleteCollection": [[pb.DeleteCollectionRequest(name=FUZZ2)]],
        "MetadataService.UpsertDocuments": [
            [pb.UpsertDocumentsRequest(collection=FUZZ, documents=fuzz_docs[:2])]
        ],
        "MetadataService.IngestDocuments": [
            [
                pb.IngestDocumentsRequest(collection=FUZZ, documents=fuzz_docs[:1]),
                pb.IngestDocumentsRequest(collection=FUZZ, documents=fuzz_docs[1:]),
            ]
        ],
        "MetadataService.GetDocument": [
            [pb.GetDocumentRequest(collection=FUZZ, id=FUZZ_IDS[0], view=pb.DOCUMENT_VIEW_FULL)]
        ],
        "MetadataService.ListDocuments": [
            [
                pb.ListDocumentsRequest(
                    collection=FUZZ,
                    filter=red,
                    page_size=2,
                    states=[pb.DOCUMENT_STATE_INDEXED, pb.DOCUMENT_STATE_PENDING],
                    view=pb.DOCUMENT_VIEW_FULL,
                )
            ],
            [pb.ListDocumentsRequest(collection=FUZZ, page_size=1, page_token=tokens[1])],
        ],
        "MetadataService.DeleteDocuments": [
            [pb.DeleteDocumentsRequest(collection=FUZZ, ids=[FUZZ_IDS[2]])],
            [pb.DeleteDocumentsRequest(collection=FUZZ, filter=some)],
        ],
        "MetadataService.Search": [
            [pb.SearchRequest(collection=FUZZ, query="red apples", top_k=3, filter=some)]
        ],
        "MetadataService.Reconcile": [[pb.ReconcileRequest(collection=FUZZ, dry_run=True)]],
        "MetadataService.GetStats": [[pb.GetStatsRequest(collection=FUZZ)], [pb.GetStatsRequest()]],
        "EmbeddingService.Embed": [[epb.EmbedRequest(texts=["hello world", "second text"])]],
        "EmbeddingService.EmbedStream": [
            [
                epb.EmbedStreamRequest(texts=["one", "two"], batch_id="b1"),
                epb.EmbedStreamRequest(texts=["three"], batch_id="b2"),
            ]
        ],
        "EmbeddingService.GetModelInfo": [[epb.GetModelInfoRequest()]],
        "VectorService.EnsureCollection": [
            [
                vpb.EnsureCollectionRequest(
                    name=FUZZ_VEC2, dimension=info.dimension, model=info.model
                )
            ]
        ],
        "VectorService.DropCollection": [[vpb.DropCollectionRequest(name=FUZZ_VEC2)]],
        "VectorService.Upsert": [[vpb.UpsertRequest(collection=FUZZ_VEC, records=records)]],
        "VectorService.UpsertStream": [
            [
                vpb.UpsertStreamRequest(collection=FUZZ_VEC, records=records[:1]),
                vpb.UpsertStreamRequest(collection=FUZZ_VEC, records=records[1:]),
            ]
        ],
        "VectorService.Query": [
            [vpb.QueryRequest(collection=FUZZ_VEC, query_text="hello", top_k=2, filter=red)],
            [
                vpb.QueryRequest(
                    collection=FUZZ_VEC, query_vector=query_vector, top_k=2, filter=some
                )
            ],
        ],
        "VectorService.Get": [
            [vpb.GetRequest(collection=FUZZ_VEC, ids=["v1", "v2"], include_vectors=True)]
        ],
        "VectorService.Delete": [
            [vpb.DeleteRequest(collection=FUZZ_VEC, ids=["v3"])],
            [vpb.DeleteRequest(collection=FUZZ_VEC, filter=some)],
        ],
        "VectorService.Count": [[vpb.CountRequest(collection=FUZZ_VEC)]],
        "VectorService.ListIds": [
            [vpb.ListIdsRequest(collection=FUZZ_VEC, page_size=2, filter=red)],
            [vpb.ListIdsRequest(collection=FUZZ_VEC, page_size=1, page_token=tokens[2])],
        ],
    }
    world.valid.update(valid)
    strategies.register_examples([m for calls in valid.values() for c in calls for m in c])
    return world


def _strategy(world: World, method: Method, kind: str) -> st.SearchStrategy[list[Any]]:
    if kind == "generated":
        return strategies.requests(method)
    if kind == "raw":
        return strategies.raw_payloads(method)
    # An RPC added later without a valid example here still gets mutations
    # of its empty request.
    valid = world.valid.get(method.label) or [[method.request_class()]]
    return strategies.mutations(method, valid)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.label)
def test_fuzz(world: World, method: Method, kind: str) -> None:
    pair = world.pair
    process = pair.process(method)
    strategy = _strategy(world, method, kind)
    _restore(world)
    BUDGET.start_test()
    mine: list[tuple[str, str]] = []
    calls = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("FUZZ_RANDOM") != "1",
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        nonlocal calls
        # Drawn before the budget is looked at, so every example draws alike
        # (Hypothesis insists), but not sent once this test's share is spent.
        payload = data.draw(strategy, label="request")
        if BUDGET.exhausted():
            return
        outcome: Outcome = invoke(pair.channel(process), method, payload)
        calls += 1
        FINDINGS.count(method, outcome, payload)
        wait = 1.0 if outcome.code is grpc.StatusCode.UNAVAILABLE else 0.0
        problems = outcome.problems + pair.dead(wait)
        for problem in problems:
            mine.append(FINDINGS.add(method, kind, pair.cause(process, problem), payload))

    run()
    ours = [FINDINGS.by_key[k] for k in dict.fromkeys(mine)]
    if ours:
        pytest.fail(
            f"{method.label} [{kind}], {calls} calls: {len(ours)} distinct problem(s)\n"
            + FINDINGS.report(ours),
            pytrace=False,
        )


def _serving(process: ServiceProcess, services: list[str]) -> dict[str, str]:
    """grpc.health.v1 status per service name, polled for up to 20 s."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(process.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def all_serving() -> bool:
            for name in services:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                    found[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
                except grpc.RpcError as exc:
                    found[name] = exc.code().name
            return all(v == "SERVING" for v in found.values())

        with contextlib.suppress(AssertionError):  # the caller reports what was found
            wait_until(all_serving, 20, interval=0.5)
    return found


def test_after_fuzzing_both_serve_and_nothing_stored_before_is_lost(world: World) -> None:
    pair = world.pair
    assert not pair.dead(), "a service died at the end of the fuzzing"
    assert not pair.crashes, f"service crashes during fuzzing: {pair.crashes}"
    by_process: dict[str, list[str]] = {"": []}
    for method in METHODS:
        by_process.setdefault(pair.process(method).module, [""])
        if method.service not in by_process[pair.process(method).module]:
            by_process[pair.process(method).module].append(method.service)
    for process in (pair.metadata, pair.vector):
        status = _serving(process, by_process[process.module])
        assert all(v == "SERVING" for v in status.values()), f"{process.module}: {status}"

    meta = pb_grpc.MetadataServiceStub(pair.channel(pair.metadata))
    collection = meta.GetCollection(pb.GetCollectionRequest(name=SEED), timeout=30)
    assert collection.document_count == len(SEED_DOCS)
    listed = meta.ListDocuments(pb.ListDocumentsRequest(collection=SEED, page_size=100), timeout=30)
    assert sorted(d.id for d in listed.documents) == sorted(i for i, _, _ in SEED_DOCS)
    for doc_id, text, md in SEED_DOCS:
        doc = meta.GetDocument(
            pb.GetDocumentRequest(collection=SEED, id=doc_id, view=pb.DOCUMENT_VIEW_FULL),
            timeout=30,
        )
        assert doc.text == text
        assert doc.state == pb.DOCUMENT_STATE_INDEXED, doc
        assert dict(doc.metadata) == {k: _value(v) for k, v in md.items()}
        hits = meta.Search(
            pb.SearchRequest(
                collection=SEED,
                query=text,
                top_k=10,
                filter=_cond("seed_tag", cpb.OPERATOR_EQ, SEED_TAG),
            ),
            timeout=60,
        ).hits
        assert hits and hits[0].document_id == doc_id, (doc_id, [h.document_id for h in hits])
        assert hits[0].text and hits[0].text in text
