"""Defects the catalog state machine (test_catalog_stateful.py) led to,
each pinned by a plain test of its own on every backend."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from askmojo.common.filters import MetadataScalar, metadata_to_proto
from askmojo.common.v1 import common_pb2 as cpb
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer

Stub = pb_grpc.MetadataServiceStub


@pytest.fixture
def backend_stub(backend_settings: MetadataSettings) -> Iterator[Stub]:
    prepare_database(backend_settings)
    with (
        RunningServer.metadata(backend_settings) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Stub(channel)


def _condition(op: cpb.Operator.ValueType, value: MetadataScalar) -> cpb.Filter:
    operand = metadata_to_proto({"n": value})["n"]
    return cpb.Filter(condition=cpb.Condition(key="n", op=op, value=operand))


# Numbers past 2**53, where a double no longer holds every int: "ints and
# doubles compare as numbers" (common.proto) means exactly, as Python, SQLite
# and Chroma compare them.
BIG_NUMBERS: dict[str, MetadataScalar] = {
    "int-2^53+1": 2**53 + 1,
    "double-2^53": float(2**53),
    "int-max": 2**63 - 1,
    "int-3": 3,
}
BIG_NUMBER_CASES = [
    (cpb.OPERATOR_EQ, float(2**53), ["double-2^53"]),
    (cpb.OPERATOR_EQ, 2**53 + 1, ["int-2^53+1"]),
    (cpb.OPERATOR_GT, float(2**53), ["int-2^53+1", "int-max"]),
    (cpb.OPERATOR_GTE, 2**53 + 1, ["int-2^53+1", "int-max"]),
    (cpb.OPERATOR_EQ, float(2**63), []),
    (cpb.OPERATOR_LT, float(2**63), ["double-2^53", "int-2^53+1", "int-max", "int-3"]),
    (cpb.OPERATOR_GTE, float(2**63), []),
    # An int operand no double holds, against double metadata.
    (cpb.OPERATOR_LT, 2**53 + 1, ["double-2^53", "int-3"]),
    (cpb.OPERATOR_LTE, 2**53 + 1, ["double-2^53", "int-2^53+1", "int-3"]),
    (cpb.OPERATOR_GT, 2**53 + 1, ["int-max"]),
    (cpb.OPERATOR_NE, 2**53 + 1, ["double-2^53", "int-max", "int-3"]),
    # A fractional double operand, against int metadata.
    (cpb.OPERATOR_GT, 2.5, ["double-2^53", "int-2^53+1", "int-max", "int-3"]),
    (cpb.OPERATOR_LTE, 3.5, ["int-3"]),
    (cpb.OPERATOR_LT, 3.0, []),
    (cpb.OPERATOR_GTE, -1e300, ["double-2^53", "int-2^53+1", "int-max", "int-3"]),
]
BIG_NUMBER_IN_CASES: list[tuple[list[MetadataScalar], list[str]]] = [
    ([2**53 + 1], ["int-2^53+1"]),
    ([float(2**53)], ["double-2^53"]),
    ([3.0, float(2**63)], ["int-3"]),
]


def test_ints_and_doubles_past_2_53_compare_exactly(backend_stub: Stub) -> None:
    backend_stub.CreateCollection(pb.CreateCollectionRequest(name="numbers"))
    backend_stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection="numbers",
            documents=[
                pb.Document(
                    id=doc_id, text=f"number {doc_id}", metadata=metadata_to_proto({"n": n})
                )
                for doc_id, n in BIG_NUMBERS.items()
            ],
        )
    )
    wrong = []
    for op, operand, expected in BIG_NUMBER_CASES:
        where = _condition(op, operand)
        listed = backend_stub.ListDocuments(
            pb.ListDocumentsRequest(collection="numbers", filter=where, page_size=10)
        )
        got = sorted(d.id for d in listed.documents)
        if got != sorted(expected):
            wrong.append((cpb.Operator.Name(op), operand, got, sorted(expected)))
    for operands, expected in BIG_NUMBER_IN_CASES:
        values = [metadata_to_proto({"n": v})["n"] for v in operands]
        where = cpb.Filter(condition=cpb.Condition(key="n", op=cpb.OPERATOR_IN, values=values))
        listed = backend_stub.ListDocuments(
            pb.ListDocumentsRequest(collection="numbers", filter=where, page_size=10)
        )
        got = sorted(d.id for d in listed.documents)
        if got != sorted(expected):
            wrong.append(("IN", operands, got, sorted(expected)))
    assert wrong == []
