"""API keys (DESIGN.md §9): who may call which method.

`API_KEY` opens every method; `READ_ONLY_API_KEY` opens the reads (a method
whose name starts with Get, List, Count, Embed, Search or Query) and a
Reconcile with `dry_run` set. Clients send `authorization: Bearer <key>` or
`api-key: <key>`. With no key configured every method is open (development);
production refuses to start that way unless ALLOW_UNAUTHENTICATED=true.
`grpc.health.v1.Health` is always open (orchestrators probe it without keys);
reflection takes either key; a method no proto here names, the full key only
(a service registered but forgotten here fails safe).

Which method is a read comes from the proto descriptors, by the method's
name, once at import: an RPC added later is classified without a list to
update. The check sits on every call, so it does no more than one pass over
the call's headers and two constant-time comparisons (about 3 µs); refusals
build their handler once per method and reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from google.protobuf.descriptor import (
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from pydantic import SecretStr

from askmojo.common.settings import ServiceSettings
from askmojo.metadata.v1 import metadata_service_pb2
from askmojo.vector.v1 import embedding_service_pb2, vector_service_pb2

_LOGGER = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"
API_KEY_HEADER = "api-key"
_BEARER = "bearer "
_BEARER_SPELLINGS = ("Bearer ", "bearer ")

# The first word of a method's name that makes it a read.
READ_VERBS = frozenset({"Get", "List", "Count", "Embed", "Search", "Query"})
# Methods that write unless a bool field of their request says "only report":
# the read-only key may call them with that field set.
DRY_RUN_FIELDS: Mapping[str, str] = {"Reconcile": "dry_run"}
# Every service either server registers that carries data; a new proto file
# with a service goes here (tests/auth enumerate this tuple).
PROTECTED_FILES: tuple[FileDescriptor, ...] = (
    metadata_service_pb2.DESCRIPTOR,
    vector_service_pb2.DESCRIPTOR,
    embedding_service_pb2.DESCRIPTOR,
)
# Services whose methods are ruled by the service, not by their names.
OPEN_SERVICES: tuple[ServiceDescriptor, ...] = (health_pb2.DESCRIPTOR.services_by_name["Health"],)
EITHER_KEY_SERVICES: tuple[ServiceDescriptor, ...] = (
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)

MISSING_KEY_MESSAGE = (
    "this service requires an API key: send the header "
    f"'{AUTHORIZATION_HEADER}: Bearer <key>' (or '{API_KEY_HEADER}: <key>') "
    "with its API_KEY or READ_ONLY_API_KEY"
)
UNKNOWN_KEY_MESSAGE = (
    "the API key sent is not one of this service's keys: send its API_KEY or "
    f"READ_ONLY_API_KEY as '{AUTHORIZATION_HEADER}: Bearer <key>' (or '{API_KEY_HEADER}: <key>')"
)


class Rule(enum.Enum):
    """What a method asks of the caller's key."""

    OPEN = "no key"
    READ = "either key"
    WRITE = "API_KEY"
    # The read-only key only with the request's dry-run field set.
    DRY_RUN_READ = "API_KEY, or READ_ONLY_API_KEY with dry_run"


class Access(enum.Enum):
    """What the key a call carries opens."""

    FULL = "API_KEY"
    READ_ONLY = "READ_ONLY_API_KEY"
    UNKNOWN = "a key that is neither"
    MISSING = "no key"


def method_path(service: str, method: str) -> str:
    """`/pkg.Service/Method`, as gRPC names a call."""
    return f"/{service}/{method}"


def rule_for(method: MethodDescriptor) -> Rule:
    """A method's rule from its name (and, for a dry-run method, its request)."""
    field_name = DRY_RUN_FIELDS.get(method.name)
    if field_name is not None:
        field = method.input_type.fields_by_name.get(field_name)
        streaming = method.client_streaming or method.server_streaming
        if field is None or field.type != FieldDescriptor.TYPE_BOOL or streaming:
            # Fail at import rather than let a changed proto turn the
            # read-only key into a writer (or lock it out silently).
            raise RuntimeError(
                f"{method.full_name}: its request must have a bool `{field_name}` field "
                "(and be unary-unary) for the read-only key's dry-run rule; update DRY_RUN_FIELDS"
            )
        return Rule.DRY_RUN_READ
    first_word = re.match(r"[A-Z][a-z0-9]*", method.name)
    return Rule.READ if first_word and first_word.group() in READ_VERBS else Rule.WRITE


def method_rules(files: Iterable[FileDescriptor] = PROTECTED_FILES) -> dict[str, Rule]:
    """`/pkg.Service/Method` -> Rule for every method of every service in
    `files`, OPEN for the health service's, READ for reflection's."""
    rules: dict[str, Rule] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                rules[method_path(service.full_name, method.name)] = rule_for(method)
    for services, rule in ((OPEN_SERVICES, Rule.OPEN), (EITHER_KEY_SERVICES, Rule.READ)):
        for service in services:
            for method in service.methods:
                rules[method_path(service.full_name, method.name)] = rule
    return rules


_METHOD_RULES = method_rules()


# --- start-up -------------------------------------------------------------------


def startup_refusal(settings: ServiceSettings) -> str | None:
    """One line saying why this service must not start (production without
    API_KEY and without ALLOW_UNAUTHENTICATED=true), or None."""
    if settings.is_production and settings.api_key is None and not settings.allow_unauthenticated:
        return (
            "refusing to start: ENVIRONMENT=production and no API_KEY is set, so anyone "
            "who reaches this port could read, change and delete everything; set API_KEY "
            "(and READ_ONLY_API_KEY for readers), or ALLOW_UNAUTHENTICATED=true if a "
            "network boundary you trust already guards it"
        )
    return None


# --- server ---------------------------------------------------------------------


def server_interceptors(settings: ServiceSettings) -> list[Any]:
    """grpc.aio server interceptors enforcing API_KEY / READ_ONLY_API_KEY;
    none when no key is configured (every method open)."""
    if settings.api_key is None:
        # Settings refuse READ_ONLY_API_KEY alone (settings.py says why).
        return []
    return [ApiKeyInterceptor(settings.api_key, settings.read_only_api_key)]


def presented_key(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The key a call carries: `authorization: Bearer <key>` (scheme in any
    case) or `api-key: <key>`; "" for an authorization header of another
    scheme (refused as unknown); None when neither header is there."""
    for name, value in metadata:
        if name == AUTHORIZATION_HEADER:
            if not isinstance(value, str):
                return ""
            # The scheme is case-insensitive (RFC 9110); the usual spellings
            # are matched without building a lowered copy.
            if value.startswith(_BEARER_SPELLINGS) or value[:7].lower() == _BEARER:
                return value[7:].strip()
            return ""
        if name == API_KEY_HEADER:
            return value.strip() if isinstance(value, str) else ""
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through, or answers it UNAUTHENTICATED / PERMISSION_DENIED
    without running its method (nothing is read, stored or changed).

    Placed before the RequestGuard, so a caller without a key learns nothing
    about its request (not even that it does not decode)."""

    def __init__(self, api_key: SecretStr, read_only_api_key: SecretStr | None = None) -> None:
        self._full = api_key.get_secret_value().encode()
        # Without a read-only key, random bytes no presented key can match
        # keep the comparisons (and their timing) the same.
        self._read_only = (
            read_only_api_key.get_secret_value().encode()
            if read_only_api_key is not None
            else secrets.token_bytes(32)
        )
        self._rules = _METHOD_RULES
        # (method, access) -> (handler the chain returned, the handler to
        # run instead): built once; bounded by the methods the server has.
        self._refusals: dict[tuple[str, Access], tuple[Any, grpc.RpcMethodHandler]] = {}

    def access(self, metadata: Iterable[tuple[str, Any]]) -> Access:
        presented = presented_key(metadata)
        if presented is None:
            return Access.MISSING
        try:
            candidate = presented.encode()
        except UnicodeEncodeError:  # no key of ours (settings keep them ASCII)
            return Access.UNKNOWN
        # Constant time in the content (a length mismatch alone ends early:
        # it reveals a length, never a character). Both comparisons always
        # run: no early exit tells which key was close.
        full = hmac.compare_digest(candidate, self._full)
        read_only = hmac.compare_digest(candidate, self._read_only)
        if full and presented:
            return Access.FULL
        return Access.READ_ONLY if read_only and presented else Access.UNKNOWN

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        rule = self._rules.get(method, Rule.WRITE)
        if rule is Rule.OPEN:
            return await continuation(handler_call_details)
        access = self.access(handler_call_details.invocation_metadata or ())
        if access is Access.FULL or (access is Access.READ_ONLY and rule is Rule.READ):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # no such method: UNIMPLEMENTED, as without keys
        key = (method, access)
        cached = self._refusals.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        replacement = _refusal(method, rule, access, handler)
        # Only methods the server has are cached: an unknown name returned
        # None above, so a scan of made-up names cannot grow this dict.
        self._refusals[key] = (handler, replacement)
        return replacement


def _refusal(
    method: str, rule: Rule, access: Access, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    if access is Access.MISSING or access is Access.UNKNOWN:
        message = MISSING_KEY_MESSAGE if access is Access.MISSING else UNKNOWN_KEY_MESSAGE
        return _refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, message, method)
    if rule is Rule.DRY_RUN_READ:
        return _dry_run_only(handler, method)
    return _refusing_handler(
        handler,
        grpc.StatusCode.PERMISSION_DENIED,
        f"the read-only API key may not call {method.lstrip('/')}: only reads are open "
        "to it; send API_KEY to change data",
        method,
    )


# How long a refused request stream is read (and its messages dropped
# undecoded) before the status goes out; see _refusing_handler.
REFUSED_STREAM_DRAIN_SECONDS = 1.0


def _refusing_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str, method: str
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that ends the call with `code` before
    its request is decoded or its method runs."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        _LOGGER.debug("call refused", extra={"rpc_method": method, "code": code.name})
        await context.abort(code, message)

    async def refuse_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # A grpc.aio client still writing its request stream when the status
        # arrives reports INTERNAL ("Internal error from Core") instead of it
        # (grpc/grpc#36066): the metadata service would then mark its chunks
        # FAILED, not PENDING, on a refused UpsertStream. Reading the stream
        # to its end first (briefly: a client waiting for an answer before
        # it writes more gets the status after REFUSED_STREAM_DRAIN_SECONDS)
        # lets the status through intact.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSED_STREAM_DRAIN_SECONDS):
                async for _ in requests:
                    pass
        await refuse(None, context)

    # No deserializer: the request's bytes are never decoded for a refusal.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _dry_run_only(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` for the read-only key: runs only when the request's dry-run
    field is set (rule_for checked it is a unary-unary method with that field)."""
    field = DRY_RUN_FIELDS[method.rpartition("/")[2]]
    message = (
        f"the read-only API key may call {method.lstrip('/')} only with {field}=true "
        "(it repairs otherwise); send API_KEY to repair"
    )
    behavior = handler.unary_unary

    async def dry_run_only(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The RequestGuard hands an undecodable request on as a stand-in
        # without the field (None): its behaviour refuses that itself.
        if getattr(request, field, None) is False:
            _LOGGER.debug("call refused", extra={"rpc_method": method, "code": "PERMISSION_DENIED"})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        dry_run_only, handler.request_deserializer, handler.response_serializer
    )


# --- clients --------------------------------------------------------------------


def key_metadata(api_key: SecretStr | None) -> tuple[tuple[str, str], ...]:
    """The header a client sends its key in (none without a key)."""
    if api_key is None:
        return ()
    return ((AUTHORIZATION_HEADER, f"Bearer {api_key.get_secret_value()}"),)


def with_api_key(channel: grpc.aio.Channel, api_key: SecretStr | None) -> grpc.aio.Channel:
    """`channel`, every call of which (unary and streaming) carries the key.

    Not a client interceptor: any grpc.aio interceptor moves every call of
    the channel onto the intercepted path (an extra task per call, measured
    at tens of µs), and call credentials are refused on a plaintext channel.
    Handing the header to each call is what a caller passing `metadata=`
    would do, at the cost of one tuple."""
    metadata = key_metadata(api_key)
    return _KeyedChannel(channel, metadata) if metadata else channel


class _KeyedCall:
    """A multi-callable adding the key header to each call's metadata."""

    __slots__ = ("_call", "_metadata")

    def __init__(self, call: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._call = call
        self._metadata = metadata

    def __call__(self, *request: Any, metadata: Any = None, **kwargs: Any) -> Any:
        # `*request`: a stream call may be made without its request iterator
        # (the caller then writes to the call).
        sent = self._metadata if metadata is None else (*metadata, *self._metadata)
        return self._call(*request, metadata=sent, **kwargs)


class _KeyedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio.Channel handing out `_KeyedCall`s; the rest is the
    wrapped channel's."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._channel = channel
        self._metadata = metadata

    async def __aenter__(self) -> _KeyedChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _KeyedCall(self._channel.unary_unary(method, *args, **kwargs), self._metadata)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _KeyedCall(self._channel.unary_stream(method, *args, **kwargs), self._metadata)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _KeyedCall(self._channel.stream_unary(method, *args, **kwargs), self._metadata)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _KeyedCall(self._channel.stream_stream(method, *args, **kwargs), self._metadata)


class _SyncKeyInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The key header on every call of a blocking channel (CLI, health probe:
    one call at a time, where an interceptor's cost does not show)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata: Sequence[tuple[str, Any]] = (*(details.metadata or ()), *self._metadata)
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _ClientCallDetails(
    NamedTuple(
        "_ClientCallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Sequence[tuple[str, Any]]),
            ("credentials", grpc.CallCredentials | None),
            ("wait_for_ready", bool | None),
            ("compression", grpc.Compression | None),
        ],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """grpc's own details type is private; this is its shape."""


def sync_client_interceptors(api_key: SecretStr | None) -> list[Any]:
    """Interceptors for a blocking channel (grpc.intercept_channel) sending
    `authorization: Bearer <key>`; none without a key."""
    metadata = key_metadata(api_key)
    return [_SyncKeyInterceptor(metadata)] if metadata else []
