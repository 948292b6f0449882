"""The vector index: ChromaDB, embedded or a server, behind a small interface.

Embedded Chroma is not safe to open from several processes (the seed app did,
with one client per worker). Here the vector service is the only process that
opens the persist directory: it holds an exclusive `flock` on a file inside it
for its whole life, so a second service on the same directory fails at start
with a message saying which process owns it. With CHROMA_HOST the data lives
in a Chroma server and any number of vector services may share it.

All methods block; the servicer runs them on a bounded thread pool.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from askmojo.common.filters import AllOf, Condition, FilterNode, MetadataScalar, Op
from vector_service import metrics
from vector_service.config import VectorSettings

_LOGGER = logging.getLogger(__name__)
LOCK_FILE = "askmojo-vector-service.lock"
# Ids read per Chroma call while paging ids (list_ids).
_SCAN_CHUNK = 5000
# Passes over the ids a page may take before it falls back to one read.
_SCAN_RETRIES = 3


class StoreError(Exception):
    """Base of store failures the servicer maps to statuses."""


class CollectionNotFound(StoreError):
    pass


class DimensionMismatch(StoreError):
    pass


class StoreLocked(StoreError):
    pass


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    model: str
    created: bool = False


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    metadata: Mapping[str, MetadataScalar]


@dataclass(frozen=True)
class Stored:
    id: str
    metadata: Mapping[str, MetadataScalar]
    vector: np.ndarray | None


def to_where(node: FilterNode) -> dict[str, Any]:
    """A normalised filter tree as Chroma `where` (same semantics as the SQL
    the metadata service compiles from the same tree)."""
    if isinstance(node, Condition):
        operand: Any = node.value
        if node.op in (Op.IN, Op.NIN):
            operand = list(node.values)
            # Chroma wants one Python type per list; ints and doubles are
            # one kind ("number") to us, and compare equal as floats.
            if len({type(v) for v in operand}) > 1:
                operand = [float(v) for v in operand]
        return {node.key: {f"${node.op.value}": operand}}
    parts = [to_where(child) for child in node.filters]
    if len(parts) == 1:
        return parts[0]
    return {"$and" if isinstance(node, AllOf) else "$or": parts}


class DirectoryLock:
    """An exclusive, non-blocking flock on the persist directory; released by
    the kernel when the process dies, so a crash never leaves it stale."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(self._fd)
            os.close(self._fd)
            raise StoreLocked(_owned_message(directory, owner)) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    @staticmethod
    def check(directory: str) -> None:
        """Raises StoreLocked if another process holds the directory, without
        taking it: start-up asks before it loads anything, so a second
        service says so in one line and exits. (A process taking it between
        this check and the real claim is still refused there.)"""
        path = os.path.join(directory, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # never used: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(_owned_message(directory, _owner(fd))) from None
        finally:
            os.close(fd)  # also drops the shared lock, if taken

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _owner(fd: int) -> str:
    """The pid the owner wrote into the lock file."""
    return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"


def _owned_message(directory: str, owner: str) -> str:
    # One line: what a second service prints before it exits.
    return (
        f"another vector service (pid {owner}) owns {os.path.abspath(directory)}: embedded "
        "Chroma has exactly one owner; stop it or choose another CHROMADB_PERSIST_DIRECTORY, "
        "and to run replicas point them all at one Chroma server (CHROMA_HOST)"
    )


class VectorStore:
    def __init__(self, settings: VectorSettings) -> None:
        self._settings = settings
        self._lock: DirectoryLock | None = None
        self._client: Any = None
        # Upsert reads then writes, ensure_collection finds then creates: the
        # thread pool must not interleave two of them. Replicas sharing a
        # Chroma server are not covered: another replica's upsert can land
        # between the two steps (a removal by filter reads ids, then deletes
        # them). The metadata service makes up for it: a finished removal
        # re-sends whatever document now holds those ids (outbox.py).
        self._write_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._opened = False  # open() was called and close() was not

    @property
    def mode(self) -> str:
        return "server" if self._settings.chroma_host else "embedded"

    def claim_directory(self) -> None:
        """Takes the persist directory's lock (embedded mode): cheap, so start-up
        does it first and a second service on the directory fails in seconds."""
        if not self._settings.chroma_host and self._lock is None:
            self._lock = DirectoryLock(self._settings.chromadb_persist_directory)

    def open(self) -> None:
        """Opens (and verifies) the client; raises StoreLocked for a taken dir.

        A Chroma server that does not answer yet is not fatal: the service
        starts NOT_SERVING and connects when the server comes up (the health
        probe retries), as an orchestrator starting both at once expects."""
        self._opened = True
        if self._settings.chroma_host:
            try:
                self._connect()
            except StoreError as exc:
                _LOGGER.warning("%s; NOT_SERVING until it answers", exc)
                return
        else:
            import chromadb

            self.claim_directory()
            self._client = chromadb.PersistentClient(
                path=self._settings.chromadb_persist_directory, settings=_chroma_settings()
            )
            self.heartbeat()
        _LOGGER.info("chroma open", extra={"mode": self.mode})

    def _connect(self) -> Any:
        import chromadb

        host = self._settings.chroma_host
        assert host is not None  # server mode only
        with self._connect_lock:
            if self._client is None:
                address = f"{host}:{self._settings.chroma_port}"
                try:
                    client = chromadb.HttpClient(
                        host=host,
                        port=self._settings.chroma_port,
                        settings=_chroma_settings(),
                    )
                    client.heartbeat()
                except Exception as exc:  # chromadb raises ValueError, httpx errors...
                    raise StoreError(f"Chroma server at {address} is unreachable: {exc}") from exc
                self._client = client
                _LOGGER.info("chroma server connected", extra={"address": address})
            return self._client

    def close(self) -> None:
        self._opened = False
        self._client = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @metrics.timed("heartbeat")
    def heartbeat(self) -> None:
        self._require().heartbeat()

    # --- collections

    @metrics.timed("ensure_collection")
    def ensure_collection(self, name: str, dimension: int, model: str) -> CollectionInfo:
        client = self._require()
        with self._write_lock:
            existing = self._find(name)
            if existing is None:
                # get_or_create: another replica may have created it meanwhile.
                collection = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"dimension": dimension, "model": model},
                    embedding_function=None,
                )
                info = _collection_info(collection)
                created = True
            else:
                info = _collection_info(existing)
                created = False
        if info.dimension != dimension or info.model != model:
            raise DimensionMismatch(
                f"collection {name!r} exists with model {info.model!r} and dimension "
                f"{info.dimension}, not {model!r}/{dimension}"
            )
        return CollectionInfo(info.name, info.dimension, info.model, created)

    @metrics.timed("drop_collection")
    def drop_collection(self, name: str) -> bool:
        if self._find(name) is None:
            return False
        self._require().delete_collection(name)
        return True

    @metrics.timed("get_collection")
    def collection(self, name: str) -> CollectionInfo:
        return _collection_info(self._get(name))

    # --- records

    @metrics.timed("upsert")
    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[Mapping[str, MetadataScalar]],
    ) -> None:
        with self._write_lock:
            self._upsert_locked(name, ids, vectors, metadatas)

    def _upsert_locked(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[Mapping[str, MetadataScalar]],
    ) -> None:
        collection = self._get(name)
        dimension = _collection_info(collection).dimension
        if vectors.shape[1] != dimension:
            raise DimensionMismatch(
                f"vectors have {vectors.shape[1]} dimensions; collection {name!r} has {dimension}"
            )
        # Chroma's upsert merges metadata into what is stored; a record must be
        # replaced whole, so keys it no longer has are sent as None (deleted).
        previous = collection.get(ids=list(ids), include=["metadatas"])
        old_keys = {
            record_id: set(metadata or {})
            for record_id, metadata in zip(
                previous["ids"], previous["metadatas"] or [], strict=False
            )
        }
        replaced: list[dict[str, Any] | None] = []
        for record_id, metadata in zip(ids, metadatas, strict=True):
            full: dict[str, Any] = dict.fromkeys(old_keys.get(record_id, set()) - set(metadata))
            full.update(metadata)
            replaced.append(full or None)
        collection.upsert(ids=list(ids), embeddings=vectors, metadatas=replaced)

    @metrics.timed("query")
    def query(
        self,
        name: str,
        vector: np.ndarray,
        top_k: int,
        where: FilterNode | None,
        embedded_by: str | None = None,
    ) -> list[Match]:
        """`embedded_by` names the model that made a query vector from text:
        it must be the collection's, or the scores would mean nothing."""
        collection = self._get(name)
        info = _collection_info(collection)
        dimension = info.dimension
        if embedded_by is not None and info.model and info.model != embedded_by:
            raise DimensionMismatch(
                f"collection {name!r} holds {info.model} vectors but this service embeds query "
                f"text with {embedded_by}: send query_vector instead"
            )
        if vector.shape[0] != dimension:
            raise DimensionMismatch(
                f"query vector has {vector.shape[0]} dimensions; collection {name!r} has "
                f"{dimension}"
            )
        result = collection.query(
            query_embeddings=[vector],
            n_results=top_k,
            where=to_where(where) if where is not None else None,
            include=["metadatas", "distances"],
        )
        ids, distances = result["ids"][0], result["distances"][0]
        metadatas = result["metadatas"][0] if result["metadatas"] else [None] * len(ids)
        # Cosine distance -> cosine similarity: higher is better.
        return [
            Match(i, 1.0 - float(d), m or {})
            for i, d, m in zip(ids, distances, metadatas, strict=True)
        ]

    @metrics.timed("get")
    def get(self, name: str, ids: Sequence[str], include_vectors: bool) -> list[Stored]:
        include = ["metadatas", "embeddings"] if include_vectors else ["metadatas"]
        result = self._get(name).get(ids=list(ids), include=include)
        vectors = result.get("embeddings")
        return [
            Stored(
                record_id,
                (result["metadatas"][i] if result["metadatas"] else None) or {},
                np.asarray(vectors[i], dtype=np.float32) if include_vectors else None,
            )
            for i, record_id in enumerate(result["ids"])
        ]

    @metrics.timed("delete")
    def delete(self, name: str, ids: Sequence[str], where: FilterNode | None) -> int:
        # Under the write lock so the count returned is what this call removed.
        with self._write_lock:
            return self._delete_locked(name, ids, where)

    def _delete_locked(self, name: str, ids: Sequence[str], where: FilterNode | None) -> int:
        collection = self._get(name)
        if ids:
            existing = collection.get(ids=list(ids), include=[])["ids"]
            if existing:
                collection.delete(ids=existing)
            return len(existing)
        assert where is not None
        # In chunks, so a filter matching millions never holds all their ids.
        chroma_where, deleted = to_where(where), 0
        while matching := collection.get(where=chroma_where, limit=_SCAN_CHUNK, include=[])["ids"]:
            collection.delete(ids=matching)
            deleted += len(matching)
        return deleted

    @metrics.timed("count")
    def count(self, name: str) -> int:
        return int(self._get(name).count())

    @metrics.timed("list_ids")
    def list_ids(
        self, name: str, after: str | None, limit: int, where: FilterNode | None
    ) -> tuple[list[str], bool]:
        """The `limit` smallest ids greater than `after` (all for None), in
        code-point order, and whether more follow.

        Keyset paging by id: a page depends only on which ids exist, never on
        positions, so records deleted between pages shift nothing and every
        record present throughout a scan is listed exactly once. Chroma 1.5.9
        can neither sort by id nor range-filter it (`$gt` takes numbers only,
        `where` cannot name `#id` in embedded Chroma, ordered `search` is for
        distributed Chroma), so the page is made here: one pass over the
        collection's ids (ids only, `_SCAN_CHUNK` at a time, in Chroma's own
        order), keeping the `limit + 1` smallest past `after`. Memory stays a
        chunk plus a page, never the whole collection; the price is one pass
        per page (~3 us an id), which reconcile can afford."""
        collection = self._get(name)
        chroma_where = to_where(where) if where is not None else None
        for _ in range(_SCAN_RETRIES):
            smallest = self._smallest_ids(collection, chroma_where, after, limit + 1)
            if smallest is not None:
                break
        else:
            # Writes kept shifting the chunks under us: one read of all the
            # ids is consistent by itself (and costs memory only this once).
            ids = collection.get(where=chroma_where, include=[])["ids"]
            smallest = _nsmallest_after(ids, after, limit + 1, [])
        return smallest[:limit], len(smallest) > limit

    @staticmethod
    def _smallest_ids(
        collection: Any, where: dict[str, Any] | None, after: str | None, keep: int
    ) -> list[str] | None:
        """One pass over the ids, or None if a write moved them meanwhile.
        Chunks are read by offset, so a deletion between two reads would
        shift the second past an id: consecutive chunks overlap by one id,
        and a different id at the seam means the pass is void."""
        best: list[str] = []
        offset, seam = 0, None
        while True:
            if seam is None:
                ids = collection.get(where=where, limit=_SCAN_CHUNK, offset=0, include=[])["ids"]
            else:
                ids = collection.get(
                    where=where, limit=_SCAN_CHUNK + 1, offset=offset - 1, include=[]
                )["ids"]
                if not ids or ids[0] != seam:
                    return None
                ids = ids[1:]
            best = _nsmallest_after(ids, after, keep, best)
            if len(ids) < _SCAN_CHUNK:
                return best
            offset += len(ids)
            seam = ids[-1]

    # --- internals

    def _require(self) -> Any:
        client = self._client
        if client is not None:
            return client
        if self._settings.chroma_host and self._opened:
            return self._connect()
        raise StoreError("the vector store is not open")

    def _find(self, name: str) -> Any:
        from chromadb.errors import NotFoundError

        try:
            return self._require().get_collection(name, embedding_function=None)
        except NotFoundError:
            return None

    def _get(self, name: str) -> Any:
        collection = self._find(name)
        if collection is None:
            raise CollectionNotFound(f"collection {name!r} not found")
        return collection


def _nsmallest_after(
    ids: Sequence[str], after: str | None, keep: int, best: list[str]
) -> list[str]:
    fresh = ids if after is None else (i for i in ids if i > after)
    return heapq.nsmallest(keep, itertools.chain(best, fresh))


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False)


def _collection_info(collection: Any) -> CollectionInfo:
    metadata = collection.metadata or {}
    return CollectionInfo(
        name=collection.name,
        dimension=int(metadata.get("dimension", 0)),
        model=str(metadata.get("model", "")),
    )
