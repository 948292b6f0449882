"""After the run: wait for the services to settle, read back what they
hold, and compare it with the ledger (soak.ledger.check)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text

from askmojo.client import Client, VectorClient
from askmojo.client.errors import AskmojoError, NotFound
from soak.cluster import API_KEY, Cluster
from soak.ledger import CollectionView, StoredDoc, StoredVector, Version, freeze, vector_id

CONVERGE_TIMEOUT = 240.0
READ_TIMEOUT = 60.0


@dataclass
class Backlog:
    pending: int
    failed: int
    expired_leases: int
    deletions: int

    @property
    def settled(self) -> bool:
        return self.pending == 0 and self.deletions == 0


def backlog(cluster: Cluster) -> Backlog:
    """The outbox as the database holds it (the database's own clock
    decides which leases have run out)."""
    engine = cluster.engine()
    # Leases are stored as naive UTC (metadata_service.db.models.UTCDateTime).
    now = (
        "timezone('UTC', now())" if cluster.pg_database else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    )
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one())

            return Backlog(
                pending=one("SELECT count(*) FROM chunks WHERE state = 'PENDING'"),
                failed=one("SELECT count(*) FROM chunks WHERE state = 'FAILED'"),
                expired_leases=one(
                    "SELECT count(*) FROM chunks WHERE state = 'PENDING'"
                    f" AND lease_until IS NOT NULL AND lease_until < {now}"
                ),
                deletions=one("SELECT count(*) FROM vector_deletions"),
            )
    finally:
        engine.dispose()


def converge(cluster: Cluster, timeout: float = CONVERGE_TIMEOUT) -> tuple[float, Backlog]:
    """Polls until nothing waits in the outbox (no PENDING chunk, no vector
    deletion) or `timeout`; returns the seconds it took and the backlog."""
    begun = time.monotonic()
    while True:
        try:
            seen = backlog(cluster)
        except Exception:  # the database coming back
            seen = Backlog(-1, -1, -1, -1)
        if seen.settled or time.monotonic() - begun > timeout:
            return time.monotonic() - begun, seen
        time.sleep(0.5)  # polling the outbox, not ordering events


def observe(
    cluster: Cluster, collections: Iterable[str], vector_names: dict[str, set[str]]
) -> tuple[dict[str, CollectionView], dict[str, int]]:
    """Every collection's documents, vectors and exact-search results, and
    the vector collections of deleted collections still there (with their
    vector counts)."""
    views: dict[str, CollectionView] = {}
    leftovers: dict[str, int] = {}
    with (
        Client(cluster.metadata_address, api_key=API_KEY, timeout=READ_TIMEOUT) as client,
        VectorClient(cluster.vector_address, api_key=API_KEY, timeout=READ_TIMEOUT) as vectors,
    ):
        current: set[str] = set()
        for name in sorted(collections):
            try:
                info = client.collection(name)
            except NotFound:
                views[name] = CollectionView(docs=None)
                continue
            current.add(info.vector_collection)
            views[name] = _view(client, vectors, name, info.vector_collection)
        known = set().union(*vector_names.values())
        # The Chroma server (scaled shape) lists every collection: also those
        # of creations whose reply was lost (names no driver saw).
        for name in sorted((known | set(chroma_collections(cluster))) - current):
            try:
                leftovers[name] = vectors.count(name)
            except NotFound:
                continue
    return views, leftovers


def chroma_collections(cluster: Cluster) -> list[str]:
    """Every collection of the Chroma server (none in the single shape: its
    embedded store belongs to the vector service while it runs)."""
    if cluster.chroma is None:
        return []
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=cluster.chroma.port)
    return [c.name for c in client.list_collections()]


def _view(client: Client, vectors: VectorClient, name: str, vector_name: str) -> CollectionView:
    docs = {
        d.id: StoredDoc(
            text=d.text or "",
            metadata=freeze(d.metadata),
            generation=d.generation,
            content_hash=d.content_hash,
            chunk_count=d.chunk_count,
            state=str(d.state),
        )
        for d in client.list(name, include_text=True, page_size=500)
    }
    view = CollectionView(docs=docs)
    try:
        ids = list(vectors.list_ids(vector_name, page_size=500))
    except NotFound:
        ids = []
    stored: dict[str, list[float]] = {}
    for start in range(0, len(ids), 500):
        for record in vectors.get(vector_name, ids[start : start + 500], include_vectors=True):
            view.vectors[record.id] = StoredVector(record.id, freeze(record.metadata))
            stored[record.id] = record.vector or []
    for doc_id, doc in docs.items():
        version = Version(doc.text, doc.metadata)
        if version.token is not None:
            hits = client.search(name, version.token, top_k=10, mode="keyword")
            if any(h.document_id == doc_id for h in hits):
                view.keyword_found.add(doc_id)
        if doc.chunk_count == 1:
            # Its own text is its chunk: the nearest vector (similarity 1).
            view.dense_asked.add(doc_id)
            hits = client.search(name, doc.text, top_k=3, mode="dense")
            if any(h.document_id == doc_id for h in hits):
                view.dense_found.add(doc_id)
    asked = sorted(view.dense_asked)
    for doc_id, expected in zip(asked, vectors.embed([docs[d].text for d in asked]), strict=True):
        if _cosine(stored.get(vector_id(doc_id, 0), []), expected) >= SAME_EMBEDDING:
            view.embedding_matches.add(doc_id)
    return view


# Both are the same model's normalised output for the same text; batching
# moves them by float rounding only (~1e-6), another text by far more.
SAME_EMBEDDING = 0.999


def _cosine(a: list[float], b: list[float]) -> float:
    """Their dot product, which is the cosine: both are L2-normalised (the
    vector service stores and Embed returns them so). 0 when they cannot be
    compared (a missing vector, another dimension)."""
    if len(a) != len(b) or not a:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True))


def reconcile(cluster: Cluster, collections: Iterable[str]) -> dict[str, dict[str, int]]:
    """Reconcile every collection, as a user would; what each repaired."""
    done: dict[str, dict[str, int]] = {}
    with Client(cluster.metadata_address, api_key=API_KEY, timeout=300) as client:
        for name in sorted(collections):
            try:
                report = client.reconcile(name)
            except NotFound:
                continue
            except AskmojoError as exc:
                done[name] = {"error": 1}
                print(f"reconcile {name}: {exc}")
                continue
            done[name] = {
                "missing_vectors": report.missing_vectors,
                "orphan_vectors": report.orphan_vectors,
                "stale_vectors": report.stale_vectors,
                "pending_resumed": report.pending_resumed,
                "unverified_vectors": report.unverified_vectors,
            }
    return done
