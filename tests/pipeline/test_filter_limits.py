"""Wide filters (issue 11): 10,000 `any` conditions crashed the vector service
(SIGSEGV), ~1,000 gave INTERNAL "Expression tree is too large", a long IN
"too many SQL variables". Each service now refuses a filter over its
MAX_FILTER_CONDITIONS / MAX_FILTER_VALUES with INVALID_ARGUMENT naming the
setting, and takes anything up to them on every backend."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from askmojo.common.filters import (
    DEFAULT_MAX_FILTER_CONDITIONS,
    DEFAULT_MAX_FILTER_VALUES,
    FILTER_CONDITIONS_CEILING,
    FILTER_VALUES_CEILING,
)
from askmojo.common.v1 import common_pb2 as c
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer


def _eq(key: str, value: int) -> c.Filter:
    return c.Filter(
        condition=c.Condition(key=key, op=c.OPERATOR_EQ, value=c.MetadataValue(int_value=value))
    )


def wide_any(count: int) -> c.Filter:
    return c.Filter(any=c.FilterList(filters=[_eq("n", i) for i in range(count)]))


def long_in(count: int, strings: bool = False) -> c.Filter:
    values = [
        c.MetadataValue(string_value=f"v{i}") if strings else c.MetadataValue(int_value=i)
        for i in range(count)
    ]
    return c.Filter(condition=c.Condition(key="n", op=c.OPERATOR_IN, values=values))


def refusal(call: Any) -> tuple[str, list[str]]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return status.message, fields


@pytest.mark.parametrize("count", [DEFAULT_MAX_FILTER_CONDITIONS + 1, 2_000, 10_000])
def test_search_with_too_many_conditions_is_refused(
    stub: pb_grpc.MetadataServiceStub, collection: str, count: int
) -> None:
    message, fields = refusal(
        lambda: stub.Search(
            pb.SearchRequest(collection=collection, query="q", filter=wide_any(count)), timeout=30
        )
    )
    assert f"filter has {count} conditions" in message
    assert f"at most {DEFAULT_MAX_FILTER_CONDITIONS} allowed (MAX_FILTER_CONDITIONS)" in message
    assert fields == ["filter"]


def test_list_and_delete_with_too_many_values_are_refused(
    stub: pb_grpc.MetadataServiceStub, collection: str
) -> None:
    too_long = long_in(DEFAULT_MAX_FILTER_VALUES + 1)
    for call in (
        lambda: stub.ListDocuments(
            pb.ListDocumentsRequest(collection=collection, filter=too_long), timeout=30
        ),
        lambda: stub.DeleteDocuments(
            pb.DeleteDocumentsRequest(collection=collection, filter=too_long), timeout=30
        ),
    ):
        message, fields = refusal(call)
        assert "(MAX_FILTER_VALUES)" in message and fields == ["filter"]


def test_the_widest_allowed_filters_work_end_to_end(
    stub: pb_grpc.MetadataServiceStub, collection: str
) -> None:
    stub.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[
                pb.Document(
                    id="d1", text="alpha beta", metadata={"n": c.MetadataValue(int_value=7)}
                )
            ],
        ),
        timeout=120,
    )
    for where, expected in (
        (wide_any(DEFAULT_MAX_FILTER_CONDITIONS), ["d1"]),
        (long_in(DEFAULT_MAX_FILTER_VALUES), ["d1"]),  # two SQL variables per number
        (long_in(DEFAULT_MAX_FILTER_VALUES, strings=True), []),
    ):
        listed = stub.ListDocuments(
            pb.ListDocumentsRequest(collection=collection, filter=where), timeout=60
        )
        hits = stub.Search(
            pb.SearchRequest(collection=collection, query="alpha", filter=where), timeout=60
        )
        assert [d.id for d in listed.documents] == expected
        assert [h.document_id for h in hits.hits] == expected


def test_vector_query_and_list_ids_refuse_wide_filters(
    vectors: vpb_grpc.VectorServiceStub,
) -> None:
    name = f"wide-{uuid.uuid4().hex[:8]}"
    vectors.EnsureCollection(vpb.EnsureCollectionRequest(name=name))
    for where in (wide_any(10_000), long_in(200_000)):
        for call in (
            lambda w=where: vectors.Query(
                vpb.QueryRequest(collection=name, query_text="q", top_k=1, filter=w), timeout=30
            ),
            lambda w=where: vectors.ListIds(
                vpb.ListIdsRequest(collection=name, filter=w), timeout=30
            ),
            lambda w=where: vectors.Delete(
                vpb.DeleteRequest(collection=name, filter=w), timeout=30
            ),
        ):
            message, fields = refusal(call)
            assert "allowed (MAX_FILTER_" in message and fields == ["filter"]
    # The service is still there and answers the widest allowed filter.
    answer = vectors.Query(
        vpb.QueryRequest(
            collection=name,
            query_text="q",
            top_k=1,
            filter=wide_any(DEFAULT_MAX_FILTER_CONDITIONS),
        ),
        timeout=60,
    )
    assert list(answer.matches) == []


def test_sql_takes_filters_at_the_ceilings(backend_settings: MetadataSettings) -> None:
    """The most a deployment may configure still compiles to SQL the database
    takes: a flat `any` stays under SQLite's expression depth of 1000, an IN
    of numbers (two SQL variables each) under every variable limit."""
    settings = backend_settings.model_copy(
        update={
            "max_filter_conditions": FILTER_CONDITIONS_CEILING,
            "max_filter_values": FILTER_VALUES_CEILING,
        }
    )
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="ceiling"), timeout=30)
        stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(
                collection="ceiling",
                documents=[
                    pb.Document(id="d1", text="x", metadata={"n": c.MetadataValue(int_value=7)})
                ],
            ),
            timeout=60,
        )
        negated = c.Filter()
        getattr(negated, "not").CopyFrom(long_in(FILTER_VALUES_CEILING // 2))
        for where, expected in (
            (wide_any(FILTER_CONDITIONS_CEILING), ["d1"]),
            (long_in(FILTER_VALUES_CEILING), ["d1"]),
            (long_in(FILTER_VALUES_CEILING, strings=True), []),
            (
                c.Filter(all=c.FilterList(filters=[negated, long_in(FILTER_VALUES_CEILING // 2)])),
                [],
            ),
        ):
            for request in (
                pb.ListDocumentsRequest(collection="ceiling", filter=where),
                pb.DeleteDocumentsRequest(collection="ceiling", filter=where),
            ):
                if isinstance(request, pb.DeleteDocumentsRequest):
                    if expected:
                        continue  # keep d1 for the next filter
                    assert stub.DeleteDocuments(request, timeout=60).deleted_count == 0
                else:
                    listed = stub.ListDocuments(request, timeout=60)
                    assert [d.id for d in listed.documents] == expected
        message, _ = refusal(
            lambda: stub.ListDocuments(
                pb.ListDocumentsRequest(
                    collection="ceiling", filter=wide_any(FILTER_CONDITIONS_CEILING + 1)
                ),
                timeout=30,
            )
        )
        assert f"at most {FILTER_CONDITIONS_CEILING} allowed" in message
