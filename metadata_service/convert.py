"""Every proto <-> domain mapping of the metadata service, as pure functions.

`from_proto_*` never validates business rules (the catalog does, so batch
items can fail one by one); it only raises InvalidArgument where a message
cannot be expressed in the domain at all (a malformed filter tree).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from askmojo.common.filters import (
    FilterNode,
    InvalidFilterError,
    filter_from_proto,
    metadata_to_proto,
    metadata_value_from_proto,
)
from askmojo.common.rpc import status_of
from askmojo.common.v1 import common_pb2
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from metadata_service.domain import (
    ChunkUnit,
    CollectionInfo,
    CollectionSpec,
    DeleteCollectionOutcome,
    DeleteDocumentsOutcome,
    DocumentInfo,
    DocumentInput,
    DocumentQuery,
    IndexState,
    Page,
    ReconcileOutcome,
    SearchHit,
    SearchMode,
    SearchOptions,
    SearchResult,
    Stats,
    UpsertOutcome,
    UpsertState,
)
from metadata_service.errors import InvalidArgument, invalid_filter

_STATE_TO_PROTO = {
    IndexState.PENDING: pb.DOCUMENT_STATE_PENDING,
    IndexState.INDEXED: pb.DOCUMENT_STATE_INDEXED,
    IndexState.FAILED: pb.DOCUMENT_STATE_FAILED,
}
_STATE_FROM_PROTO: dict[int, IndexState] = {int(v): k for k, v in _STATE_TO_PROTO.items()}
_UPSERT_STATE_TO_PROTO = {
    UpsertState.PENDING: pb.UPSERT_STATE_PENDING,
    UpsertState.INDEXED: pb.UPSERT_STATE_INDEXED,
    UpsertState.UNCHANGED: pb.UPSERT_STATE_UNCHANGED,
    UpsertState.FAILED: pb.UPSERT_STATE_FAILED,
}


def to_proto_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def from_proto_filter(message: common_pb2.Filter, present: bool) -> FilterNode | None:
    """The normalised filter tree, or None when the request set no filter."""
    if not present:
        return None
    try:
        return filter_from_proto(message)
    except InvalidFilterError as exc:
        raise invalid_filter(exc) from None


# --- collections -------------------------------------------------------------


def from_proto_create_collection(request: pb.CreateCollectionRequest) -> CollectionSpec:
    return CollectionSpec(
        name=request.name,
        description=request.description,
        model=request.model,
        dimension=request.dimension,
        chunk_size=request.chunking.chunk_size,
        chunk_overlap=request.chunking.chunk_overlap,
        chunk_unit=from_proto_chunk_unit(request.chunking.unit),
    )


_CHUNK_UNITS = {
    pb.CHUNK_UNIT_CHARACTERS: ChunkUnit.CHARACTERS,
    pb.CHUNK_UNIT_TOKENS: ChunkUnit.TOKENS,
}


def from_proto_chunk_unit(unit: int) -> ChunkUnit | None:
    """None for UNSPECIFIED: the server's default."""
    if unit == pb.CHUNK_UNIT_UNSPECIFIED:
        return None
    if unit not in _CHUNK_UNITS:
        raise InvalidArgument("chunking.unit", f"unknown chunk unit {unit}")
    return _CHUNK_UNITS[pb.ChunkUnit.ValueType(unit)]


def to_proto_chunk_unit(unit: ChunkUnit) -> pb.ChunkUnit.ValueType:
    return next(k for k, v in _CHUNK_UNITS.items() if v == unit)


def to_proto_collection(info: CollectionInfo) -> pb.Collection:
    return pb.Collection(
        name=info.name,
        description=info.description,
        model=info.model,
        dimension=info.dimension,
        document_count=info.document_count,
        chunk_count=info.chunk_count,
        chunking=pb.ChunkingConfig(
            chunk_size=info.chunking.chunk_size,
            chunk_overlap=info.chunking.chunk_overlap,
            unit=to_proto_chunk_unit(info.chunking.unit),
        ),
        create_time=to_proto_timestamp(info.created_at),
        vector_collection=info.vector_collection,
    )


def to_proto_list_collections(page: Page[CollectionInfo]) -> pb.ListCollectionsResponse:
    return pb.ListCollectionsResponse(
        collections=[to_proto_collection(c) for c in page.items],
        next_page_token=page.next_page_token,
    )


def to_proto_delete_collection(outcome: DeleteCollectionOutcome) -> pb.DeleteCollectionResponse:
    return pb.DeleteCollectionResponse(
        deleted_documents=outcome.deleted_documents, deleted_chunks=outcome.deleted_chunks
    )


# --- documents ---------------------------------------------------------------


def from_proto_document(document: pb.Document) -> DocumentInput:
    return DocumentInput(
        id=document.id,
        text=document.text,
        metadata={k: metadata_value_from_proto(v) for k, v in document.metadata.items()},
    )


def from_proto_documents(documents: list[pb.Document]) -> list[DocumentInput]:
    return [from_proto_document(d) for d in documents]


def to_proto_document(info: DocumentInfo) -> pb.Document:
    document = pb.Document(
        id=info.id,
        metadata=metadata_to_proto(info.metadata),
        state=_STATE_TO_PROTO[info.state],
        content_hash=info.content_hash,
        generation=info.generation,
        chunk_count=info.chunk_count,
        error=info.error or "",
        create_time=to_proto_timestamp(info.created_at),
        update_time=to_proto_timestamp(info.updated_at),
    )
    if info.text is not None:
        document.text = info.text
    return document


def to_proto_upsert_result(outcome: UpsertOutcome, status: status_pb2.Status) -> pb.UpsertResult:
    return pb.UpsertResult(
        id=outcome.id,
        state=_UPSERT_STATE_TO_PROTO[outcome.state],
        status=status,
        chunk_count=outcome.chunk_count,
        generation=outcome.generation,
        truncated_chunks=outcome.truncated_chunks,
    )


def to_proto_upsert_results(
    outcomes: list[UpsertOutcome], to_status: Callable[[BaseException], status_pb2.Status]
) -> list[pb.UpsertResult]:
    """`to_status` is the service's error map (errors.to_rpc_status): the
    mapping itself, with its logging, stays out of this pure module."""
    return [to_proto_upsert_result(o, status_of(o.error, to_status)) for o in outcomes]


def include_text(view: int, default_full: bool) -> bool:
    if view == pb.DOCUMENT_VIEW_UNSPECIFIED:
        return default_full
    return view == pb.DOCUMENT_VIEW_FULL


def from_proto_states(states: list[int]) -> frozenset[IndexState]:
    result = set()
    for index, state in enumerate(states):
        if state not in _STATE_FROM_PROTO:
            raise InvalidArgument(
                f"states[{index}]", "use DOCUMENT_STATE_PENDING, _INDEXED or _FAILED"
            )
        result.add(_STATE_FROM_PROTO[state])
    return frozenset(result)


def from_proto_list_documents(request: pb.ListDocumentsRequest) -> DocumentQuery:
    return DocumentQuery(
        collection=request.collection,
        filter=from_proto_filter(request.filter, request.HasField("filter")),
        states=from_proto_states(list(request.states)),
        page_size=request.page_size,
        page_token=request.page_token,
        include_text=include_text(request.view, default_full=False),
    )


def to_proto_list_documents(page: Page[DocumentInfo]) -> pb.ListDocumentsResponse:
    return pb.ListDocumentsResponse(
        documents=[to_proto_document(d) for d in page.items],
        next_page_token=page.next_page_token,
    )


def to_proto_delete_documents(outcome: DeleteDocumentsOutcome) -> pb.DeleteDocumentsResponse:
    return pb.DeleteDocumentsResponse(
        deleted_count=outcome.deleted_count, not_found_ids=list(outcome.not_found_ids)
    )


# --- stats -------------------------------------------------------------------


def to_proto_stats(stats: Stats) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        pool=pb.PoolStats(
            pool_class=stats.pool.pool_class,
            size=stats.pool.size,
            checked_out=stats.pool.checked_out,
            checked_in=stats.pool.checked_in,
            overflow=stats.pool.overflow,
            max_overflow=stats.pool.max_overflow,
        ),
        database=pb.DatabaseStats(
            dialect=stats.storage.dialect,
            database_bytes=stats.storage.database_bytes,
            wal_bytes=stats.storage.wal_bytes,
            journal_mode=stats.storage.journal_mode,
            write_transactions=stats.storage.write_transactions,
            writes=stats.storage.writes,
        ),
        documents_by_state=[
            # Every state, zeros included, so dashboards see a stable shape.
            pb.DocumentStateCount(state=proto, count=stats.documents_by_state.get(state, 0))
            for state, proto in _STATE_TO_PROTO.items()
        ],
        chunk_count=stats.chunk_count,
        worker_pid=stats.worker_pid,
        truncated_chunk_count=stats.truncated_chunk_count,
        keyword_index_bytes=stats.keyword_index_bytes,
    )


_SEARCH_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    pb.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
    pb.SEARCH_MODE_DENSE: SearchMode.DENSE,
    pb.SEARCH_MODE_KEYWORD: SearchMode.KEYWORD,
}


def from_proto_search_options(request: pb.SearchRequest) -> SearchOptions:
    """The mode (unset: HYBRID) and the fusion weights (unset: 1)."""
    if request.mode not in _SEARCH_MODES:
        raise InvalidArgument("mode", f"unknown search mode {request.mode}")
    weights = []
    for name in ("dense_weight", "keyword_weight"):
        weight = getattr(request, name) if request.HasField(name) else 1.0
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(name, "must be a finite number >= 0")
        weights.append(weight)
    if weights == [0.0, 0.0]:
        raise InvalidArgument("dense_weight", "dense_weight and keyword_weight cannot both be 0")
    return SearchOptions(
        _SEARCH_MODES[pb.SearchMode.ValueType(request.mode)], weights[0], weights[1]
    )


def to_proto_search_mode(mode: SearchMode) -> pb.SearchMode.ValueType:
    return {
        SearchMode.HYBRID: pb.SEARCH_MODE_HYBRID,
        SearchMode.DENSE: pb.SEARCH_MODE_DENSE,
        SearchMode.KEYWORD: pb.SEARCH_MODE_KEYWORD,
    }[mode]


def to_proto_search(result: SearchResult) -> pb.SearchResponse:
    return pb.SearchResponse(
        hits=[
            pb.SearchHit(
                document_id=h.document_id,
                chunk_id=h.chunk_id,
                score=h.score,
                text=h.text,
                metadata=metadata_to_proto(h.metadata),
                dense_rank=h.dense_rank,
                dense_score=h.dense_score,
                keyword_rank=h.keyword_rank,
                keyword_score=h.keyword_score,
            )
            for h in result.hits
        ],
        degraded=result.degraded,
        degraded_reason=result.degraded_reason,
    )


def from_proto_search(response: pb.SearchResponse) -> SearchResult:
    """The inverse of to_proto_search (round-trip tests; clients)."""
    return SearchResult(
        [
            SearchHit(
                h.document_id,
                h.chunk_id,
                h.score,
                h.text,
                {
                    key: value
                    for key, proto in h.metadata.items()
                    if (value := metadata_value_from_proto(proto)) is not None
                },
                h.dense_rank,
                h.dense_score,
                h.keyword_rank,
                h.keyword_score,
            )
            for h in response.hits
        ],
        response.degraded,
        response.degraded_reason,
    )


def to_proto_reconcile(outcome: ReconcileOutcome) -> pb.ReconcileResponse:
    return pb.ReconcileResponse(
        missing_vectors=outcome.missing_vectors,
        orphan_vectors=outcome.orphan_vectors,
        stale_vectors=outcome.stale_vectors,
        pending_resumed=outcome.pending_resumed,
        dry_run=outcome.dry_run,
        vector_collection_missing=outcome.vector_collection_missing,
        unverified_vectors=outcome.unverified_vectors,
    )
