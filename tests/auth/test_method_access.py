"""Every method of every service, found in the proto descriptors (so an RPC
added later is checked without touching this file), called over a real
socket with no key, a wrong key, the read-only key and the full key, in both
header spellings (`authorization: Bearer <key>`, `api-key: <key>`)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import askmojo.metadata.v1
import askmojo.vector.v1
from askmojo import healthcheck
from askmojo.common import auth
from tests.auth.conftest import (
    METADATA_KEY,
    METADATA_READ_KEY,
    VECTOR_KEY,
    VECTOR_READ_KEY,
    WRONG_KEY,
    api_key_header,
    bearer,
    keyed_metadata_settings,
    running_metadata,
)
from tests.conftest import RunningServer

Metadata = tuple[tuple[str, str], ...]

# The read methods, written out here independently of askmojo.common.auth:
# Get*, List*, Search, Query, Count, Embed*, GetModelInfo, GetStats.
READ_NAME = re.compile(r"^(Get|List|Count|Embed|Search|Query)(?![a-z])")
# Writes the read-only key must never reach (a floor: new writes add to it).
KNOWN_WRITES = {
    "CreateCollection",
    "DeleteCollection",
    "UpsertDocuments",
    "IngestDocuments",
    "DeleteDocuments",
    "EnsureCollection",
    "DropCollection",
    "Upsert",
    "UpsertStream",
    "Delete",
}
# Read-only only when the request says it changes nothing.
DRY_RUN_FIELD = {"Reconcile": "dry_run"}


def proto_modules(package: ModuleType) -> Iterator[ModuleType]:
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(f"{package.__name__}.{info.name}")


SERVICES: list[ServiceDescriptor] = [
    service
    for package in (askmojo.metadata.v1, askmojo.vector.v1)
    for module in proto_modules(package)
    for service in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]


def method_id(case: tuple[ServiceDescriptor, MethodDescriptor]) -> str:
    return f"{case[0].name}/{case[1].name}"


def call(
    channel: grpc.Channel,
    method: MethodDescriptor,
    metadata: Metadata,
    request: Any = None,
) -> tuple[grpc.StatusCode, str]:
    """The status the call ends with (OK or the error's) and its message."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    request = request if request is not None else request_type()
    path = auth.method_path(method.containing_service.full_name, method.name)
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    multicallable = kind(
        path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    sent = iter([request]) if method.client_streaming else request
    try:
        result = multicallable(sent, metadata=metadata, timeout=60)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def metadata_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # No vector service: the calls that need one fail for that reason, after
    # the key check this module is about.
    directory: Path = tmp_path_factory.mktemp("keyed-metadata")
    with running_metadata(keyed_metadata_settings(directory / "metadata.db")) as running:
        yield running


@pytest.fixture(scope="module")
def channels(
    metadata_server: RunningServer, keyed_vector: RunningServer
) -> Iterator[dict[str, grpc.Channel]]:
    with (
        grpc.insecure_channel(metadata_server.address) as metadata,
        grpc.insecure_channel(keyed_vector.address) as vector,
    ):
        yield {"askmojo.metadata.v1": metadata, "askmojo.vector.v1": vector}


def keys_for(service: ServiceDescriptor) -> tuple[str, str]:
    """(full key, read-only key) of the service's server."""
    if service.file.package == "askmojo.metadata.v1":
        return METADATA_KEY, METADATA_READ_KEY
    return VECTOR_KEY, VECTOR_READ_KEY


def test_the_descriptors_hold_every_service_both_servers_register() -> None:
    assert {s.full_name for s in SERVICES} == {
        "askmojo.metadata.v1.MetadataService",
        "askmojo.vector.v1.VectorService",
        "askmojo.vector.v1.EmbeddingService",
    }
    # The interceptor classifies from the same files (a new proto file with
    # a service must be added to auth.PROTECTED_FILES).
    assert {s.full_name for f in auth.PROTECTED_FILES for s in f.services_by_name.values()} == {
        s.full_name for s in SERVICES
    }
    names = {m.name for _, m in METHODS}
    assert names >= KNOWN_WRITES
    assert not any(READ_NAME.match(name) for name in KNOWN_WRITES)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[method_id(m) for m in METHODS])
def test_every_method_asks_for_the_right_key(
    channels: dict[str, grpc.Channel], service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    channel = channels[service.file.package]
    full_key, read_key = keys_for(service)
    other_full_key = METADATA_KEY if full_key == VECTOR_KEY else VECTOR_KEY

    code, message = call(channel, method, ())
    assert code is grpc.StatusCode.UNAUTHENTICATED, message
    assert "authorization: Bearer <key>" in message and "api-key: <key>" in message

    for wrong in (WRONG_KEY, other_full_key, f"{full_key}x", full_key[:-1]):
        for spelling in (bearer, api_key_header):
            code, message = call(channel, method, spelling(wrong))
            assert code is grpc.StatusCode.UNAUTHENTICATED, (wrong, message)
            assert wrong not in message
    # Another scheme, or a bearer header without its key, is no key.
    for header in (f"Basic {full_key}", "Bearer ", full_key):
        code, _ = call(channel, method, (("authorization", header),))
        assert code is grpc.StatusCode.UNAUTHENTICATED, header

    is_read = bool(READ_NAME.match(method.name))
    dry_run_field = DRY_RUN_FIELD.get(method.name)
    for spelling in (bearer, api_key_header):
        code, message = call(channel, method, spelling(read_key))
        if is_read:
            assert code is not grpc.StatusCode.PERMISSION_DENIED, message
        else:
            assert code is grpc.StatusCode.PERMISSION_DENIED, message
            assert f"{service.full_name}/{method.name}" in message
            assert "API_KEY" in message and read_key not in message
        assert code is not grpc.StatusCode.UNAUTHENTICATED, message
        if dry_run_field is not None:
            dry_run = message_factory.GetMessageClass(method.input_type)(**{dry_run_field: True})
            code, message = call(channel, method, spelling(read_key), dry_run)
            assert code not in {
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            }, message

        code, message = call(channel, method, spelling(full_key))
        # An empty request may well be INVALID_ARGUMENT or NOT_FOUND: not ours.
        assert code not in {
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNIMPLEMENTED,
        }, message
    # Header names are case-insensitive in HTTP/2 (gRPC lowercases them).
    code, message = call(channel, method, (("Authorization", f"bearer {full_key}"),))
    assert code is not grpc.StatusCode.UNAUTHENTICATED, message


def test_health_is_open_without_a_key(
    channels: dict[str, grpc.Channel], metadata_server: RunningServer, keyed_vector: RunningServer
) -> None:
    # The container probe (compose's healthcheck) sends no key.
    assert healthcheck.check(metadata_server.address, "askmojo.metadata.v1.MetadataService")[0]
    assert healthcheck.check(keyed_vector.address, "askmojo.vector.v1.VectorService")[0]
    for channel in channels.values():
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watched = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
        watched.cancel()


def test_reflection_takes_either_key(channels: dict[str, grpc.Channel]) -> None:
    keys = {"askmojo.metadata.v1": METADATA_KEY, "askmojo.vector.v1": VECTOR_READ_KEY}
    for package, channel in channels.items():
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            next(reflection.ServerReflectionInfo(iter([ask]), timeout=30))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = next(
            reflection.ServerReflectionInfo(iter([ask]), metadata=bearer(keys[package]), timeout=30)
        )
        listed = {s.name for s in answer.list_services_response.service}
        assert any(name.startswith(package) for name in listed), listed


def test_a_method_no_server_has_stays_unimplemented(channels: dict[str, grpc.Channel]) -> None:
    """Keys do not change what an unknown name answers (and refusals are
    cached only for methods that exist)."""
    channel = channels["askmojo.metadata.v1"]
    for metadata in ((), bearer(WRONG_KEY), bearer(METADATA_KEY)):
        unknown = channel.unary_unary("/askmojo.metadata.v1.MetadataService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as refused:
            unknown(b"", metadata=metadata, timeout=30)
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
