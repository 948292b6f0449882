"""Every proto <-> domain mapping of the vector service, as pure functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from google.rpc import status_pb2

from askmojo.common.filters import (
    FilterNode,
    filter_from_proto,
    metadata_to_proto,
    metadata_value_from_proto,
)
from askmojo.common.rpc import OK_STATUS, status_of
from askmojo.common.text_hash import SERVICE_SET_KEYS
from askmojo.common.v1 import common_pb2
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import vector_service_pb2 as vpb
from vector_service.config import VectorSettings
from vector_service.embedding.worker import BatchResult
from vector_service.operations import (
    ModelDescription,
    RecordInput,
    RecordOutcome,
    TextsOutcome,
)
from vector_service.store import CollectionInfo, Match, Stored


def from_proto_filter(message: common_pb2.Filter, present: bool) -> FilterNode | None:
    """Raises InvalidFilterError (INVALID_ARGUMENT) for a malformed tree."""
    return filter_from_proto(message) if present else None


def to_proto_embeddings(result: BatchResult) -> list[epb.Embedding]:
    return [
        epb.Embedding(values=vector.tolist(), token_count=count, truncated=truncated)
        for vector, count, truncated in zip(
            result.vectors, result.token_counts, result.truncated, strict=True
        )
    ]


def to_proto_text_embeddings(
    outcome: TextsOutcome, to_status: Callable[[BaseException], status_pb2.Status]
) -> list[epb.Embedding]:
    """One Embedding per text, in order, each with its status: the texts
    without an error take the result's embeddings in turn."""
    embedded = iter(to_proto_embeddings(outcome.result) if outcome.result is not None else [])
    embeddings = []
    for index in range(outcome.count):
        error = outcome.errors.get(index)
        if error is not None:
            embeddings.append(epb.Embedding(status=to_status(error)))
            continue
        embedding = next(embedded)
        embedding.status.CopyFrom(OK_STATUS)
        embeddings.append(embedding)
    return embeddings


def to_proto_embed_response(result: BatchResult, model: ModelDescription) -> epb.EmbedResponse:
    return epb.EmbedResponse(
        embeddings=to_proto_embeddings(result), model=model.name, dimension=model.dimension
    )


def to_proto_model_info(
    model: ModelDescription, settings: VectorSettings
) -> epb.GetModelInfoResponse:
    """The model and every limit a client must stay within."""
    return epb.GetModelInfoResponse(
        model=model.name,
        dimension=model.dimension,
        max_sequence_length=model.max_sequence_length,
        max_texts_per_call=settings.max_texts_per_call,
        max_text_length=settings.max_text_length,
        max_message_bytes=settings.max_message_bytes,
        workers=settings.max_workers,
        # What a caller may send: the service sets one key itself.
        max_metadata_keys=settings.max_metadata_keys - SERVICE_SET_KEYS,
        max_metadata_string_bytes=settings.max_metadata_string_bytes,
        max_records_per_call=settings.max_records_per_call,
        max_filter_conditions=settings.max_filter_conditions,
        max_filter_values=settings.max_filter_values,
        max_ids_per_call=settings.max_ids_per_call,
    )


def from_proto_record(record: vpb.VectorRecord) -> RecordInput:
    content = record.WhichOneof("content")
    return RecordInput(
        id=record.id,
        text=record.text if content == "text" else None,
        vector=list(record.vector.values) if content == "vector" else None,
        metadata={k: metadata_value_from_proto(v) for k, v in record.metadata.items()},
    )


def from_proto_records(records: Sequence[vpb.VectorRecord]) -> list[RecordInput]:
    return [from_proto_record(r) for r in records]


def to_proto_record_results(
    outcomes: Sequence[RecordOutcome], to_status: Callable[[BaseException], status_pb2.Status]
) -> list[vpb.RecordResult]:
    """`to_status` is the service's error map (errors.to_rpc_status)."""
    return [
        vpb.RecordResult(id=o.id, status=status_of(o.error, to_status), truncated=o.truncated)
        for o in outcomes
    ]


def to_proto_collection(info: CollectionInfo) -> vpb.EnsureCollectionResponse:
    return vpb.EnsureCollectionResponse(
        name=info.name, dimension=info.dimension, model=info.model, created=info.created
    )


def to_proto_matches(matches: Sequence[Match]) -> list[vpb.Match]:
    return [
        vpb.Match(id=m.id, score=m.score, metadata=metadata_to_proto(m.metadata)) for m in matches
    ]


def to_proto_stored(records: Sequence[Stored]) -> list[vpb.StoredRecord]:
    return [
        vpb.StoredRecord(
            id=r.id,
            metadata=metadata_to_proto(r.metadata),
            vector=vpb.Vector(values=np.asarray(r.vector).tolist())
            if r.vector is not None
            else None,
        )
        for r in records
    ]
