"""vector_service.convert: pure mappings, checked without a server."""

from __future__ import annotations

import grpc
import numpy as np
from google.rpc import code_pb2

from askmojo.common.filters import metadata_to_proto
from askmojo.vector.v1 import vector_service_pb2 as vpb
from vector_service import convert
from vector_service.embedding.worker import BatchResult
from vector_service.errors import InvalidArgument, to_rpc_status
from vector_service.operations import ModelDescription, RecordOutcome, TextsOutcome
from vector_service.store import Match, Stored


def test_records_keep_which_content_was_set() -> None:
    metadata = metadata_to_proto({"n": 3, "x": 0.5, "s": "a", "b": True})
    text, vector, neither = convert.from_proto_records(
        [
            vpb.VectorRecord(id="t", text="", metadata=metadata),  # empty text is still text
            vpb.VectorRecord(id="v", vector=vpb.Vector(values=[1.0, 2.0])),
            vpb.VectorRecord(id="n"),
        ]
    )
    assert (text.text, text.vector, text.metadata) == (
        "",
        None,
        {"n": 3, "x": 0.5, "s": "a", "b": True},
    )
    assert (vector.text, vector.vector) == (None, [1.0, 2.0])
    assert (neither.text, neither.vector) == (None, None)


def test_embeddings_and_model_fields() -> None:
    result = BatchResult(
        vectors=np.array([[0.5, -0.5], [1.0, 0.0]], dtype=np.float32),
        token_counts=[3, 256],
        truncated=[False, True],
    )
    response = convert.to_proto_embed_response(result, ModelDescription("m", 2, 256))
    assert (response.model, response.dimension) == ("m", 2)
    assert [list(e.values) for e in response.embeddings] == [[0.5, -0.5], [1.0, 0.0]]
    assert [(e.token_count, e.truncated) for e in response.embeddings] == [(3, False), (256, True)]


def test_text_embeddings_carry_one_status_each() -> None:
    result = BatchResult(
        vectors=np.array([[0.5, -0.5], [1.0, 0.0]], dtype=np.float32),
        token_counts=[3, 256],
        truncated=[False, True],
    )
    outcome = TextsOutcome(
        4,
        result,
        {
            1: InvalidArgument("texts[1]", "text is empty"),
            3: InvalidArgument("texts[3]", "too long"),
        },
    )
    embeddings = convert.to_proto_text_embeddings(outcome, to_rpc_status)
    assert [e.status.code for e in embeddings] == [
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
    ]
    assert [list(e.values) for e in embeddings] == [[0.5, -0.5], [], [1.0, 0.0], []]
    assert [(e.token_count, e.truncated) for e in embeddings[::2]] == [(3, False), (256, True)]
    assert "texts[3]" in embeddings[3].status.message
    nothing_good = TextsOutcome(1, None, {0: InvalidArgument("texts[0]", "text is empty")})
    (only,) = convert.to_proto_text_embeddings(nothing_good, to_rpc_status)
    assert only.status.code == code_pb2.INVALID_ARGUMENT and not only.values


def test_record_results_use_the_error_map() -> None:
    results = convert.to_proto_record_results(
        [RecordOutcome("a"), RecordOutcome("b", InvalidArgument("records[1].id", "empty"))],
        to_rpc_status,
    )
    assert [(r.id, r.status.code) for r in results] == [
        ("a", code_pb2.OK),
        ("b", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
    ]
    assert "records[1].id" in results[1].status.message


def test_matches_and_stored_records() -> None:
    (match,) = convert.to_proto_matches([Match("a", 0.25, {"k": "v"})])
    assert (match.id, match.score, match.metadata["k"].string_value) == ("a", 0.25, "v")
    with_vector, without = convert.to_proto_stored(
        [Stored("a", {}, np.array([0.5, 0.25], dtype=np.float32)), Stored("b", {"n": 1}, None)]
    )
    assert list(with_vector.vector.values) == [0.5, 0.25]
    assert not without.HasField("vector") and without.metadata["n"].int_value == 1
