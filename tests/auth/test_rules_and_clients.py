"""How a method is classified (from its name, so a later RPC needs no list),
how a key is read from the headers, and the pair's own clients: every call
of a grpc.aio channel (unary and streaming) and of a blocking one carries the
key, beside any metadata the caller sends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from pydantic import SecretStr

from askmojo.common import auth
from askmojo.common.channels import ClientSecurity, open_aio_channel, open_channel
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.auth.conftest import VECTOR_KEY, VECTOR_READ_KEY, WRONG_KEY, bearer
from tests.conftest import RunningServer


def later_proto(
    *methods: str, dry_run_type: int = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
) -> FileDescriptor:
    """A proto file as someone might add it later: service Later with `methods`."""
    file = descriptor_pb2.FileDescriptorProto(name="later.proto", package="later.v1")
    request = file.message_type.add(name="Request")
    request.field.add(
        name="dry_run",
        number=1,
        type=dry_run_type,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    service = file.service.add(name="Later")
    for name in methods:
        service.method.add(
            name=name, input_type=".later.v1.Request", output_type=".later.v1.Request"
        )
    pool = descriptor_pool.DescriptorPool()
    return pool.Add(file) and pool.FindFileByName("later.proto")  # type: ignore[no-any-return]


def test_a_method_added_later_is_classified_by_its_name() -> None:
    rules = auth.method_rules(
        [
            later_proto(
                "GetWidget",
                "ListWidgets",
                "CountWidgets",
                "EmbedImages",
                "SearchWidgets",
                "QueryWidgets",
                "CreateWidget",
                "Getaway",
                "Embedding",
                "PurgeAll",
                "Reconcile",
            )
        ]
    )
    reads = {
        path.rpartition("/")[2]
        for path, rule in rules.items()
        if rule is auth.Rule.READ and path.startswith("/later.")
    }
    assert reads == {
        "GetWidget",
        "ListWidgets",
        "CountWidgets",
        "EmbedImages",
        "SearchWidgets",
        "QueryWidgets",
    }
    assert rules["/later.v1.Later/Reconcile"] is auth.Rule.DRY_RUN_READ
    for write in ("CreateWidget", "Getaway", "Embedding", "PurgeAll"):
        assert rules[f"/later.v1.Later/{write}"] is auth.Rule.WRITE
    assert rules["/grpc.health.v1.Health/Check"] is auth.Rule.OPEN
    assert rules["/grpc.health.v1.Health/Watch"] is auth.Rule.OPEN
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert rules[reflection] is auth.Rule.READ


def test_a_dry_run_method_whose_request_lost_the_field_fails_loudly() -> None:
    wrong = later_proto("Reconcile", dry_run_type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    with pytest.raises(RuntimeError, match="must have a bool `dry_run` field"):
        auth.method_rules([wrong])


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((), None),
        ((("user-agent", "x"),), None),
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", "BEARER abc"),), "abc"),
        ((("authorization", "Basic abc"),), ""),
        ((("authorization", "abc"),), ""),
        ((("api-key", "abc"),), "abc"),
        ((("api-key", "abc"), ("authorization", "Bearer def")), "abc"),  # the first wins
    ],
)
def test_the_presented_key(metadata: tuple[tuple[str, str], ...], key: str | None) -> None:
    assert auth.presented_key(metadata) == key


def test_the_aio_channel_sends_the_key_on_every_kind_of_call(keyed_vector: RunningServer) -> None:
    async def calls(key: str | None) -> list[grpc.StatusCode]:
        security = ClientSecurity(api_key=SecretStr(key) if key else None)
        codes = []
        async with open_aio_channel(keyed_vector.address, security) as channel:
            stub = epb_grpc.EmbeddingServiceStub(channel)
            traced = (("x-request-id", "r-1"),)  # a caller's own metadata stays
            try:
                await stub.GetModelInfo(epb.GetModelInfoRequest(), metadata=traced, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
            try:
                stream = stub.EmbedStream(
                    iter([epb.EmbedStreamRequest(texts=["a key"])]), timeout=60
                )
                async for _ in stream:
                    pass
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
            assert await channel.channel_ready() is None
            assert channel.get_state() is grpc.ChannelConnectivity.READY
        return codes

    assert asyncio.run(calls(VECTOR_KEY)) == [grpc.StatusCode.OK] * 2
    assert asyncio.run(calls(VECTOR_READ_KEY)) == [grpc.StatusCode.OK] * 2
    assert asyncio.run(calls(WRONG_KEY)) == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert asyncio.run(calls(None)) == [grpc.StatusCode.UNAUTHENTICATED] * 2


def test_refused_request_streams_report_the_refusal_to_grpc_aio_clients(
    keyed_vector: RunningServer,
) -> None:
    """A grpc.aio client still writing when the status arrives would read
    INTERNAL instead (grpc/grpc#36066); the metadata service's UpsertStream
    must see PERMISSION_DENIED / UNAUTHENTICATED to keep its work PENDING."""
    batches = [
        vpb.UpsertStreamRequest(
            collection="refused", records=[vpb.VectorRecord(id=f"r{i}", text="text " * 50)]
        )
        for i in range(8)
    ]

    async def refused(key: str | None, repeat: int = 20) -> set[grpc.StatusCode]:
        security = ClientSecurity(api_key=SecretStr(key) if key else None)
        codes: set[grpc.StatusCode] = set()
        async with open_aio_channel(keyed_vector.address, security) as channel:
            stub = vpb_grpc.VectorServiceStub(channel)
            for _ in range(repeat):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    async for _ in stub.UpsertStream(iter(batches), timeout=30):
                        pass
                codes.add(exc.value.code())
            # A client that writes, then waits for an answer before writing
            # more (never half-closing) still gets its status.
            call = stub.UpsertStream(timeout=30)
            await call.write(batches[0])
            with pytest.raises(grpc.aio.AioRpcError) as waiting:
                await call.read()
            codes.add(waiting.value.code())
        return codes

    assert asyncio.run(refused(VECTOR_READ_KEY)) == {grpc.StatusCode.PERMISSION_DENIED}
    assert asyncio.run(refused(WRONG_KEY)) == {grpc.StatusCode.UNAUTHENTICATED}
    assert asyncio.run(refused(None)) == {grpc.StatusCode.UNAUTHENTICATED}


def test_the_blocking_channel_sends_the_key_on_every_kind_of_call(
    keyed_vector: RunningServer,
) -> None:
    security = ClientSecurity(api_key=SecretStr(VECTOR_READ_KEY))
    with open_channel(keyed_vector.address, security) as channel:
        stub = epb_grpc.EmbeddingServiceStub(channel)
        info = stub.GetModelInfo(epb.GetModelInfoRequest(), metadata=(("x-a", "b"),), timeout=30)
        assert info.dimension > 0
        stream = stub.EmbedStream(iter([epb.EmbedStreamRequest(texts=["a key"])]), timeout=60)
        assert sum(len(r.embeddings) for r in stream) == 1


def test_a_registered_method_no_proto_here_names_takes_the_full_key_only() -> None:
    """A service added to a server but not to auth.PROTECTED_FILES fails
    safe: the read-only key cannot call it, whatever its methods' names."""

    async def scenario() -> list[grpc.StatusCode]:
        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request

        handlers = {"GetThing": grpc.unary_unary_rpc_method_handler(echo)}
        server = grpc.aio.server(
            interceptors=[auth.ApiKeyInterceptor(SecretStr(VECTOR_KEY), SecretStr(VECTOR_READ_KEY))]
        )
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("x.v1.X", handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                get_thing = channel.unary_unary("/x.v1.X/GetThing")
                for key in (VECTOR_READ_KEY, VECTOR_KEY):
                    try:
                        await get_thing(b"", metadata=bearer(key), timeout=30)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
        finally:
            await server.stop(None)
        return codes

    assert asyncio.run(scenario()) == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK]
