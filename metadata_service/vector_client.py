"""The metadata service's client of the vector service (asyncio gRPC).

One channel per worker process, created inside its event loop. Every call
takes an absolute deadline (time.monotonic()): the caller passes its own
call's, so no downstream call outlives the call that caused it.
Transport failures become `VectorServiceUnavailable`; the pipeline then
leaves its work PENDING and retries with backoff.

`VECTOR_SERVICE_ADDRESS` may name several replicas (a comma-separated list,
or a gRPC target such as `dns:///vector:50052`): calls are spread over those
whose health service reports `askmojo.vector.v1.VectorService` SERVING
(round_robin with client-side health checking), so a replica that is
starting, draining or has lost Chroma gets none. A replica dying mid-call
costs a retry, not a failure: gRPC retries the idempotent unary calls on
another replica (askmojo.common.targets), and `upsert_stream` resends the
batches a broken stream left unanswered (upserts by deterministic ids are
idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from askmojo.common.channels import NO_SECURITY, ClientSecurity, open_aio_channel
from askmojo.common.filters import FilterNode, MetadataScalar, filter_to_proto, metadata_to_proto
from askmojo.common.filters import metadata_value_from_proto as from_value
from askmojo.common.limits import SentLimits, limit_problems
from askmojo.common.targets import (
    EMBEDDING_SERVICE,
    VECTOR_SERVICE,
    RetryPolicy,
    Target,
    looks_up_names,
    resolve_target,
    target_options,
)
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc

_LOGGER = logging.getLogger(__name__)

# Codes that say "the vector service cannot answer now", not "this request is
# wrong": the work is retried later instead of being marked FAILED.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
_TRANSIENT_CODES = frozenset(c.value[0] for c in _TRANSIENT)
# The vector service refused this service's key (VECTOR_SERVICE_API_KEY):
# a configuration of the pair to fix, not a fault of the documents, so their
# work stays PENDING (as in an outage) and is indexed once the keys agree.
_KEY_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# gRPC's own retries of the idempotent unary calls (a replica that died or
# refused for a moment): quick, as the indexer's own backoff follows anyway.
_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=1.0)
# An UpsertStream broken by UNAVAILABLE (its replica died, or drains) is
# opened again, on whichever replica is healthy, this many times in a row
# without an answer in between, waiting _STREAM_BACKOFF * 2^n seconds first.
_STREAM_ATTEMPTS = 5
_STREAM_BACKOFF = 0.1
# A list of host names is looked up here, not by gRPC: looked up again after
# a transport failure (a replica restarted on a new address, a name that did
# not resolve at start-up), at most this often.
_LOOKUP_SECONDS = 5.0
# Calls in flight on a channel replaced after a new look-up get this long.
_RETIRE_GRACE = 30.0


class VectorServiceUnavailable(Exception):
    """The vector service is down, overloaded or too slow; retry later.

    `str()` is what a caller of the metadata service reads (what it can act
    on; an RPC that needs the vector service says so with `message`);
    `detail` (the vector service's address and error) is for the server's
    log only."""

    def __init__(self, detail: str, message: str = "") -> None:
        super().__init__(
            message
            or "the vector service is unavailable; documents are stored and will be "
            "indexed when it returns"
        )
        self.detail = detail


class VectorServiceError(Exception):
    """The vector service refused a request (a bug or a mismatch, not an outage).
    `violations`: its google.rpc.BadRequest (field, description) pairs, in
    the vector service's field names."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"vector service: {code.name}: {message}")
        self.code = code
        self.violations = tuple(violations)


class VectorCollectionNotFound(VectorServiceError):
    """The vector collection does not exist (yet): nothing was ever indexed."""


@dataclass(frozen=True)
class VectorRecord:
    """Exactly one of `text` (embedded by the vector service) and `vector`."""

    id: str
    text: str | None
    metadata: Mapping[str, MetadataScalar]
    vector: Sequence[float] | None = None


@dataclass(frozen=True)
class StoredVector:
    metadata: dict[str, MetadataScalar]
    vector: list[float] | None


@dataclass(frozen=True)
class RecordAck:
    id: str
    ok: bool
    transient: bool  # not stored now, may succeed later (queue full...)
    message: str
    # The vector collection is gone (dropped, or a vector store rebuilt from
    # nothing): create it again and resend.
    collection_missing: bool = False
    # Stored, but its text was longer than the model's window: only its
    # start was embedded.
    truncated: bool = False


@dataclass(frozen=True)
class VectorMatch:
    id: str
    score: float
    metadata: dict[str, MetadataScalar]


class VectorServiceClient(Protocol):
    """What the indexer and the pipeline use of the vector service:
    `VectorClient` speaks it over gRPC; tests pass stand-ins."""

    async def ensure_collection(
        self, name: str, dimension: int, model: str, deadline: float
    ) -> None: ...

    async def drop_collection(self, name: str, deadline: float) -> None: ...

    def upsert_stream(
        self, collection: str, batches: Sequence[Sequence[VectorRecord]], deadline: float
    ) -> AsyncIterator[list[RecordAck]]: ...

    async def delete(self, collection: str, where: FilterNode, deadline: float) -> int: ...

    async def query(
        self, collection: str, text: str, top_k: int, where: FilterNode | None, deadline: float
    ) -> list[VectorMatch]: ...

    async def list_ids(
        self, collection: str, page_token: str, page_size: int, deadline: float
    ) -> tuple[list[str], str]: ...

    async def get(
        self, collection: str, ids: Sequence[str], deadline: float, *, vectors: bool = False
    ) -> dict[str, StoredVector]: ...

    async def delete_ids(self, collection: str, ids: Sequence[str], deadline: float) -> int: ...


class VectorClient:
    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        sent_limits: SentLimits | None = None,
        security: ClientSecurity = NO_SECURITY,
    ) -> None:
        self.address = address
        # Batches resent after an UpsertStream broke (a replica died):
        # operators read it in the log, tests here.
        self.resent_batches = 0
        # Checked against the vector service's limits before the first
        # collection is ensured (so before anything is sent to index).
        self._sent_limits = sent_limits
        self._limits_agree = sent_limits is None
        self._security = security
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect quickly after the vector service restarts.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        self._looks_up = looks_up_names(address)
        self._looked_up_at = time.monotonic()
        self._lookup: asyncio.Task[None] | None = None
        # Replaced channels, closing once their calls are done.
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._target = self._resolve()
        self._open(self._target)

    def _resolve(self) -> Target:
        unresolved: list[str] = []
        target = resolve_target(self.address, unresolved if self._looks_up else None)
        if unresolved:
            _LOGGER.warning(
                "VECTOR_SERVICE_ADDRESS: %s did not resolve; left out until a later look-up",
                ", ".join(unresolved),
            )
        return target

    def _open(self, target: Target) -> None:
        self._channel = open_aio_channel(
            target[0],
            self._security,
            options=[
                *self._options,
                # round_robin even over one name: it may resolve to several
                # replicas, and health checking needs a balancing policy.
                *target_options(
                    target,
                    _RETRY,
                    [VECTOR_SERVICE, EMBEDDING_SERVICE],
                    balanced=True,
                    health_service=VECTOR_SERVICE,
                ),
            ],
        )
        self._stub = vpb_grpc.VectorServiceStub(self._channel)
        self._embedding_stub = epb_grpc.EmbeddingServiceStub(self._channel)

    def _transport_failed(self) -> None:
        """Host names written in the list are looked up again (off the event
        loop, at most every _LOOKUP_SECONDS); new addresses get a new
        channel, the old one is closed once its calls are done."""
        if not self._looks_up or self._lookup is not None:
            return
        if time.monotonic() - self._looked_up_at < _LOOKUP_SECONDS:
            return
        self._looked_up_at = time.monotonic()
        self._lookup = asyncio.get_running_loop().create_task(self._look_up_again())

    async def _look_up_again(self) -> None:
        try:
            target = await asyncio.to_thread(self._resolve)
        except ValueError as exc:
            _LOGGER.warning("VECTOR_SERVICE_ADDRESS: %s", exc)
            return
        finally:
            self._lookup = None
        if target == self._target:
            return
        _LOGGER.info("vector service replicas now at %s", target[0])
        retired = self._channel
        self._target = target
        self._open(target)
        closing = asyncio.get_running_loop().create_task(retired.close(_RETIRE_GRACE))
        self._retiring[closing] = retired
        closing.add_done_callback(lambda task: self._retiring.pop(task, None))

    async def close(self) -> None:
        if self._lookup is not None:
            self._lookup.cancel()
        await self._channel.close()
        # The service is stopping: no grace for the replaced channels either.
        for closing, retired in list(self._retiring.items()):
            closing.cancel()
            await retired.close()

    async def check_limits(self, deadline: float) -> None:
        """Raises VectorServiceUnavailable (the work stays PENDING, never
        FAILED) while the vector service would refuse what this service may
        send; the log names the setting to change. Passes once they agree."""
        if self._limits_agree or self._sent_limits is None:
            return
        info: epb.GetModelInfoResponse = await self._call(
            self._embedding_stub.GetModelInfo, epb.GetModelInfoRequest(), deadline
        )
        problems = limit_problems(self._sent_limits, info)
        if problems:
            for problem in problems:
                _LOGGER.error("settings of the pair disagree: %s", problem)
            raise VectorServiceUnavailable(
                f"vector service at {self.address}: its limits are below this service's: "
                + "; ".join(problems),
                "the vector service's limits are below this service's (see the server log); "
                "documents are stored and will be indexed once the settings agree",
            )
        self._limits_agree = True

    async def ensure_collection(
        self, name: str, dimension: int, model: str, deadline: float
    ) -> None:
        await self.check_limits(deadline)
        await self._call(
            self._stub.EnsureCollection,
            vpb.EnsureCollectionRequest(name=name, dimension=dimension, model=model),
            deadline,
        )

    async def drop_collection(self, name: str, deadline: float) -> None:
        await self._call(self._stub.DropCollection, vpb.DropCollectionRequest(name=name), deadline)

    async def upsert_stream(
        self, collection: str, batches: Sequence[Sequence[VectorRecord]], deadline: float
    ) -> AsyncIterator[list[RecordAck]]:
        """Sends the batches over one `UpsertStream` and yields each batch's
        acknowledgements as they come. The vector service reads a batch only
        after storing the one before, so this side never runs ahead of it.
        A stream broken by UNAVAILABLE (its replica died) is opened again
        with the batches not yet answered: the round robin hands it to a
        healthy replica, and upserting the same ids twice stores them once."""
        answered = 0
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VectorServiceUnavailable("no time left for the vector service call")
            self._fail_fast_while_away()
            requests = (
                vpb.UpsertStreamRequest(
                    collection=collection, records=[_to_proto_record(r) for r in batch]
                )
                for batch in batches[answered:]
            )
            call = self._stub.UpsertStream(requests, timeout=remaining)
            try:
                async for response in call:
                    answered += 1
                    failures = 0
                    # A refused batch (e.g. its collection was dropped
                    # meanwhile) carries that status on each of its records too.
                    yield [
                        RecordAck(
                            r.id,
                            r.status.code == code_pb2.OK,
                            r.status.code in _TRANSIENT_CODES,
                            r.status.message,
                            r.status.code == code_pb2.NOT_FOUND,
                            r.truncated,
                        )
                        for r in response.results
                    ]
                return
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    self._transport_failed()
                wait = _STREAM_BACKOFF * 2 ** (failures - 1)
                if (
                    exc.code() is not grpc.StatusCode.UNAVAILABLE
                    or failures >= _STREAM_ATTEMPTS
                    or time.monotonic() + wait >= deadline
                ):
                    raise self._error(exc) from None
                self.resent_batches += len(batches) - answered
                _LOGGER.warning(
                    "vector UpsertStream broke (%s: %s); resending its %d unanswered "
                    "batches to a healthy replica",
                    exc.code().name,
                    exc.details(),
                    len(batches) - answered,
                )
            await asyncio.sleep(wait)

    async def delete(self, collection: str, where: FilterNode, deadline: float) -> int:
        """Deletes the matching vectors; a missing collection has none."""
        try:
            response: vpb.DeleteResponse = await self._call(
                self._stub.Delete,
                vpb.DeleteRequest(collection=collection, filter=filter_to_proto(where)),
                deadline,
            )
        except VectorCollectionNotFound:
            return 0
        return int(response.deleted_count)

    async def query(
        self,
        collection: str,
        text: str,
        top_k: int,
        where: FilterNode | None,
        deadline: float,
    ) -> list[VectorMatch]:
        request = vpb.QueryRequest(collection=collection, query_text=text, top_k=top_k)
        if where is not None:
            request.filter.CopyFrom(filter_to_proto(where))
        response: vpb.QueryResponse = await self._call(self._stub.Query, request, deadline)
        return [VectorMatch(m.id, m.score, _metadata(m.metadata)) for m in response.matches]

    async def list_ids(
        self, collection: str, page_token: str, page_size: int, deadline: float
    ) -> tuple[list[str], str]:
        response: vpb.ListIdsResponse = await self._call(
            self._stub.ListIds,
            vpb.ListIdsRequest(collection=collection, page_size=page_size, page_token=page_token),
            deadline,
        )
        return list(response.ids), response.next_page_token

    async def get(
        self, collection: str, ids: Sequence[str], deadline: float, *, vectors: bool = False
    ) -> dict[str, StoredVector]:
        response: vpb.GetResponse = await self._call(
            self._stub.Get,
            vpb.GetRequest(collection=collection, ids=list(ids), include_vectors=vectors),
            deadline,
        )
        return {
            r.id: StoredVector(
                _metadata(r.metadata), list(r.vector.values) if r.HasField("vector") else None
            )
            for r in response.records
        }

    async def delete_ids(self, collection: str, ids: Sequence[str], deadline: float) -> int:
        response: vpb.DeleteResponse = await self._call(
            self._stub.Delete, vpb.DeleteRequest(collection=collection, ids=list(ids)), deadline
        )
        return int(response.deleted_count)

    def _fail_fast_while_away(self) -> None:
        """Raises VectorServiceUnavailable, without a call, while the channel
        knows every replica unreachable (TRANSIENT_FAILURE: the last attempt
        to connect to each failed; it tries again on its own backoff, with or
        without calls, and a replica that comes back makes it READY). An idle
        channel is not refused: the call connects it. gRPC's retries are for a
        replica lost while others serve; with none serving, they only made
        each write answer PENDING 0.5-1 s late and a degraded Search wait as
        long, during a whole outage."""
        if (
            self._channel.get_state(try_to_connect=False)
            is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        ):
            self._transport_failed()
            raise VectorServiceUnavailable(
                f"vector service at {self.address}: no replica reachable (the channel's last "
                "connection attempts failed); not called"
            )

    async def _call(self, method: Any, request: Any, deadline: float) -> Any:
        # `deadline` is absolute (time.monotonic()); gRPC carries what is left
        # of it to the vector service, which drops work nobody waits for.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VectorServiceUnavailable("no time left for the vector service call")
        self._fail_fast_while_away()
        try:
            return await method(request, timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            self._transport_failed()
        if code in _TRANSIENT:
            # Its address and connection error help an operator, not a
            # caller: `detail` goes to the log, never on the wire.
            return VectorServiceUnavailable(
                f"vector service at {self.address}: {code.name}: {exc.details()}"
            )
        if code in _KEY_REFUSED:
            return VectorServiceUnavailable(
                f"vector service at {self.address} refused this service's key "
                f"({code.name}: {exc.details()}); set VECTOR_SERVICE_API_KEY to the "
                "vector service's API_KEY",
                "the vector service refused this service's API key (see the server log); "
                "documents are stored and will be indexed once the keys agree",
            )
        if code is grpc.StatusCode.NOT_FOUND:
            return VectorCollectionNotFound(code, exc.details() or "")
        return VectorServiceError(code, exc.details() or "", _violations(exc))


def _violations(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations a refusal carries."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return []
        found = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                found += [(v.field, v.description) for v in bad_request.field_violations]
        return found
    return []


def _to_proto_record(record: VectorRecord) -> vpb.VectorRecord:
    metadata = metadata_to_proto(record.metadata)
    if record.vector is not None:
        return vpb.VectorRecord(
            id=record.id, vector=vpb.Vector(values=record.vector), metadata=metadata
        )
    return vpb.VectorRecord(id=record.id, text=record.text or "", metadata=metadata)


def _metadata(values: Mapping[str, object]) -> dict[str, MetadataScalar]:
    result: dict[str, MetadataScalar] = {}
    for key, value in values.items():
        scalar = from_value(value)  # type: ignore[arg-type]
        if scalar is not None:
            result[key] = scalar
    return result
