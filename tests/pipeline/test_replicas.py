"""Vector replicas, for real (issue #13): a `chroma run` server, two
`python -m vector_service` processes sharing it, one `python -m
metadata_service` with VECTOR_SERVICE_ADDRESS listing both.

Calls land on both replicas (each replica's own /metrics says how many it
served), and a replica SIGKILLed (its whole process tree, as a container
kill) in the middle of an ingest costs retries, not documents: every one
is INDEXED and found by search, none FAILED, with no manual step."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from bench.services import ServiceProcess, descendants, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

CHROMA = Path(sys.executable).parent / "chroma"
DOCUMENTS = 240
BATCH = 8
VECTOR = "askmojo.vector.v1.VectorService"
_HANDLED = re.compile(
    r"^askmojo_rpc_handled_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$", re.M
)
WORDS = [
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
    "yarrow",
    "zephyr",
]


def text_of(i: int) -> str:
    # Its own draw of 12 of the 26 words, so an exact-text search ranks it
    # first even through Chroma's approximate index: the nearest other
    # document is at cosine 0.90 on average, 0.94 at most. (Words picked by
    # i mod 26 gave every document a twin differing only in its numbers, at
    # 0.99, and the index once returned the twin.)
    words = random.Random(i).sample(WORDS, 12)
    return f"Field note {i}: " + " ".join(words) + f". Entry number {i} of the survey."


def corpus() -> list[pb.Document]:
    return [pb.Document(id=f"note-{i}", text=text_of(i)) for i in range(DOCUMENTS)]


def requests(collection: str, docs: list[pb.Document]) -> Iterator[pb.IngestDocumentsRequest]:
    for start in range(0, len(docs), BATCH):
        yield pb.IngestDocumentsRequest(
            collection=collection, documents=docs[start : start + BATCH]
        )


class Replica(ServiceProcess):
    """A vector replica whose /metrics tells what it served, and which dies
    as a container does: the service and its embedding workers at once."""

    def __init__(self, name: str, tmp: Path, chroma_port: int) -> None:
        self.metrics_port = free_port()
        self.start_seconds = 0.0
        port = free_port()
        super().__init__(
            "vector_service",
            port,
            {
                "VECTOR_HOST": "127.0.0.1",
                "VECTOR_PORT": str(port),
                "VECTOR_METRICS_PORT": str(self.metrics_port),
                "CHROMA_HOST": "127.0.0.1",
                "CHROMA_PORT": str(chroma_port),
                "CHROMADB_PERSIST_DIRECTORY": str(tmp / f"{name}-unused"),
                "MAX_WORKERS": "1",
                "EXPRESS_WORKERS": "0",
            },
            tmp / f"{name}.log",
        )

    def handled(self) -> Counter[str]:
        """VectorService calls this replica finished, by method."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts: Counter[str] = Counter()
        for match in _HANDLED.finditer(text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if labels.get("grpc_service") == VECTOR:
                counts[labels["grpc_method"]] += int(float(match["value"]))
        return counts

    def kill_tree(self) -> None:
        assert self.proc is not None
        children = descendants(self.proc.pid)
        self.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def chroma_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(tmp_path / "chroma"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        wait_until(
            lambda: _heartbeat(port), timeout=60, what="the Chroma server answers its heartbeat"
        )
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _heartbeat(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def replicas(tmp_path: Path, chroma_port: int) -> Iterator[tuple[Replica, Replica]]:
    pair = (Replica("vector-1", tmp_path, chroma_port), Replica("vector-2", tmp_path, chroma_port))
    try:
        # Both load the model at once: the test's wall time is one load.
        started = time.monotonic()
        with ThreadPoolExecutor(2) as starting:
            # A loaded machine may take minutes to load two models at once.
            list(starting.map(lambda r: r.start(timeout=300), pair))
        for replica in pair:
            replica.start_seconds = time.monotonic() - started
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def documents_by_state(stub: pb_grpc.MetadataServiceStub, collection: str) -> dict[int, int]:
    stats = stub.GetStats(pb.GetStatsRequest(collection=collection))
    return {s.state: s.count for s in stats.documents_by_state if s.count}


def resends_logged(log: Path) -> int:
    """Batches the metadata service resent after an UpsertStream broke."""
    total = 0
    for line in log.read_text().splitlines():
        if "UpsertStream broke" in line:
            message = json.loads(line).get("message", "")
            total += int(re.search(r"resending its (\d+)", message)[1])  # type: ignore[index]
    return total


def test_calls_spread_over_vector_replicas_and_a_killed_one_loses_nothing(
    tmp_path: Path, replicas: tuple[Replica, Replica]
) -> None:
    first, second = replicas
    port = free_port()
    metadata = ServiceProcess(
        "metadata_service",
        port,
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'metadata.db'}",
            "METADATA_HOST": "127.0.0.1",
            "METADATA_PORT": str(port),
            "VECTOR_SERVICE_ADDRESS": f"{first.address},{second.address}",
            "INDEX_POLL_SECONDS": "0.2",
            "INDEX_MAX_BACKOFF": "0.5",
            "INDEX_BATCH_RECORDS": "16",
        },
        tmp_path / "metadata.log",
    )
    docs = corpus()
    began = time.monotonic()
    with metadata, grpc.insecure_channel(metadata.address) as channel:
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="notes"))

        # 1. Both replicas serve: a first ingest and searches spread over them.
        warm = docs[: DOCUMENTS // 4]
        states = [
            r.state
            for response in stub.IngestDocuments(requests("notes", warm), timeout=300)
            for r in response.results
        ]
        assert states == [pb.UPSERT_STATE_INDEXED] * len(warm)
        for doc in warm[:20]:
            stub.Search(pb.SearchRequest(collection="notes", query=doc.text, top_k=1))
        served = [first.handled(), second.handled()]
        for counts in served:
            assert counts["UpsertStream"] > 0 and counts["Query"] > 0, served

        # 2. One replica SIGKILLed mid-ingest: the rest goes to the other.
        rest = docs[len(warm) :]
        results: dict[str, int] = {}
        for response in stub.IngestDocuments(requests("notes", rest), timeout=300):
            results.update((r.id, r.state) for r in response.results)
            if len(results) >= BATCH and first.proc is not None and first.proc.poll() is None:
                first.kill_tree()
                killed_at = time.monotonic()
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
        assert len(results) == len(rest)
        by_state = Counter(pb.UpsertState.Name(s) for s in results.values())
        assert set(by_state) <= {"UPSERT_STATE_INDEXED", "UPSERT_STATE_PENDING"}, by_state
        wait_until(
            lambda: documents_by_state(stub, "notes") == {pb.DOCUMENT_STATE_INDEXED: DOCUMENTS},
            timeout=60,
            what="every document INDEXED",
            describe=lambda: documents_by_state(stub, "notes"),
            interval=0.2,
        )
        converged = time.monotonic() - killed_at
        # Every document is found by an exact-text search (vectors alone).
        for doc in docs:
            hits = stub.Search(
                pb.SearchRequest(
                    collection="notes", query=doc.text, top_k=1, mode=pb.SEARCH_MODE_DENSE
                )
            ).hits
            assert [h.document_id for h in hits] == [doc.id]
        check = stub.Reconcile(pb.ReconcileRequest(collection="notes", dry_run=True), timeout=120)
        assert (check.missing_vectors, check.orphan_vectors, check.stale_vectors) == (0, 0, 0)

        survivor = second.handled()
        print(
            f"\nreplicas: vector-1 served {dict(served[0])} before its kill; "
            f"vector-2 served {dict(survivor)} in all; ingest after the kill: "
            f"{dict(by_state)}; batches resent by the metadata service: "
            f"{resends_logged(metadata.log)}; seconds: replicas started {first.start_seconds:.1f}, "
            f"kill to all INDEXED {converged:.1f}, test body {time.monotonic() - began:.1f}"
        )
