"""Undecodable request bytes answer INVALID_ARGUMENT on every method of both
services (issue 11: they answered UNKNOWN naming DecodeError). Methods come
from the service descriptors, so a new RPC is covered without a new test."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from askmojo.metadata.v1 import metadata_service_pb2
from askmojo.vector.v1 import embedding_service_pb2, vector_service_pb2
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings

# Invalid tag and varint: no message decodes from it.
CORRUPT = b"\xff\xff\xff\xff"
COMMON = (
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
METADATA = (metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"], *COMMON)
VECTOR = (
    embedding_service_pb2.DESCRIPTOR.services_by_name["EmbeddingService"],
    vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"],
    *COMMON,
)


def _methods(services: tuple[ServiceDescriptor, ...]) -> list[MethodDescriptor]:
    return [method for service in services for method in service.methods]


def _bad_utf8(method: MethodDescriptor) -> bytes | None:
    """A string field of the request holding invalid UTF-8, if it has one."""
    for field in method.input_type.fields:
        if field.type == field.TYPE_STRING:
            return bytes([field.number << 3 | 2, 2]) + b"\xff\xfe"
    return None


def _too_deep(method: MethodDescriptor) -> bytes | None:
    """The request's filter nested past protobuf's recursion limit (100)."""
    field = method.input_type.fields_by_name.get("filter")
    if field is None:
        return None
    inner = b""
    for _ in range(150):
        inner = bytes([4 << 3 | 2]) + _varint(len(inner)) + inner  # Filter.not = 4
    return bytes([field.number << 3 | 2]) + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _call(channel: grpc.Channel, method: MethodDescriptor, messages: list[bytes]) -> grpc.RpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    client_streams, server_streams = method.client_streaming, method.server_streaming
    with pytest.raises(grpc.RpcError) as info:
        if client_streams and server_streams:
            list(channel.stream_stream(path)(iter(messages), timeout=30))
        elif client_streams:
            channel.stream_unary(path)(iter(messages), timeout=30)
        elif server_streams:
            list(channel.unary_stream(path)(messages[0], timeout=30))
        else:
            channel.unary_unary(path)(messages[0], timeout=30)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


def _assert_refused(error: grpc.RpcError, method: MethodDescriptor) -> None:
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.full_name, error)
    details = error.details() or ""
    assert details.startswith("request could not be decoded: "), (method.full_name, details)
    assert "<class" not in details and "DecodeError" not in details


@pytest.fixture(scope="module")
def metadata_channel(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[grpc.Channel]:
    path = tmp_path_factory.mktemp("decode") / "metadata.db"
    settings = metadata_settings(path)
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        yield channel


@pytest.fixture(scope="module")
def vector_channel(vector_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(vector_server.address) as channel:
        yield channel


@pytest.fixture(params=["metadata", "vector"])
def target(
    request: pytest.FixtureRequest,
) -> tuple[grpc.Channel, tuple[ServiceDescriptor, ...]]:
    if request.param == "metadata":
        return request.getfixturevalue("metadata_channel"), METADATA
    return request.getfixturevalue("vector_channel"), VECTOR


def test_corrupt_bytes_on_every_method(
    target: tuple[grpc.Channel, tuple[ServiceDescriptor, ...]],
) -> None:
    channel, services = target
    for method in _methods(services):
        _assert_refused(_call(channel, method, [CORRUPT]), method)


def test_bad_utf8_on_every_method_with_a_string_field(
    target: tuple[grpc.Channel, tuple[ServiceDescriptor, ...]],
) -> None:
    channel, services = target
    for method in _methods(services):
        payload = _bad_utf8(method)
        if payload is not None:
            error = _call(channel, method, [payload])
            _assert_refused(error, method)
            assert "UTF-8" in (error.details() or "")


def test_nesting_past_the_recursion_limit(
    target: tuple[grpc.Channel, tuple[ServiceDescriptor, ...]],
) -> None:
    channel, services = target
    tried = 0
    for method in _methods(services):
        payload = _too_deep(method)
        if payload is not None:
            _assert_refused(_call(channel, method, [payload]), method)
            tried += 1
    assert tried >= 3  # Search/ListDocuments/DeleteDocuments; Query/Delete/ListIds


def test_a_corrupt_message_later_in_a_stream_ends_it(
    target: tuple[grpc.Channel, tuple[ServiceDescriptor, ...]],
) -> None:
    channel, services = target
    for method in _methods(services):
        if method.client_streaming and method.containing_service.name not in ("ServerReflection",):
            # An empty (valid) message first: answered per item, the stream goes on.
            _assert_refused(_call(channel, method, [b"", CORRUPT]), method)
