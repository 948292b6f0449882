"""Proto <-> SDK types, and the batching both clients share. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from askmojo.client import types as t
from askmojo.client.errors import AskmojoError, InvalidArgument, Violation, error_from_status
from askmojo.common.filters import metadata_value_from_proto, metadata_value_to_proto
from askmojo.common.v1 import common_pb2
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import vector_service_pb2 as vpb

_INT64 = (-(2**63), 2**63 - 1)


def _invalid(field_path: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field_path}: {description}", violations=[Violation(field_path, description)]
    )


# --- in ------------------------------------------------------------------------


def metadata_to_proto(
    metadata: Mapping[str, Any], field_path: str
) -> dict[str, common_pb2.MetadataValue]:
    """Plain metadata as proto values; InvalidArgument for a value of another
    type (None, a list...): the service has no such kind."""
    if not isinstance(metadata, Mapping):
        raise _invalid(field_path, f"metadata is a dict, got {type(metadata).__name__}")
    converted = {}
    for key, value in metadata.items():
        where = f"{field_path}[{key!r}]"
        if not isinstance(key, str):
            raise _invalid(where, "metadata keys are strings")
        if isinstance(value, bool | str):
            pass
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise _invalid(where, "integers must fit in 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _invalid(where, "numbers must be finite")
        else:
            raise _invalid(
                where, f"metadata values are str, int, float or bool, got {type(value).__name__}"
            )
        converted[key] = metadata_value_to_proto(value)
    return converted


def metadata_from_proto(metadata: Mapping[str, common_pb2.MetadataValue]) -> t.Metadata:
    found: t.Metadata = {}
    for key, proto in metadata.items():
        value = metadata_value_from_proto(proto)
        if value is not None:
            found[key] = value
    return found


def document_to_proto(document: t.DocumentLike, field_path: str = "document") -> pb.Document:
    """A `Document` or a dict {id, text, metadata} as the proto."""
    doc_id: object
    text: object
    metadata: Any
    if isinstance(document, t.Document):
        doc_id, text, metadata = document.id, document.text, document.metadata
    elif isinstance(document, Mapping):
        unknown = set(document) - {"id", "text", "metadata"}
        if unknown:
            raise _invalid(
                field_path, f"unknown keys {sorted(unknown)}; expected id, text, metadata"
            )
        doc_id, text = document.get("id"), document.get("text")
        metadata = document.get("metadata") or {}
    else:
        raise _invalid(
            field_path, f"a document is a Document or a dict, got {type(document).__name__}"
        )
    if not isinstance(doc_id, str):
        raise _invalid(f"{field_path}.id", "the id is a string")
    if not isinstance(text, str):
        raise _invalid(f"{field_path}.text", "the text is a string")
    return pb.Document(
        id=doc_id, text=text, metadata=metadata_to_proto(metadata, f"{field_path}.metadata")
    )


def record_to_proto(record: t.RecordLike, field_path: str = "record") -> vpb.VectorRecord:
    rec_id: object
    text: object
    vector: object
    metadata: Any
    if isinstance(record, t.VectorRecord):
        rec_id, text, vector, metadata = record.id, record.text, record.vector, record.metadata
    elif isinstance(record, Mapping):
        unknown = set(record) - {"id", "text", "vector", "metadata"}
        if unknown:
            raise _invalid(
                field_path, f"unknown keys {sorted(unknown)}; expected id, text, vector, metadata"
            )
        rec_id, text, vector = record.get("id"), record.get("text"), record.get("vector")
        metadata = record.get("metadata") or {}
    else:
        raise _invalid(field_path, f"a record is a VectorRecord or a dict, got {type(record)}")
    if not isinstance(rec_id, str):
        raise _invalid(f"{field_path}.id", "the id is a string")
    if (text is None) == (vector is None):
        raise _invalid(field_path, "give exactly one of text and vector")
    proto = vpb.VectorRecord(
        id=rec_id, metadata=metadata_to_proto(metadata, f"{field_path}.metadata")
    )
    if text is not None:
        if not isinstance(text, str):
            raise _invalid(f"{field_path}.text", "the text is a string")
        proto.text = text
    else:
        proto.vector.values.extend(vector_values(vector, f"{field_path}.vector"))
    return proto


def vector_values(vector: Any, field_path: str) -> list[float]:
    try:
        values = [float(v) for v in vector]
    except (TypeError, ValueError):
        raise _invalid(field_path, "a vector is a sequence of numbers") from None
    return values


# --- batching -----------------------------------------------------------------


@dataclass
class Batch:
    """Documents converted for one request, and the local failures (documents
    that could not be converted) met since the previous batch, reported in
    their place among the results."""

    documents: list[pb.Document] = field(default_factory=list)
    # (documents of this batch before it, the failed document's result)
    failures: list[tuple[int, t.UpsertResult]] = field(default_factory=list)
    size: int = 0

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.documents]

    def in_order(self, results: Sequence[t.UpsertResult]) -> list[t.UpsertResult]:
        """The service's results for `documents` with the local failures put
        back in their places: one result per document given, in order."""
        merged: list[t.UpsertResult] = []
        failures = iter(self.failures)
        pending = next(failures, None)
        for i, result in enumerate([*results, None]):
            while pending is not None and pending[0] <= i:
                merged.append(pending[1])
                pending = next(failures, None)
            if result is not None:
                merged.append(result)
        return merged


def local_failure(document: object, index: int, error: InvalidArgument) -> t.UpsertResult:
    doc_id = ""
    if isinstance(document, t.Document):
        doc_id = document.id
    elif isinstance(document, Mapping) and isinstance(document.get("id"), str):
        doc_id = document["id"]
    return t.UpsertResult(id=doc_id or f"#{index}", state=t.UpsertState.FAILED, error=error)


class Batcher:
    """Cuts documents into batches of at most `batch_size` documents and
    `max_bytes` bytes of text (a larger document goes alone)."""

    def __init__(self, batch_size: int, max_bytes: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._current = Batch()
        self._index = 0

    def add(self, document: t.DocumentLike) -> Batch | None:
        """Adds one document; returns a batch when one is full."""
        index, self._index = self._index, self._index + 1
        try:
            proto = document_to_proto(document, f"documents[{index}]")
        except InvalidArgument as exc:
            place = len(self._current.documents)
            self._current.failures.append((place, local_failure(document, index, exc)))
            return None
        ready = None
        size = len(proto.text.encode())
        if self._current.documents and self._current.size + size > self.max_bytes:
            ready, self._current = self._current, Batch()
        self._current.documents.append(proto)
        self._current.size += size
        if ready is None and len(self._current.documents) >= self.batch_size:
            ready, self._current = self._current, Batch()
        return ready

    def flush(self) -> Batch | None:
        """The last, partial batch (or failures alone), if any."""
        if not self._current.documents and not self._current.failures:
            return None
        ready, self._current = self._current, Batch()
        return ready


def batches(
    documents: Iterable[t.DocumentLike], batch_size: int, max_bytes: int
) -> Iterator[Batch]:
    """The batches of a (lazily read) iterable of documents."""
    batcher = Batcher(batch_size, max_bytes)
    for document in documents:
        ready = batcher.add(document)
        if ready is not None:
            yield ready
    last = batcher.flush()
    if last is not None:
        yield last


# --- out -------------------------------------------------------------------------


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


_UPSERT_STATES = {
    pb.UPSERT_STATE_PENDING: t.UpsertState.PENDING,
    pb.UPSERT_STATE_INDEXED: t.UpsertState.INDEXED,
    pb.UPSERT_STATE_UNCHANGED: t.UpsertState.UNCHANGED,
    pb.UPSERT_STATE_FAILED: t.UpsertState.FAILED,
}
_DOCUMENT_STATES = {
    pb.DOCUMENT_STATE_PENDING: t.DocumentState.PENDING,
    pb.DOCUMENT_STATE_INDEXED: t.DocumentState.INDEXED,
    pb.DOCUMENT_STATE_FAILED: t.DocumentState.FAILED,
}
STATE_TO_PROTO = {state: number for number, state in _DOCUMENT_STATES.items()}


def upsert_result(result: pb.UpsertResult) -> t.UpsertResult:
    state = _UPSERT_STATES.get(result.state, t.UpsertState.FAILED)
    error = error_from_status(result.status)
    if error is None and state is t.UpsertState.FAILED:
        error = AskmojoError("the service reported the document failed without a reason")
    return t.UpsertResult(
        id=result.id,
        state=state,
        error=error,
        chunk_count=result.chunk_count,
        generation=result.generation,
        truncated_chunks=result.truncated_chunks,
    )


def batch_results(
    results: Sequence[pb.UpsertResult], status: status_pb2.Status | None, ids: Sequence[str]
) -> list[t.UpsertResult]:
    """One result per sent id: a refused batch fails each of its documents
    with the batch's reason; a reply short of results (it never should be)
    does not hide the missing ones."""
    if status is not None and status.code != code_pb2.OK:
        refused = error_from_status(status)
        return [t.UpsertResult(id=i, state=t.UpsertState.FAILED, error=refused) for i in ids]
    found = [upsert_result(r) for r in results]
    found += [
        t.UpsertResult(
            id=i, state=t.UpsertState.FAILED, error=AskmojoError("no result from the service")
        )
        for i in ids[len(results) :]
    ]
    return found


def collection(proto: pb.Collection) -> t.Collection:
    return t.Collection(
        name=proto.name,
        description=proto.description,
        model=proto.model,
        dimension=proto.dimension,
        document_count=proto.document_count,
        chunk_count=proto.chunk_count,
        chunk_size=proto.chunking.chunk_size,
        chunk_overlap=proto.chunking.chunk_overlap,
        create_time=_time(proto.create_time, proto.HasField("create_time")),
        vector_collection=proto.vector_collection,
        chunk_unit="tokens" if proto.chunking.unit == pb.CHUNK_UNIT_TOKENS else "characters",
    )


def stored_document(proto: pb.Document, with_text: bool) -> t.StoredDocument:
    return t.StoredDocument(
        id=proto.id,
        text=proto.text if with_text else None,
        metadata=metadata_from_proto(proto.metadata),
        state=_DOCUMENT_STATES.get(proto.state, t.DocumentState.UNSPECIFIED),
        content_hash=proto.content_hash,
        generation=proto.generation,
        chunk_count=proto.chunk_count,
        error=proto.error,
        create_time=_time(proto.create_time, proto.HasField("create_time")),
        update_time=_time(proto.update_time, proto.HasField("update_time")),
    )


def search_hit(proto: pb.SearchHit) -> t.SearchHit:
    return t.SearchHit(
        document_id=proto.document_id,
        chunk_id=proto.chunk_id,
        score=proto.score,
        text=proto.text,
        metadata=metadata_from_proto(proto.metadata),
        dense_rank=proto.dense_rank,
        dense_score=proto.dense_score,
        keyword_rank=proto.keyword_rank,
        keyword_score=proto.keyword_score,
    )


def search_results(proto: pb.SearchResponse) -> t.SearchResults:
    return t.SearchResults(
        (search_hit(h) for h in proto.hits),
        degraded=proto.degraded,
        degraded_reason=proto.degraded_reason,
    )


_SEARCH_MODES = {
    t.SearchMode.HYBRID: pb.SEARCH_MODE_HYBRID,
    t.SearchMode.DENSE: pb.SEARCH_MODE_DENSE,
    t.SearchMode.KEYWORD: pb.SEARCH_MODE_KEYWORD,
}


def search_mode(mode: t.SearchMode | str | None) -> pb.SearchMode.ValueType:
    """None: the server's default (HYBRID)."""
    if mode is None:
        return pb.SEARCH_MODE_UNSPECIFIED
    try:
        return _SEARCH_MODES[t.SearchMode(mode.lower() if isinstance(mode, str) else mode)]
    except ValueError:
        raise ValueError(
            f"unknown search mode {mode!r}: use one of {', '.join(m.value for m in t.SearchMode)}"
        ) from None


def reconcile_report(proto: pb.ReconcileResponse) -> t.ReconcileReport:
    return t.ReconcileReport(
        missing_vectors=proto.missing_vectors,
        orphan_vectors=proto.orphan_vectors,
        stale_vectors=proto.stale_vectors,
        pending_resumed=proto.pending_resumed,
        dry_run=proto.dry_run,
        unverified_vectors=proto.unverified_vectors,
    )


def stats(proto: pb.GetStatsResponse) -> t.Stats:
    by_state: dict[str, int] = {}
    for entry in proto.documents_by_state:
        state = _DOCUMENT_STATES.get(entry.state, t.DocumentState.UNSPECIFIED)
        by_state[state.value] = by_state.get(state.value, 0) + entry.count
    db, pool = proto.database, proto.pool
    return t.Stats(
        documents_by_state=by_state,
        chunk_count=proto.chunk_count,
        truncated_chunk_count=proto.truncated_chunk_count,
        keyword_index_bytes=proto.keyword_index_bytes,
        database=t.DatabaseStats(
            dialect=db.dialect,
            database_bytes=db.database_bytes,
            wal_bytes=db.wal_bytes,
            journal_mode=db.journal_mode,
            write_transactions=db.write_transactions,
            writes=db.writes,
        ),
        pool=t.PoolStats(
            pool_class=pool.pool_class,
            size=pool.size,
            checked_out=pool.checked_out,
            checked_in=pool.checked_in,
            overflow=pool.overflow,
            max_overflow=pool.max_overflow,
        ),
        worker_pid=proto.worker_pid,
    )


def record_result(proto: vpb.RecordResult) -> t.RecordResult:
    return t.RecordResult(
        id=proto.id, error=error_from_status(proto.status), truncated=proto.truncated
    )


def match(proto: vpb.Match) -> t.Match:
    return t.Match(id=proto.id, score=proto.score, metadata=metadata_from_proto(proto.metadata))


def stored_record(proto: vpb.StoredRecord) -> t.StoredRecord:
    vector = list(proto.vector.values) if proto.HasField("vector") else None
    return t.StoredRecord(id=proto.id, metadata=metadata_from_proto(proto.metadata), vector=vector)


def model_info(proto: epb.GetModelInfoResponse) -> t.ModelInfo:
    return t.ModelInfo(
        model=proto.model,
        dimension=proto.dimension,
        max_sequence_length=proto.max_sequence_length,
        max_texts_per_call=proto.max_texts_per_call,
        max_text_length=proto.max_text_length,
        max_message_bytes=proto.max_message_bytes,
        workers=proto.workers,
        max_records_per_call=proto.max_records_per_call,
        max_ids_per_call=proto.max_ids_per_call,
    )


# --- requests -------------------------------------------------------------------


def create_collection_request(
    *, name: str, description: str, model: str, dimension: int, chunk_size: int, chunk_overlap: int
) -> pb.CreateCollectionRequest:
    return pb.CreateCollectionRequest(
        name=name,
        description=description,
        model=model,
        dimension=dimension,
        chunking=pb.ChunkingConfig(chunk_size=chunk_size, chunk_overlap=chunk_overlap),
    )


def delete_request(
    collection_name: str, ids: Sequence[str] | None, where: common_pb2.Filter | None
) -> pb.DeleteDocumentsRequest:
    check_ids_or_filter(ids, where)
    request = pb.DeleteDocumentsRequest(collection=collection_name, ids=list(ids or ()))
    if where is not None:
        request.filter.CopyFrom(where)
    return request


def check_ids_or_filter(ids: Sequence[str] | None, where: common_pb2.Filter | None) -> None:
    if isinstance(ids, str):
        raise _invalid("ids", "a list of ids, not one string")
    if (ids is None) == (where is None):
        raise _invalid("ids", "give exactly one of ids and where")
    if ids is not None and not ids:
        raise _invalid("ids", "an empty list deletes nothing; give at least one id")
